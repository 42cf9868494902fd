"""The release gate: the owner's minimum privacy results, and whether a release check meets them.

Pure logic, no files: ``parse_gate`` validates the bytes of a gate file and ``judge`` compares a
release check's stored scores (``common.privacy.PrivacyReport.to_dict``) with it. Reading and
writing files is ``release_check.py``'s job. The format::

    [gate]
    min_dcr_ratio = 1.0                 # DCR ratio at least this (1: as far as unseen records)
    max_mia_auc = 0.55                  # membership attack ROC AUC at most this
    max_mia_tpr_at_1pct_fpr = 0.02      # attack's true-positive rate at 1% false positives
    max_exact_copy_share = 0.001        # share of synthetic rows equal to a training row
    max_closer_to_train_share = 0.53    # share of synthetic rows nearer a training row
    check_groups = true                 # also every sensitive group (default true)

Every threshold is optional, but a gate must set one. Why exact copies too: the attack (and the
closer-to-train share) compare as many training rows as there are hold-out rows, so when the
training rows far outnumber the hold-out, copies of the other training rows look like fresh rows
and those scores are diluted (a generator copying every Adult training row scored attack AUC 0.53
and TPR@1%FPR 1.3%). Exact copies, like the DCR ratio, are measured against all training rows and
do not dilute; the closer-to-train share moves by half the share of copied sampled rows, still
well beyond its noise of about 0.5 / sqrt(rows).

Groups: with ``check_groups`` (the default) every sensitive group must pass each threshold too,
because a rare group's records are the likeliest to be memorised and an overall score averages
them away. A group's score that the check could not compute (too few rows; the report says why)
is skipped, while an overall score that could not be computed fails: the gate fails closed.

Every error is a ``Fair4FreeError`` CONFIG_INVALID naming the key by its path, as the policy does.
"""

from __future__ import annotations

import hashlib
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from fair4free.common.errors import ErrorCode, Fair4FreeError


@dataclass(frozen=True, kw_only=True)
class Threshold:
    """One configurable bound: its gate key, the score it bounds, and its valid range."""

    key: str
    metric: str
    label: str
    bound: Literal["min", "max"]
    upper: float
    """Largest value the key accepts (the lowest is 0); a share or an AUC is at most 1."""


THRESHOLDS: Final = (
    Threshold(key="min_dcr_ratio", metric="dcr_ratio", label="DCR ratio", bound="min",
              upper=math.inf),
    Threshold(key="max_mia_auc", metric="mia_auc", label="MIA AUC", bound="max", upper=1.0),
    Threshold(key="max_mia_tpr_at_1pct_fpr", metric="mia_tpr_at_1pct_fpr",
              label="MIA TPR@1%FPR", bound="max", upper=1.0),
    Threshold(key="max_exact_copy_share", metric="exact_copy_share", label="exact-copy share",
              bound="max", upper=1.0),
    Threshold(key="max_closer_to_train_share", metric="closer_to_train_share",
              label="closer-to-train share", bound="max", upper=1.0),
)  # fmt: skip
_BY_KEY: Final = {threshold.key: threshold for threshold in THRESHOLDS}
_GATE_KEYS: Final = (*_BY_KEY, "check_groups")

ISSUE_BAR: Final = {"min_dcr_ratio": 1.0, "max_mia_auc": 0.55, "max_mia_tpr_at_1pct_fpr": 0.02}
"""The bar issue 6 names for a release; ``render_gate`` writes it as the starting gate."""


@dataclass(frozen=True, kw_only=True)
class ReleaseGate:
    """A validated gate: the bounds it sets, whether groups count, and which file it came from."""

    limits: Mapping[str, float]
    """Gate key (``max_mia_auc``) -> its bound, for the keys the file sets."""
    check_groups: bool
    source: str
    digest: str
    """SHA-256 of the file's bytes, to name the gate version in logs and the stored check."""

    def to_dict(self) -> dict[str, Any]:
        """The gate as stored beside a check's verdict."""
        return {
            "source": self.source,
            "sha256": self.digest,
            "limits": dict(self.limits),
            "check_groups": self.check_groups,
        }


@dataclass(frozen=True, kw_only=True)
class GateVerdict:
    """Whether a check passes a gate: one line per failure and per bound that held."""

    failures: tuple[str, ...]
    passes: tuple[str, ...]

    @property
    def passed(self) -> bool:
        """True when no bound failed."""
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        """The verdict as stored with the check."""
        return {"passed": self.passed, "failures": list(self.failures), "passes": list(self.passes)}


def parse_gate(data: bytes, *, source: str = "<gate>") -> ReleaseGate:
    """Validate the bytes of a gate file; ``source`` names it in errors and verdicts.

    :raises Fair4FreeError: CONFIG_INVALID naming the key path, the rule and the value.
    """
    try:
        document = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise _invalid(f"{source}: not UTF-8 text ({exc.reason})") from None
    except tomllib.TOMLDecodeError as exc:
        raise _invalid(f"{source}: invalid TOML: {exc}") from None
    for key in document:
        if key != "gate":
            raise _invalid(f"{source}: {key}: unknown key, expected the table [gate]")
    table = document.get("gate")
    if not isinstance(table, dict):
        shown = "nothing" if table is None else _show(table)
        raise _invalid(f"{source}: gate: must be a table [gate] of thresholds, got {shown}")
    limits: dict[str, float] = {}
    for key, value in table.items():
        where = f"{source}: gate.{key}"
        if key not in _GATE_KEYS:
            raise _invalid(f"{where}: unknown key, expected one of {', '.join(_GATE_KEYS)}")
        if key == "check_groups":
            if not isinstance(value, bool):
                raise _invalid(f"{where}: must be true or false, got {_show(value)}")
            continue
        upper = _BY_KEY[key].upper
        number = value if isinstance(value, int | float) and not isinstance(value, bool) else None
        if number is None or not (math.isfinite(number) and 0.0 <= number <= upper):
            rule = "a number >= 0" if math.isinf(upper) else f"a number from 0 to {upper:g}"
            raise _invalid(f"{where}: must be {rule}, got {_show(value)}")
        limits[key] = float(number)
    if not limits:
        keys = ", ".join(_BY_KEY)
        raise _invalid(f"{source}: gate: sets no threshold; set at least one of {keys}")
    return ReleaseGate(
        limits=limits,
        check_groups=table.get("check_groups", True),
        source=source,
        digest=hashlib.sha256(data).hexdigest(),
    )


def judge(gate: ReleaseGate, metrics: Mapping[str, Any]) -> GateVerdict:
    """Compare a check's scores (``PrivacyReport.to_dict()``) with every bound of ``gate``.

    A line reads e.g. ``MIA AUC 0.610 > 0.55 (gate.toml max_mia_auc)``; a group's line names it
    (``MIA AUC for sex=F ...``). An undefined overall score fails; an undefined group score is
    skipped (see the module docstring).
    """
    failures: list[str] = []
    passes: list[str] = []
    sensitive = metrics.get("sensitive", "group")
    scopes: list[tuple[str, Mapping[str, Any]]] = [("", _scores(metrics.get("overall")))]
    if gate.check_groups:
        groups = metrics.get("groups") or {}
        scopes += [(f" for {sensitive}={name}", _scores(s)) for name, s in sorted(groups.items())]
    for key, limit in gate.limits.items():
        threshold = _BY_KEY[key]
        where = f"({gate.source} {key})"
        for scope, scores in scopes:
            value = scores.get(threshold.metric)
            if not isinstance(value, int | float) or isinstance(value, bool):
                if not scope:
                    why = (scores.get("undefined") or {}).get(threshold.metric, "not in the check")
                    failures.append(f"{threshold.label} undefined: {why} {where}")
                continue
            ok = value >= limit if threshold.bound == "min" else value <= limit
            sign = (">=" if ok else "<") if threshold.bound == "min" else ("<=" if ok else ">")
            line = f"{threshold.label}{scope} {value:.3f} {sign} {limit:g} {where}"
            (passes if ok else failures).append(line)
    return GateVerdict(failures=tuple(failures), passes=tuple(passes))


def render_gate(limits: Mapping[str, float] = ISSUE_BAR) -> str:
    """A commented gate file setting ``limits``, with every other bound shown commented out.

    The starting point an owner edits: ``fair4free-owner gate init`` writes it.
    """
    suggestions = {"max_exact_copy_share": 0.001, "max_closer_to_train_share": 0.53}
    comments = {
        "min_dcr_ratio": "synthetic rows at least as far from training rows as unseen records",
        "max_mia_auc": "membership attack: 0.5 is a coin toss",
        "max_mia_tpr_at_1pct_fpr": "members caught at 1% false alarms; 0.01 is chance",
        "max_exact_copy_share": "verbatim training rows; compare the check's holdout_copy_share",
        "max_closer_to_train_share": "0.5 is no leak; noise about 0.5 / sqrt(rows)",
    }
    lines = [
        "# fair4free release gate: serve --release-gate refuses a model whose stored",
        "# release check (fair4free-owner release-check) misses any bound set here.",
        "# The attack is diluted when the training rows far outnumber the hold-out;",
        "# the DCR ratio and exact copies are not. See docs/privacy.md.",
        "[gate]",
    ]
    for threshold in THRESHOLDS:
        comment = f"  # {comments[threshold.key]}"
        if threshold.key in limits:
            lines.append(f"{threshold.key} = {limits[threshold.key]!r}{comment}")
        else:
            value = suggestions.get(threshold.key, 0.0)
            lines.append(f"# {threshold.key} = {value!r}{comment}")
    lines.append("check_groups = true  # every sensitive group must pass too")
    text = "\n".join(lines) + "\n"
    parse_gate(text.encode(), source="<generated gate>")  # never hand out a file we reject
    return text


def _scores(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return str(value)


def _invalid(detail: str) -> Fair4FreeError:
    return Fair4FreeError(ErrorCode.CONFIG_INVALID, detail)

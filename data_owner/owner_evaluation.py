"""The owner's scoring of a consumer's synthetic rows against its private hold-out: aggregates only.

A consumer can score its rows against real data only if it holds real data; the owner holds the
rows its teacher never saw (the hold-out recorded at training, ``holdout.py``) and the rows it
did. So the Evaluate RPC brings the synthetic rows here and sends back what the consumer's local
``evaluate`` and ``privacy`` commands would print, computed by the same functions
(``metrics.evaluate_synthetic`` with the hold-out as the real test table,
``privacy.evaluate_privacy`` with the training rows and the hold-out), and nothing finer:

- no row, no row index, no per-record distance: only scores over all rows, or over a sensitive
  group with at least ``min_group_rows`` synthetic rows, hold-out rows and attack members and
  non-members each (smaller groups are left out of the report, not shown as blanks);
- every score rounded to ``SIGNIFICANT_DIGITS`` significant digits, the precision a reader
  compares generators at, so answers are no finer oracle than that;
- at least ``min_rows`` rows per call (the wire codec refuses fewer before scoring), so no score
  is a statement about one row alone. docs/security.md §2 says what a crafted table still reveals.

Everything here is a pure function of the loaded tables and the rows: no gRPC, no I/O after
``load``, the same answer for the same rows (seeded). The serve flags that turn it on are at the
end (``add_arguments``), beside the settings they fill.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pandas as pd
from threadpoolctl import threadpool_limits

from fair4free.common.codec import EvaluationAnswer
from fair4free.common.encoding import TableEncoder
from fair4free.common.errors import ErrorCode, Fair4FreeError
from fair4free.common.metrics import EvaluationReport, category_labels, evaluate_synthetic
from fair4free.common.privacy import PrivacyConfig, PrivacyScores, evaluate_privacy
from fair4free.data_owner.holdout import load_split
from fair4free.data_owner.registry import Teacher

SIGNIFICANT_DIGITS: Final = 3
"""Digits every score is rounded to: what the local reports print, and no finer."""

DEFAULT_MIN_ROWS: Final = 200
DEFAULT_MIN_GROUP_ROWS: Final = 50
DEFAULT_MAX_ROWS: Final = 5000

SECTIONS: Final[Mapping[str, tuple[str, ...]]] = {
    "fairness": ("dpr", "eor", "ftu"),
    "utility": ("accuracy", "f1", "recall", "auroc"),
    "quality": ("density", "coverage", "alpha_precision", "beta_recall", "authenticity"),
}
"""The report's sections from ``EvaluationReport`` fields; "privacy" comes from PrivacyScores."""

PRIVACY_WITHHELD: Final = frozenset({"n_holdout", "n_members", "n_non_members", "undefined"})
"""PrivacyScores fields a report leaves out: counts of the owner's rows (the hold-out size is
told once, overall) and the reasons, which quote them. The caller's own row count stays."""
PRIVACY_SCORES: Final = tuple(
    f.name for f in dataclasses.fields(PrivacyScores) if f.name not in PRIVACY_WITHHELD
)

SETTING_INVALID: Final = "evaluation {name} must be an integer of at least {least}, got {value!r}"
HOLDOUT_TOO_SMALL: Final = (
    "the hold-out of {path} has {rows} rows; Evaluate needs at least {least} (twice the "
    "{group} rows a sensitive group's privacy scores need); retrain with a larger "
    "--holdout-fraction"
)
HOLDOUT_UNUSABLE: Final = "the hold-out of {path} cannot score fairness: {problem}"


@dataclass(frozen=True, kw_only=True)
class EvaluationSettings:
    """How the owner scores uploads; validated once, when the daemon's config is read."""

    min_rows: int = DEFAULT_MIN_ROWS
    """Fewest rows one call may upload: a score over fewer says too much about each row."""
    min_group_rows: int = DEFAULT_MIN_GROUP_ROWS
    """Fewest rows of each kind for a sensitive group's privacy scores to be reported."""
    max_rows: int = DEFAULT_MAX_ROWS
    """Most rows of each table the distance-based scores draw (their cost is quadratic)."""
    seed: int = 0

    def __post_init__(self) -> None:
        for name, least in (("min_rows", 1), ("min_group_rows", 1), ("max_rows", 2)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                detail = SETTING_INVALID.format(name=name, least=least, value=value)
                raise Fair4FreeError(ErrorCode.CONFIG_INVALID, detail)
        if self.max_rows < 2 * self.min_group_rows:  # PrivacyConfig refuses it, say it here
            detail = SETTING_INVALID.format(
                name="max_rows", least=2 * self.min_group_rows, value=self.max_rows
            )
            raise Fair4FreeError(ErrorCode.CONFIG_INVALID, detail)


class OwnerEvaluator:
    """The teacher's encoding with its training rows and hold-out, loaded once at start."""

    def __init__(
        self,
        encoder: TableEncoder,
        *,
        train: pd.DataFrame,
        holdout: pd.DataFrame,
        settings: EvaluationSettings,
    ) -> None:
        self._encoder = encoder
        self._train = train
        self._holdout = holdout
        self._settings = settings

    @classmethod
    def load(
        cls, teacher: Teacher, data_path: Path, settings: EvaluationSettings
    ) -> OwnerEvaluator:
        """Read the table the teacher was trained from and keep its recorded two parts.

        :raises Fair4FreeError: (from ``holdout.load_split``) when the file is not the one the
            teacher was trained on or the teacher has no hold-out; CONFIG_INVALID when the
            hold-out is too small or cannot score fairness (one target class, one group).
        """
        train, holdout = load_split(teacher.metadata, data_path, model=teacher.model_id)
        schema = teacher.encoder.schema
        columns = list(schema.names)
        least = 2 * settings.min_group_rows  # the privacy attack halves the hold-out
        if len(holdout) < least:
            detail = HOLDOUT_TOO_SMALL.format(
                path=data_path, rows=len(holdout), least=least, group=settings.min_group_rows
            )
            raise Fair4FreeError(ErrorCode.CONFIG_INVALID, detail)
        for role, column in (("target", schema.target), ("sensitive", schema.sensitive)):
            labels = category_labels(holdout[column])
            if labels.isna().any() or labels.nunique() < 2:
                problem = f"its {role} column {column!r} needs two values and none missing"
                detail = HOLDOUT_UNUSABLE.format(path=data_path, problem=problem)
                raise Fair4FreeError(ErrorCode.CONFIG_INVALID, detail)
        return cls(
            teacher.encoder,
            train=train[columns],
            holdout=holdout[columns],
            settings=settings,
        )

    @property
    def settings(self) -> EvaluationSettings:
        """How uploads are scored; the servicer reads ``min_rows`` from here."""
        return self._settings

    @property
    def holdout_rows(self) -> int:
        """Rows in the hold-out, told to the caller with every answer."""
        return len(self._holdout)

    def score(
        self, rows: npt.NDArray[np.float32], sensitive: npt.NDArray[np.int64]
    ) -> EvaluationAnswer:
        """Score model-space rows (as the manifest's encoding writes them) against the hold-out.

        Rows are decoded with the teacher's encoding (each categorical block's largest slot wins)
        and their sensitive column set from ``sensitive``. Fairness and utility are those of a
        classifier trained on the rows and tested on the hold-out; quality compares the rows with
        the hold-out; privacy compares their distances to the training rows with those to the
        hold-out.

        The gradient-boosted classifier runs on one OpenMP thread: the daemon scores calls on
        several worker threads, and OpenMP's default of a thread per core per call oversubscribes
        the cores. Measured on a busy 2-core host for 3000 rows: 1.3-2.2 s on one thread, 5-100 s
        unpinned.
        """
        with threadpool_limits(limits=1, user_api="openmp"):
            return self._score(rows, sensitive)

    def _score(
        self, rows: npt.NDArray[np.float32], sensitive: npt.NDArray[np.int64]
    ) -> EvaluationAnswer:
        schema = self._encoder.schema
        synthetic = self._encoder.decode(rows, sensitive)
        settings = self._settings
        scores = evaluate_synthetic(
            synthetic,
            self._holdout,
            target=schema.target,
            sensitive=schema.sensitive,
            positive_class=schema.positive_class,
            seed=settings.seed,
            max_quality_rows=settings.max_rows,
        )
        privacy = evaluate_privacy(
            synthetic,
            self._train,
            self._holdout,
            sensitive=schema.sensitive,
            target=schema.target,
            config=PrivacyConfig(
                seed=settings.seed,
                max_rows=settings.max_rows,
                min_group_rows=settings.min_group_rows,
            ),
        )
        report = {
            **_sections(scores),
            "privacy": {
                "overall": _privacy_scores(privacy.overall),
                "undefined": dict(sorted(privacy.overall.undefined.items())),
                "groups": {
                    name: _privacy_scores(group)
                    for name, group in privacy.groups.items()
                    if _reportable(group, settings.min_group_rows)
                },
                "sensitive": schema.sensitive,
            },
        }
        return EvaluationAnswer(
            report=report, rows_scored=int(rows.shape[0]), holdout_rows=self.holdout_rows
        )


def significant(value: float | int | None) -> float | int | None:
    """A score rounded to ``SIGNIFICANT_DIGITS`` significant digits; NaN (undefined) is None."""
    if value is None or isinstance(value, int):
        return value
    if math.isnan(value):
        return None
    return float(f"{value:.{SIGNIFICANT_DIGITS}g}")


def _sections(scores: EvaluationReport) -> dict[str, dict[str, Any]]:
    values = scores.to_dict()
    return {
        section: {name: significant(values[name]) for name in names}
        for section, names in SECTIONS.items()
    }


def _privacy_scores(scores: PrivacyScores) -> dict[str, Any]:
    values = scores.to_dict()
    return {name: significant(values[name]) for name in PRIVACY_SCORES}


def _reportable(group: PrivacyScores, least: int) -> bool:
    """Whether a group has enough rows of every kind for its scores to describe no one row."""
    counts = (group.n_synthetic, group.n_holdout, group.n_members, group.n_non_members)
    return min(counts) >= least


def add_arguments(serve: argparse.ArgumentParser) -> None:
    """The serve flags that turn Evaluate on and bound it (docs/security.md)."""
    group = serve.add_argument_group("owner-side evaluation (the Evaluate RPC)")
    group.add_argument(
        "--evaluation-data",
        type=Path,
        metavar="CSV",
        help="the table the model was trained from ('train --data'); Evaluate scores uploads "
        "against its recorded hold-out (default: Evaluate is not served)",
    )
    group.add_argument(
        "--evaluation-min-rows",
        type=int,
        default=DEFAULT_MIN_ROWS,
        metavar="N",
        help=f"fewest rows one Evaluate call may upload (default {DEFAULT_MIN_ROWS})",
    )


def settings_from_args(args: argparse.Namespace) -> EvaluationSettings:
    """The evaluation settings the serve flags ask for."""
    return EvaluationSettings(min_rows=args.evaluation_min_rows)

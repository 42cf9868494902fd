"""The release check: score a teacher's own samples for privacy, store the result with the model.

``run_release_check`` makes synthetic rows exactly as a consumer would from the daemon's default
answers (posterior latents, decoded with s drawn from p(s)), and scores them against the rows
the teacher trained on and its hold-out (``holdout.load_split``) with ``common.privacy``.

The result is stored beside the model as ``release_check.json``. The model directory is a hashed
artifact, but its hash covers ``artifact.json`` and ``weights.pt`` only, so the extra file leaves
``read_artifact``'s integrity check untouched; in turn the check names the content hash of the
model it scored, and ``read_release_check`` accepts it only for a model with that hash. A new
check replaces the file atomically, and the one it replaces is kept as
``release_check.previous.json`` (one generation), so a re-run never silently loses a result.
The file is no signature: whoever can write the model directory can write it (and the model).

``enforce_release_gate`` is what ``serve --release-gate`` runs before the server starts. A check
scores the rows of one latent mode (``--latent-release``): a check of posterior latents, the most
revealing answers, covers serving in any mode; a check of prior latents covers only serving prior
latents, so the gate refuses to let it stand for posterior or Gaussian answers.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np

from fair4free.common.artifacts import package_versions
from fair4free.common.errors import ErrorCode, Fair4FreeError
from fair4free.common.privacy import PrivacyConfig, PrivacyReport, evaluate_privacy
from fair4free.common.secure_files import PUBLIC_MODE, replace_file
from fair4free.data_owner import queries
from fair4free.data_owner.holdout import load_split, recorded_split
from fair4free.data_owner.privacy_statement import LatentMode
from fair4free.data_owner.registry import Teacher
from fair4free.data_owner.release_gate import GateVerdict, ReleaseGate, judge, parse_gate

logger = logging.getLogger(__name__)

RELEASE_CHECK_FILE: Final = "release_check.json"
PREVIOUS_CHECK_FILE: Final = "release_check.previous.json"
CHECK_KIND: Final = "fair4free-release-check"
CHECK_FORMAT_VERSION: Final = 1
CheckedMode = Literal["posterior", "prior"]
CHECKED_MODES: Final[tuple[CheckedMode, ...]] = ("posterior", "prior")
"""Latent modes a check can score; Gaussian release is covered by a check of posterior latents."""
DEFAULT_CHECK_MAX_ROWS: Final = 20_000
"""Most synthetic and hold-out rows scored: distances cost their product (20k x 20k: seconds)."""


@dataclass(frozen=True, kw_only=True)
class ReleaseCheck:
    """A finished check: the report to print and the document stored with the model."""

    report: PrivacyReport
    document: dict[str, Any]


def run_release_check(
    teacher: Teacher,
    data_path: Path,
    *,
    model: str,
    rows: int | None = None,
    seed: int = 0,
    max_rows: int = DEFAULT_CHECK_MAX_ROWS,
    latent_mode: CheckedMode = "posterior",
) -> ReleaseCheck:
    """Score ``rows`` of the teacher's own samples (default: as many as the hold-out holds).

    ``model`` names the model in messages (its directory). The same seed draws the same latents,
    sensitive values and comparison rows, so a check can be reproduced.

    :raises Fair4FreeError: as ``load_split`` (wrong file, no hold-out) and ``evaluate_privacy``.
    """
    train, holdout = load_split(teacher.metadata, data_path, model=model)
    n_rows = min(len(holdout), max_rows) if rows is None else rows
    if n_rows < 1:
        raise Fair4FreeError(ErrorCode.CONFIG_INVALID, f"--rows must be positive, got {n_rows}")
    config = PrivacyConfig(seed=seed, max_rows=max_rows)
    schema = teacher.encoder.schema
    started = time.monotonic()
    synthetic = queries.sample_rows(teacher, n_rows, np.random.default_rng(seed), latent_mode)
    report = evaluate_privacy(
        synthetic, train, holdout, sensitive=schema.sensitive, target=schema.target, config=config
    )
    split = recorded_split(teacher.metadata, model=model)
    document = {
        "kind": CHECK_KIND,
        "format_version": CHECK_FORMAT_VERSION,
        "model_id": teacher.model_id,
        "model_content_hash": teacher.content_hash,
        "checked_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "packages": package_versions(),
        "latent_mode": latent_mode,
        "rows": n_rows,
        "seed": seed,
        "settings": asdict(config),
        "data": {
            "file": data_path.name,
            "sha256": split.data_sha256,
            "train_rows": len(train),
            "holdout_rows": len(holdout),
        },
        "seconds": round(time.monotonic() - started, 1),
        "metrics": report.to_dict(),
        "gate": None,
    }
    return ReleaseCheck(report=report, document=document)


def with_verdict(check: ReleaseCheck, gate: ReleaseGate) -> tuple[ReleaseCheck, GateVerdict]:
    """The check with ``gate``'s verdict recorded in it (serve judges again with its own gate)."""
    verdict = judge(gate, check.document["metrics"])
    document = dict(check.document, gate={**gate.to_dict(), **verdict.to_dict()})
    return ReleaseCheck(report=check.report, document=document), verdict


def check_writable(model_dir: Path) -> None:
    """Refuse before minutes of work when the result could not be stored afterwards.

    :raises Fair4FreeError: OUTPUT_UNWRITABLE naming the directory.
    """
    if not os.access(model_dir, os.W_OK | os.X_OK):
        raise Fair4FreeError(
            ErrorCode.OUTPUT_UNWRITABLE,
            f"cannot write the release check into {model_dir}: the directory is not writable",
        )


def write_release_check(model_dir: Path, document: dict[str, Any]) -> Path | None:
    """Store ``document`` as the model's check; returns where the check it replaced was kept.

    Both steps are atomic replacements, so a reader (a starting daemon) always finds a whole
    check: the old one until the new one is in place.

    :raises Fair4FreeError: OUTPUT_UNWRITABLE naming the file.
    """
    current = model_dir / RELEASE_CHECK_FILE
    kept: Path | None = None
    if current.exists():
        kept = model_dir / PREVIOUS_CHECK_FILE
        try:
            previous = current.read_bytes()
        except OSError as exc:
            raise Fair4FreeError(
                ErrorCode.OUTPUT_UNWRITABLE, f"cannot keep {current}: {exc.strerror or exc}"
            ) from None
        replace_file(kept, previous, PUBLIC_MODE)
    text = json.dumps(document, indent=2, sort_keys=True, allow_nan=False) + "\n"
    replace_file(current, text.encode(), PUBLIC_MODE)
    return kept


def read_release_check(model_dir: Path, teacher: Teacher) -> dict[str, Any]:
    """The stored check of exactly this model (by content hash).

    :raises Fair4FreeError: RELEASE_GATE_FAILED when there is none, it cannot be read, or it
        checked a model with another content hash.
    """
    path = model_dir / RELEASE_CHECK_FILE
    rerun = f"run fair4free-owner release-check --model {model_dir} --data <its training CSV>"
    if not path.exists():
        raise _refused(f"model {teacher.model_id} has no release check ({path}); {rerun}")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _refused(f"{path} is unreadable ({exc}); {rerun}") from None
    if (
        not isinstance(document, dict)
        or document.get("kind") != CHECK_KIND
        or document.get("format_version") != CHECK_FORMAT_VERSION
        or not isinstance(document.get("metrics"), dict)
    ):
        raise _refused(f"{path} is not a release check of format {CHECK_FORMAT_VERSION}; {rerun}")
    checked = document.get("model_content_hash")
    if checked != teacher.content_hash:
        raise _refused(
            f"{path} checked the model with content hash {str(checked)[:12]}, not this model "
            f"({teacher.content_hash[:12]}); {rerun}"
        )
    return document


def load_gate(path: Path) -> ReleaseGate:
    """Read and validate a gate file.

    :raises Fair4FreeError: FILE_NOT_FOUND if it is missing, CONFIG_INVALID otherwise.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise Fair4FreeError(ErrorCode.FILE_NOT_FOUND, f"gate file {path} not found") from None
    except OSError as exc:
        raise Fair4FreeError(
            ErrorCode.CONFIG_INVALID, f"gate file {path}: cannot read it: {exc.strerror or exc}"
        ) from None
    return parse_gate(data, source=str(path))


def enforce_release_gate(
    gate_path: Path, model_dir: Path, teacher: Teacher, serving: LatentMode = "posterior"
) -> GateVerdict:
    """Judge the model's stored check by the gate; refuse unless it passes every bound.

    The gate is read now, not taken from the check, so tightening it needs no new check.
    ``serving`` is the daemon's latent mode, which the check must cover (module docstring).

    :raises Fair4FreeError: RELEASE_GATE_FAILED with every failing bound on one line, or when
        the check scored less revealing latents than those served; or as ``load_gate`` and
        ``read_release_check``.
    """
    gate = load_gate(gate_path)
    document = read_release_check(model_dir, teacher)
    checked_mode = document.get("latent_mode", "posterior")
    if checked_mode not in ("posterior", serving):
        raise _refused(
            f"the release check of model {teacher.model_id} scored {checked_mode} latents, "
            f"which do not cover serving {serving} latents; run 'fair4free-owner release-check "
            f"--latent-release posterior' (it covers every mode)"
        )
    verdict = judge(gate, document["metrics"])
    if not verdict.passed:
        raise gate_failed(teacher, verdict, checked=str(document.get("checked_utc")))
    logger.info(
        "release gate %s passed by the check of %s (%s rows, seed %s): %s",
        gate.source,
        document.get("checked_utc"),
        document.get("rows"),
        document.get("seed"),
        "; ".join(verdict.passes),
    )
    return verdict


def gate_failed(teacher: Teacher, verdict: GateVerdict, *, checked: str) -> Fair4FreeError:
    """The one-line refusal naming every failing bound, for ``serve`` and ``release-check``."""
    return _refused(
        f"model {teacher.model_id} fails the release gate (check of {checked}): "
        + "; ".join(verdict.failures)
    )


def _refused(detail: str) -> Fair4FreeError:
    return Fair4FreeError(ErrorCode.RELEASE_GATE_FAILED, detail)

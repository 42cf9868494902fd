"""Score a synthetic table against the owner's private hold-out, through the Evaluate RPC.

The local ``evaluate`` and ``privacy`` commands need real rows, which a consumer usually lacks;
the owner holds the rows its teacher never saw and scores uploaded rows there, answering rounded
aggregates only. This module turns a synthetic file into the model-space rows the owner reads
(with the manifest's encoding), sends at most one call's worth, and lays the answer out as the
local commands do, so a remote score reads like a local one.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from fair4free.common.codec import EvaluationAnswer
from fair4free.common.encoding import TableEncoder
from fair4free.common.errors import ErrorCode, Fair4FreeError
from fair4free.common.metrics import EvaluationReport
from fair4free.common.privacy_cli import format_score_lines, format_undefined, write_new_file
from fair4free.common.table_io import read_table
from fair4free.consumer.client import OwnerClient
from fair4free.consumer.evaluation import format_report_table

_COUNTS = ("n_synthetic", "n_real")


@dataclass(frozen=True, kw_only=True)
class RemoteEvaluation:
    """The owner's answer, and how many rows the table had (more than one call may carry)."""

    answer: EvaluationAnswer
    rows_given: int
    max_rows_per_call: int

    @property
    def sampled(self) -> bool:
        """Whether a random sample of the table was scored, the table being over the cap."""
        return self.answer.rows_scored < self.rows_given


def read_synthetic(path: Path) -> pd.DataFrame:
    """A table ``generate`` wrote: CSV (read into the dtypes the encoder expects) or Parquet."""
    if path.suffix.lower() != ".parquet":
        return read_table(path)
    try:
        return pd.read_parquet(path)
    except ImportError:
        detail = f"reading {path} needs pyarrow; install fair4free[parquet]"
        raise Fair4FreeError(ErrorCode.FILE_UNREADABLE, detail) from None
    except (OSError, ValueError) as error:
        raise Fair4FreeError(ErrorCode.FILE_UNREADABLE, f"cannot read {path}: {error}") from None


def evaluate_remote(client: OwnerClient, table: pd.DataFrame, *, seed: int) -> RemoteEvaluation:
    """Have the owner score ``table`` (rows in the owner's schema) against its hold-out.

    The scores are over one call's rows, so a table longer than the caller's rows per call is
    scored on a random sample (seeded) of that many rows.
    """
    manifest = client.manifest()
    encoder = TableEncoder.from_dict(dict(manifest.encoding))
    cap = manifest.max_rows_per_call
    sample = table if len(table) <= cap else table.sample(n=cap, random_state=seed)
    rows, sensitive = encoder.encode(sample)
    return RemoteEvaluation(
        answer=client.evaluate(rows, sensitive),
        rows_given=len(table),
        max_rows_per_call=cap,
    )


def format_remote_report(evaluation: RemoteEvaluation, *, name: str) -> str:
    """The owner's report laid out as the local commands print theirs.

    Fairness, utility and quality as ``evaluate`` prints them; privacy as ``privacy`` does (all
    rows, then each sensitive group the owner reported); then which rows were scored.
    """
    answer = evaluation.answer
    report = answer.report
    flat = {key: value for section in ("fairness", "utility", "quality")
            for key, value in report[section].items()}  # fmt: skip
    fields = [f.name for f in dataclasses.fields(EvaluationReport) if f.name not in _COUNTS]
    scores = EvaluationReport(
        **{field: _number(flat.get(field)) for field in fields},
        n_synthetic=answer.rows_scored,
        n_real=answer.holdout_rows,
    )
    privacy: Mapping[str, Any] = report["privacy"]
    sensitive = privacy.get("sensitive", "group")
    lines = {"all rows": privacy.get("overall", {})} | {
        f"{sensitive}={group}": values for group, values in privacy.get("groups", {}).items()
    }
    sampled = (
        f"a random sample of {answer.rows_scored} of {evaluation.rows_given} rows (at most "
        f"{evaluation.max_rows_per_call} per call)"
        if evaluation.sampled
        else f"{answer.rows_scored} rows"
    )
    return "\n".join(
        [
            format_report_table({name: scores}),
            "",
            *format_score_lines(lines),
            *format_undefined("all rows", privacy.get("undefined", {})),
            f"scored {sampled} against the owner's hold-out of {answer.holdout_rows} rows; "
            "groups with too few rows are not reported",
        ]
    )


def write_report(evaluation: RemoteEvaluation, path: Path) -> None:
    """The owner's report and the row counts as JSON, in a new file (never replacing one)."""
    answer = evaluation.answer
    document = {
        "report": answer.report,
        "rows_scored": answer.rows_scored,
        "rows_given": evaluation.rows_given,
        "holdout_rows": answer.holdout_rows,
    }
    write_new_file(path, json.dumps(document, indent=2, sort_keys=True) + "\n")


def _number(value: object) -> float:
    """A score from the report; an undefined one (null) is NaN, which the table shows as n/a."""
    return float(value) if isinstance(value, int | float) else math.nan

"""The ``privacy`` subcommand, the same on both sides' command lines.

The owner checks its teacher's samples and the consumer its own synthetic rows with one command
and one table, so that both read a privacy score the same way. Each side's ``cli.py`` registers
it with ``add_privacy_command``; the scoring lives in ``fair4free.common.privacy``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fair4free.common.errors import ErrorCode, Fair4FreeError
from fair4free.common.privacy import (
    DEFAULT_MAX_ROWS,
    PrivacyConfig,
    PrivacyReport,
    evaluate_privacy,
)
from fair4free.common.table_io import read_table

_TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("DCR-train", "dcr_train_median"),
    ("DCR-hold", "dcr_holdout_median"),
    ("hold-DCR", "holdout_dcr_train_median"),
    ("DCR-ratio", "dcr_ratio"),
    ("closer-T", "closer_to_train_share"),
    ("NNDR-syn", "nndr_synthetic_median"),
    ("NNDR-hold", "nndr_holdout_median"),
    ("copy-syn", "exact_copy_share"),
    ("copy-hold", "holdout_copy_share"),
    ("MIA-AUC", "mia_auc"),
    ("TPR@1%FPR", "mia_tpr_at_1pct_fpr"),
    ("n-syn", "n_synthetic"),
)
_OVERALL = "all rows"


def add_privacy_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``privacy`` among a command line's subcommands, with its handler."""
    command = commands.add_parser(
        "privacy",
        help="measure what synthetic rows reveal about the training rows, against a hold-out",
    )
    command.add_argument("--synthetic", type=Path, required=True, help="the rows to check")
    command.add_argument("--train", type=Path, required=True,
                         help="the rows the generator was trained on")  # fmt: skip
    command.add_argument("--holdout", type=Path, required=True,
                         help="real rows the generator never saw, e.g. the test split")  # fmt: skip
    command.add_argument("--sensitive", required=True, help="score each of its groups too")
    command.add_argument("--target", help="checked to be present; it counts like any column")
    command.add_argument("--seed", type=int, default=0)
    command.add_argument("--max-rows", type=int, default=DEFAULT_MAX_ROWS,
                         help="rows drawn at most from each table, to bound the time")  # fmt: skip
    command.add_argument("--json", type=Path, help="also write the report here (a new file)")
    command.set_defaults(handler=_privacy)


def format_privacy_table(report: PrivacyReport) -> str:
    """One line for all rows and one per sensitive group, then why any cell reads n/a."""
    lines = {_OVERALL: report.overall} | {
        f"{report.sensitive}={name}": scores for name, scores in report.groups.items()
    }
    rows = format_score_lines({name: scores.to_dict() for name, scores in lines.items()})
    for name, scores in lines.items():
        rows += format_undefined(name, scores.undefined)
    used, given = report.rows_used, report.rows_given
    rows.append(
        f"rows used: synthetic {used['synthetic']} of {given['synthetic']}; for distances and "
        f"the attack, train {used['train_for_distances']} of {given['train']} and hold-out "
        f"{used['holdout']} of {given['holdout']} ({used['attack_members']} members, "
        f"{used['attack_non_members']} non-members, {used['attack_reference']} reference); "
        f"exact copies sought among {used['train']} train rows"
    )
    return "\n".join(rows)


def format_score_lines(lines: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """A header, then one line of scores per name, as ``PrivacyScores.to_dict`` gives them.

    A score that is undefined (None) or absent reads n/a. Public so that the consumer lays out
    the owner's remote privacy scores exactly as these local ones.
    """
    name_width = max(len(name) for name in lines)
    width = max(len(header) for header, _ in _TABLE_COLUMNS)
    header = " " * name_width + "".join(f"  {title:>{width}}" for title, _ in _TABLE_COLUMNS)
    return [header] + [f"{name:<{name_width}}" + _cells(v, width) for name, v in lines.items()]


def format_undefined(name: str, undefined: Mapping[str, str]) -> list[str]:
    """One line per reason why scores of the line ``name`` read n/a, naming those scores."""
    by_reason: dict[str, list[str]] = {}
    for score, why in undefined.items():
        by_reason.setdefault(why, []).append(score)
    return [f"n/a {name}: {', '.join(names)}: {why}" for why, names in by_reason.items()]


def _cells(values: Mapping[str, Any], width: int) -> str:
    return "".join(f"  {_cell(values.get(field)):>{width}}" for _, field in _TABLE_COLUMNS)


def _cell(value: float | int | None) -> str:
    if value is None:
        return "n/a"
    return str(value) if isinstance(value, int) else f"{value:.3f}"


def _privacy(args: argparse.Namespace) -> int:
    json_path: Path | None = args.json
    if json_path is not None:  # refuse before minutes of work, not after
        check_new_file(json_path)
    config = PrivacyConfig(seed=args.seed, max_rows=args.max_rows)
    report = evaluate_privacy(
        read_table(args.synthetic),
        read_table(args.train),
        read_table(args.holdout),
        sensitive=args.sensitive,
        target=args.target,
        config=config,
    )
    print(format_privacy_table(report))  # noqa: T201
    if json_path is not None:
        write_new_file(json_path, json.dumps(report.to_dict(), indent=2, sort_keys=True) + "\n")
        print(f"wrote {json_path}")  # noqa: T201
    return 0


def check_new_file(path: Path) -> None:
    """Refuse an output path that exists, before any work is done for it."""
    if path.exists():
        raise _exists(path)


def write_new_file(path: Path, text: str) -> None:
    """Create the file, never replace one: the exclusive open makes a race fail, not clobber."""
    try:
        handle = path.open("x", encoding="utf-8")
    except FileExistsError:
        raise _exists(path) from None
    except OSError as error:
        raise _unwritable(path, error) from None
    try:
        with handle:
            handle.write(text)
    except OSError as error:
        path.unlink(missing_ok=True)  # ours: the exclusive open created it
        raise _unwritable(path, error) from None


def _unwritable(path: Path, error: OSError) -> Fair4FreeError:
    detail = f"cannot write '{path}': {error.strerror or error}"
    return Fair4FreeError(ErrorCode.OUTPUT_UNWRITABLE, detail)


def _exists(path: Path) -> Fair4FreeError:
    detail = f"'{path}' exists; pass a new --json path"
    return Fair4FreeError(ErrorCode.OUTPUT_UNWRITABLE, detail)

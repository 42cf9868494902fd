"""``fair4free-owner release-check``, ``gate init`` and ``serve --release-gate``: the release gate.

Kept apart from ``cli.py`` so the owner's main command line stays one screenful per concern; the
main parser registers these with ``add_release_commands`` and ``add_release_gate_option``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from fair4free.common.privacy_cli import format_privacy_table
from fair4free.common.secure_files import PUBLIC_MODE, write_new_files
from fair4free.data_owner.privacy_statement import LatentMode
from fair4free.data_owner.registry import Teacher, load_teacher
from fair4free.data_owner.release_check import (
    CHECKED_MODES,
    DEFAULT_CHECK_MAX_ROWS,
    RELEASE_CHECK_FILE,
    check_writable,
    enforce_release_gate,
    gate_failed,
    load_gate,
    run_release_check,
    with_verdict,
    write_release_check,
)
from fair4free.data_owner.release_gate import render_gate

logger = logging.getLogger("fair4free.owner")


def add_release_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``release-check`` and ``gate`` among the owner's subcommands."""
    check = commands.add_parser(
        "release-check",
        help="score the teacher's own samples for privacy against its hold-out; store the result",
    )
    check.add_argument("--model", type=Path, required=True, help="the model directory")
    check.add_argument("--data", type=Path, required=True, help="the CSV given to 'train --data'")
    check.add_argument("--rows", type=int, help="synthetic rows (default: the hold-out's size)")
    check.add_argument("--seed", type=int, default=0)
    check.add_argument(
        "--max-rows",
        type=int,
        default=DEFAULT_CHECK_MAX_ROWS,
        help="most synthetic and hold-out rows scored (bounds the time)",
    )
    check.add_argument(
        "--latent-release",
        choices=CHECKED_MODES,
        default="posterior",
        help="score rows from these latents (posterior, the default, covers serving any mode)",
    )
    check.add_argument("--gate", type=Path, help="also judge by this gate; exit 6 when it fails")
    check.set_defaults(handler=_release_check)

    gate = commands.add_parser("gate", help="write a starting release gate")
    gate_commands = gate.add_subparsers(dest="gate_command", required=True)
    init = gate_commands.add_parser("init", help="the issue's bar, other bounds commented out")
    init.add_argument("--out", type=Path, required=True, help="new gate file (TOML)")
    init.set_defaults(handler=_gate_init)


def add_release_gate_option(serve: argparse.ArgumentParser) -> None:
    """``serve --release-gate``: start only with a model whose stored check passes the gate."""
    serve.add_argument(
        "--release-gate",
        type=Path,
        help="gate file (TOML); refuse to start unless the model's release check passes it",
    )


def check_release_gate(args: argparse.Namespace, teacher: Teacher, served: LatentMode) -> None:
    """What ``serve`` runs before building the server; nothing without ``--release-gate``."""
    if args.release_gate is not None:
        enforce_release_gate(args.release_gate, args.model, teacher, served)


def _release_check(args: argparse.Namespace) -> int:
    gate = None if args.gate is None else load_gate(args.gate)  # a bad gate fails before work
    teacher = load_teacher(args.model)
    check_writable(args.model)
    check = run_release_check(
        teacher,
        args.data,
        model=str(args.model),
        rows=args.rows,
        seed=args.seed,
        max_rows=args.max_rows,
        latent_mode=args.latent_release,
    )
    verdict = None
    if gate is not None:
        check, verdict = with_verdict(check, gate)
    document = check.document
    print(  # noqa: T201
        f"release check of {teacher.model_id}: {document['rows']} synthetic rows "
        f"({document['latent_mode']} latents, seed {document['seed']}) against "
        f"{document['data']['train_rows']} training and {document['data']['holdout_rows']} "
        f"hold-out rows, {document['seconds']} s"
    )
    print(format_privacy_table(check.report))  # noqa: T201
    kept = write_release_check(args.model, document)
    replaced = "" if kept is None else f" (the previous check is now {kept.name})"
    print(f"wrote {args.model / RELEASE_CHECK_FILE}{replaced}")  # noqa: T201
    if verdict is None:
        return 0
    for line in verdict.passes:
        print(f"pass: {line}")  # noqa: T201
    for line in verdict.failures:
        print(f"FAIL: {line}")  # noqa: T201
    if not verdict.passed:
        raise gate_failed(teacher, verdict, checked=document["checked_utc"])
    print(f"release gate {args.gate}: passed")  # noqa: T201
    return 0


def _gate_init(args: argparse.Namespace) -> int:
    write_new_files(
        [(args.out, render_gate().encode(), PUBLIC_MODE)], reason="a gate file already exists"
    )
    print(f"wrote {args.out}: the issue 6 bar (DCR ratio >= 1, MIA AUC <= 0.55, TPR <= 2%)")  # noqa: T201
    return 0

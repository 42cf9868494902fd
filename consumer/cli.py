"""``fair4free-consumer``: the consumer's commands (distill, generate, evaluate, privacy, pki).

``evaluate-remote`` has the owner score synthetic rows against its private hold-out.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from fair4free.common.cli_support import run_parsed
from fair4free.common.errors import ErrorCode, Fair4FreeError
from fair4free.common.privacy_cli import add_privacy_command, check_new_file, write_new_file
from fair4free.common.table_io import write_table
from fair4free.common.tls import TlsFiles
from fair4free.consumer.client import ClientConfig, OwnerClient
from fair4free.consumer.distillation import DistillConfig, distill
from fair4free.consumer.evaluation import evaluate_files, format_report_table
from fair4free.consumer.pki_request import request_certificate
from fair4free.consumer.remote_evaluation import (
    evaluate_remote,
    format_remote_report,
    read_synthetic,
    write_report,
)
from fair4free.consumer.student import Student

logger = logging.getLogger("fair4free.consumer")


def build_parser() -> argparse.ArgumentParser:
    """The consumer's command line; every subcommand has a ``handler`` default."""
    parser = argparse.ArgumentParser(prog="fair4free-consumer", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("distill", help="distill a local student from an owner daemon")
    _add_connection(run)
    run.add_argument("--out", type=Path, required=True, help="new student directory")
    run.add_argument("--latent-rows", type=int, default=DistillConfig.latent_rows)
    run.add_argument("--decode-rows", type=int, default=DistillConfig.decode_rows)
    run.add_argument("--steps", type=int, default=DistillConfig.decoder_steps,
                     help="student decoder training steps")  # fmt: skip
    run.add_argument("--bandwidth", type=float, default=DistillConfig.bandwidth,
                     help="latent kernel width, share of each axis's spread")  # fmt: skip
    run.add_argument("--batch-size", type=int, default=DistillConfig.batch_size)
    run.add_argument("--seed", type=int, default=DistillConfig.seed)
    run.add_argument("--checkpoint-every", type=int, default=DistillConfig.checkpoint_every)
    run.set_defaults(handler=_distill)

    gen = commands.add_parser("generate", help="generate synthetic rows locally, no server needed")
    gen.add_argument("--student", type=Path, required=True)
    gen.add_argument("-n", "--rows", type=int, required=True)
    gen.add_argument("--out", type=Path, required=True, help="FILE.csv or FILE.parquet")
    gen.add_argument("--seed", type=int, help="make the rows reproducible")
    gen.add_argument("--sensitive-value", help="give every row this sensitive value")
    gen.add_argument("--force", action="store_true", help="replace an existing output file")
    gen.set_defaults(handler=_generate)

    kept = commands.add_parser(
        "checkpoints", help="print the owner's audit checkpoints a student received, one per line"
    )
    kept.add_argument("--student", type=Path, required=True)
    kept.set_defaults(handler=_checkpoints)

    ev = commands.add_parser("evaluate", help="score synthetic rows against a real test table")
    ev.add_argument("--synthetic", type=Path, required=True)
    ev.add_argument("--real", type=Path, required=True)
    ev.add_argument("--sensitive", required=True)
    ev.add_argument("--target", required=True)
    ev.add_argument("--positive-class", help="the target's positive class (default: minority)")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--json", type=Path, help="also write the scores as JSON here (a new file)")
    ev.set_defaults(handler=_evaluate)

    remote = commands.add_parser(
        "evaluate-remote", help="have the owner score synthetic rows against its private hold-out"
    )
    _add_connection(remote)
    remote.add_argument("--data", type=Path, required=True,
                        help="synthetic rows in the owner's schema (CSV or .parquet)")  # fmt: skip
    remote.add_argument("--seed", type=int, default=0,
                        help="which rows a table over the owner's cap per call sends")  # fmt: skip
    remote.add_argument("--json", type=Path, help="also write the report here (a new file)")
    remote.set_defaults(handler=_evaluate_remote)

    pki_parser = commands.add_parser("pki", help="your key and a request for the owner to sign")
    pki_commands = pki_parser.add_subparsers(dest="pki_command", required=True)
    request = pki_commands.add_parser(
        "request", help="make a private key and a certificate signing request for the owner"
    )
    request.add_argument("--dir", type=Path, required=True, help="folder for NAME.key, NAME.csr")
    request.add_argument("--name", required=True, help="client identity, e.g. acme-research")
    request.set_defaults(handler=_pki_request)
    add_privacy_command(commands)
    return parser


def _add_connection(parser: argparse.ArgumentParser) -> None:
    """The flags every command that talks to the owner's daemon takes: where, as whom, how long."""
    parser.add_argument("--server", required=True, help="owner daemon address HOST:PORT")
    parser.add_argument("--pki", type=Path, help="PKI folder holding ca.crt and clients/NAME.*")
    parser.add_argument("--name", help="client name inside --pki")
    parser.add_argument("--ca", type=Path, help="CA certificate (instead of --pki/--name)")
    parser.add_argument("--cert", type=Path, help="client certificate (instead of --pki/--name)")
    parser.add_argument("--key", type=Path, help="client private key (instead of --pki/--name)")
    parser.add_argument("--timeout", type=float, default=60.0, help="deadline per call, seconds")


def _client_config(args: argparse.Namespace) -> ClientConfig:
    return ClientConfig(server=args.server, tls=tls_files(args), timeout_seconds=args.timeout)


def tls_files(args: argparse.Namespace) -> TlsFiles:
    """Client TLS material from either --pki/--name or explicit --ca/--cert/--key."""
    if args.pki is not None and args.name is not None:
        return TlsFiles.from_pki_dir(args.pki, args.name)
    if args.ca is not None and args.cert is not None and args.key is not None:
        return TlsFiles(ca=args.ca, cert=args.cert, key=args.key)
    raise Fair4FreeError(
        ErrorCode.CONFIG_INVALID, "give either --pki and --name, or all of --ca, --cert and --key"
    )


def _distill(args: argparse.Namespace) -> int:
    config = DistillConfig(
        latent_rows=args.latent_rows,
        decode_rows=args.decode_rows,
        decoder_steps=args.steps,
        bandwidth=args.bandwidth,
        batch_size=args.batch_size,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
    )
    with OwnerClient(_client_config(args)) as client:
        distill(client, args.out, config)
    print(f"saved student to {args.out}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    if args.out.exists() and not args.force:
        raise Fair4FreeError(
            ErrorCode.OUTPUT_UNWRITABLE, f"{args.out} exists; pass --force to replace it"
        )
    student = Student.load(args.student)
    frame = student.sample(args.rows, seed=args.seed, sensitive=args.sensitive_value)
    write_table(frame, args.out, student.encoder.schema)
    print(f"wrote {len(frame)} synthetic rows to {args.out}")
    return 0


def _checkpoints(args: argparse.Namespace) -> int:
    for token in Student.load(args.student).metadata.get("audit_checkpoints", []):
        print(token)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    if args.json is not None:  # refuse before the scoring, not after it
        check_new_file(args.json)
    report = evaluate_files(
        args.synthetic,
        args.real,
        target=args.target,
        sensitive=args.sensitive,
        positive_class=args.positive_class,
        seed=args.seed,
    )
    print(format_report_table({args.synthetic.name: report}))
    if args.json is not None:
        write_new_file(args.json, json.dumps(report.to_dict(), indent=2, sort_keys=True) + "\n")
        print(f"wrote {args.json}")
    return 0


def _evaluate_remote(args: argparse.Namespace) -> int:
    if args.json is not None:  # refuse before the owner charges the call, not after
        check_new_file(args.json)
    table = read_synthetic(args.data)
    with OwnerClient(_client_config(args)) as client:
        evaluation = evaluate_remote(client, table, seed=args.seed)
    print(format_remote_report(evaluation, name=args.data.name))
    if args.json is not None:
        write_report(evaluation, args.json)
        print(f"wrote {args.json}")
    return 0


def _pki_request(args: argparse.Namespace) -> int:
    print(request_certificate(args.dir, args.name).instructions())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``fair4free-consumer``."""
    return run_parsed(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())

"""``fair4free-owner``: the hospital's commands (data, train, pki, policy, audit, ledger, serve)."""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import sqlite3
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from fair4free.common.cli_support import run_parsed
from fair4free.common.errors import ErrorCode, ExitCode, Fair4FreeError
from fair4free.common.privacy_cli import add_privacy_command
from fair4free.common.schema import infer_schema
from fair4free.common.tls import client_identity_uri
from fair4free.data_owner import datasets, latent_release, owner_evaluation, pki
from fair4free.data_owner.audit_keys import load_public_key
from fair4free.data_owner.audit_report import build_report
from fair4free.data_owner.audit_report_render import (
    FORMATS,
    check_output,
    report_format,
    write_report,
)
from fair4free.data_owner.audit_verify import read_consumer_checkpoints, verify
from fair4free.data_owner.cli_release import (
    add_release_commands,
    add_release_gate_option,
    check_release_gate,
)
from fair4free.data_owner.dp_training import DP_DEFAULTS, default_for, dp_config
from fair4free.data_owner.holdout import DEFAULT_HOLDOUT_FRACTION, draw_split
from fair4free.data_owner.ledger import Ledger
from fair4free.data_owner.policy import render_policy, starting_budgets
from fair4free.data_owner.registry import load_teacher
from fair4free.data_owner.server import LEDGER_FILE, ServerConfig, build_server, run_until_signalled
from fair4free.data_owner.train_pipeline import LATENT_ALIGNMENTS, train_to_directory
from fair4free.data_owner.training import TrainingConfig

logger = logging.getLogger("fair4free.owner")


def _columns(value: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in value.split(",") if name.strip())


def build_parser() -> argparse.ArgumentParser:
    """The owner's command line; every subcommand has a ``handler`` default."""
    parser = argparse.ArgumentParser(prog="fair4free-owner", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="write a train/test split of a dataset as CSV files")
    data.add_argument("dataset", choices=["cohort", "adult", "compas", "csv"])
    data.add_argument("--data", type=Path, help="csv: the table to split")
    data.add_argument("--target", help="csv: binary target column")
    data.add_argument("--sensitive", help="csv: sensitive attribute column")
    data.add_argument("--out", type=Path, required=True, help="folder for train.csv and test.csv")
    data.add_argument(
        "--data-home", type=Path, help=f"benchmark data folder (or ${datasets.DATA_HOME_ENV})"
    )
    data.add_argument("--rows", type=int, default=6000, help="cohort: number of rows")
    data.add_argument("--bias", type=float, default=0.8, help="cohort: direct effect of s on y")
    data.add_argument("--test-fraction", type=float, default=0.2)
    data.add_argument("--seed", type=int, default=0)
    data.set_defaults(handler=_data)

    train = commands.add_parser("train", help="train a fair teacher on a CSV table")
    train.add_argument("--data", type=Path, required=True, help="training CSV with a header row")
    train.add_argument("--target", required=True, help="binary target column")
    train.add_argument("--sensitive", required=True, help="sensitive attribute column")
    train.add_argument("--out", type=Path, required=True, help="new model directory")
    train.add_argument(
        "--categorical", type=_columns, default=(), help="force columns categorical (a,b)"
    )
    train.add_argument("--numeric", type=_columns, default=(), help="force columns numeric (a,b)")
    train.add_argument("--positive-class", help="the target's positive class (default: minority)")
    train.add_argument("--epochs", type=int, default=TrainingConfig.epochs)
    train.add_argument("--batch-size", type=int, default=TrainingConfig.batch_size)
    for setting, what in (
        ("fairness_weight", "weight of the latent's independence of s"),
        ("learning_rate", "Adam's step"),
        ("kl_weight", "weight of the KL term"),
    ):
        train.add_argument(f"--{setting.replace('_', '-')}", type=float,
                           help=f"{what} (default {getattr(TrainingConfig, setting):g}; "
                                f"{DP_DEFAULTS[setting]:g} with --dp-epsilon)")  # fmt: skip
    train.add_argument("--fair-labels", choices=["massage", "none"],
                       help="equalise positive rates across groups first (default: massage; "
                            "under DP its private form, inside the same epsilon)")  # fmt: skip
    train.add_argument(
        "--latent-alignment",
        choices=LATENT_ALIGNMENTS,
        default="groups",
        help="groups (default): serve latents in which every group is N(0, I) and read labels "
        "group-blind, from private moments inside the same epsilon under --dp-epsilon; none: "
        "serve the posterior space as trained",
    )
    train.add_argument("--dp-epsilon", type=float, help="DP-SGD to this epsilon (docs/privacy.md)")
    train.add_argument("--dp-delta", type=float, help="default: 1/(10 rows), a power of ten")
    train.add_argument("--dp-max-grad-norm", type=float, help="DP-SGD per-record clip (default 1)")
    train.add_argument("--latent-dim", type=int, default=16)
    train.add_argument("--hidden", type=int, default=128)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument(
        "--holdout-fraction",
        type=float,
        default=DEFAULT_HOLDOUT_FRACTION,
        help="rows kept from training, for release-check and Evaluate (0: none; default 0.2)",
    )
    train.set_defaults(handler=_train)

    pki_parser = commands.add_parser(
        "pki", help="PKI: CA, server and client certificates, revocation"
    )
    pki_commands = pki_parser.add_subparsers(dest="pki_command", required=True)
    init = pki_commands.add_parser("init", help="create a CA and a server certificate")
    init.add_argument("--dir", type=Path, required=True)
    init.add_argument(
        "--hostname", action="append", default=None, help="server DNS name (repeatable)"
    )
    init.add_argument("--ip", action="append", default=None, help="server IP address (repeatable)")
    init.set_defaults(handler=_pki_init)
    issue = pki_commands.add_parser("issue-client", help="issue a client certificate")
    issue.add_argument("--dir", type=Path, required=True)
    issue.add_argument("--name", required=True, help="client identity, e.g. acme-research")
    issue.set_defaults(handler=_pki_issue)
    sign = pki_commands.add_parser(
        "sign", help="certify a consumer's key from its signing request (the key stays with it)"
    )
    sign.add_argument("--dir", type=Path, required=True)
    sign.add_argument("--csr", type=Path, required=True, help="the consumer's NAME.csr")
    sign.add_argument("--days", type=int, default=90, help="lifetime, capped by the CA's")
    sign.set_defaults(handler=_pki_sign)
    revoke = pki_commands.add_parser(
        "revoke", help="revoke a consumer's certificate and publish a new CRL"
    )
    revoke.add_argument("--dir", type=Path, required=True)
    revoke.add_argument("--name", required=True, help="client identity to revoke")
    revoke.add_argument("--crl-days", type=int, default=7, help="validity of the new CRL")
    revoke.set_defaults(handler=_pki_revoke)
    renew = pki_commands.add_parser(
        "renew-server", help="new server key and certificate; a running daemon picks them up"
    )
    renew.add_argument("--dir", type=Path, required=True)
    renew.add_argument(
        "--hostname", action="append", help="server DNS name (repeatable; default: keep the names)"
    )
    renew.add_argument("--ip", action="append", help="server IP address (repeatable)")
    renew.add_argument("--days", type=int, default=365, help="lifetime, capped by the CA's")
    renew.set_defaults(handler=_pki_renew_server)
    crl = pki_commands.add_parser("crl", help="publish a fresh CRL (before the last one expires)")
    crl.add_argument("--dir", type=Path, required=True)
    crl.add_argument("--days", type=int, default=7, help="validity of the CRL")
    crl.set_defaults(handler=_pki_crl)

    policy = commands.add_parser("policy", help="write a starting access policy")
    policy_commands = policy.add_subparsers(dest="policy_command", required=True)
    policy_init = policy_commands.add_parser("init", help="grant clients every method")
    policy_init.add_argument("--out", type=Path, required=True, help="new policy file (TOML)")
    policy_init.add_argument("--client", action="append", required=True, help="client name")
    policy_init.add_argument("--budget", type=int, default=1_000_000, help="rows per method")
    policy_init.add_argument("--rate-per-minute", type=int, default=600)
    policy_init.set_defaults(handler=_policy_init)

    audit = commands.add_parser("audit", help="check the daemon's audit log")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    verify_parser = audit_commands.add_parser(
        "verify", help="prove the log intact: chain, signatures, segments, consumer checkpoints"
    )
    verify_parser.add_argument("--dir", type=Path, required=True, help="the log: STATE/audit")
    verify_parser.add_argument(
        "--pubkey", type=Path, required=True, help="STATE/audit-key/audit-signing.pub"
    )
    verify_parser.add_argument(
        "--checkpoints", type=Path, help="checkpoint tokens a consumer kept, one per line"
    )
    verify_parser.set_defaults(handler=_audit_verify)
    report = audit_commands.add_parser(
        "report", help="summarise the log for a reviewer: per identity, over time, verified first"
    )
    report.add_argument("--dir", type=Path, required=True, help="the log: STATE/audit")
    report.add_argument("--out", type=Path, required=True, help="new report file (never replaced)")
    report.add_argument("--format", choices=FORMATS, help="default: from --out's suffix, else html")
    report.add_argument("--pubkey", type=Path, help="check signatures (strongly advised)")
    report.add_argument("--checkpoints", type=Path, help="checkpoint tokens a consumer kept")
    report.set_defaults(handler=_audit_report)

    ledger = commands.add_parser("ledger", help="look after the daemon's budget ledger")
    ledger_commands = ledger.add_subparsers(dest="ledger_command", required=True)
    prune = ledger_commands.add_parser(
        "prune", help="forget stored answers older than DAYS (charges stay; safe while serving)"
    )
    prune.add_argument("--state-dir", type=Path, required=True, help="the daemon's --state-dir")
    prune.add_argument(
        "--older-than", type=_days, required=True, metavar="DAYS", help="answer age, in days"
    )
    prune.set_defaults(handler=_ledger_prune)

    serve = commands.add_parser("serve", help="serve model queries over mutual TLS")
    serve.add_argument("--model", type=Path, required=True)
    serve.add_argument("--pki", type=Path, required=True, help="folder made by 'pki init'")
    serve.add_argument("--policy", type=Path, required=True, help="access policy (TOML)")
    serve.add_argument(
        "--state-dir", type=Path, required=True, help="where the budget ledger lives"
    )
    serve.add_argument("--listen", default=ServerConfig.listen, help="HOST:PORT (port 0: any free)")
    serve.add_argument("--max-rows-per-call", type=int, default=ServerConfig.max_rows_per_call)
    serve.add_argument(
        "--max-call-seconds",
        type=float,
        default=ServerConfig.max_call_seconds,
        help="most time one call's work may take, whatever the client's deadline",
    )
    serve.add_argument("--ready-file", type=Path, help="write HOST:PORT here once serving")
    serve.add_argument("--seed", type=int, help="seed latent sampling (tests only)")
    latent_release.add_arguments(serve)
    owner_evaluation.add_arguments(serve)
    add_release_gate_option(serve)
    serve.set_defaults(handler=_serve)
    add_privacy_command(commands)
    add_release_commands(commands)
    return parser


def _load_dataset(args: argparse.Namespace) -> datasets.TabularDataset:
    if args.dataset == "cohort":
        return datasets.make_cohort(args.rows, bias=args.bias, seed=args.seed)
    if args.dataset == "csv":
        if args.data is None or args.target is None or args.sensitive is None:
            raise Fair4FreeError(
                ErrorCode.CONFIG_INVALID, "'data csv' needs --data, --target and --sensitive"
            )
        return datasets.load_csv_dataset(args.data, target=args.target, sensitive=args.sensitive)
    home = datasets.resolve_data_home(args.data_home)
    return datasets.load_adult(home) if args.dataset == "adult" else datasets.load_compas(home)


def _data(args: argparse.Namespace) -> int:
    dataset = _load_dataset(args)
    schema = dataset.schema()
    train, test = datasets.split_table(
        dataset.frame, target=dataset.target, test_fraction=args.test_fraction, seed=args.seed
    )
    datasets.export_split(train, test, args.out, schema)
    description = {
        "dataset": dataset.name,
        "target": schema.target,
        "sensitive": schema.sensitive,
        "positive_class": schema.positive_class,
        "train_rows": len(train),
        "test_rows": len(test),
        "split_seed": args.seed,
        "test_fraction": args.test_fraction,
    }
    (args.out / "dataset.json").write_text(json.dumps(description, indent=2))
    print(
        f"wrote {len(train)} training and {len(test)} test rows to {args.out} "
        f"(target {dataset.target!r}, sensitive {dataset.sensitive!r})"
    )
    return 0


def _train(args: argparse.Namespace) -> int:
    dataset = datasets.load_csv_dataset(args.data, target=args.target, sensitive=args.sensitive)
    schema = infer_schema(
        dataset.frame,
        target=args.target,
        sensitive=args.sensitive,
        categorical=args.categorical,
        numeric=args.numeric,
        positive_class=args.positive_class,
        missing_token=dataset.missing_token,
    )
    dp = dp_config(args.dp_epsilon, delta=args.dp_delta, max_grad_norm=args.dp_max_grad_norm)
    training = TrainingConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=default_for("learning_rate", dp, args.learning_rate),
        fairness_weight=default_for("fairness_weight", dp, args.fairness_weight),
        kl_weight=default_for("kl_weight", dp, args.kl_weight),
        seed=args.seed,
    )
    frame, holdout, split = draw_split(
        dataset.frame,
        data_path=args.data,
        target=args.target,
        sensitive=args.sensitive,
        fraction=args.holdout_fraction,
        seed=args.seed,
    )
    content_hash = train_to_directory(
        frame,
        schema,
        out=args.out,
        dataset_name=dataset.name,
        latent_dim=args.latent_dim,
        hidden=args.hidden,
        training=training,
        fair_labels=args.fair_labels,
        split=split,
        dp=dp,
        latent_alignment=args.latent_alignment,
    )
    kept = "no hold-out" if split is None else f"{len(holdout)} rows held out"
    print(f"saved teacher to {args.out} (content hash {content_hash[:12]}; {kept})")
    return 0


def _pki_init(args: argparse.Namespace) -> int:
    layout = pki.init_pki(
        args.dir,
        hostnames=tuple(args.hostname or ("localhost",)),
        ip_addresses=tuple(args.ip or ("127.0.0.1",)),
    )
    print(f"created CA {layout.ca_cert} and server certificate {layout.server_cert}")
    return 0


def _pki_issue(args: argparse.Namespace) -> int:
    cert, key = pki.issue_client(args.dir, args.name)
    print(
        f"issued {pki.client_identity_uri(args.name)}: {cert} (key {key}); give both to the client"
    )
    return 0


def _pki_sign(args: argparse.Namespace) -> int:
    issued = pki.sign_csr(args.dir, args.csr, days=args.days)
    cert = pki.PkiLayout(args.dir).client_cert(issued.name)
    print(
        f"issued {pki.client_identity_uri(issued.name)}: {cert} (serial {issued.serial_hex}, "
        f"valid until {issued.not_after:%Y-%m-%d}) for the public key sha256:{issued.key_sha256}"
    )
    print(
        "check that fingerprint with the consumer by another channel, then send it "
        f"{cert} and {pki.PkiLayout(args.dir).ca_cert}"
    )
    return 0


def _pki_revoke(args: argparse.Namespace) -> int:
    revoked, crl = pki.revoke_client(args.dir, args.name, crl_days=args.crl_days)
    print(f"revoked {pki.client_identity_uri(revoked.name)} (serial {revoked.serial_hex})")
    _print_crl(crl)
    return 0


def _pki_renew_server(args: argparse.Namespace) -> int:
    renewed = pki.renew_server(
        args.dir, hostnames=args.hostname, ip_addresses=args.ip, days=args.days
    )
    replaced = renewed.replaced_serial_hex or "none readable"
    print(
        f"renewed {renewed.cert}: serial {renewed.serial_hex} (replaces {replaced}), valid until "
        f"{renewed.not_after:%Y-%m-%d}, for {renewed.names}"
    )
    print(
        "a daemon serving these files presents it from its next handshake; elsewhere, copy "
        "server.key then server.crt into its --pki folder, each to a temporary name and 'mv'"
    )
    return 0


def _pki_crl(args: argparse.Namespace) -> int:
    _print_crl(pki.publish_crl(args.dir, days=args.days))
    return 0


def _print_crl(crl: pki.PublishedCrl) -> None:
    print(
        f"published {crl.path} (CRL number {crl.number}, {crl.revoked} revoked); publish the "
        f"next one before {crl.next_update:%Y-%m-%d %H:%M} UTC"
    )


def _policy_init(args: argparse.Namespace) -> int:
    if args.out.exists():
        raise Fair4FreeError(ErrorCode.OUTPUT_UNWRITABLE, f"{args.out} exists; edit it instead")
    budgets = starting_budgets(args.budget)
    grants = {client_identity_uri(name): budgets for name in args.client}
    args.out.write_text(render_policy(grants, rate_per_minute=args.rate_per_minute))
    rows = ", ".join(f"{method} {limit}" for method, limit in budgets.items())
    print(f"wrote {args.out}: {', '.join(grants)} may ask every method; row budgets {rows}")
    return 0


def _audit_verify(args: argparse.Namespace) -> int:
    tokens = [] if args.checkpoints is None else read_consumer_checkpoints(args.checkpoints)
    result = verify(args.dir, public_key=load_public_key(args.pubkey), consumer_checkpoints=tokens)
    verdict = "intact" if result.ok else "NOT intact"
    print(
        f"audit log {args.dir}: {verdict}; {result.records} records in {result.segments} "
        f"segment(s), {result.checkpoints} checkpoints, {len(tokens)} consumer checkpoint(s)"
    )
    for problem in result.problems:
        print(f"problem: {problem}")
    for gap in result.recoveries:
        print(f"crash gap: {gap}")
    return 0 if result.ok else int(ExitCode.INCOMPATIBLE_ARTIFACT)


def _audit_report(args: argparse.Namespace) -> int:
    fmt = args.format or report_format(args.out)
    check_output(args.out, fmt)  # before the slow part
    checkpoints = [] if args.checkpoints is None else read_consumer_checkpoints(args.checkpoints)
    public_key = None if args.pubkey is None else load_public_key(args.pubkey)
    report = build_report(args.dir, public_key=public_key, consumer_checkpoints=checkpoints)
    write_report(report, args.out, fmt)
    print(f"wrote {args.out} ({fmt}): {report.total('calls')} calls by {len(report.identities)} "
          f"identities, {report.span}")  # fmt: skip
    print(report.verification.headline)
    for problem in report.verification.problems:
        print(f"problem: {problem}")
    return 0 if report.verification.ok else int(ExitCode.INCOMPATIBLE_ARTIFACT)


def _days(value: str) -> float:
    try:
        days = float(value)
    except ValueError:
        days = math.nan
    if not (math.isfinite(days) and days > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of days, got {value!r}")
    return days


def _ledger_prune(args: argparse.Namespace) -> int:
    path = args.state_dir / LEDGER_FILE
    if not path.is_file():
        raise Fair4FreeError(
            ErrorCode.FILE_NOT_FOUND, f"no ledger at {path}: pass the daemon's --state-dir"
        )
    cutoff = time.time() - args.older_than * 86400
    with Ledger.open(path) as ledger:
        pruned = ledger.prune(completed_before=cutoff)
        try:
            freed = ledger.compact()
        except sqlite3.OperationalError as exc:  # pruned all the same: say so, exit 0
            freed = None
            logger.warning(
                "the ledger file was not compacted (%s); the pruned answers' space is reused by "
                "later answers, and the next prune tries again",
                exc,
            )
    for group in pruned:
        print(
            f"{group.identity} {group.method}: {group.answers} answers, {group.answer_bytes} "
            f"bytes ({group.rows} rows, still charged)"
        )
    when = datetime.datetime.fromtimestamp(cutoff, datetime.UTC)
    print(
        f"pruned {sum(g.answers for g in pruned)} stored answers completed before "
        f"{when:%Y-%m-%d %H:%M} UTC from {path}; a retry of their request ids is refused"
        + ("" if freed is None else f"; {freed} bytes returned to the disk")
    )
    return 0


def _serve(args: argparse.Namespace) -> int:
    layout = pki.PkiLayout(args.pki)
    config = ServerConfig(
        policy=args.policy,
        state_dir=args.state_dir,
        crl=layout.crl,  # required: a missing CRL stops the daemon rather than skip revocation
        listen=args.listen,
        max_rows_per_call=args.max_rows_per_call,
        max_call_seconds=args.max_call_seconds,
        seed=args.seed,
        latent_release=latent_release.settings_from_args(args),
        evaluation_data=args.evaluation_data,
        evaluation=owner_evaluation.settings_from_args(args),
    )
    teacher = load_teacher(args.model)
    check_release_gate(args, teacher, config.latent_release.mode_for(teacher.metadata))
    daemon = build_server(teacher, tls=layout.server_files(), config=config)
    address = f"{config.listen.rpartition(':')[0]}:{daemon.port}"
    logger.info("serving model %s on %s (mutual TLS)", teacher.model_id, address)
    if args.ready_file is not None:
        staging = args.ready_file.with_name(args.ready_file.name + ".tmp")
        staging.write_text(address)
        staging.replace(args.ready_file)
    run_until_signalled(daemon, grace_seconds=config.grace_seconds)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``fair4free-owner``."""
    return run_parsed(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())

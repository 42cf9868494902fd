"""``fair4free demo``: both organisations on one machine, the whole flow in one command.

The owner side runs exactly as a hospital would run it: its own command line in subprocesses
(data split, PKI, training, and the daemon on a free loopback port). The consumer side then
distills over mutual TLS, generates rows locally and scores them against the owner's test split.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from fair4free.common.cli_support import configure_logging, run_cli
from fair4free.common.errors import ErrorCode, Fair4FreeError
from fair4free.common.table_io import write_table
from fair4free.common.tls import TlsFiles
from fair4free.consumer.client import ClientConfig, OwnerClient
from fair4free.consumer.distillation import DistillConfig, distill
from fair4free.consumer.evaluation import evaluate_files, format_report_table
from fair4free.consumer.student import Student

logger = logging.getLogger("fair4free.demo")

CLIENT_NAME = "demo-consumer"
READY_TIMEOUT_SECONDS = 60.0


def build_parser() -> argparse.ArgumentParser:
    """``fair4free demo`` and its settings; the defaults run in a few minutes on 2 cores."""
    parser = argparse.ArgumentParser(prog="fair4free", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run the whole two-party flow on localhost")
    demo.add_argument("--data", type=Path, help="your own CSV instead of the built-in cohort")
    demo.add_argument("--target", help="target column of --data")
    demo.add_argument("--sensitive", help="sensitive column of --data")
    demo.add_argument("--rows", type=int, default=6000, help="size of the built-in cohort")
    demo.add_argument("--epochs", type=int, default=30, help="teacher training epochs")
    demo.add_argument("--steps", type=int, default=1500, help="student decoder training steps")
    demo.add_argument(
        "--pool-rows", type=int, default=10_000, help="latents and decodes to ask for"
    )
    demo.add_argument("--workdir", type=Path, help="keep everything here (default: a temp folder)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--json", type=Path, help="also write the results table as JSON")
    return parser


def _owner(*args: str) -> None:
    """Run one owner command in its own process, as the hospital would."""
    command = [sys.executable, "-m", "fair4free.data_owner", *args]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise (
            Fair4FreeError(ErrorCode.INTERNAL, f"owner step '{' '.join(args[:2])}' failed: {last}")
            if result.returncode == 1
            else Fair4FreeError(
                ErrorCode.CONFIG_INVALID, f"owner step '{' '.join(args[:2])}' failed: {last}"
            )
        )
    for line in result.stdout.strip().splitlines():
        logger.info("owner: %s", line)


@contextmanager
def _daemon(model: Path, pki_dir: Path, work: Path) -> Iterator[str]:
    """The owner daemon as a real subprocess on a free loopback port; yields its address."""
    ready = work / "daemon.ready"
    log_path = work / "daemon.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "fair4free.data_owner", "serve",
                "--model", str(model), "--pki", str(pki_dir),
                "--policy", str(work / "policy.toml"), "--state-dir", str(work / "state"),
                "--listen", "127.0.0.1:0", "--ready-file", str(ready),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + READY_TIMEOUT_SECONDS
            while not ready.exists():
                if process.poll() is not None or time.monotonic() > deadline:
                    tail = log_path.read_text().strip().splitlines()[-1:] or ["no output"]
                    raise Fair4FreeError(
                        ErrorCode.SERVER_UNREACHABLE, f"the owner daemon did not start: {tail[0]}"
                    )
                time.sleep(0.1)
            address = ready.read_text().strip()
            logger.info("owner daemon (pid %d) serving on %s", process.pid, address)
            yield address
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


def run_demo(args: argparse.Namespace, work: Path) -> int:
    """The flow itself; returns the exit status."""
    timings: dict[str, float] = {}
    clock = time.monotonic()

    def lap(name: str) -> None:
        nonlocal clock
        timings[name] = round(time.monotonic() - clock, 1)
        clock = time.monotonic()

    data_dir, pki_dir, model, student_dir = (
        work / "data",
        work / "pki",
        work / "model",
        work / "student",
    )
    if args.data is not None:
        if not args.target or not args.sensitive:
            raise Fair4FreeError(ErrorCode.CONFIG_INVALID, "--data needs --target and --sensitive")
        source = ["csv", "--data", str(args.data), "--target", args.target,
                  "--sensitive", args.sensitive]  # fmt: skip
    else:
        source = ["cohort", "--rows", str(args.rows)]
    _owner("data", *source, "--out", str(data_dir), "--seed", str(args.seed))
    info = json.loads((data_dir / "dataset.json").read_text())
    target, sensitive = info["target"], info["sensitive"]
    _owner("pki", "init", "--dir", str(pki_dir))
    _owner("pki", "issue-client", "--dir", str(pki_dir), "--name", CLIENT_NAME)
    _owner("policy", "init", "--out", str(work / "policy.toml"), "--client", CLIENT_NAME,
           "--budget", str(args.pool_rows))  # fmt: skip
    lap("owner: data and PKI")
    _owner("train", "--data", str(data_dir / "train.csv"), "--target", target,
           "--sensitive", sensitive, "--out", str(model), "--epochs", str(args.epochs),
           "--seed", str(args.seed))  # fmt: skip
    lap("owner: train teacher")

    config = DistillConfig(
        latent_rows=args.pool_rows,
        decode_rows=args.pool_rows,
        decoder_steps=args.steps,
        seed=args.seed,
    )
    with _daemon(model, pki_dir, work) as address:
        lap("owner: start daemon")
        tls = TlsFiles.from_pki_dir(pki_dir, CLIENT_NAME)
        with OwnerClient(ClientConfig(server=address, tls=tls)) as client:
            distill(client, student_dir, config)
        lap("consumer: distill over mTLS")

    student = Student.load(student_dir)
    n_rows = int(info["train_rows"])
    synthetic_path = work / "synthetic.csv"
    write_table(student.sample(n_rows, seed=args.seed), synthetic_path, student.encoder.schema)
    lap("consumer: generate")

    positive = student.encoder.schema.positive_class
    reports = {
        name: evaluate_files(
            path, data_dir / "test.csv", target=target, sensitive=sensitive,
            positive_class=positive, seed=args.seed,
        )
        for name, path in (("real train", data_dir / "train.csv"), ("synthetic", synthetic_path))
    }  # fmt: skip
    lap("evaluate")

    print(f"\nScored on {data_dir / 'test.csv'} (a classifier trained on each table, tested on real"
          f" rows; fairness by the real {sensitive!r}):\n")  # fmt: skip
    print(format_report_table(reports))
    print("\nWall time: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    print(f"Total: {sum(timings.values()):.1f} s. Files in {work}")
    if args.json is not None:
        document = {
            "reports": {name: report.to_dict() for name, report in reports.items()},
            "timings_seconds": timings,
        }
        args.json.write_text(json.dumps(document, indent=2, sort_keys=True))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``fair4free``."""
    args = build_parser().parse_args(argv)
    configure_logging()

    def body() -> int:
        if args.workdir is not None:
            args.workdir.mkdir(parents=True, exist_ok=True)
            return run_demo(args, args.workdir)
        with tempfile.TemporaryDirectory(prefix="fair4free-demo-") as work:
            return run_demo(args, Path(work))

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())

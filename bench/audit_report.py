"""How long ``fair4free-owner audit report`` takes on a big log, in each format.

    python -m bench.audit_report [--records 100000]

Writes a synthetic log with the daemon's own writer (:class:`AuditLog`: fsync per record, a signed
checkpoint every 100 records, 64 MiB segments) into a temporary folder, by default on
``/dev/shm``: fsync there costs nothing, so setting up 100k records takes seconds, not minutes,
and the writer is exactly the daemon's (there is no fsync switch to leave on by mistake). A
synthetic clock spreads the records over 30 days, so the plots bucket as a real month would. Then,
for each format, it times what the command does: verify, fold, render and write, with the slowest
parts apart; and, in a separate untimed pass under ``tracemalloc``, the peak memory Python
allocates to verify and fold, which stays flat as the log grows (the fold is streaming).
Writes ``bench/results/audit_report.json``.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import itertools
import json
import random
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

from bench.provenance import provenance, timed
from fair4free.common.cli_support import configure_logging, run_cli
from fair4free.data_owner import audit_log, audit_record
from fair4free.data_owner.audit_keys import (
    generate_signing_key,
    load_public_key,
    load_signing_key,
)
from fair4free.data_owner.audit_log import AuditLog
from fair4free.data_owner.audit_record import AuditEvent, list_segments
from fair4free.data_owner.audit_report import build_report
from fair4free.data_owner.audit_report_render import FORMATS, write_report
from fair4free.data_owner.audit_verify import verify

RESULTS_DIR = Path(__file__).parent / "results"
SHM = Path("/dev/shm")
SPAN = datetime.timedelta(days=30)
METHODS = tuple(
    f"/fair4free.v1.OwnerService/{name}" for name in ("GetManifest", "SampleLatents", "Decode")
)
CONSUMERS = tuple(f"fair4free://consumer/site-{number:02d}" for number in range(12))
DENIALS = (
    ("RESOURCE_EXHAUSTED", "budget exhausted"),
    ("PERMISSION_DENIED", "method not granted"),
    ("RESOURCE_EXHAUSTED", "rate exceeded"),
)


@contextmanager
def synthetic_clock(start: datetime.datetime, step: datetime.timedelta) -> Iterator[None]:
    """Make the writer stamp records ``step`` apart from ``start`` instead of now."""
    ticks = itertools.count()

    def now() -> str:
        return (start + next(ticks) * step).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    with (
        mock.patch.object(audit_record, "utc_now", now),
        mock.patch.object(audit_log, "utc_now", now),
    ):
        yield


def _terminal(rng: random.Random, started: AuditEvent) -> dict[str, Any]:
    """The fields the terminal record adds: mostly answers, some refusals and failures."""
    draw = rng.random()
    if started.identity is None:
        return {"outcome": "denied", "grpc_status": "UNAUTHENTICATED", "reason": "no identity"}
    if draw < 0.10:
        status, reason = rng.choice(DENIALS)
        return {"outcome": "denied", "grpc_status": status, "reason": reason}
    if draw < 0.13:
        return {"outcome": "failed", "grpc_status": "INVALID_ARGUMENT", "reason": "bad tensor"}
    return {
        "outcome": "completed", "grpc_status": "OK", "rows_returned": started.rows_requested,
        "response_sha256": "b" * 64, "latency_ms": round(rng.uniform(1, 80), 3),
    }  # fmt: skip


def write_log(directory: Path, key_dir: Path, records: int, seed: int) -> float:
    """About ``records`` records (a started and a terminal one per call, plus checkpoints)."""
    rng = random.Random(seed)
    key = generate_signing_key(key_dir)
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    began = time.perf_counter()
    with (
        synthetic_clock(start, SPAN / records),
        AuditLog.open(directory, signing_key=load_signing_key(key.private_key)) as log,
    ):
        for number in range(records * 99 // 200):  # checkpoints are about 1 record in 100
            identity = rng.choice(CONSUMERS) if rng.random() > 0.02 else None
            method = rng.choice(METHODS)
            started = AuditEvent(
                server_id="bench", method=method, outcome="started", request_id=f"r{number}",
                identity=identity, cert_serial=None if identity is None else f"{len(identity):x}",
                peer="ipv4:10.0.0.7:50122", model_id="cohort", model_hash="a" * 64,
                rows_requested=0 if method.endswith("Manifest") else rng.choice((64, 256, 512)),
                request_sha256="c" * 64,
            )  # fmt: skip
            log.append(started)
            log.append(AuditEvent(**{**started.to_dict(), **_terminal(rng, started)}))
    return round(time.perf_counter() - began, 2)


def run(records: int, seed: int, tmp_dir: Path | None) -> dict[str, Any]:
    """The whole benchmark; returns the results document."""
    with tempfile.TemporaryDirectory(dir=tmp_dir, prefix="fair4free-audit-bench-") as scratch:
        root = Path(scratch)
        directory = root / "audit"
        write_seconds = write_log(directory, root / "key", records, seed)
        public_key = load_public_key(root / "key" / "audit-signing.pub")
        result, verify_seconds = timed(lambda: verify(directory, public_key=public_key))
        assert result.ok, result.problems
        size = sum(path.stat().st_size for _, path in list_segments(directory))
        rows = []
        for fmt in FORMATS:
            out = root / f"report.{fmt}"
            report, build = timed(lambda: build_report(directory, public_key=public_key))
            _, render = timed(functools.partial(write_report, report, out, fmt))
            rows.append(
                {
                    "format": fmt, "seconds": round(build + render, 2),
                    "verify_and_fold_seconds": build, "render_seconds": render,
                    "output_bytes": out.stat().st_size,
                }
            )  # fmt: skip
            print(f"{fmt}: {build + render:.2f} s", file=sys.stderr)
        peak = _traced_peak_mib(directory, public_key)
    return {
        "benchmark": "audit_report",
        "settings": {"records": records, "seed": seed, "span_days": SPAN.days,
                     "tmp_dir": str(tmp_dir) if tmp_dir else tempfile.gettempdir()},
        "log": {"records": result.records, "segments": result.segments, "bytes": size,
                "checkpoints": result.checkpoints, "write_seconds": write_seconds,
                "verify_only_seconds": verify_seconds,
                "calls": report.total("calls"), "identities": len(report.identities),
                "bucket_seconds": report.bucket_seconds,
                "verify_and_fold_peak_mib": peak},
        "rows": rows,
        "provenance": provenance(),
    }  # fmt: skip


def _traced_peak_mib(directory: Path, public_key: Any) -> float:
    """Peak memory Python allocates while verifying and folding the log (not timed: slower)."""
    tracemalloc.start()
    try:
        build_report(directory, public_key=public_key)
        return round(tracemalloc.get_traced_memory()[1] / 2**20, 1)
    finally:
        tracemalloc.stop()


def table(document: dict[str, Any]) -> str:
    """The results as a plain-text table."""
    log = document["log"]
    lines = [
        f"{log['records']:,} records ({log['bytes'] / 2**20:.1f} MiB, {log['calls']:,} calls by "
        f"{log['identities']} identities); verify alone {log['verify_only_seconds']:.2f} s; "
        f"verify+fold peak {log['verify_and_fold_peak_mib']:.1f} MiB allocated",
        f"{'format':<8}{'total s':>9}{'verify+fold s':>15}{'render s':>10}{'out KiB':>9}",
    ]
    for row in document["rows"]:
        lines.append(
            f"{row['format']:<8}{row['seconds']:>9.2f}{row['verify_and_fold_seconds']:>15.2f}"
            f"{row['render_seconds']:>10.2f}{row['output_bytes'] / 1024:>9.0f}"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """Command line of the benchmark."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.audit_report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--tmp-dir", type=Path, default=SHM if SHM.is_dir() else None,
        help="where the synthetic log is written (default /dev/shm where present)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print its table and write its results file."""
    args = build_parser().parse_args(argv)
    configure_logging()

    def body() -> int:
        document = run(args.records, args.seed, args.tmp_dir)
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / "audit_report.json"
        path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
        print(table(document))
        print(f"wrote {path}")
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())

"""``audit report`` on real logs: numbers checked against what was written, verdict first, no leaks.

The logs are written by the daemon's own writer (and one by a live daemon over mTLS); the expected
numbers come from the calls the test made, never from the code under test.
"""

from __future__ import annotations

import base64
import calendar
import csv
import datetime
import html
import json
import random
import re
import shutil
import subprocess
import sys
import textwrap
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_audit_daemon import TIMEOUT, _stub
from test_cli import assert_one_line_error, run

from conftest import CLIENT_NAME, UNLIMITED, write_policy
from fair4free.common.errors import ErrorCode, ExitCode, Fair4FreeError
from fair4free.common.tls import client_identity_uri
from fair4free.data_owner import audit_log, audit_record
from fair4free.data_owner.audit_keys import AuditKeyFiles, generate_signing_key, load_signing_key
from fair4free.data_owner.audit_log import AuditLog
from fair4free.data_owner.audit_record import AuditEvent, list_segments
from fair4free.data_owner.audit_report import HEADLINES, AuditReport, build_report
from fair4free.data_owner.audit_report_render import (
    CSV_COLUMNS,
    NEEDS_MATPLOTLIB,
    NO_FOLDER,
    NO_IDENTITY,
    REPORT_EXISTS,
    check_output,
    render_csv,
    render_html,
)
from fair4free.data_owner.audit_timeline import BUCKET_LADDER, MAX_BUCKETS, Timeline
from fair4free.data_owner.audit_verify import NO_DIRECTORY
from fair4free.data_owner.pki import PkiLayout, issue_client
from fair4free.data_owner.registry import load_teacher
from fair4free.data_owner.server import ServerConfig, build_server
from fair4free.v1 import fair4free_pb2 as pb

ACME = "fair4free://consumer/acme"
BETA = "fair4free://consumer/beta"
# What another organisation's certificate could name: HTML, a spreadsheet formula, mathtext, and
# a lone surrogate (valid in a JSON record, but not UTF-8).
HOSTILE = '=HYPERLINK("http://x")<script>alert("pwned")</script>$\\frac{_&amp;\ud800'
IDENTITIES = (ACME, BETA, HOSTILE, None)
SERIALS = {ACME: "a1", BETA: "b2", HOSTILE: "c3", None: None}
SAMPLE = "/fair4free.v1.OwnerService/SampleLatents"
DECODE = "/fair4free.v1.OwnerService/Decode"
MANIFEST = "/fair4free.v1.OwnerService/GetManifest"
LIMIT = 100_000

CRASH = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from fair4free.data_owner.audit_keys import load_signing_key
    from fair4free.data_owner.audit_log import AuditLog
    from fair4free.data_owner.audit_record import AuditEvent

    log = AuditLog.open(Path(sys.argv[1]), signing_key=load_signing_key(Path(sys.argv[2])))
    log.append(AuditEvent(server_id="owner-test", method=sys.argv[3], outcome="started",
                          request_id="lost", identity=sys.argv[4], rows_requested=7))
    os._exit(0)  # die mid-call: no terminal record, no closing checkpoint
    """
)


@dataclass(frozen=True)
class Call:
    """One call as the test made it: what the report must count."""

    identity: str | None
    method: str
    outcome: str
    status: str | None
    reason: str | None
    requested: int
    returned: int | None = None
    budget_used: int | None = None


def planned_calls() -> list[Call]:
    """A seeded mix of answers, refusals and failures by four callers over three methods."""
    rng = random.Random(5)
    used: Counter[tuple[str | None, str]] = Counter()
    calls = []
    for _ in range(240):
        identity, method = rng.choice(IDENTITIES), rng.choice((SAMPLE, DECODE, MANIFEST))
        rows = rng.randint(1, 500)
        draw = rng.random()
        if identity is None:
            calls.append(Call(identity, method, "denied", "UNAUTHENTICATED", "no identity", rows))
        elif draw < 0.15:
            reason = f"{method} budget of {identity} exhausted: {rows} rows needed"
            calls.append(Call(identity, method, "denied", "RESOURCE_EXHAUSTED", reason, rows))
        elif draw < 0.2:
            calls.append(Call(identity, method, "failed", "INVALID_ARGUMENT", "bad tensor", rows))
        else:
            used[(identity, method)] += rows
            budget = used[(identity, method)]
            calls.append(Call(identity, method, "completed", "OK", None, rows, rows, budget))
    return calls


class Clock:
    """Stands in for ``utc_now`` so that a test log spans days, not milliseconds."""

    def __init__(self, start: datetime.datetime, step: datetime.timedelta) -> None:
        self.now, self.step = start, step

    def __call__(self) -> str:
        self.now += self.step
        return self.now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Written:
    directory: Path
    crashed: Path  # a copy taken after the crash, before the restart recovered it
    keys: AuditKeyFiles
    calls: list[Call]  # including the one the crash failed
    kept: Path  # checkpoint tokens a consumer kept
    torn: bytes


def _write_calls(directory: Path, keys: AuditKeyFiles, calls: list[Call]) -> list[str]:
    tokens: list[str] = []
    key = load_signing_key(keys.private_key)
    with AuditLog.open(
        directory, signing_key=key, checkpoint_every=25, segment_bytes=40_000
    ) as log:
        for number, call in enumerate(calls):
            started = AuditEvent(
                server_id="owner-test", method=call.method, outcome="started",
                request_id=f"r{number}", identity=call.identity,
                cert_serial=SERIALS[call.identity], rows_requested=call.requested,
            )  # fmt: skip
            log.append(started)
            budget = {}
            if call.budget_used is not None:
                budget = {
                    "budget_used": call.budget_used,
                    "budget_remaining": LIMIT - call.budget_used,
                }
            log.append(
                AuditEvent(
                    **{**started.to_dict(), "outcome": call.outcome, "grpc_status": call.status,
                       "reason": call.reason, "rows_returned": call.returned, **budget}
                )
            )  # fmt: skip
            tokens.append(log.latest_checkpoint().to_compact())
    return sorted(set(tokens))


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Written:
    """A crash, a restart that recovers it, then 240 calls over days, in several segments."""
    root = tmp_path_factory.mktemp("report")
    keys = generate_signing_key(root / "audit-key")
    directory = root / "audit"
    command = [sys.executable, "-c", CRASH, str(directory), str(keys.private_key), DECODE, ACME]
    crashed = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert crashed.returncode == 0, crashed.stderr
    shutil.copytree(directory, root / "crashed")
    torn = b'{"event":{"identity":"acme","outc'  # a write the crash cut short
    with list_segments(directory)[-1][1].open("ab") as handle:
        handle.write(torn)
    calls = planned_calls()
    start = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)
    with pytest.MonkeyPatch.context() as patch:
        clock = Clock(start, datetime.timedelta(minutes=7))
        patch.setattr(audit_record, "utc_now", clock)
        patch.setattr(audit_log, "utc_now", clock)
        tokens = _write_calls(directory, keys, calls)
    kept = root / "kept.txt"
    kept.write_text("\n".join(tokens) + "\n")
    lost = Call(ACME, DECODE, "failed", None, "crash", 7)
    return Written(directory, root / "crashed", keys, [lost, *calls], kept, torn)


def _records(directory: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for _, path in list_segments(directory)
        for line in path.read_bytes().splitlines()
    ]


def _epoch(ts: str) -> int:
    return calendar.timegm(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S"))


def _expected(calls: list[Call]) -> dict[tuple[str | None, str], dict[str, Any]]:
    """Per identity and method, what the calls add up to."""
    expected: dict[tuple[str | None, str], dict[str, Any]] = {}
    for call in calls:
        row = expected.setdefault(
            (call.identity, call.method),
            {"calls": 0, "completed": 0, "denied": 0, "failed": 0, "rows_requested": 0,
             "rows_returned": 0, "budget_used": None, "budget_remaining": None,
             "causes": Counter()},
        )  # fmt: skip
        row["calls"] += 1
        row[call.outcome] += 1
        row["rows_requested"] += call.requested
        row["rows_returned"] += call.returned or 0
        if call.budget_used is not None:
            row["budget_used"], row["budget_remaining"] = call.budget_used, LIMIT - call.budget_used
        if call.outcome != "completed":
            row["causes"][(call.outcome, call.status or call.reason)] += 1
    return expected


def _observed(report: AuditReport) -> dict[tuple[str | None, str], dict[str, Any]]:
    return {
        (m.identity, m.method): {
            "calls": m.calls,
            "completed": m.completed,
            "denied": m.denied,
            "failed": m.failed,
            "rows_requested": m.rows_requested,
            "rows_returned": m.rows_returned,
            "budget_used": m.budget_used,
            "budget_remaining": m.budget_remaining,
            "causes": Counter({(c.outcome, c.cause): c.count for c in m.causes}),
        }  # fmt: skip
        for identity in report.identities
        for m in identity.methods
    }


def test_the_report_counts_what_was_written(written: Written) -> None:
    report = build_report(
        written.directory, public_key=load_signing_key(written.keys.private_key).public_key()
    )
    assert report.verification.status == "verified", report.verification.problems
    assert report.verification.segments > 1
    assert _observed(report) == _expected(written.calls)
    assert all(m.unfinished == 0 for i in report.identities for m in i.methods)
    serials = {identity.identity: identity.cert_serials for identity in report.identities}
    assert serials == {i: () if s is None else (s,) for i, s in SERIALS.items()}
    records = _records(written.directory)
    assert (report.first_ts, report.last_ts) == (records[0]["ts"], records[-1]["ts"])
    assert report.records == len(records) and report.skipped == 0


def test_a_crash_shows_as_a_gap_and_its_open_call_as_unfinished_until_recovered(
    written: Written,
) -> None:
    before = _records(written.crashed)
    crashed = build_report(written.crashed, public_key=None)
    assert crashed.verification.status == "unsigned"
    assert [(m.method, m.unfinished, m.calls) for m in crashed.identities[0].methods] == [
        (DECODE, 1, 0)
    ]
    recovered = build_report(written.directory, public_key=None)
    (gap,) = recovered.recoveries
    assert gap.seq == len(before) and gap.previous_ts == before[-1]["ts"]
    assert (gap.truncated_bytes, gap.open_requests) == (len(written.torn), 1)


def test_the_timeline_adds_up_per_bucket_at_the_finest_width_that_fits(written: Written) -> None:
    report = build_report(written.directory, public_key=None)
    width = report.bucket_seconds
    terminal = [
        record["event"] | {"epoch": _epoch(record["ts"])}
        for record in _records(written.directory)
        if record["kind"] == "event" and record["event"]["outcome"] != "started"
    ]
    calls: Counter[tuple[int, str | None]] = Counter()
    rows: Counter[tuple[int, str | None]] = Counter()
    for event in terminal:
        key = (event["epoch"] - event["epoch"] % width, event.get("identity"))
        calls[key] += 1
        rows[key] += event.get("rows_returned", 0)
    assert {(b.start, b.identity): b.calls for b in report.timeline} == calls
    assert {(b.start, b.identity): b.rows_returned for b in report.timeline if b.rows_returned} == {
        key: value for key, value in rows.items() if value
    }
    low, high = min(e["epoch"] for e in terminal), max(e["epoch"] for e in terminal)
    assert high // width - low // width < MAX_BUCKETS
    finer = BUCKET_LADDER[BUCKET_LADDER.index(width) - 1]
    assert width > 1 and high // finer - low // finer >= MAX_BUCKETS


@given(st.lists(st.integers(min_value=0, max_value=4 * 10**8), min_size=1, max_size=300))
def test_coarsening_as_it_goes_equals_counting_at_the_final_width(epochs: list[int]) -> None:
    timeline = Timeline()
    for epoch in epochs:
        timeline.add(epoch, None, requested=1, returned=0, outcome="completed")
    width = timeline.width
    direct = Counter(epoch - epoch % width for epoch in epochs)
    assert {bucket.start: bucket.calls for bucket in timeline.buckets()} == direct
    assert (max(direct) - min(direct)) // width < MAX_BUCKETS


def _report(written: Written, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run("owner", "audit", "report", "--dir", str(written.directory), "--out", str(out),
               *extra)  # fmt: skip


def test_cli_json_states_the_verdict_first_and_the_numbers_written(
    written: Written, tmp_path: Path
) -> None:
    out = tmp_path / "report.json"
    result = _report(written, out, "--pubkey", str(written.keys.public_key),
                     "--checkpoints", str(written.kept))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert HEADLINES["verified"] in result.stdout
    document = json.loads(out.read_text())
    assert next(iter(document)) == "verification"
    verification = document["verification"]
    assert (verification["status"], verification["ok"], verification["problems"]) == (
        "verified", True, []
    )  # fmt: skip
    assert verification["consumer_checkpoints"] == len(written.kept.read_text().split())
    methods = {
        (m["identity"], m["method"]): m for i in document["identities"] for m in i["methods"]
    }
    for key, row in _expected(written.calls).items():
        got = methods[key]
        causes = Counter({(c["outcome"], c["cause"]): c["count"] for c in got["causes"]})
        assert causes == row["causes"]
        assert {name: got[name] for name in row if name != "causes"} == {
            name: value for name, value in row.items() if name != "causes"
        }
    assert sum(b["calls"] for b in document["timeline"]["buckets"]) == len(written.calls)
    assert out.stat().st_mode & 0o777 == 0o600


def test_csv_has_the_verdict_as_comments_then_one_row_per_identity_and_method(
    written: Written,
) -> None:
    text = render_csv(build_report(written.directory, public_key=None))
    lines = text.splitlines(keepends=True)
    header = next(index for index, line in enumerate(lines) if not line.startswith("#"))
    assert lines[1] == f"# verification: unsigned: {HEADLINES['unsigned']}\n"
    assert any(line.startswith("# crash gap: ") for line in lines[:header])
    rows = list(csv.DictReader(lines[header:]))
    assert tuple(rows[0]) == CSV_COLUMNS
    expected = _expected(written.calls)
    assert len(rows) == len(expected)
    names = {None: NO_IDENTITY, HOSTILE: "'" + HOSTILE}  # a formula is defused, not run
    for (identity, method), row in expected.items():
        (got,) = [
            r
            for r in rows
            if (r["identity"], r["method"]) == (names.get(identity, identity), method)
        ]
        assert [int(got[name]) for name in ("calls", "denied", "failed", "rows_returned")] == [
            row["calls"], row["denied"], row["failed"], row["rows_returned"]
        ]  # fmt: skip
        assert got["budget_used"] == ("" if row["budget_used"] is None else str(row["budget_used"]))


def test_html_is_one_escaped_page_with_the_verdict_on_top_and_embedded_plots(
    written: Written,
) -> None:
    page = render_html(build_report(written.directory, public_key=None))
    assert page.index('class="banner unsigned"') < page.index("<table")
    assert "<script" not in page and HOSTILE not in page
    assert html.escape(HOSTILE) in page
    assert "Content-Security-Policy" in page  # no script runs even if an escape were missed
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 2
    assert all(base64.b64decode(image).startswith(b"\x89PNG\r\n\x1a\n") for image in images)


def test_a_tampered_log_still_renders_but_says_so_first_and_exits_non_zero(
    written: Written, tmp_path: Path
) -> None:
    copy = tmp_path / "audit"
    shutil.copytree(written.directory, copy)
    segment = list_segments(copy)[0][1]
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0x01
    segment.write_bytes(bytes(data))
    out = tmp_path / "report.html"
    result = run("owner", "audit", "report", "--dir", str(copy), "--out", str(out),
                 "--pubkey", str(written.keys.public_key))  # fmt: skip
    assert result.returncode == ExitCode.INCOMPATIBLE_ARTIFACT, result.stderr
    assert (
        HEADLINES["failed"] in result.stdout and "problem: audit-000001.jsonl line" in result.stdout
    )
    page = out.read_text()
    banner = page[page.index('<div class="banner failed"') : page.index("</div>")]
    assert html.escape(HEADLINES["failed"]) in banner and "audit-000001.jsonl line" in banner


def test_an_existing_report_is_never_overwritten(written: Written, tmp_path: Path) -> None:
    out = tmp_path / "report.csv"
    out.write_text("the reviewer's annotated copy\n")
    result = _report(written, out)
    assert_one_line_error(result, ExitCode.BAD_INPUT, REPORT_EXISTS)
    assert out.read_text() == "the reviewer's annotated copy\n"


def test_a_report_into_a_missing_folder_is_refused_before_any_work(tmp_path: Path) -> None:
    out = tmp_path / "nowhere" / "report.json"
    message = re.escape(NO_FOLDER.format(out=out, folder=out.parent))
    with pytest.raises(Fair4FreeError, match=message) as caught:
        check_output(out, "json")
    assert caught.value.code is ErrorCode.OUTPUT_UNWRITABLE


def test_a_missing_directory_is_one_clear_error(tmp_path: Path) -> None:
    missing, out = tmp_path / "nowhere", tmp_path / "report.json"
    result = run("owner", "audit", "report", "--dir", str(missing), "--out", str(out))
    assert_one_line_error(result, ExitCode.BAD_INPUT, NO_DIRECTORY.format(directory=missing))
    assert not out.exists()


WITHOUT_MATPLOTLIB = textwrap.dedent(
    """
    import sys
    sys.modules["matplotlib"] = None  # as if the report extra were not installed
    from fair4free.data_owner.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def test_html_without_matplotlib_says_what_to_install_and_json_needs_none(
    written: Written, tmp_path: Path
) -> None:
    def report(out: Path) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-c", WITHOUT_MATPLOTLIB, "audit", "report",
                   "--dir", str(written.directory), "--out", str(out)]  # fmt: skip
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    html_out, json_out = tmp_path / "report.html", tmp_path / "report.json"
    assert_one_line_error(report(html_out), ExitCode.USAGE, NEEDS_MATPLOTLIB)
    assert not html_out.exists()
    assert report(json_out).returncode == 0
    assert json.loads(json_out.read_text())["verification"]["status"] == "unsigned"


def test_a_live_daemons_log_reports_the_calls_the_client_made(
    tmp_path: Path, teacher_dir: Path, pki_dir: PkiLayout
) -> None:
    state = tmp_path / "state"
    issue_client(pki_dir.root, "report-outsider")
    config = ServerConfig(
        policy=write_policy(tmp_path / "policy.toml", UNLIMITED), state_dir=state,
        crl=pki_dir.crl, listen="127.0.0.1:0", seed=0,
    )  # fmt: skip
    daemon = build_server(load_teacher(teacher_dir), tls=pki_dir.server_files(), config=config)
    address = f"127.0.0.1:{daemon.port}"
    try:
        stub = _stub(address, pki_dir, CLIENT_NAME)
        stub.GetManifest(pb.GetManifestRequest(request_id="m1"), timeout=TIMEOUT)
        received = 0
        for request_id, rows in (("s1", 64), ("s2", 10)):
            request = pb.SampleLatentsRequest(request_id=request_id, rows=rows)
            received += sum(
                b.latents.shape[0] for b in stub.SampleLatents(request, timeout=TIMEOUT)
            )
        with pytest.raises(grpc.RpcError) as denied:
            _stub(address, pki_dir, "report-outsider").GetManifest(
                pb.GetManifestRequest(request_id="o1"), timeout=TIMEOUT
            )
        assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
    finally:
        daemon.stop(0)
    out = tmp_path / "report.json"
    result = run("owner", "audit", "report", "--dir", str(state / "audit"), "--out", str(out),
                 "--pubkey", str(state / "audit-key" / "audit-signing.pub"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    document = json.loads(out.read_text())
    assert document["verification"]["status"] == "verified"
    methods = {
        (m["identity"], m["method"]): m for i in document["identities"] for m in i["methods"]
    }
    client = client_identity_uri(CLIENT_NAME)
    assert methods[(client, MANIFEST)]["completed"] == 1
    sampled = methods[(client, SAMPLE)]
    assert (sampled["calls"], sampled["rows_requested"], sampled["rows_returned"]) == (
        2, 74, received
    )  # fmt: skip
    refused = methods[(client_identity_uri("report-outsider"), MANIFEST)]
    assert refused["denied"] == 1
    assert [(c["cause"], c["count"]) for c in refused["causes"]] == [("PERMISSION_DENIED", 1)]


@pytest.mark.slow
def test_the_benchmark_times_every_format(tmp_path: Path) -> None:
    results = tmp_path / "results"
    command = [sys.executable, "-m", "bench.audit_report", "--records", "2000",
               "--tmp-dir", str(tmp_path), "--out", str(results)]  # fmt: skip
    root = Path(__file__).parent.parent
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=root)
    assert result.returncode == 0, result.stderr
    document = json.loads((results / "audit_report.json").read_text())
    assert [row["format"] for row in document["rows"]] == ["html", "json", "csv"]
    assert document["log"]["calls"] == 2000 * 99 // 200
    assert list(tmp_path.iterdir()) == [results]  # the synthetic log is gone

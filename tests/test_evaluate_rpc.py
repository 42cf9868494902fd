"""The owner-side Evaluate RPC over a real socket with real mTLS: scores, charges, refusals, audit.

A teacher trained with a recorded hold-out serves Evaluate from the table it was trained on. A
consumer streams synthetic rows and gets rounded aggregates only; the call is charged once,
replayed from the ledger, audited, and every malformed stream is refused with its exact status.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pandas as pd
import pytest
from test_audit_daemon import _events

from conftest import CLIENT_NAME, Cohort, write_policy
from fair4free.common.codec import (
    CHUNK_REQUEST_ID_CHANGED,
    EVALUATION_SECTIONS,
    REPORT_INVALID,
    STREAM_TOO_LONG,
    STREAM_TOO_SHORT,
    TOO_FEW_ROWS,
    EvaluationAnswer,
    evaluate_chunks,
    evaluate_rows_from_chunks,
    evaluation_from_proto,
    evaluation_to_proto,
    tensor_to_proto,
)
from fair4free.common.errors import ErrorCode, Fair4FreeError
from fair4free.common.table_io import write_table
from fair4free.common.tls import channel_credentials, client_identity_uri
from fair4free.consumer import cli as consumer_cli
from fair4free.consumer.client import ClientConfig, OwnerClient
from fair4free.data_owner import datasets, queries
from fair4free.data_owner.audit_keys import PUBLIC_KEY_FILE, load_public_key
from fair4free.data_owner.audit_verify import verify
from fair4free.data_owner.deadline import UPLOAD_STOPPED
from fair4free.data_owner.holdout import draw_split, load_split
from fair4free.data_owner.owner_evaluation import SIGNIFICANT_DIGITS, EvaluationSettings
from fair4free.data_owner.pki import PkiLayout
from fair4free.data_owner.policy import (
    DEFAULT_EVALUATE_BUDGET,
    Policy,
    render_policy,
    starting_budgets,
)
from fair4free.data_owner.registry import Teacher, load_teacher
from fair4free.data_owner.server import AUDIT_DIR, AUDIT_KEY_DIR, ServerConfig, build_server
from fair4free.data_owner.servicer import EVALUATION_NOT_SERVED
from fair4free.data_owner.train_pipeline import train_to_directory
from fair4free.data_owner.training import TrainingConfig
from fair4free.v1 import fair4free_pb2 as pb
from fair4free.v1 import fair4free_pb2_grpc as pb_grpc

TIMEOUT = 120
MAX_ROWS = 512
MIN_ROWS = 200
ROWS = 400
BUDGETS = {"SampleLatents": 10**6, "Decode": 10**6, "Evaluate": 10**6}


@dataclasses.dataclass(frozen=True)
class Served:
    address: str
    state: Path
    teacher: Teacher
    data: Path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, cohort: Cohort) -> tuple[Path, Path]:
    """A small cohort teacher trained as ``train --holdout-fraction 0.2`` would: (model, CSV)."""
    root = tmp_path_factory.mktemp("evaluate")
    data = root / "cohort.csv"
    write_table(pd.concat([cohort.train, cohort.test], ignore_index=True), data, cohort.schema)
    table = datasets.load_csv_dataset(data, target="readmitted", sensitive="sex")
    train, _, split = draw_split(
        table.frame, data_path=data, target="readmitted", sensitive="sex", fraction=0.2, seed=0
    )
    model = root / "teacher"
    train_to_directory(
        train, table.schema(), out=model, dataset_name="cohort", latent_dim=4, hidden=32,
        training=TrainingConfig(epochs=4, batch_size=128, seed=0), split=split,
    )  # fmt: skip
    return model, data


def _serve(
    state: Path,
    model: Path,
    pki_dir: PkiLayout,
    *,
    data: Path | None,
    budgets: dict[str, int],
    max_call_seconds: float = 30.0,
) -> Iterator[Served]:
    state.mkdir(parents=True, exist_ok=True)
    config = ServerConfig(
        policy=write_policy(state / "policy.toml", budgets), state_dir=state, crl=pki_dir.crl,
        listen="127.0.0.1:0", max_rows_per_call=MAX_ROWS, seed=0, evaluation_data=data,
        evaluation=EvaluationSettings(min_rows=MIN_ROWS), max_call_seconds=max_call_seconds,
    )  # fmt: skip
    teacher = load_teacher(model)
    daemon = build_server(teacher, tls=pki_dir.server_files(), config=config)
    try:
        yield Served(f"127.0.0.1:{daemon.port}", state, teacher, data or Path())
    finally:
        daemon.stop(0)


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, trained: tuple[Path, Path], pki_dir: PkiLayout
) -> Iterator[Served]:
    model, data = trained
    state = tmp_path_factory.mktemp("evaluate-daemon")
    yield from _serve(state, model, pki_dir, data=data, budgets=BUDGETS)


@contextmanager
def _stub(address: str, pki_dir: PkiLayout) -> Iterator[pb_grpc.OwnerServiceStub]:
    files = pki_dir.client_files(CLIENT_NAME)
    credentials = channel_credentials(ca=files.ca, cert=files.cert, key=files.key)
    with grpc.secure_channel(address, credentials) as channel:
        yield pb_grpc.OwnerServiceStub(channel)


@pytest.fixture(scope="module")
def stub(served: Served, pki_dir: PkiLayout) -> Iterator[pb_grpc.OwnerServiceStub]:
    with _stub(served.address, pki_dir) as owner:
        yield owner


def _remaining(stub: pb_grpc.OwnerServiceStub, method: str = "Evaluate") -> int:
    manifest = stub.GetManifest(pb.GetManifestRequest(request_id="m"), timeout=TIMEOUT)
    return next(b.remaining for b in manifest.budgets if b.method == method)


def _generated(teacher: Teacher, rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows as a consumer generates them: decoded teacher samples, categories drawn, encoded."""
    rng = np.random.default_rng(seed)
    latents = queries.sample_latents(teacher, rows, rng)
    sensitive = rng.integers(0, 2, rows).astype(np.int64)
    frame = teacher.encoder.decode(queries.decode(teacher, latents, sensitive), sensitive, rng=rng)
    return teacher.encoder.encode(frame)


@dataclasses.dataclass(frozen=True)
class Scored:
    response: pb.EvaluateResponse
    chunks: list[pb.EvaluateChunk]
    charged: int


@pytest.fixture(scope="module")
def decoded(served: Served, stub: pb_grpc.OwnerServiceStub) -> Scored:
    """One Evaluate of generated rows, in chunks of 150 rows, with the budget it took."""
    rows, sensitive = _generated(served.teacher, ROWS, seed=1)
    chunks = list(evaluate_chunks(rows, sensitive, request_id="generated-1", chunk_rows=150))
    before = _remaining(stub)
    response = stub.Evaluate(iter(chunks), timeout=TIMEOUT)
    return Scored(response, chunks, before - _remaining(stub))


def _leaves(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _leaves(inner, f"{path}.{key}")
    else:
        yield path, value


def test_manifest_says_whether_evaluate_is_served(
    stub: pb_grpc.OwnerServiceStub, client: OwnerClient
) -> None:
    assert stub.GetManifest(
        pb.GetManifestRequest(request_id="m"), timeout=TIMEOUT
    ).evaluation_available
    assert not client.manifest().evaluation_available  # the shared daemon has no evaluation data


def test_generated_rows_get_every_section_of_rounded_aggregates(decoded: Scored) -> None:
    answer = evaluation_from_proto(decoded.response)
    assert (answer.rows_scored, answer.holdout_rows) == (ROWS, 300)
    report = answer.report
    assert set(report) == set(EVALUATION_SECTIONS)
    assert set(report["fairness"]) == {"dpr", "eor", "ftu"}
    assert set(report["utility"]) == {"accuracy", "f1", "recall", "auroc"}
    assert set(report["quality"]) >= {"density", "coverage", "authenticity"}
    assert set(report["privacy"]["groups"]) == {"F", "M"}
    assert 0.5 <= report["utility"]["accuracy"] <= 1 and 0.3 <= report["utility"]["auroc"] <= 1
    overall = report["privacy"]["overall"]
    assert 0 <= overall["mia_auc"] <= 1 and overall["dcr_ratio"] > 0.5
    assert overall["n_synthetic"] == ROWS
    for path, value in _leaves(report):
        # Aggregates only: numbers, nulls and names; no list could hold a row or an index.
        assert value is None or isinstance(value, int | float | str), path
        if isinstance(value, float):
            assert math.isfinite(value) and value == float(f"{value:.{SIGNIFICANT_DIGITS}g}"), path
        if path.endswith(("fairness.dpr", "utility.f1", "quality.coverage", "_share")):
            assert value is None or 0 <= value <= 1, path
    assert not any("n_holdout" in path or "n_members" in path for path, _ in _leaves(report))
    assert len(decoded.response.report_json) < 4000


def test_evaluate_is_charged_its_rows_once_and_a_retry_gets_the_same_bytes(
    decoded: Scored, stub: pb_grpc.OwnerServiceStub
) -> None:
    assert decoded.charged == ROWS
    before = _remaining(stub)
    again = stub.Evaluate(iter(decoded.chunks), timeout=TIMEOUT)
    assert again.SerializeToString() == decoded.response.SerializeToString()
    assert _remaining(stub) == before
    changed = [pb.EvaluateChunk(), *decoded.chunks[1:]]
    changed[0].CopyFrom(decoded.chunks[0])
    changed[0].rows.data = bytes(len(changed[0].rows.data))  # same id, other rows
    with pytest.raises(grpc.RpcError) as caught:
        stub.Evaluate(iter(changed), timeout=TIMEOUT)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert (caught.value.details() or "").startswith(
        "request id generated-1 reused for a different request"
    )


def test_copies_of_training_rows_score_worse_privacy_than_generated_rows(
    served: Served, decoded: Scored, pki_dir: PkiLayout
) -> None:
    train, _ = load_split(served.teacher.metadata, served.data)
    rows, sensitive = served.teacher.encoder.encode(train.iloc[:ROWS])
    config = ClientConfig(
        server=served.address, tls=pki_dir.client_files(CLIENT_NAME), timeout_seconds=TIMEOUT
    )
    with OwnerClient(config) as client:
        copies = client.evaluate(rows, sensitive, chunk_rows=128).report["privacy"]["overall"]
        assert client.audit_checkpoints  # the answer carried the owner's signed checkpoint
    generated = evaluation_from_proto(decoded.response).report["privacy"]["overall"]
    assert copies["dcr_ratio"] < 0.1 < generated["dcr_ratio"]
    assert copies["closer_to_train_share"] > generated["closer_to_train_share"]
    assert copies["exact_copy_share"] > generated["exact_copy_share"]


def _chunk(
    rows: np.ndarray, sensitive: np.ndarray, *, total: int, request_id: str = "bad"
) -> pb.EvaluateChunk:
    return pb.EvaluateChunk(
        request_id=request_id,
        total_rows=total,
        rows=tensor_to_proto(rows),
        sensitive=tensor_to_proto(sensitive),
    )


def _stream(case: str, width: int) -> list[pb.EvaluateChunk]:
    rows = np.zeros((250, width), np.float32)
    s = np.zeros(250, np.int64)
    streams = {
        "short": [_chunk(rows, s, total=300)],
        "long": [_chunk(rows, s, total=200)],
        "too-few": [_chunk(rows[:150], s[:150], total=150)],
        "over-cap": [_chunk(rows, s, total=MAX_ROWS + 1)],
        "nan": [_chunk(np.full((250, width), np.nan, np.float32), s, total=250)],
        "width": [_chunk(np.zeros((250, width + 1), np.float32), s, total=250)],
        "group": [_chunk(rows, np.full(250, 2, np.int64), total=250)],
        "id": [_chunk(rows[:200], s[:200], total=250),
               _chunk(rows[200:], s[200:], total=0, request_id="other")],
        "empty": [],
    }  # fmt: skip
    return streams[case]


@pytest.mark.parametrize(
    ("case", "detail"),
    [
        ("short", STREAM_TOO_SHORT.format(got=250, total=300)),
        ("long", STREAM_TOO_LONG.format(total=200)),
        ("too-few", TOO_FEW_ROWS.format(rows=150, least=MIN_ROWS)),
        ("over-cap", f"total_rows: {MAX_ROWS + 1} rows exceed the cap of {MAX_ROWS}"),
        ("nan", "chunk 0 rows: contains NaN or infinite values"),
        ("width", "chunk 0 rows: dimension 1 is {wide}, expected {width}"),
        ("group", "chunk 0 sensitive: indices must lie in [0, 2)"),
        ("id", CHUNK_REQUEST_ID_CHANGED.format(index=1, got="other")),
        ("empty", "request_id must be 1 to 128 characters, got 0"),
    ],
)
def test_malformed_streams_get_invalid_argument_and_are_not_charged(
    served: Served, stub: pb_grpc.OwnerServiceStub, case: str, detail: str
) -> None:
    width = served.teacher.encoder.width
    before = _remaining(stub)
    with pytest.raises(grpc.RpcError) as caught:
        stub.Evaluate(iter(_stream(case, width)), timeout=TIMEOUT)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    expected = detail.format(wide=width + 1, width=width)
    assert (caught.value.details() or "").startswith(expected + ";")
    assert _remaining(stub) == before


def test_a_daemon_without_evaluation_data_refuses_evaluate(
    tmp_path: Path, trained: tuple[Path, Path], pki_dir: PkiLayout
) -> None:
    for served in _serve(tmp_path, trained[0], pki_dir, data=None, budgets=BUDGETS):
        config = ClientConfig(server=served.address, tls=pki_dir.client_files(CLIENT_NAME))
        rows, sensitive = _generated(served.teacher, MIN_ROWS, seed=2)
        with OwnerClient(config) as client:
            assert not client.manifest().evaluation_available
            with pytest.raises(Fair4FreeError) as refused:
                client.evaluate(rows, sensitive)
        assert refused.value.code is ErrorCode.EVALUATION_UNAVAILABLE
        chunks = evaluate_chunks(rows, sensitive, request_id="e1", chunk_rows=MIN_ROWS)
        with _stub(served.address, pki_dir) as stub, pytest.raises(grpc.RpcError) as caught:
            stub.Evaluate(chunks, timeout=TIMEOUT)
        assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert (caught.value.details() or "").startswith(EVALUATION_NOT_SERVED + ";")
        with _stub(served.address, pki_dir) as stub:
            assert _remaining(stub) == BUDGETS["Evaluate"]


def test_evaluate_is_refused_where_the_policy_does_not_grant_it(
    server_address: str, pki_dir: PkiLayout, teacher_dir: Path
) -> None:
    rows = np.zeros((MIN_ROWS, load_teacher(teacher_dir).encoder.width), np.float32)
    chunks = evaluate_chunks(rows, np.zeros(MIN_ROWS, np.int64), request_id="p1", chunk_rows=64)
    with _stub(server_address, pki_dir) as stub, pytest.raises(grpc.RpcError) as caught:
        stub.Evaluate(chunks, timeout=TIMEOUT)
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
    identity = client_identity_uri(CLIENT_NAME)
    assert (caught.value.details() or "").startswith(f"{identity} may not call Evaluate;")


def test_the_audit_log_records_evaluate_calls_and_verifies(
    served: Served, decoded: Scored, stub: pb_grpc.OwnerServiceStub
) -> None:
    with pytest.raises(grpc.RpcError):  # a failed call is recorded too
        stub.Evaluate(iter(_stream("nan", served.teacher.encoder.width)), timeout=TIMEOUT)
    records = _events(served.state)
    method = "/fair4free.v1.OwnerService/Evaluate"
    mine = [r for r in records if r["method"] == method and r.get("request_id") == "generated-1"]
    started, completed = mine[0], mine[1]
    assert started["outcome"] == "started" and started["rows_requested"] == ROWS
    assert started["request_sha256"] and completed["outcome"] == "completed"
    assert completed["budget_used"] == ROWS and completed["response_sha256"]
    failed = [r for r in records if r["method"] == method and r["outcome"] == "failed"]
    assert any(r["grpc_status"] == "INVALID_ARGUMENT" and "budget_used" not in r for r in failed)
    key = load_public_key(served.state / AUDIT_KEY_DIR / PUBLIC_KEY_FILE)
    result = verify(served.state / AUDIT_DIR, public_key=key, consumer_checkpoints=[])
    assert result.ok, result.problems


def _terminal_event(state: Path, method: str) -> dict[str, object]:
    """The audit's last event for ``method`` once the call has ended (waits up to TIMEOUT)."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        mine = [e for e in _events(state) if e["method"] == method]
        if mine and mine[-1]["outcome"] != "started":
            return mine[-1]
        assert time.monotonic() < deadline, f"no terminal audit event for {method}: {mine}"
        time.sleep(0.02)


@pytest.mark.parametrize("sent", [0, 1])
def test_a_stalled_upload_is_cut_off_at_the_daemons_limit_and_not_charged(
    tmp_path: Path, trained: tuple[Path, Path], pki_dir: PkiLayout, sent: int
) -> None:
    model, data = trained
    release = threading.Event()
    width = load_teacher(model).encoder.width
    first = _chunk(np.zeros((MIN_ROWS, width), np.float32), np.zeros(MIN_ROWS, np.int64),
                   total=MIN_ROWS + 1, request_id="stalled")  # fmt: skip

    def stalled() -> Iterator[pb.EvaluateChunk]:
        yield from [first][:sent]
        release.wait(TIMEOUT)  # never sends the last row (or anything), never half-closes

    method = "/fair4free.v1.OwnerService/Evaluate"
    for served in _serve(tmp_path, model, pki_dir, data=data, budgets=BUDGETS,
                         max_call_seconds=1.0):  # fmt: skip
        with _stub(served.address, pki_dir) as stub:
            began = time.monotonic()
            with pytest.raises(grpc.RpcError) as caught:
                stub.Evaluate(stalled(), timeout=TIMEOUT)
            release.set()
            assert caught.value.code() is grpc.StatusCode.CANCELLED
            assert time.monotonic() - began < TIMEOUT / 4
            # The client hears CANCELLED as the daemon cuts the call off; the handler unwinds
            # just after (the refund, then the audit's terminal event, written outside metering).
            terminal = _terminal_event(served.state, method)
            assert _remaining(stub) == BUDGETS["Evaluate"]
        assert terminal["outcome"] == "failed" and terminal["grpc_status"] == "DEADLINE_EXCEEDED"
        assert terminal["reason"] == UPLOAD_STOPPED.format(method="Evaluate", limit=1.0)
        assert terminal.get("request_id") == ("stalled" if sent else None)


def test_a_table_other_than_the_training_table_stops_the_daemon_from_starting(
    tmp_path: Path, trained: tuple[Path, Path], pki_dir: PkiLayout, teacher_dir: Path
) -> None:
    model, data = trained
    other = tmp_path / "other.csv"
    other.write_bytes(data.read_bytes() + b"\n")
    with pytest.raises(Fair4FreeError) as mismatch:
        list(_serve(tmp_path / "a", model, pki_dir, data=other, budgets=BUDGETS))
    assert mismatch.value.code is ErrorCode.SCHEMA_MISMATCH
    assert "is not the table model" in mismatch.value.detail
    with pytest.raises(Fair4FreeError) as no_holdout:  # the shared teacher kept no hold-out
        list(_serve(tmp_path / "b", teacher_dir, pki_dir, data=data, budgets=BUDGETS))
    assert no_holdout.value.code is ErrorCode.CONFIG_INVALID
    assert "has no hold-out" in no_holdout.value.detail


def test_evaluate_remote_prints_the_report_and_writes_a_new_json_file(
    served: Served, pki_dir: PkiLayout, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows, sensitive = _generated(served.teacher, MAX_ROWS + 88, seed=3)
    data = tmp_path / "synthetic.csv"
    write_table(served.teacher.encoder.decode(rows, sensitive), data, served.teacher.encoder.schema)
    out = tmp_path / "scores.json"
    argv = ["evaluate-remote", "--server", served.address, "--pki", str(pki_dir.root),
            "--name", CLIENT_NAME, "--data", str(data), "--json", str(out),
            "--timeout", str(TIMEOUT)]  # fmt: skip
    assert consumer_cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "DPR" in printed and "MIA-AUC" in printed and "sex=F" in printed
    assert f"a random sample of {MAX_ROWS} of {MAX_ROWS + 88} rows" in printed
    written = json.loads(out.read_text())
    assert written["rows_scored"] == MAX_ROWS and written["holdout_rows"] == 300
    assert set(written["report"]) == set(EVALUATION_SECTIONS)
    assert consumer_cli.main(argv) == 3  # an existing --json is never replaced, nothing is sent
    assert f"'{out}' exists" in capsys.readouterr().err


def test_policy_init_grants_evaluate_with_its_own_default_budget() -> None:
    identity = client_identity_uri(CLIENT_NAME)
    text = render_policy({identity: starting_budgets(10**6)}, rate_per_minute=60)
    policy = Policy.parse(text.encode())
    client = policy.clients[identity]
    assert "Evaluate" in client.methods and client.budget("Evaluate") == DEFAULT_EVALUATE_BUDGET
    assert client.budget("Decode") == 10**6
    without = Policy.parse(render_policy({identity: {"Decode": 5}}, rate_per_minute=60).encode())
    assert without.clients[identity].methods == {"GetManifest", "Decode"}


@pytest.mark.parametrize("chunk_rows", [1, 7, 64, 1000])
def test_evaluate_chunks_round_trip_through_the_codec(chunk_rows: int) -> None:
    rng = np.random.default_rng(chunk_rows)
    rows = rng.standard_normal((64, 5)).astype(np.float32)
    sensitive = rng.integers(0, 3, 64).astype(np.int64)
    chunks = list(evaluate_chunks(rows, sensitive, request_id="r", chunk_rows=chunk_rows))
    assert len(chunks) == -(-64 // chunk_rows)
    assert [c.total_rows for c in chunks] == [64] + [0] * (len(chunks) - 1)
    back_rows, back_sensitive = evaluate_rows_from_chunks(
        chunks, width=5, n_groups=3, max_rows=64, min_rows=64
    )
    np.testing.assert_array_equal(back_rows, rows)
    np.testing.assert_array_equal(back_sensitive, sensitive)


def test_an_evaluation_answer_round_trips_and_a_report_without_sections_is_refused() -> None:
    report = {name: {"score": 0.5} for name in EVALUATION_SECTIONS}
    answer = EvaluationAnswer(report=report, rows_scored=200, holdout_rows=300)
    assert evaluation_from_proto(evaluation_to_proto(answer)) == answer
    partial = pb.EvaluateResponse(report_json=json.dumps({"fairness": {}}))
    missing = REPORT_INVALID.format(problem="lacks the sections utility, quality, privacy")
    with pytest.raises(Fair4FreeError, match=re.escape(missing)):
        evaluation_from_proto(partial)

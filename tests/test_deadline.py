"""Server-side deadlines: the daemon's own bound on one call's work, against a live mTLS daemon."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from test_audit_daemon import TIMEOUT, _events
from test_cli import assert_one_line_error, run

from conftest import CLIENT_NAME, UNLIMITED, StubFactory, write_policy
from fair4free.common.codec import tensor_to_proto
from fair4free.common.errors import CATALOG, ErrorCode, ExitCode, Fair4FreeError
from fair4free.common.tls import client_identity_uri
from fair4free.consumer.client import ClientConfig, OwnerClient
from fair4free.data_owner.deadline import (
    CLIENT_DEADLINE_EXCEEDED,
    DAEMON_LIMIT_EXCEEDED,
    MAX_CALL_SECONDS_INVALID,
    MAX_CALL_SECONDS_LIMIT,
    CallDeadline,
)
from fair4free.data_owner.pki import PkiLayout
from fair4free.data_owner.registry import load_teacher
from fair4free.data_owner.server import OwnerDaemon, ServerConfig, build_server
from fair4free.v1 import fair4free_pb2 as pb
from fair4free.v1 import fair4free_pb2_grpc as pb_grpc

ROWS = 4096  # the daemon's default cap: the largest request a caller may send
TINY_LIMIT = 1e-6  # no real work fits in a microsecond


def _pattern(template: str, method: str, limit: float) -> str:
    """A regex for ``template`` with every field fixed except the elapsed seconds."""
    text = re.escape(template.format(method=method, elapsed=0.0, limit=limit))
    return text.replace(re.escape("0.000"), r"\d+\.\d{3}", 1)


def test_the_bound_is_the_daemons_unless_the_client_asked_for_less() -> None:
    no_deadline = CallDeadline.begin("Decode", max_call_seconds=30, client_remaining=None, now=5)
    assert (no_deadline.limit, no_deadline.set_by_client) == (30, False)
    far = CallDeadline.begin("Decode", max_call_seconds=30, client_remaining=9.2e18, now=5)
    assert (far.limit, far.set_by_client) == (30, False)  # what gRPC reports for "no deadline"
    near = CallDeadline.begin("Decode", max_call_seconds=30, client_remaining=0.5, now=5)
    assert (near.limit, near.set_by_client) == (0.5, True)
    near.check(5.4)
    with pytest.raises(Fair4FreeError, match=_pattern(CLIENT_DEADLINE_EXCEEDED, "Decode", 0.5)):
        near.check(5.6)


def test_a_client_deadline_already_past_allows_no_work() -> None:
    gone = CallDeadline.begin("SampleLatents", max_call_seconds=30, client_remaining=0.0, now=1)
    with pytest.raises(Fair4FreeError) as caught:
        gone.check(1)
    assert caught.value.code is ErrorCode.DEADLINE_EXCEEDED


@pytest.mark.parametrize("seconds", [0.0, -1.0, math.inf, math.nan, MAX_CALL_SECONDS_LIMIT + 1])
def test_an_unusable_limit_is_refused_at_the_edge(seconds: float, tmp_path: Path) -> None:
    detail = MAX_CALL_SECONDS_INVALID.format(most=MAX_CALL_SECONDS_LIMIT, value=seconds)
    with pytest.raises(Fair4FreeError, match=f"^{re.escape(detail)}$") as caught:
        ServerConfig(policy=tmp_path / "p.toml", state_dir=tmp_path, max_call_seconds=seconds)
    assert caught.value.code is ErrorCode.CONFIG_INVALID


def test_serve_takes_the_limit_from_its_flag(tmp_path: Path) -> None:
    result = run(
        "owner", "serve", "--model", str(tmp_path), "--pki", str(tmp_path),
        "--policy", str(tmp_path / "policy.toml"), "--state-dir", str(tmp_path),
        "--max-call-seconds", "0",
    )  # fmt: skip
    detail = MAX_CALL_SECONDS_INVALID.format(most=MAX_CALL_SECONDS_LIMIT, value=0.0)
    assert_one_line_error(result, ExitCode.USAGE, detail)


@pytest.fixture
def hasty_daemon(tmp_path: Path, teacher_dir: Path, pki_dir: PkiLayout) -> Iterator[OwnerDaemon]:
    """A daemon that gives each call a microsecond, so every real answer overruns."""
    config = ServerConfig(
        policy=write_policy(tmp_path / "policy.toml", UNLIMITED), state_dir=tmp_path,
        crl=pki_dir.crl, listen="127.0.0.1:0", seed=0, max_call_seconds=TINY_LIMIT,
    )  # fmt: skip
    daemon = build_server(load_teacher(teacher_dir), tls=pki_dir.server_files(), config=config)
    yield daemon
    daemon.stop(0)


def _sample(stub: pb_grpc.OwnerServiceStub, request_id: str) -> object:
    request = pb.SampleLatentsRequest(request_id=request_id, rows=ROWS)
    return list(stub.SampleLatents(request, timeout=TIMEOUT))


def _decode(stub: pb_grpc.OwnerServiceStub, request_id: str) -> object:
    request = pb.DecodeRequest(
        request_id=request_id,
        latents=tensor_to_proto(np.zeros((ROWS, 4), np.float32)),
        sensitive=tensor_to_proto(np.zeros(ROWS, np.int64)),
    )
    return stub.Decode(request, timeout=TIMEOUT)


@pytest.mark.parametrize(("method", "call"), [("SampleLatents", _sample), ("Decode", _decode)])
def test_work_past_the_daemons_limit_is_cut_off_refunded_and_audited(
    hasty_daemon: OwnerDaemon,
    stub_factory: StubFactory,
    tmp_path: Path,
    method: str,
    call: Callable[[pb_grpc.OwnerServiceStub, str], object],
) -> None:
    stub = stub_factory(f"127.0.0.1:{hasty_daemon.port}")
    with pytest.raises(grpc.RpcError) as caught:
        call(stub, "big")
    assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    detail = _pattern(DAEMON_LIMIT_EXCEEDED, method, TINY_LIMIT)
    hint = re.escape(CATALOG[ErrorCode.DEADLINE_EXCEEDED].hint)
    assert re.fullmatch(f"{detail}; {hint}", caught.value.details() or "")

    identity = client_identity_uri(CLIENT_NAME)
    assert hasty_daemon.ledger.used(identity, method) == 0
    assert [(u.rows, u.calls, u.pending) for u in hasty_daemon.ledger.usage()] == [(0, 0, 0)]
    assert hasty_daemon.ledger.answer(identity, "big") is None  # the id is free to send again

    (terminal,) = [e for e in _events(tmp_path) if e["outcome"] != "started"]
    assert (terminal["request_id"], terminal["outcome"]) == ("big", "failed")
    assert terminal["grpc_status"] == "DEADLINE_EXCEEDED"
    assert re.fullmatch(detail, str(terminal["reason"]))
    for unset in ("budget_used", "budget_remaining", "rows_returned", "response_sha256"):
        assert terminal.get(unset) is None  # nothing charged, nothing answered


def test_the_client_reports_the_daemons_deadline_as_such_and_does_not_retry_it(
    hasty_daemon: OwnerDaemon,
    pki_dir: PkiLayout,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = ClientConfig(
        server=f"127.0.0.1:{hasty_daemon.port}", tls=pki_dir.client_files(CLIENT_NAME)
    )
    with OwnerClient(config) as client, pytest.raises(Fair4FreeError) as caught:
        client.sample_latents(ROWS)
    assert caught.value.code is ErrorCode.DEADLINE_EXCEEDED  # not "server unreachable"
    message = caught.value.public_message()
    # The client reads the manifest first, and even that overruns a microsecond.
    assert re.search(_pattern(DAEMON_LIMIT_EXCEEDED, "GetManifest", TINY_LIMIT), message)
    assert message.count(CATALOG[ErrorCode.DEADLINE_EXCEEDED].hint) == 1
    assert "retrying" not in caplog.text  # the same request would overrun again
    assert [e["outcome"] for e in _events(tmp_path)].count("failed") == 1

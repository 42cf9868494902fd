"""The audit log under ``kill -9``: a daemon killed under load at random moments, then restarted.

After every crash the log must still verify (with the checkpoints the clients kept), each crash
must show as a gap, and every answer a client received must have a ``completed`` record: the
terminal record is fsynced before the answer leaves, so no crash can take back a record of an
answer that got out.
"""

from __future__ import annotations

import itertools
import random
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
from test_audit_daemon import TIMEOUT, _events, _verify

from conftest import StubFactory, start_daemon, write_policy
from fair4free.common.codec import AUDIT_CHECKPOINT_TRAILER, tensor_to_proto
from fair4free.data_owner.pki import PkiLayout
from fair4free.v1 import fair4free_pb2 as pb
from fair4free.v1 import fair4free_pb2_grpc as pb_grpc

SEED = 11
ROUNDS = 3
CLIENTS = 3
ROWS = 16
BUDGET = 10**8
MAX_KILL_DELAY = 1.0  # seconds of load, after every client has had an answer


def _sample(stub: pb_grpc.OwnerServiceStub, request_id: str) -> grpc.Call:
    call = stub.SampleLatents(
        pb.SampleLatentsRequest(request_id=request_id, rows=ROWS), timeout=TIMEOUT
    )
    assert sum(batch.latents.shape[0] for batch in call) == ROWS
    return call


def _decode(stub: pb_grpc.OwnerServiceStub, request_id: str) -> grpc.Call:
    request = pb.DecodeRequest(
        request_id=request_id,
        latents=tensor_to_proto(np.zeros((ROWS, 4), np.float32)),  # the test teacher's latent_dim
        sensitive=tensor_to_proto(np.zeros(ROWS, np.int64)),
    )
    _, call = stub.Decode.with_call(request, timeout=TIMEOUT)
    return call


def _manifest(stub: pb_grpc.OwnerServiceStub, request_id: str) -> grpc.Call:
    _, call = stub.GetManifest.with_call(
        pb.GetManifestRequest(request_id=request_id), timeout=TIMEOUT
    )
    return call


CALLS: tuple[Callable[[pb_grpc.OwnerServiceStub, str], grpc.Call], ...] = (
    _sample,
    _decode,
    _manifest,
)


def _client(
    stub: pb_grpc.OwnerServiceStub,
    name: str,
    *,
    answered: list[tuple[str, str]],
    first_answer: threading.Event,
    ended_by: list[grpc.StatusCode],
) -> None:
    """Call until the daemon dies under us; keep each received answer's id and checkpoint."""
    rng = random.Random(f"{SEED}-{name}")
    for index in itertools.count():
        request_id = f"{name}-{index}"
        try:
            call = rng.choice(CALLS)(stub, request_id)
        except grpc.RpcError as exc:
            ended_by.append(exc.code())
            return
        token = dict(call.trailing_metadata())[AUDIT_CHECKPOINT_TRAILER]
        assert isinstance(token, str)  # an ASCII trailer: not a "-bin" one
        answered.append((request_id, token))
        first_answer.set()


def _kill_under_load(
    process: subprocess.Popen[bytes],
    stubs: list[pb_grpc.OwnerServiceStub],
    name: str,
    *,
    delay: float,
    answered: list[tuple[str, str]],
) -> None:
    """Load the daemon from every stub, SIGKILL it ``delay`` seconds in, and let the clients end."""
    firsts = [threading.Event() for _ in stubs]
    ended_by: list[grpc.StatusCode] = []
    workers = [
        threading.Thread(
            target=_client,
            args=(stub, f"{name}c{number}"),
            kwargs={"answered": answered, "first_answer": first, "ended_by": ended_by},
        )
        for number, (stub, first) in enumerate(zip(stubs, firsts, strict=True))
    ]
    for worker in workers:
        worker.start()
    try:
        assert all(first.wait(TIMEOUT) for first in firsts), "a client got no answer"
        time.sleep(delay)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=TIMEOUT)
        for worker in workers:
            worker.join(timeout=3 * TIMEOUT)
    assert not any(worker.is_alive() for worker in workers), "a client outlived the daemon"
    assert ended_by == [grpc.StatusCode.UNAVAILABLE] * len(stubs), ended_by


@pytest.mark.slow
def test_sigkill_under_load_leaves_a_log_that_verifies_and_records_every_answer(
    tmp_path: Path, teacher_dir: Path, pki_dir: PkiLayout, stub_factory: StubFactory
) -> None:
    write_policy(tmp_path / "policy.toml", {"SampleLatents": BUDGET, "Decode": BUDGET})
    delays = random.Random(SEED)
    answered: list[tuple[str, str]] = []  # (request id, checkpoint token) of answers received
    for round_ in range(ROUNDS):
        process, address = start_daemon(teacher_dir, pki_dir, tmp_path)
        stubs = [stub_factory(address) for _ in range(CLIENTS)]
        delay = delays.uniform(0, MAX_KILL_DELAY)
        _kill_under_load(process, stubs, f"k{round_}", delay=delay, answered=answered)
    process, _ = start_daemon(teacher_dir, pki_dir, tmp_path)  # recovers the last crash
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=3 * TIMEOUT) == 0

    tokens = sorted({token for _, token in answered})
    verified = _verify(tmp_path, tokens, tmp_path)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.count("crash gap: ") == ROUNDS, verified.stdout
    events = _events(tmp_path)
    completed = {e["request_id"] for e in events if e["outcome"] == "completed"}
    assert [request_id for request_id, _ in answered if request_id not in completed] == []
    started = Counter(e["request_id"] for e in events if e["outcome"] == "started")
    finished = Counter(e["request_id"] for e in events if e["outcome"] != "started")
    assert started == finished, "a request was left open, or closed twice, by the recovery"
    crashed = [e for e in events if e["outcome"] == "failed" and e.get("reason") == "crash"]
    assert crashed, "no kill caught a call in flight: the test did not test a crash under load"

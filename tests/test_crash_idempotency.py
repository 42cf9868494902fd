"""Exactly-once charging across a daemon killed with SIGKILL mid-traffic and restarted."""

from __future__ import annotations

import random
import signal
import threading
import time
from pathlib import Path

import grpc
import pytest

from conftest import StubFactory, start_daemon, write_policy
from fair4free.data_owner.pki import PkiLayout
from fair4free.v1 import fair4free_pb2 as pb
from fair4free.v1 import fair4free_pb2_grpc as pb_grpc

ROWS = 400
MAX_REQUESTS = 5000
BUDGET = 10**8


def _ask(stub: pb_grpc.OwnerServiceStub, request_id: str) -> bytes:
    request = pb.SampleLatentsRequest(request_id=request_id, rows=ROWS)
    return b"".join(batch.latents.data for batch in stub.SampleLatents(request, timeout=10))


@pytest.mark.slow
def test_sigkill_between_charge_and_answer_never_charges_twice(
    tmp_path: Path,
    teacher_dir: Path,
    pki_dir: PkiLayout,
    stub_factory: StubFactory,
) -> None:
    write_policy(tmp_path / "policy.toml", {"SampleLatents": BUDGET, "Decode": BUDGET})
    process, address = start_daemon(teacher_dir, pki_dir, tmp_path)
    stub = stub_factory(address)
    answers: dict[str, bytes] = {}
    attempted: list[str] = []

    def traffic() -> None:  # until the daemon dies under us
        for index in range(MAX_REQUESTS):
            attempted.append(f"r{index}")
            try:
                answers[f"r{index}"] = _ask(stub, f"r{index}")
            except grpc.RpcError:
                return

    worker = threading.Thread(target=traffic)
    worker.start()
    time.sleep(random.uniform(0.2, 0.8))
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    worker.join(timeout=30)
    assert len(answers) < len(attempted) < MAX_REQUESTS, "the kill interrupted no request"

    process, address = start_daemon(teacher_dir, pki_dir, tmp_path)
    try:
        stub = stub_factory(address)
        for request_id in attempted:  # a retrying client: every id again, answered or not
            replay = _ask(stub, request_id)
            if request_id in answers:
                assert replay == answers[request_id], f"{request_id} answered differently"
        manifest = stub.GetManifest(pb.GetManifestRequest(request_id="m"), timeout=10)
        remaining = next(b.remaining for b in manifest.budgets if b.method == "SampleLatents")
        assert BUDGET - remaining == len(attempted) * ROWS  # each id charged exactly once
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)

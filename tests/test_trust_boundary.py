"""The refusal matrix, budgets, idempotency and revocation, against live daemons with real mTLS."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from conftest import CLIENT_NAME, write_policy
from fair4free.common.codec import tensor_to_proto
from fair4free.common.tls import channel_credentials, client_identity_uri
from fair4free.data_owner.pki import PkiLayout, issue_client, revoke_client
from fair4free.data_owner.policy import render_policy
from fair4free.data_owner.registry import load_teacher
from fair4free.data_owner.server import OwnerDaemon, ServerConfig, build_server
from fair4free.v1 import fair4free_pb2 as pb
from fair4free.v1 import fair4free_pb2_grpc as pb_grpc
from forged_certs import DAY, forge, now, pem_of

TIMEOUT = 10
Start = Callable[..., str]


@pytest.fixture
def start_daemon(tmp_path: Path, teacher_dir: Path, pki_dir: PkiLayout) -> Iterator[Start]:
    """Start a daemon with its own policy text and ledger; returns its address."""
    started: list[OwnerDaemon] = []

    def start(policy_text: str) -> str:
        state = tmp_path / f"daemon{len(started)}"
        state.mkdir()
        (state / "policy.toml").write_text(policy_text)
        config = ServerConfig(
            policy=state / "policy.toml", state_dir=state, crl=pki_dir.crl,
            listen="127.0.0.1:0", seed=0,
        )  # fmt: skip
        daemon = build_server(load_teacher(teacher_dir), tls=pki_dir.server_files(), config=config)
        started.append(daemon)
        return f"127.0.0.1:{daemon.port}"

    yield start
    for daemon in started:
        daemon.stop(0)


def _policy(*, budget: int = 10**6, rate: int = 100_000, methods: str | None = None) -> str:
    text = render_policy(
        {client_identity_uri(CLIENT_NAME): {"SampleLatents": budget, "Decode": budget}},
        rate_per_minute=rate,
    )
    if methods is not None:
        text = text.replace('["GetManifest", "SampleLatents", "Decode"]', methods).split(
            f'[clients."{client_identity_uri(CLIENT_NAME)}".budgets]'
        )[0]
    return text


def _stub(address: str, pki: PkiLayout, name: str = CLIENT_NAME) -> pb_grpc.OwnerServiceStub:
    files = pki.client_files(name)
    credentials = channel_credentials(ca=files.ca, cert=files.cert, key=files.key)
    return pb_grpc.OwnerServiceStub(grpc.secure_channel(address, credentials))


def _refusal(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def _latents(stub: pb_grpc.OwnerServiceStub, rows: int, request_id: str) -> int:
    request = pb.SampleLatentsRequest(request_id=request_id, rows=rows)
    return sum(batch.latents.shape[0] for batch in stub.SampleLatents(request, timeout=TIMEOUT))


def _manifest(stub: pb_grpc.OwnerServiceStub, request_id: str) -> pb.Manifest:
    return stub.GetManifest(pb.GetManifestRequest(request_id=request_id), timeout=TIMEOUT)


def _remaining(stub: pb_grpc.OwnerServiceStub, method: str) -> int:
    manifest = stub.GetManifest(pb.GetManifestRequest(request_id="m"), timeout=TIMEOUT)
    return next(b.remaining for b in manifest.budgets if b.method == method)


def test_manifest_names_the_caller_and_its_budgets(start_daemon: Start, pki_dir: PkiLayout) -> None:
    stub = _stub(start_daemon(_policy(budget=700)), pki_dir)
    manifest = stub.GetManifest(pb.GetManifestRequest(request_id="m"), timeout=TIMEOUT)
    assert manifest.caller_identity == client_identity_uri(CLIENT_NAME)
    assert {(b.method, b.limit, b.remaining) for b in manifest.budgets} == {
        ("Decode", 700, 700),
        ("SampleLatents", 700, 700),
    }


def test_budget_is_charged_and_exhaustion_names_remaining_and_needed(
    start_daemon: Start, pki_dir: PkiLayout
) -> None:
    stub = _stub(start_daemon(_policy(budget=500)), pki_dir)
    assert _latents(stub, 300, "a") == 300
    assert _remaining(stub, "SampleLatents") == 200
    error = _refusal(lambda: _latents(stub, 300, "b"))
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "300 rows needed, 200 of 500 remaining" in (error.details() or "")
    status = rpc_status.from_call(error)
    assert status is not None
    failure = error_details_pb2.QuotaFailure()
    assert status.details[0].Unpack(failure)
    assert failure.violations[0].description == "300 rows needed, 200 of 500 remaining"
    assert _remaining(stub, "SampleLatents") == 200


def test_a_retried_request_id_is_answered_from_the_record_and_charged_once(
    start_daemon: Start, pki_dir: PkiLayout
) -> None:
    stub = _stub(start_daemon(_policy(budget=1000)), pki_dir)
    request = pb.SampleLatentsRequest(request_id="same", rows=100)
    first = [b.latents.data for b in stub.SampleLatents(request, timeout=TIMEOUT)]
    second = [b.latents.data for b in stub.SampleLatents(request, timeout=TIMEOUT)]
    assert first == second
    assert _remaining(stub, "SampleLatents") == 900
    reused = _refusal(lambda: _latents(stub, 50, "same"))
    assert reused.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "request id same reused for a different request" in (reused.details() or "")


def test_a_failed_request_is_not_charged(start_daemon: Start, pki_dir: PkiLayout) -> None:
    stub = _stub(start_daemon(_policy(budget=1000)), pki_dir)
    bad = pb.DecodeRequest(
        request_id="bad",
        latents=tensor_to_proto(np.full((10, 4), np.nan, np.float32)),
        sensitive=tensor_to_proto(np.zeros(10, np.int64)),
    )
    assert _refusal(lambda: stub.Decode(bad, timeout=TIMEOUT)).code() is (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    assert _remaining(stub, "Decode") == 1000


def test_eight_clients_never_overspend_one_budget(start_daemon: Start, pki_dir: PkiLayout) -> None:
    address = start_daemon(_policy(budget=2000))
    served: list[int] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        stub = _stub(address, pki_dir)
        for call in range(12):
            try:
                rows = _latents(stub, 37 + index, f"c{index}-{call}")
            except grpc.RpcError as error:
                assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
                continue
            with lock:
                served.append(rows)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(served) <= 2000
    assert sum(served) == 2000 - _remaining(_stub(address, pki_dir), "SampleLatents")


def test_identity_not_in_the_policy_is_denied(start_daemon: Start, pki_dir: PkiLayout) -> None:
    issue_client(pki_dir.root, "stranger")
    stub = _stub(start_daemon(_policy()), pki_dir, "stranger")
    error = _refusal(
        lambda: stub.GetManifest(pb.GetManifestRequest(request_id="r"), timeout=TIMEOUT)
    )
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED


def test_method_not_granted_is_denied(start_daemon: Start, pki_dir: PkiLayout) -> None:
    stub = _stub(start_daemon(_policy(methods='["GetManifest"]')), pki_dir)
    assert stub.GetManifest(pb.GetManifestRequest(request_id="r"), timeout=TIMEOUT).model_id
    error = _refusal(lambda: _latents(stub, 5, "r2"))
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED


def test_rate_limit(start_daemon: Start, pki_dir: PkiLayout) -> None:
    stub = _stub(start_daemon(_policy(rate=3)), pki_dir)
    for index in range(3):
        stub.GetManifest(pb.GetManifestRequest(request_id=f"r{index}"), timeout=TIMEOUT)
    error = _refusal(
        lambda: stub.GetManifest(pb.GetManifestRequest(request_id="r9"), timeout=TIMEOUT)
    )
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


def test_revoked_certificate_is_refused_without_a_restart(
    start_daemon: Start, pki_dir: PkiLayout
) -> None:
    issue_client(pki_dir.root, "soon-revoked")
    grant = {
        client_identity_uri(name): {"SampleLatents": 100, "Decode": 100}
        for name in (CLIENT_NAME, "soon-revoked")
    }
    stub = _stub(start_daemon(render_policy(grant, rate_per_minute=1000)), pki_dir, "soon-revoked")
    assert stub.GetManifest(pb.GetManifestRequest(request_id="a"), timeout=TIMEOUT).model_id
    revoke_client(pki_dir.root, "soon-revoked")
    error = _refusal(
        lambda: stub.GetManifest(pb.GetManifestRequest(request_id="b"), timeout=TIMEOUT)
    )
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "is revoked" in (error.details() or "")


@pytest.mark.parametrize(
    ("not_before", "not_after"),
    [(-2 * DAY, -DAY), (DAY, 2 * DAY)],
    ids=["expired", "not-yet-valid"],
)
def test_certificates_outside_their_lifetime_fail_the_handshake(
    start_daemon: Start,
    pki_dir: PkiLayout,
    not_before,
    not_after,  # type: ignore[no-untyped-def]
) -> None:
    address = start_daemon(_policy())
    cert, key = forge(
        pki_dir, uris=[client_identity_uri(CLIENT_NAME)],
        not_before=now() + not_before, not_after=now() + not_after,
    )  # fmt: skip
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki_dir.ca_cert.read_bytes(), private_key=key_pem,
        certificate_chain=pem_of(cert),
    )  # fmt: skip
    stub = pb_grpc.OwnerServiceStub(grpc.secure_channel(address, credentials))
    error = _refusal(
        lambda: stub.GetManifest(pb.GetManifestRequest(request_id="r"), timeout=TIMEOUT)
    )
    assert error.code() is grpc.StatusCode.UNAVAILABLE


def test_policy_edits_take_effect_without_a_restart(
    start_daemon: Start, pki_dir: PkiLayout, tmp_path: Path
) -> None:
    stub = _stub(start_daemon(_policy(budget=100)), pki_dir)
    assert _remaining(stub, "Decode") == 100
    write_policy(tmp_path / "daemon0" / "policy.toml", {"SampleLatents": 100, "Decode": 250})
    assert _remaining(stub, "Decode") == 250

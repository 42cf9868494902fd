"""The daemon's audit log, end to end: every call recorded, checkpoints, ``audit verify``.

Denials included; metered calls state the budget left; the client gets signed checkpoints; the CLI
proves the log intact or names the damage.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest

from conftest import CLIENT_NAME, UNLIMITED, write_policy
from fair4free.common.codec import AUDIT_CHECKPOINT_TRAILER, tensor_to_proto
from fair4free.common.tls import channel_credentials, client_identity_uri
from fair4free.consumer.client import ClientConfig, OwnerClient
from fair4free.data_owner.audit_keys import load_public_key
from fair4free.data_owner.audit_record import AuditEvent, SignedCheckpoint, list_segments
from fair4free.data_owner.pki import PkiLayout, issue_client
from fair4free.data_owner.registry import load_teacher
from fair4free.data_owner.server import ServerConfig, build_server
from fair4free.v1 import fair4free_pb2 as pb
from fair4free.v1 import fair4free_pb2_grpc as pb_grpc

TIMEOUT = 10


def _stub(address: str, pki: PkiLayout, name: str) -> pb_grpc.OwnerServiceStub:
    files = pki.client_files(name)
    credentials = channel_credentials(ca=files.ca, cert=files.cert, key=files.key)
    return pb_grpc.OwnerServiceStub(grpc.secure_channel(address, credentials))


@pytest.fixture(scope="module")
def audited(
    tmp_path_factory: pytest.TempPathFactory, teacher_dir: Path, pki_dir: PkiLayout
) -> tuple[Path, list[str]]:
    """Run a daemon through allowed, denied and invalid calls; return its state dir and tokens."""
    state = tmp_path_factory.mktemp("audited")
    issue_client(pki_dir.root, "outsider")
    config = ServerConfig(
        policy=write_policy(state / "policy.toml", UNLIMITED), state_dir=state,
        crl=pki_dir.crl, listen="127.0.0.1:0", seed=0,
        audit_checkpoint_every=1,  # a fresh checkpoint per record, so each answer carries a new one
    )  # fmt: skip
    daemon = build_server(load_teacher(teacher_dir), tls=pki_dir.server_files(), config=config)
    address = f"127.0.0.1:{daemon.port}"
    tokens: list[str] = []
    try:
        stub = _stub(address, pki_dir, CLIENT_NAME)
        _, call = stub.GetManifest.with_call(
            pb.GetManifestRequest(request_id="m1"), timeout=TIMEOUT
        )
        tokens.append(dict(call.trailing_metadata())[AUDIT_CHECKPOINT_TRAILER])
        stream = stub.SampleLatents(
            pb.SampleLatentsRequest(request_id="s1", rows=64), timeout=TIMEOUT
        )
        assert sum(b.latents.shape[0] for b in stream) == 64
        tokens.append(dict(stream.trailing_metadata())[AUDIT_CHECKPOINT_TRAILER])
        bad = pb.DecodeRequest(
            request_id="d1",
            latents=tensor_to_proto(np.full((2, 4), np.nan, np.float32)),
            sensitive=tensor_to_proto(np.zeros(2, np.int64)),
        )
        with pytest.raises(grpc.RpcError):
            stub.Decode(bad, timeout=TIMEOUT)
        client_config = ClientConfig(server=address, tls=pki_dir.client_files(CLIENT_NAME))
        with OwnerClient(client_config) as client:
            latents = client.sample_latents(8)
            client.decode(latents, np.zeros(8, np.int64))
            kept_by_client = client.audit_checkpoints
        assert len(kept_by_client) == 3  # manifest, latents, decode: one fresh token each
        tokens.extend(kept_by_client)
        outsider = _stub(address, pki_dir, "outsider")
        with pytest.raises(grpc.RpcError) as denied:
            outsider.GetManifest(pb.GetManifestRequest(request_id="o1"), timeout=TIMEOUT)
        assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
    finally:
        daemon.stop(0)
    return state, tokens


def _events(state: Path) -> list[dict[str, object]]:
    lines = [
        json.loads(line)
        for _, segment in list_segments(state / "audit")
        for line in segment.read_text().splitlines()
    ]
    return [record["event"] for record in lines if record["kind"] == "event"]


def test_every_call_has_a_started_and_a_terminal_record(audited: tuple[Path, list[str]]) -> None:
    state, _ = audited
    events = _events(state)
    by_request = {
        (e["request_id"], e["outcome"]): e for e in events if e.get("request_id") is not None
    }
    assert ("s1", "started") in by_request
    completed = by_request[("s1", "completed")]
    assert completed["rows_returned"] == 64 and completed["grpc_status"] == "OK"
    assert completed["identity"] == client_identity_uri(CLIENT_NAME)
    assert len(str(completed["response_sha256"])) == 64
    assert by_request[("d1", "failed")]["grpc_status"] == "INVALID_ARGUMENT"
    denial = by_request[("o1", "denied")]
    assert denial["identity"] == client_identity_uri("outsider")
    assert denial["grpc_status"] == "PERMISSION_DENIED"


def test_metered_records_state_the_budget_the_ledger_charged(
    tmp_path: Path, teacher_dir: Path, pki_dir: PkiLayout
) -> None:
    budgets = {"SampleLatents": 100, "Decode": 50}
    config = ServerConfig(
        policy=write_policy(tmp_path / "policy.toml", budgets), state_dir=tmp_path,
        crl=pki_dir.crl, listen="127.0.0.1:0", seed=0,
    )  # fmt: skip
    daemon = build_server(load_teacher(teacher_dir), tls=pki_dir.server_files(), config=config)
    stub = _stub(f"127.0.0.1:{daemon.port}", pki_dir, CLIENT_NAME)

    def sample(request_id: str) -> None:
        request = pb.SampleLatentsRequest(request_id=request_id, rows=40)
        assert sum(b.latents.shape[0] for b in stub.SampleLatents(request, timeout=TIMEOUT)) == 40

    def decode(request_id: str, fill: float) -> None:
        latents = tensor_to_proto(np.full((8, 4), fill, np.float32))
        sensitive = tensor_to_proto(np.zeros(8, np.int64))
        request = pb.DecodeRequest(request_id=request_id, latents=latents, sensitive=sensitive)
        stub.Decode(request, timeout=TIMEOUT)

    try:
        sample("s1")
        sample("s2")
        with pytest.raises(grpc.RpcError) as exhausted:
            sample("s3")
        assert exhausted.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        decode("d1", 0.0)
        with pytest.raises(grpc.RpcError) as invalid:
            decode("d2", np.nan)  # charged, then refunded: no budget to state
        assert invalid.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        sample("s1")  # a replay: answered again, not charged again
        manifest = stub.GetManifest(pb.GetManifestRequest(request_id="m1"), timeout=TIMEOUT)
        identity = client_identity_uri(CLIENT_NAME)
        in_ledger = {method: daemon.ledger.used(identity, method) for method in budgets}
    finally:
        daemon.stop(0)
    terminal = [
        (e["request_id"], e["outcome"], e.get("budget_used"), e.get("budget_remaining"))
        for e in _events(tmp_path)
        if e["outcome"] != "started"
    ]
    assert terminal == [
        ("s1", "completed", 40, 60),
        ("s2", "completed", 80, 20),
        ("s3", "denied", 80, 20),
        ("d1", "completed", 8, 42),
        ("d2", "failed", None, None),
        ("s1", "completed", 80, 20),
        ("m1", "completed", None, None),  # not metered
    ]
    remaining = {budget.method: budget.remaining for budget in manifest.budgets}
    assert remaining == {"SampleLatents": 20, "Decode": 42}
    assert in_ledger == {"SampleLatents": 80, "Decode": 8}


def test_the_log_holds_hashes_never_payloads(audited: tuple[Path, list[str]]) -> None:
    state, _ = audited
    documented = {field.name for field in dataclasses.fields(AuditEvent)}
    for event in _events(state):
        assert set(event) <= documented
        assert all(len(str(value)) <= 1024 for value in event.values())


def test_client_checkpoints_are_signed_by_the_owner(audited: tuple[Path, list[str]]) -> None:
    state, tokens = audited
    public_key = load_public_key(state / "audit-key" / "audit-signing.pub")
    assert tokens and all(SignedCheckpoint.from_compact(t).is_signed_by(public_key) for t in tokens)


def _verify(state: Path, tokens: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    kept = tmp_path / "kept.txt"
    kept.write_text("\n".join(tokens) + "\n")
    return subprocess.run(
        [sys.executable, "-m", "fair4free.data_owner", "audit", "verify",
         "--dir", str(state / "audit"), "--pubkey", str(state / "audit-key" / "audit-signing.pub"),
         "--checkpoints", str(kept)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_audit_verify_cli_passes_an_intact_log_and_names_a_flipped_byte(
    audited: tuple[Path, list[str]], tmp_path: Path
) -> None:
    state, tokens = audited
    intact = _verify(state, tokens, tmp_path)
    assert intact.returncode == 0, intact.stdout + intact.stderr
    assert ": intact;" in intact.stdout
    assert f"{len(tokens)} consumer checkpoint(s)" in intact.stdout
    copy = tmp_path / "state"
    subprocess.run(["cp", "-r", str(state), str(copy)], check=True)
    segment = list_segments(copy / "audit")[0][1]
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0x01
    segment.write_bytes(bytes(data))
    tampered = _verify(copy, tokens, tmp_path)
    assert tampered.returncode == 4
    assert "NOT intact" in tampered.stdout and "problem: audit-000001.jsonl line" in tampered.stdout

"""The audit log's write path on real files: chain, checkpoints, segments, crashes, failures."""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
import re
import resource
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fair4free.common.codec import canonical_json
from fair4free.common.errors import CATALOG, ErrorCode, Fair4FreeError
from fair4free.common.tls import load_private_key
from fair4free.data_owner.audit_keys import (
    KEY_EXISTS,
    KEY_MISSING,
    NOT_PRIVATE_KEY,
    NOT_PUBLIC_KEY,
    generate_signing_key,
    load_public_key,
    load_signing_key,
)
from fair4free.data_owner.audit_log import (
    BAD_SETTING,
    CLOSED,
    FAILED_EARLIER,
    LOCKED,
    WRITE_FAILED,
    AuditLog,
)
from fair4free.data_owner.audit_record import (
    BAD_CHECKPOINT,
    BAD_HASH,
    GENESIS,
    TOO_DEEP,
    AuditEvent,
    Outcome,
    SignedCheckpoint,
    list_segments,
)
from fair4free.data_owner.audit_recovery import DAMAGED
from fair4free.data_owner.audit_verify import verify

ACME = "fair4free://consumer/acme"
METHOD = "/fair4free.v1.OwnerService/SampleLatents"
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
# The documented record format, spelled out here so that any new field is a deliberate change.
DOCUMENTED = {
    "record": {"seq", "prev", "hash", "ts", "kind", "event"},
    "event": {
        "server_id", "method", "outcome", "request_id", "identity", "cert_serial",
        "cert_fingerprint", "peer", "model_id", "model_hash", "rows_requested", "rows_returned",
        "request_sha256", "response_sha256", "grpc_status", "latency_ms", "budget_used",
        "budget_remaining", "reason",
    },
    "checkpoint": {"seq", "head_hash", "ts", "signature", "trigger"},
    "seal": {"seq", "head_hash", "ts", "signature", "segment"},
    "recovery": {"reason", "segment", "truncated_bytes", "truncated_sha256", "open_requests"},
}  # fmt: skip


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def event(request_id: str, outcome: Outcome = "started", **fields: Any) -> AuditEvent:
    return AuditEvent(
        server_id="owner-test",
        method=METHOD,
        outcome=outcome,
        request_id=request_id,
        identity=ACME,
        **fields,
    )


def lines_of(directory: Path) -> list[bytes]:
    return [line for _, path in list_segments(directory) for line in path.read_bytes().splitlines()]


def records_of(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines_of(directory)]


def events_of(directory: Path) -> list[dict[str, Any]]:
    return [record["event"] for record in records_of(directory) if record["kind"] == "event"]


def test_each_append_is_one_canonical_hash_chained_line_on_disk_before_it_returns(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    with AuditLog.open(tmp_path, signing_key=key) as log:
        seqs = [log.append(event(f"r{i}", rows_requested=10 * i)) for i in range(3)]
        raw = (tmp_path / "audit-000001.jsonl").read_bytes()  # read while the log is still open
    assert seqs == [1, 2, 3]  # record 0 is the checkpoint written on open
    lines = raw.split(b"\n")
    assert lines[-1] == b""
    previous = GENESIS
    for seq, line in enumerate(lines[:4]):
        record = json.loads(line)
        assert canonical_json(record).encode() == line
        assert record["seq"] == seq
        assert record["prev"] == previous
        body = {name: value for name, value in record.items() if name != "hash"}
        assert record["hash"] == hashlib.sha256(canonical_json(body).encode()).hexdigest()
        assert TIMESTAMP.fullmatch(record["ts"])
        previous = hashlib.sha256(line).hexdigest()
    assert json.loads(lines[2])["event"] == event("r1", rows_requested=10).to_dict()


def test_records_hold_the_documented_fields_and_nothing_else(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    every_field = event(
        "r1",
        outcome="completed",
        cert_serial="1f",
        cert_fingerprint="ab" * 32,
        peer="ipv4:127.0.0.1:5000",
        model_id="teacher-1",
        model_hash="c" * 64,
        rows_requested=5,
        rows_returned=5,
        request_sha256="d" * 64,
        response_sha256="e" * 64,
        grpc_status="OK",
        latency_ms=1.5,
        budget_used=5,
        budget_remaining=95,
        reason="done",
    )
    assert set(every_field.to_dict()) == DOCUMENTED["event"]
    with AuditLog.open(tmp_path, signing_key=key, segment_bytes=1500) as log:
        for i in range(8):
            log.append(event(f"s{i}"))
        log.append(every_field)
    with AuditLog.open(tmp_path, signing_key=key, segment_bytes=1500) as log:
        log.append(event("late"))
    kinds = set()
    for record in records_of(tmp_path):
        assert set(record) == DOCUMENTED["record"]
        assert set(record["event"]) <= DOCUMENTED[record["kind"]], record["kind"]
        kinds.add(record["kind"])
    assert kinds == {"event", "checkpoint", "seal"}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"outcome": "done"}, "audit outcome must be one of"),
        ({"request_sha256": "not a hash"}, "audit field request_sha256 must be a lowercase hex"),
        ({"rows_returned": -1}, re.escape("audit field rows_returned must be a count, got -1")),
        ({"reason": "x" * 1025}, "audit field reason is over 1024 characters"),
        ({"latency_ms": float("nan")}, "audit latency must be finite and >= 0, got nan"),
    ],
)
def test_events_refuse_malformed_fields(fields: dict[str, Any], message: str) -> None:
    values: dict[str, Any] = {"server_id": "owner", "method": METHOD, "outcome": "started"}
    with pytest.raises(ValueError, match=message):
        AuditEvent(**{**values, **fields})


def test_a_signed_checkpoint_every_n_records(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    with AuditLog.open(tmp_path, signing_key=key, checkpoint_every=5) as log:
        for i in range(12):
            log.append(event(f"r{i}", outcome="denied"))
        latest = log.latest_checkpoint()
    records = records_of(tmp_path)
    checkpoints = [record for record in records if record["kind"] == "checkpoint"]
    assert [cp["event"]["trigger"] for cp in checkpoints] == ["open", "count", "count", "close"]
    assert [cp["seq"] for cp in checkpoints] == [0, 6, 12, 15]
    for record in checkpoints:
        checkpoint = SignedCheckpoint.from_event(record["event"])
        assert checkpoint.is_signed_by(key.public_key())
        assert checkpoint.seq == record["seq"] - 1
        assert checkpoint.head_hash == record["prev"]
        assert checkpoint.ts == record["ts"]
    assert latest == SignedCheckpoint.from_event(checkpoints[2]["event"])


def test_an_idle_log_is_checkpointed_after_the_interval(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    with AuditLog.open(tmp_path, signing_key=key, checkpoint_seconds=0.05) as log:
        seq = log.append(event("r1", outcome="denied"))
        deadline = time.monotonic() + 10
        while log.latest_checkpoint().seq < seq and time.monotonic() < deadline:
            time.sleep(0.01)
        assert log.latest_checkpoint().seq == seq
    triggers = [r["event"]["trigger"] for r in records_of(tmp_path) if r["kind"] == "checkpoint"]
    assert triggers == ["open", "time", "close"]


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()


def test_checkpoints_travel_as_one_ascii_token(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    with AuditLog.open(tmp_path, signing_key=key) as log:
        log.append(event("r1"))
        checkpoint = log.checkpoint()
    token = checkpoint.to_compact()
    assert token.isascii() and "\n" not in token
    assert SignedCheckpoint.from_compact(token) == checkpoint
    payload, _, signature = token.partition(".")
    for bad, why in [
        (payload, "no '.' between payload and signature"),
        (f"{payload}.{signature[:-4]}", "an Ed25519 signature is 64 bytes"),
        (f"e30.{signature}", "the payload must hold exactly ['head_hash', 'seq', 'ts']"),
        (f"{_b64('[' * 100_000)}.{signature}", TOO_DEEP),
    ]:
        with pytest.raises(Fair4FreeError, match=re.escape(BAD_CHECKPOINT.format(why=why))):
            SignedCheckpoint.from_compact(bad)


def test_segments_rotate_with_a_seal_and_the_chain_crosses_them(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    with AuditLog.open(tmp_path, signing_key=key, segment_bytes=1500) as log:
        seqs = [log.append(event(f"r{i}", outcome="denied")) for i in range(20)]
        latest = log.latest_checkpoint()
    segments = list_segments(tmp_path)
    assert [number for number, _ in segments] == list(range(1, len(segments) + 1))
    assert len(segments) >= 3
    for (_, sealed), (_, following) in zip(segments, segments[1:], strict=False):
        last = sealed.read_bytes().splitlines()[-1]
        seal = json.loads(last)
        assert seal["kind"] == "seal"
        assert seal["event"]["segment"] == sealed.name
        first = json.loads(following.read_bytes().splitlines()[0])
        assert first["prev"] == hashlib.sha256(last).hexdigest()
        assert first["seq"] == seal["seq"] + 1
    assert [record["seq"] for record in records_of(tmp_path)] == list(
        range(len(lines_of(tmp_path)))
    )
    assert len(set(seqs)) == 20
    result = verify(tmp_path, public_key=key.public_key(), consumer_checkpoints=[latest])
    assert result.ok, result.problems
    assert result.segments == len(segments)


def test_a_clean_reopen_continues_the_chain_without_a_recovery(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    with AuditLog.open(tmp_path, signing_key=key) as log:
        log.append(event("r1"))
        log.append(event("r1", outcome="completed"))
    with AuditLog.open(tmp_path, signing_key=key) as log:
        assert log.append(event("r2")) == 5
    kinds = [(r["kind"], r["event"].get("trigger")) for r in records_of(tmp_path)]
    assert ("recovery", None) not in kinds
    assert kinds[3:5] == [("checkpoint", "close"), ("checkpoint", "open")]
    assert verify(tmp_path, public_key=key.public_key()).ok


def test_closing_fails_requests_still_open_and_later_appends_are_refused(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    log = AuditLog.open(tmp_path, signing_key=key)
    log.append(event("open-one"))
    log.append(event("answered"))
    log.append(event("answered", outcome="completed"))
    log.close()
    log.close()  # a second close does nothing
    failed = [e for e in events_of(tmp_path) if e["outcome"] == "failed"]
    assert failed == [event("open-one", outcome="failed", reason="shutdown").to_dict()]
    with pytest.raises(Fair4FreeError, match=f"^{CLOSED}$"):
        log.append(event("r9"))


CRASH = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from fair4free.data_owner.audit_keys import load_signing_key
    from fair4free.data_owner.audit_log import AuditLog
    from fair4free.data_owner.audit_record import AuditEvent

    log = AuditLog.open(Path(sys.argv[1]), signing_key=load_signing_key(Path(sys.argv[2])))
    for request_id, outcome in [("a", "started"), ("b", "started"), ("b", "completed")]:
        log.append(AuditEvent(server_id="owner-test", method="/m", outcome=outcome,
                              request_id=request_id, identity="acme", rows_requested=7))
    os._exit(0)  # die without closing: no closing checkpoint, no failed records
    """
)


def crash_while_serving(directory: Path, key_path: Path) -> None:
    """A real process appends, then dies mid-flight; nothing in it is mocked."""
    command = [sys.executable, "-c", CRASH, str(directory), str(key_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_a_crash_is_recovered_torn_line_cut_and_open_requests_failed(tmp_path: Path) -> None:
    keys = generate_signing_key(tmp_path / "keys")
    directory = tmp_path / "audit"
    crash_while_serving(directory, keys.private_key)
    torn = b'{"event":{"identity":"acme","method":"/m","outc'  # a write the crash cut short
    with (directory / "audit-000001.jsonl").open("ab") as handle:
        handle.write(torn)
    key = load_signing_key(keys.private_key)
    with AuditLog.open(directory, signing_key=key) as log:
        assert log.append(event("c")) == 7
    records = records_of(directory)
    recovery = records[4]
    assert recovery["kind"] == "recovery"
    assert recovery["event"] == {
        "reason": "crash",
        "segment": "audit-000001.jsonl",
        "truncated_bytes": len(torn),
        "truncated_sha256": hashlib.sha256(torn).hexdigest(),
        "open_requests": 1,
    }
    assert records[5]["event"] == {
        "server_id": "owner-test",
        "method": "/m",
        "outcome": "failed",
        "reason": "crash",
        "request_id": "a",
        "identity": "acme",
        "rows_requested": 7,
    }
    assert records[6]["event"]["trigger"] == "open"
    result = verify(directory, public_key=load_public_key(keys.public_key))
    assert result.ok, result.problems
    assert [str(gap) for gap in result.recoveries] == [
        "audit-000001.jsonl line 5 (seq 4): the daemon crashed; recovery cut "
        f"{len(torn)} torn bytes and failed 1 open requests"
    ]


def hash_broken(line: bytes) -> bytes:
    """A line that still ends in a newline, but whose content no longer hashes."""
    return line.replace(b'"close"', b'"clos3"').replace(b'"r0"', b'"r9"')


def nested_too_deep(line: bytes) -> bytes:
    """A line the JSON parser cannot descend: it once escaped as a RecursionError."""
    return b"[" * 100_000 + b"\n"


@pytest.mark.parametrize(
    ("garble", "why"), [(hash_broken, BAD_HASH), (nested_too_deep, TOO_DEEP)], ids=["hash", "deep"]
)
def test_a_final_line_that_is_no_record_is_cut_but_earlier_damage_refuses_to_open(
    tmp_path: Path, key: Ed25519PrivateKey, garble: Callable[[bytes], bytes], why: str
) -> None:
    segment = tmp_path / "audit-000001.jsonl"

    def garble_line(index: int) -> bytes:
        lines = segment.read_bytes().splitlines(keepends=True)
        lines[index] = garble(lines[index])
        segment.write_bytes(b"".join(lines))
        return lines[index]

    with AuditLog.open(tmp_path, signing_key=key) as log:
        for i in range(3):
            log.append(event(f"r{i}", outcome="denied"))
    garbled = garble_line(-1)  # the closing checkpoint
    with AuditLog.open(tmp_path, signing_key=key):
        pass
    recovery = next(r for r in records_of(tmp_path) if r["kind"] == "recovery")
    assert recovery["event"]["truncated_bytes"] == len(garbled)
    assert verify(tmp_path, public_key=key.public_key()).ok
    garble_line(-1)  # the last clean close is gone: opening reads back to the start
    garble_line(1)  # the first request's record
    message = DAMAGED.format(segment=segment.name, line=2, why=why)
    with pytest.raises(Fair4FreeError, match=re.escape(message)):
        AuditLog.open(tmp_path, signing_key=key)


def test_a_second_writer_is_refused(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    locked = re.escape(LOCKED.format(directory=tmp_path))
    with AuditLog.open(tmp_path, signing_key=key), pytest.raises(Fair4FreeError, match=locked):
        AuditLog.open(tmp_path, signing_key=key)
    AuditLog.open(tmp_path, signing_key=key).close()  # released on close


def test_a_full_disk_fails_closed_and_a_restart_recovers(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    log = AuditLog.open(tmp_path, signing_key=key)
    segment = tmp_path / "audit-000001.jsonl"
    room = 100  # less than a record: the kernel writes part of it, then refuses (EFBIG)
    limit = segment.stat().st_size + room
    # A real file-size limit, as a full disk or quota acts; no mocks and no root needed.
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        with pytest.raises(Fair4FreeError) as caught:
            log.append(event("r1"))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    reason = WRITE_FAILED.format(path=segment, why=os.strerror(errno.EFBIG))
    assert caught.value.code is ErrorCode.AUDIT_UNAVAILABLE
    assert caught.value.detail == reason
    assert CATALOG[ErrorCode.AUDIT_UNAVAILABLE].exit_code != 0
    assert log.failed
    assert segment.stat().st_size == limit  # a torn line is left behind
    for attempt in (lambda: log.append(event("r2")), log.checkpoint):
        with pytest.raises(Fair4FreeError, match=re.escape(FAILED_EARLIER.format(why=reason))):
            attempt()
    log.close()  # releases without writing
    assert segment.stat().st_size == limit
    with AuditLog.open(tmp_path, signing_key=key) as reopened:
        reopened.append(event("r3"))
    recovery = next(r for r in records_of(tmp_path) if r["kind"] == "recovery")
    assert recovery["event"]["truncated_bytes"] == room
    assert recovery["event"]["open_requests"] == 0  # r1 was never acknowledged
    result = verify(tmp_path, public_key=key.public_key())
    assert result.ok, result.problems
    assert len(result.recoveries) == 1


def test_rotation_never_appends_to_a_file_it_did_not_create(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    log = AuditLog.open(tmp_path, signing_key=key, segment_bytes=1500)
    squatter = tmp_path / "audit-000002.jsonl"
    squatter.write_bytes(b"")
    reason = WRITE_FAILED.format(path=squatter, why=os.strerror(errno.EEXIST))
    with pytest.raises(Fair4FreeError, match=re.escape(reason)):
        for i in range(20):
            log.append(event(f"r{i}"))
    with pytest.raises(Fair4FreeError, match=re.escape(FAILED_EARLIER.format(why=reason))):
        log.append(event("later"))
    log.close()


def test_concurrent_appends_get_distinct_seqs_and_one_chain(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    got: list[int] = []
    with AuditLog.open(tmp_path, signing_key=key, checkpoint_every=7, segment_bytes=4000) as log:

        def serve(worker: int) -> None:
            for i in range(25):
                got.append(log.append(event(f"w{worker}-{i}")))

        threads = [threading.Thread(target=serve, args=(worker,)) for worker in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert len(set(got)) == 200
    assert verify(tmp_path, public_key=key.public_key()).ok


@pytest.mark.parametrize("setting", ["checkpoint_every", "checkpoint_seconds", "segment_bytes"])
def test_settings_must_be_positive(tmp_path: Path, key: Ed25519PrivateKey, setting: str) -> None:
    message = re.escape(BAD_SETTING.format(name=setting, value=0))
    with pytest.raises(Fair4FreeError, match=message):
        AuditLog.open(tmp_path, signing_key=key, **{setting: 0})
    assert list_segments(tmp_path) == []


def test_signing_keys_are_made_once_private_and_separate_from_tls_keys(tmp_path: Path) -> None:
    files = generate_signing_key(tmp_path / "keys")
    assert files.private_key.stat().st_mode & 0o777 == 0o600
    assert files.public_key.stat().st_mode & 0o777 == 0o644
    key = load_signing_key(files.private_key)
    assert (
        load_public_key(files.public_key).public_bytes_raw() == key.public_key().public_bytes_raw()
    )
    before = files.private_key.read_bytes()
    with pytest.raises(Fair4FreeError, match=KEY_EXISTS):
        generate_signing_key(tmp_path / "keys")
    assert files.private_key.read_bytes() == before
    tls_key = tmp_path / "tls.key"
    tls_key.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    assert load_private_key(tls_key, "TLS key") is not None
    with pytest.raises(Fair4FreeError, match=re.escape(NOT_PRIVATE_KEY.format(path=tls_key))):
        load_signing_key(tls_key)
    with pytest.raises(Fair4FreeError, match=re.escape(NOT_PUBLIC_KEY.format(path=tls_key))):
        load_public_key(tls_key)
    missing = tmp_path / "none.key"
    with pytest.raises(Fair4FreeError, match=re.escape(KEY_MISSING.format(path=missing))):
        load_signing_key(missing)

"""The audit verifier on real logs tampered with by hand: each tamper found, its record named."""

from __future__ import annotations

import json
import random
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fair4free.common.errors import ErrorCode, Fair4FreeError
from fair4free.data_owner.audit_log import AuditLog
from fair4free.data_owner.audit_record import (
    BAD_HASH,
    GENESIS,
    TOO_DEEP,
    UNDOCUMENTED,
    AuditEvent,
    RecordError,
    SignedCheckpoint,
    decode_record,
    encode_record,
    line_digest,
    list_segments,
)
from fair4free.data_owner.audit_verify import (
    BAD_SIGNATURE,
    CONSUMER_BEYOND,
    CONSUMER_DISAGREES,
    CONSUMER_UNSIGNED,
    MISSING_SEGMENT,
    NO_DIRECTORY,
    NO_SEGMENTS,
    SEGMENT_MISPLACED,
    SEQ_AHEAD,
    SEQ_BEHIND,
    TORN,
    UNSEALED,
    verify,
)

SEGMENT_1 = "audit-000001.jsonl"


@dataclass(frozen=True)
class Log:
    directory: Path
    key: Ed25519PrivateKey
    kept: list[SignedCheckpoint]  # what a consumer kept from the daemon's trailers

    def verify(self, *, with_kept: bool = True) -> list[str]:
        result = verify(
            self.directory,
            public_key=self.key.public_key(),
            consumer_checkpoints=self.kept if with_kept else (),
        )
        assert result.ok == (not result.problems)
        return [str(problem) for problem in result.problems]

    def segment(self, number: int) -> Path:
        return self.directory / f"audit-{number:06d}.jsonl"

    def lines(self, number: int) -> list[bytes]:
        return self.segment(number).read_bytes().splitlines(keepends=True)

    def write(self, number: int, lines: list[bytes]) -> None:
        self.segment(number).write_bytes(b"".join(lines))

    def position(self, seq: int) -> tuple[str, int]:
        """The segment file and 1-based line of record ``seq``."""
        for _, path in list_segments(self.directory):
            for index, line in enumerate(path.read_bytes().splitlines(), start=1):
                if json.loads(line)["seq"] == seq:
                    return path.name, index
        raise AssertionError(f"no record {seq}")


@pytest.fixture
def log(tmp_path: Path) -> Log:
    """40 events of 20 requests over 4+ segments, checkpointed every 4 records."""
    key = Ed25519PrivateKey.generate()
    kept: list[SignedCheckpoint] = []
    directory = tmp_path / "audit"
    with AuditLog.open(directory, signing_key=key, checkpoint_every=4, segment_bytes=3000) as audit:
        for request in range(20):
            for outcome in ("started", "completed"):
                audit.append(
                    AuditEvent(
                        server_id="owner-test",
                        method="/fair4free.v1.OwnerService/Decode",
                        outcome=outcome,
                        request_id=f"req-{request:02d}",
                        identity="fair4free://consumer/acme",
                        rows_requested=64,
                    )
                )
                token = audit.latest_checkpoint().to_compact()  # sent as a trailer
                if not kept or kept[-1].to_compact() != token:
                    kept.append(SignedCheckpoint.from_compact(token))
    assert len(list_segments(directory)) >= 4
    return Log(directory, key, kept)


def rewrite(
    log: Log,
    *,
    start: int,
    key: Ed25519PrivateKey,
    edit: Callable[[dict[str, Any]], None] = lambda event: None,
) -> None:
    """Rewrite history as a forger would: edit record ``start``, rebuild the chain after it.

    Every later checkpoint is signed again with ``key``.
    """
    prev = GENESIS
    for _, path in list_segments(log.directory):
        out = []
        for line in path.read_bytes().splitlines(keepends=True):
            record = json.loads(line)
            if record["seq"] >= start:
                event = record["event"]
                if record["seq"] == start:
                    edit(event)
                if record["kind"] in ("checkpoint", "seal"):
                    signed = SignedCheckpoint.sign(
                        key, seq=record["seq"] - 1, head_hash=prev, ts=event["ts"]
                    )
                    event.update(signed.to_event())
                line = encode_record(
                    seq=record["seq"], prev=prev, kind=record["kind"], event=event, ts=record["ts"]
                )
            out.append(line)
            prev = line_digest(line)
        path.write_bytes(b"".join(out))


def flip_a_byte(log: Log) -> str:
    lines = log.lines(1)
    lines[4] = lines[4].replace(b"acme", b"acne")
    log.write(1, lines)
    return f"{SEGMENT_1} line 5 (seq 4): {BAD_HASH}"


def delete_a_line(log: Log) -> str:
    lines = log.lines(1)
    del lines[4]
    log.write(1, lines)
    return f"{SEGMENT_1} line 5 (seq 4): {SEQ_AHEAD.format(seq=5, expected=4)}"


def reorder_lines(log: Log) -> str:
    lines = log.lines(1)
    lines[4], lines[5] = lines[5], lines[4]
    log.write(1, lines)
    return f"{SEGMENT_1} line 5 (seq 4): {SEQ_AHEAD.format(seq=5, expected=4)}"


def duplicate_a_line(log: Log) -> str:
    lines = log.lines(1)
    lines.insert(5, lines[4])
    log.write(1, lines)
    return f"{SEGMENT_1} line 6 (seq 5): {SEQ_BEHIND.format(seq=4, expected=5)}"


def cut_the_tail_behind_a_kept_checkpoint(log: Log) -> str:
    covered = log.kept[-1]
    where, line = log.position(covered.seq)
    number = int(where[6:12])
    log.write(number, log.lines(number)[: line - 1])
    for later, path in list_segments(log.directory):
        if later > number:
            path.unlink()
    reason = CONSUMER_BEYOND.format(last=covered.seq - 1, ts=covered.ts, seq=covered.seq)
    return f"{where} line {line} (seq {covered.seq}): {reason}"


def swap_segments(log: Log) -> str:
    second, third = log.segment(2), log.segment(3)
    expected = json.loads(log.lines(2)[0])["seq"]
    found = json.loads(log.lines(3)[0])["seq"]
    second.rename(log.directory / "swap")
    third.rename(second)
    (log.directory / "swap").rename(third)
    reason = SEGMENT_MISPLACED.format(seq=found, expected=expected)
    return f"audit-000002.jsonl line 1 (seq {expected}): {reason}"


def re_sign_with_another_key(log: Log) -> str:
    rewrite(log, start=0, key=Ed25519PrivateKey.generate())
    return f"{SEGMENT_1} line 1 (seq 0): {BAD_SIGNATURE}"


def rewrite_behind_a_kept_checkpoint(log: Log) -> str:
    """The owner, who holds the key, rewrites a record: only a consumer's checkpoint shows it."""
    rewrite(log, start=4, key=log.key, edit=lambda event: event.update(rows_requested=1))
    assert log.verify(with_kept=False) == []
    first = next(checkpoint for checkpoint in log.kept if checkpoint.seq >= 4)
    where, line = log.position(first.seq)
    return f"{where} line {line} (seq {first.seq}): {CONSUMER_DISAGREES.format(ts=first.ts)}"


TAMPERS = [
    flip_a_byte,
    delete_a_line,
    reorder_lines,
    duplicate_a_line,
    cut_the_tail_behind_a_kept_checkpoint,
    swap_segments,
    re_sign_with_another_key,
    rewrite_behind_a_kept_checkpoint,
]


def test_an_untouched_log_verifies(log: Log) -> None:
    result = verify(log.directory, public_key=log.key.public_key(), consumer_checkpoints=log.kept)
    assert result.ok, result.problems
    lines = [
        line for _, path in list_segments(log.directory) for line in path.read_bytes().splitlines()
    ]
    kinds = [json.loads(line)["kind"] for line in lines]
    assert result.records == len(lines)
    assert result.segments == len(list_segments(log.directory))
    assert result.checkpoints == kinds.count("checkpoint") + kinds.count("seal")
    assert result.recoveries == ()


@pytest.mark.parametrize("tamper", TAMPERS, ids=[tamper.__name__ for tamper in TAMPERS])
def test_each_tamper_is_detected_and_its_first_bad_record_named(
    log: Log, tamper: Callable[[Log], str]
) -> None:
    expected = tamper(log)
    problems = log.verify()
    assert problems, tamper.__name__
    assert problems[0] == expected


def test_a_torn_final_line_is_named(log: Log) -> None:
    last, path = list_segments(log.directory)[-1]
    lines = log.lines(last)
    seq = json.loads(lines[-1])["seq"]
    log.write(last, [*lines[:-1], lines[-1][:40]])
    assert log.verify() == [f"{path.name} line {len(lines)} (seq {seq}): {TORN}"]


def test_every_flipped_byte_is_detected_at_its_line(log: Log) -> None:
    segments = [path for _, path in list_segments(log.directory)]
    originals = {path: path.read_bytes() for path in segments}
    rng = random.Random(5)
    for _ in range(150):
        path = rng.choice(segments)
        data = bytearray(originals[path])
        offset = rng.randrange(len(data))
        data[offset] ^= rng.randrange(1, 256)
        path.write_bytes(bytes(data))
        line = originals[path].count(b"\n", 0, offset) + 1
        problems = verify(log.directory, public_key=log.key.public_key()).problems
        assert problems, (path.name, offset)
        assert (problems[0].where, problems[0].line) == (path.name, line), (offset, problems)
        path.write_bytes(originals[path])


def test_a_rewritten_tail_re_signed_by_a_forger_is_named_at_its_first_checkpoint(
    log: Log,
) -> None:
    records = [json.loads(line) for number in range(1, 4) for line in log.lines(number)]
    start = next(r["seq"] for r in records if r["seq"] >= 10 and r["kind"] == "event")
    signed = next(r["seq"] for r in records if r["seq"] > start and r["kind"] != "event")
    rewrite(log, start=start, key=Ed25519PrivateKey.generate(), edit=lambda e: e.update(peer="x"))
    where, line = log.position(signed)
    assert log.verify(with_kept=False) == [f"{where} line {line} (seq {signed}): {BAD_SIGNATURE}"]


def test_a_missing_or_unsealed_segment_is_named(log: Log) -> None:
    seal = log.lines(1)[-1]
    log.write(1, log.lines(1)[:-1])
    seal_seq = json.loads(seal)["seq"]
    line = len(log.lines(1)) + 1
    unsealed = UNSEALED.format(next="audit-000002.jsonl")
    assert log.verify()[0] == f"{SEGMENT_1} line {line} (seq {seal_seq}): {unsealed}"
    log.write(1, [*log.lines(1), seal])
    expected = json.loads(log.lines(2)[0])["seq"]
    log.segment(2).unlink()
    missing = MISSING_SEGMENT.format(name="audit-000002.jsonl")
    assert log.verify()[0] == f"audit-000003.jsonl line 1 (seq {expected}): {missing}"


def test_a_line_nested_too_deep_to_parse_is_named(log: Log) -> None:
    lines = log.lines(1)
    lines[4] = b"[" * 100_000 + b"\n"
    log.write(1, lines)
    assert log.verify()[0] == f"{SEGMENT_1} line 5 (seq 4): {TOO_DEEP}"


def test_no_nesting_depth_escapes_the_record_check() -> None:
    """Near the stack limit a line can parse and still be too deep to re-encode for its hash."""
    limit = sys.getrecursionlimit()
    for depth in range(limit - 300, limit + 10):
        nested = b"[" * depth + b"]" * depth
        line = b'{"event":{"reason":%s},"hash":"%s","kind":"event","prev":"%s","seq":0,"ts":"%s"}'
        line %= (nested, b"0" * 64, GENESIS.encode(), b"2024-01-01T00:00:00.000000Z")
        with pytest.raises(RecordError, match=f"^({re.escape(BAD_HASH)}|{TOO_DEEP})$"):
            decode_record(line)


def test_an_undocumented_field_is_refused_even_with_a_valid_hash(log: Log) -> None:
    rewrite(log, start=4, key=log.key, edit=lambda event: event.update(payload="secret rows"))
    reason = UNDOCUMENTED.format(kind="event", names=["payload"])
    assert log.verify(with_kept=False) == [f"{SEGMENT_1} line 5 (seq 4): {reason}"]


def test_a_consumer_checkpoint_signed_by_another_key_is_named(log: Log) -> None:
    genuine = log.kept[-1]
    forged = SignedCheckpoint.sign(
        Ed25519PrivateKey.generate(), seq=genuine.seq, head_hash=genuine.head_hash, ts=genuine.ts
    )
    result = verify(
        log.directory, public_key=log.key.public_key(), consumer_checkpoints=[genuine, forged]
    )
    assert [str(p) for p in result.problems] == [
        f"consumer checkpoint 2 (seq {genuine.seq}): {CONSUMER_UNSIGNED}"
    ]


def test_crash_gaps_are_reported_as_information_not_failure(log: Log) -> None:
    last, path = list_segments(log.directory)[-1]
    torn = b'{"event":{"ident'
    log.write(last, [*log.lines(last), torn])
    with AuditLog.open(log.directory, signing_key=log.key):
        pass
    result = verify(log.directory, public_key=log.key.public_key(), consumer_checkpoints=log.kept)
    assert result.ok, result.problems
    assert [(gap.where, gap.truncated_bytes, gap.open_requests) for gap in result.recoveries] == [
        (path.name, len(torn), 0)
    ]


def test_a_directory_without_a_log(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate().public_key()
    missing = tmp_path / "nowhere"
    message = re.escape(NO_DIRECTORY.format(directory=missing))
    with pytest.raises(Fair4FreeError, match=message) as caught:
        verify(missing, public_key=key)
    assert caught.value.code is ErrorCode.FILE_NOT_FOUND
    result = verify(tmp_path, public_key=key)
    assert [str(p) for p in result.problems] == [f"{tmp_path}: {NO_SEGMENTS}"]

"""Verify an audit log: every line, the chain across segments, the signatures, consumers' copies.

:func:`verify` reads the segments in order and names the first bad record (segment file, line,
seq) of the chain: a changed byte, a deleted, duplicated or reordered line, a torn line, a segment
that is missing, swapped or cut short. Separately it names the first checkpoint not signed by the
audit key (a log rewritten and re-signed), and each checkpoint a consumer kept that the log no
longer matches (a rewritten record, or a tail cut behind that checkpoint). Crash recoveries the
writer recorded are reported as gaps, for information: they are not failures.

What it cannot see: lines cut from the tail after the last checkpoint a consumer holds, since the
owner holds the key; consumers keeping checkpoints is what closes that gap. Without the public key
(``public_key=None``, for a quick look at a log) signatures go unchecked, so a log rewritten from
scratch would pass: only the chain and the consumers' digests are compared.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fair4free.common.errors import ErrorCode, Fair4FreeError
from fair4free.data_owner.audit_record import (
    GENESIS,
    RecordError,
    SignedCheckpoint,
    decode_record,
    line_digest,
    list_segments,
    segment_name,
)

NO_DIRECTORY: Final = "audit log directory {directory} does not exist"
NO_SEGMENTS: Final = "the directory holds no audit segment"
UNREADABLE: Final = "cannot read the segment: {why}"
MISSING_SEGMENT: Final = "segment {name} is missing before this one"
TORN: Final = "the line is torn (no newline): the file was cut, or a crash was never recovered"
SEQ_AHEAD: Final = "seq {seq} where seq {expected} was expected: records were deleted or reordered"
SEQ_BEHIND: Final = (
    "seq {seq} where seq {expected} was expected: a record was duplicated or reordered"
)
SEGMENT_MISPLACED: Final = (
    "the segment starts at seq {seq} where seq {expected} was expected: "
    "segments were swapped, renamed or deleted"
)
BROKEN_CHAIN: Final = "prev is not the hash of the record before it: that record was replaced"
UNSEALED: Final = "the segment ends without a seal, yet {next} follows: its tail was cut"
AFTER_SEAL: Final = "a record follows the seal of its segment"
SEAL_ELSEWHERE: Final = "the seal names segment {named}: the segment was renamed or swapped"
CHECKPOINT_MISMATCH: Final = "the checkpoint does not sign the record before it"
BAD_SIGNATURE: Final = "the checkpoint is not signed by the audit key: the log was re-signed"
CONSUMER_UNSIGNED: Final = "the checkpoint is not signed by the audit key"
CONSUMER_BEYOND: Final = (
    "the log ends at seq {last}, but a checkpoint the consumer kept ({ts}) covers seq {seq}: "
    "records were cut from the tail"
)
CONSUMER_DISAGREES: Final = "the record differs from the one a consumer's checkpoint ({ts}) signed"
CHECKPOINTS_UNREADABLE: Final = "cannot read {path}: {why}"


@dataclass(frozen=True, kw_only=True)
class Problem:
    """The first bad record of one kind: where it is (file, 1-based line, seq) and what is wrong.

    ``where`` is a segment file name, or ``consumer checkpoint N`` (1-based) for a bad checkpoint
    a consumer handed in. ``seq`` is the seq the record should have, where the chain knows it.
    """

    where: str
    line: int | None
    seq: int | None
    reason: str

    def __str__(self) -> str:
        place = self.where if self.line is None else f"{self.where} line {self.line}"
        if self.seq is not None:
            place += f" (seq {self.seq})"
        return f"{place}: {self.reason}"


@dataclass(frozen=True, kw_only=True)
class Gap:
    """A crash the writer recovered from: where its ``recovery`` record is and what it did."""

    where: str
    line: int
    seq: int
    truncated_bytes: int
    open_requests: int

    def __str__(self) -> str:
        return (
            f"{self.where} line {self.line} (seq {self.seq}): the daemon crashed; recovery cut "
            f"{self.truncated_bytes} torn bytes and failed {self.open_requests} open requests"
        )


@dataclass(frozen=True, kw_only=True)
class VerifyResult:
    """What :func:`verify` found; ``ok`` if there are no problems (gaps are information)."""

    problems: tuple[Problem, ...]
    records: int
    segments: int
    checkpoints: int
    recoveries: tuple[Gap, ...]

    @property
    def ok(self) -> bool:
        """Whether the log is intact, consistent and agrees with every consumer checkpoint."""
        return not self.problems


@dataclass(kw_only=True)
class _Walk:
    """The state of one pass over the segments, in order."""

    public_key: Ed25519PublicKey | None
    wanted: set[int]
    expected_seq: int = 0
    expected_prev: str = GENESIS
    chain: Problem | None = None
    signature: Problem | None = None
    records: int = 0
    checkpoints: int = 0
    gaps: list[Gap] = field(default_factory=list)
    found: dict[int, tuple[str, int, str]] = field(default_factory=dict)
    last_seq: int = -1
    where: str = ""
    line: int = 0
    sealed: bool = False

    def broken(self, reason: str, *, line: int | None = None, seq: int | None = None) -> None:
        """Keep the first chain problem; later ones are its consequences."""
        if self.chain is None:
            at = self.line if line is None else line
            known = self.expected_seq if seq is None else seq
            self.chain = Problem(where=self.where, line=at, seq=known, reason=reason)

    def segment(self, path: Path) -> None:
        """Walk one segment file."""
        self.where, self.line, self.sealed = path.name, 0, False
        try:
            with path.open("rb") as handle:
                for self.line, raw in enumerate(handle, start=1):
                    self.record(raw, first=self.line == 1)
        except OSError as exc:
            self.broken(UNREADABLE.format(why=exc.strerror or exc), line=None)

    def record(self, raw: bytes, *, first: bool) -> None:
        """Check one line: its own form, its place in the chain, and a checkpoint it holds."""
        if not raw.endswith(b"\n"):
            self.broken(TORN)
            return
        try:
            record = decode_record(raw[:-1])
        except RecordError as exc:
            self.broken(str(exc))
            return
        self.records += 1
        seq, digest = record["seq"], line_digest(raw)
        if seq in self.wanted:
            self.found.setdefault(seq, (self.where, self.line, digest))
        if self.sealed:
            self.broken(AFTER_SEAL)
        if seq != self.expected_seq:
            if first:
                template = SEGMENT_MISPLACED
            else:
                template = SEQ_AHEAD if seq > self.expected_seq else SEQ_BEHIND
            self.broken(template.format(seq=seq, expected=self.expected_seq))
        elif record["prev"] != self.expected_prev:
            self.broken(BROKEN_CHAIN)
        if record["kind"] in ("checkpoint", "seal"):
            self.checkpoint(record)
        elif record["kind"] == "recovery":
            event: dict[str, Any] = record["event"]
            self.gaps.append(
                Gap(
                    where=self.where,
                    line=self.line,
                    seq=seq,
                    truncated_bytes=int(event.get("truncated_bytes", 0)),
                    open_requests=int(event.get("open_requests", 0)),
                )
            )
        self.expected_seq, self.expected_prev, self.last_seq = seq + 1, digest, seq

    def checkpoint(self, record: dict[str, Any]) -> None:
        """A checkpoint or seal must sign the record before it, with the audit key."""
        self.checkpoints += 1
        try:
            checkpoint = SignedCheckpoint.from_event(record["event"])
        except RecordError as exc:
            self.broken(str(exc))
            return
        if checkpoint.seq != record["seq"] - 1 or checkpoint.head_hash != record["prev"]:
            self.broken(CHECKPOINT_MISMATCH)
        forged = self.public_key is not None and not checkpoint.is_signed_by(self.public_key)
        if self.signature is None and forged:
            self.signature = Problem(
                where=self.where, line=self.line, seq=record["seq"], reason=BAD_SIGNATURE
            )
        if record["kind"] == "seal":
            self.sealed = True
            if record["event"]["segment"] != self.where:
                self.broken(SEAL_ELSEWHERE.format(named=record["event"]["segment"]))


def verify(
    directory: Path,
    *,
    public_key: Ed25519PublicKey | None,
    consumer_checkpoints: Sequence[SignedCheckpoint] = (),
) -> VerifyResult:
    """Check the whole log in ``directory`` against its public key and consumers' checkpoints.

    ``public_key=None`` skips every signature check (see the module docstring for what that
    misses); callers must say so wherever they report the result.

    :raises Fair4FreeError: FILE_NOT_FOUND if ``directory`` does not exist.
    """
    if not directory.is_dir():
        raise Fair4FreeError(ErrorCode.FILE_NOT_FOUND, NO_DIRECTORY.format(directory=directory))
    segments = list_segments(directory)
    walk = _Walk(public_key=public_key, wanted={cp.seq for cp in consumer_checkpoints})
    if not segments:
        walk.chain = Problem(where=str(directory), line=None, seq=None, reason=NO_SEGMENTS)
    previous: str | None = None
    for expected_number, (number, path) in enumerate(segments, start=1):
        if previous is not None and not walk.sealed:
            walk.broken(UNSEALED.format(next=path.name), line=walk.line + 1)
        if number != expected_number:
            walk.where = path.name
            walk.broken(MISSING_SEGMENT.format(name=segment_name(expected_number)), line=1)
        walk.segment(path)
        previous = path.name
    problems = [problem for problem in (walk.chain, walk.signature) if problem is not None]
    problems.extend(_consumer_problems(walk, consumer_checkpoints))
    return VerifyResult(
        problems=tuple(problems),
        records=walk.records,
        segments=len(segments),
        checkpoints=walk.checkpoints,
        recoveries=tuple(walk.gaps),
    )


def _consumer_problems(walk: _Walk, checkpoints: Sequence[SignedCheckpoint]) -> list[Problem]:
    """One problem per consumer checkpoint that is forged, beyond the log's end, or disagrees."""
    problems = []
    for index, checkpoint in enumerate(checkpoints, start=1):
        where = f"consumer checkpoint {index}"
        if walk.public_key is not None and not checkpoint.is_signed_by(walk.public_key):
            problems.append(
                Problem(where=where, line=None, seq=checkpoint.seq, reason=CONSUMER_UNSIGNED)
            )
        elif checkpoint.seq == -1:
            if checkpoint.head_hash != GENESIS:
                reason = CONSUMER_DISAGREES.format(ts=checkpoint.ts)
                problems.append(Problem(where=where, line=None, seq=-1, reason=reason))
        elif checkpoint.seq not in walk.found:
            reason = CONSUMER_BEYOND.format(
                last=walk.last_seq, ts=checkpoint.ts, seq=checkpoint.seq
            )
            problems.append(
                Problem(where=walk.where, line=walk.line + 1, seq=walk.last_seq + 1, reason=reason)
            )
        else:
            segment, line, digest = walk.found[checkpoint.seq]
            if digest != checkpoint.head_hash:
                reason = CONSUMER_DISAGREES.format(ts=checkpoint.ts)
                problems.append(
                    Problem(where=segment, line=line, seq=checkpoint.seq, reason=reason)
                )
    return problems


def read_consumer_checkpoints(path: Path) -> list[SignedCheckpoint]:
    """The tokens a consumer kept, one per line as ``fair4free-consumer checkpoints`` prints them.

    Both ``audit verify`` and ``audit report`` take this file, so they must read it alike.

    :raises Fair4FreeError: FILE_NOT_FOUND if the file cannot be read, AUDIT_CHECKPOINT_INVALID
        if a token is malformed.
    """
    try:
        tokens = path.read_text().split()
    except OSError as exc:
        raise Fair4FreeError(
            ErrorCode.FILE_NOT_FOUND, CHECKPOINTS_UNREADABLE.format(path=path, why=exc.strerror)
        ) from None
    return [SignedCheckpoint.from_compact(token) for token in tokens if token]

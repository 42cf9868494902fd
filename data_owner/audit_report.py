"""What a compliance reviewer asks of the audit log, folded from its records into frozen numbers.

The log answers record by record; a reviewer (HIPAA 164.312(b) "examine activity", NIST AU-6)
asks per caller and over time: how often each identity called each method, how many rows it asked
for and got, what was refused and why, what failed, which budgets it had left, and when the daemon
crashed. :func:`build_report` answers that, and never on trust: it runs the verifier on the same
directory first and carries its verdict (:class:`Verification`), so a report of a damaged log says
so before any number.

Streaming: segments are read line by line and folded into counters keyed by (identity, method) and
(time bucket, identity) (:mod:`~fair4free.data_owner.audit_timeline`), so memory grows with
callers and buckets, never with records. A record the report cannot interpret is counted
(``skipped``), never guessed at; the verifier says what is wrong with it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fair4free.common.errors import ErrorCode, Fair4FreeError
from fair4free.data_owner.audit_record import (
    TERMINAL_OUTCOMES,
    SignedCheckpoint,
    list_segments,
    utc_now,
)
from fair4free.data_owner.audit_recovery import RequestKey, request_key
from fair4free.data_owner.audit_timeline import TimeBucket, Timeline, epoch_of
from fair4free.data_owner.audit_verify import VerifyResult, verify

VerifyStatus = Literal["verified", "unsigned", "failed"]
Refusal = Literal["denied", "failed"]

MAX_CAUSES: Final = 50
"""Distinct refusal or failure causes kept per identity and method; the rest count as OTHER."""
MAX_SERIALS: Final = 20
OTHER: Final = "(other causes)"
NO_STATUS: Final = "(no status)"
NO_METHOD: Final = "(no method)"

HEADLINES: Final[dict[VerifyStatus, str]] = {
    "verified": "VERIFIED: the hash chain, the segments and every checkpoint signature check out",
    "unsigned": (
        "SIGNATURES NOT CHECKED: the hash chain is intact, but no public key was given "
        "(--pubkey), so a log rewritten from scratch would also pass"
    ),
    "failed": (
        "VERIFICATION FAILED: the log was altered or damaged; the numbers below describe the "
        "records as they are now, not as they were written"
    ),
}
UNREADABLE: Final = "cannot read audit segment {path}: {why}"


@dataclass(frozen=True, kw_only=True)
class Verification:
    """The verifier's verdict on the reported log, stated first in every format."""

    status: VerifyStatus
    records: int
    segments: int
    checkpoints: int
    consumer_checkpoints: int
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """Whether nothing was found wrong (an unsigned check found nothing, but proved less)."""
        return self.status != "failed"

    @property
    def headline(self) -> str:
        """One sentence for the top of a report."""
        return HEADLINES[self.status]

    @classmethod
    def of(cls, result: VerifyResult, *, signed: bool, consumer_checkpoints: int) -> Verification:
        """Classify a verifier result; ``signed`` says whether it had the public key."""
        status: VerifyStatus = "failed" if not result.ok else "verified" if signed else "unsigned"
        return cls(
            status=status,
            records=result.records,
            segments=result.segments,
            checkpoints=result.checkpoints,
            consumer_checkpoints=consumer_checkpoints,
            problems=tuple(str(problem) for problem in result.problems),
        )


@dataclass(frozen=True, kw_only=True)
class Cause:
    """Why calls were refused or failed: the gRPC status, or the reason where none was sent.

    Crashes and shutdowns fail a call without a status; their cause is the reason (``crash``).
    """

    outcome: Refusal
    cause: str
    count: int
    latest_reason: str | None


@dataclass(frozen=True, kw_only=True)
class MethodActivity:
    """One identity's calls of one method: a call is a terminal record (completed/denied/failed).

    ``unfinished`` counts requests started but with no terminal record by the end of the log (a
    daemon still running, or a crash not yet recovered). Budgets are the latest values the records
    hold, ``None`` where no record held one.
    """

    identity: str | None
    method: str
    calls: int
    completed: int
    denied: int
    failed: int
    unfinished: int
    rows_requested: int
    rows_returned: int
    budget_used: int | None
    budget_remaining: int | None
    first_ts: str | None
    last_ts: str | None
    causes: tuple[Cause, ...]


TOTALS: Final = (
    "calls", "completed", "denied", "failed", "unfinished", "rows_requested", "rows_returned"
)  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class IdentityActivity:
    """Everything one caller did, by method, and the certificate serials it presented."""

    identity: str | None
    cert_serials: tuple[str, ...]
    methods: tuple[MethodActivity, ...]

    def total(self, name: str) -> int:
        """The sum over methods of one of :data:`TOTALS`."""
        return sum(int(getattr(method, name)) for method in self.methods)


@dataclass(frozen=True, kw_only=True)
class Recovery:
    """A crash the daemon recovered from; ``previous_ts`` is the last record before it."""

    seq: int | None
    ts: str | None
    previous_ts: str | None
    segment: str | None
    truncated_bytes: int | None
    open_requests: int | None


@dataclass(frozen=True, kw_only=True)
class AuditReport:
    """The whole report; renderers only format it. Buckets with no activity are left out."""

    directory: str
    generated: str
    verification: Verification
    first_ts: str | None
    last_ts: str | None
    records: int
    events: int
    skipped: int
    bucket_seconds: int
    identities: tuple[IdentityActivity, ...]
    timeline: tuple[TimeBucket, ...]
    recoveries: tuple[Recovery, ...]

    def total(self, name: str) -> int:
        """The sum over identities of one of :data:`TOTALS`."""
        return sum(identity.total(name) for identity in self.identities)

    @property
    def span(self) -> str:
        """The time range covered, in words."""
        return "no timed records" if self.first_ts is None else f"{self.first_ts} to {self.last_ts}"


def build_report(
    directory: Path,
    *,
    public_key: Ed25519PublicKey | None,
    consumer_checkpoints: Sequence[SignedCheckpoint] = (),
) -> AuditReport:
    """Verify the log in ``directory``, then fold its records into a report.

    :raises Fair4FreeError: FILE_NOT_FOUND if ``directory`` does not exist or a segment cannot be
        read.
    """
    result = verify(directory, public_key=public_key, consumer_checkpoints=consumer_checkpoints)
    verification = Verification.of(
        result, signed=public_key is not None, consumer_checkpoints=len(consumer_checkpoints)
    )
    fold = _Fold()
    for _, path in list_segments(directory):
        fold.segment(path)
    return fold.report(directory, verification)


def _count(value: object) -> int | None:
    """A count field as the writer records it; anything else (a tampered field) is ``None``."""
    return value if type(value) is int and value >= 0 else None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


@dataclass(slots=True)
class _Counts:
    """The mutable counters behind one :class:`MethodActivity`."""

    calls: int = 0
    completed: int = 0
    denied: int = 0
    failed: int = 0
    unfinished: int = 0
    rows_requested: int = 0
    rows_returned: int = 0
    budget_used: int | None = None
    budget_remaining: int | None = None
    first: tuple[int, str] | None = None
    last: tuple[int, str] | None = None
    causes: dict[tuple[Refusal, str], tuple[int, str | None]] = field(default_factory=dict)

    def seen(self, epoch: int | None, ts: str | None) -> None:
        if epoch is None or ts is None:
            return
        if self.first is None or epoch < self.first[0]:
            self.first = (epoch, ts)
        if self.last is None or epoch >= self.last[0]:
            self.last = (epoch, ts)

    def cause(self, outcome: Refusal, event: dict[str, Any]) -> None:
        reason = _text(event.get("reason"))
        key = (outcome, _text(event.get("grpc_status")) or reason or NO_STATUS)
        if key not in self.causes and len(self.causes) >= MAX_CAUSES:
            key = (outcome, OTHER)
        count, latest = self.causes.get(key, (0, None))
        self.causes[key] = (count + 1, latest if reason is None else reason)


@dataclass
class _Fold:
    """One pass over the segments, in order."""

    records: int = 0
    events: int = 0
    skipped: int = 0
    first: tuple[int, str] | None = None
    last: tuple[int, str] | None = None
    counts: dict[tuple[str | None, str], _Counts] = field(default_factory=dict)
    serials: dict[str | None, set[str]] = field(default_factory=dict)
    pending: dict[RequestKey, tuple[str | None, str]] = field(default_factory=dict)
    timeline: Timeline = field(default_factory=Timeline)
    recoveries: list[Recovery] = field(default_factory=list)

    def segment(self, path: Path) -> None:
        try:
            with path.open("rb") as handle:
                for line in handle:
                    self.line(line)
        except OSError as exc:
            raise Fair4FreeError(
                ErrorCode.FILE_NOT_FOUND, UNREADABLE.format(path=path, why=exc.strerror or exc)
            ) from None

    def line(self, line: bytes) -> None:
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON
            record = None
        event = record.get("event") if isinstance(record, dict) else None
        if not isinstance(record, dict) or not isinstance(event, dict):
            self.skipped += 1
            return
        self.records += 1
        ts = _text(record.get("ts"))
        epoch = epoch_of(ts)
        previous = self.last
        if epoch is not None and ts is not None:
            self.first = (epoch, ts) if self.first is None or epoch < self.first[0] else self.first
            self.last = (epoch, ts) if self.last is None or epoch >= self.last[0] else self.last
        kind = record.get("kind")
        if kind == "event":
            self.event(event, epoch, ts)
        elif kind == "recovery":
            self.recoveries.append(
                Recovery(
                    seq=_count(record.get("seq")),
                    ts=ts,
                    previous_ts=None if previous is None else previous[1],
                    segment=_text(event.get("segment")),
                    truncated_bytes=_count(event.get("truncated_bytes")),
                    open_requests=_count(event.get("open_requests")),
                )
            )

    def event(self, event: dict[str, Any], epoch: int | None, ts: str | None) -> None:
        outcome = event.get("outcome")
        identity = _text(event.get("identity"))
        method = _text(event.get("method")) or NO_METHOD
        key = request_key(event)
        if outcome == "started":
            self.events += 1
            if key is not None:
                self.pending[key] = (identity, method)
            return
        if outcome not in TERMINAL_OUTCOMES:
            self.skipped += 1
            return
        self.events += 1
        if key is not None:
            self.pending.pop(key, None)
        counts = self.counts.get((identity, method))
        if counts is None:
            counts = self.counts[(identity, method)] = _Counts()
        requested = _count(event.get("rows_requested")) or 0
        returned = _count(event.get("rows_returned")) or 0
        counts.calls += 1
        counts.rows_requested += requested
        counts.rows_returned += returned
        counts.completed += outcome == "completed"
        counts.denied += outcome == "denied"
        counts.failed += outcome == "failed"
        if outcome == "denied" or outcome == "failed":
            counts.cause(outcome, event)
        used, remaining = _count(event.get("budget_used")), _count(event.get("budget_remaining"))
        counts.budget_used = counts.budget_used if used is None else used
        counts.budget_remaining = counts.budget_remaining if remaining is None else remaining
        counts.seen(epoch, ts)
        serial = _text(event.get("cert_serial"))
        serials = self.serials.setdefault(identity, set())
        if serial is not None and len(serials) < MAX_SERIALS:
            serials.add(serial)
        if epoch is not None:
            self.timeline.add(
                epoch, identity, requested=requested, returned=returned, outcome=outcome
            )

    def report(self, directory: Path, verification: Verification) -> AuditReport:
        for identity, method in self.pending.values():
            self.counts.setdefault((identity, method), _Counts()).unfinished += 1
        by_identity: dict[str | None, list[MethodActivity]] = {}
        for (identity, method), counts in sorted(self.counts.items(), key=_activity_order):
            by_identity.setdefault(identity, []).append(_activity(identity, method, counts))
        return AuditReport(
            directory=str(directory),
            generated=utc_now(),
            verification=verification,
            first_ts=None if self.first is None else self.first[1],
            last_ts=None if self.last is None else self.last[1],
            records=self.records,
            events=self.events,
            skipped=self.skipped,
            bucket_seconds=self.timeline.width,
            identities=tuple(
                IdentityActivity(
                    identity=identity,
                    cert_serials=tuple(sorted(self.serials.get(identity, ()))),
                    methods=tuple(methods),
                )
                for identity, methods in by_identity.items()
            ),
            timeline=self.timeline.buckets(),
            recoveries=tuple(self.recoveries),
        )


def _activity_order(item: tuple[tuple[str | None, str], _Counts]) -> tuple[bool, str, str]:
    (identity, method), _ = item
    return (identity is not None, identity or "", method)


def _activity(identity: str | None, method: str, counts: _Counts) -> MethodActivity:
    causes = tuple(
        Cause(outcome=outcome, cause=cause, count=count, latest_reason=latest)
        for (outcome, cause), (count, latest) in sorted(counts.causes.items())
    )
    return MethodActivity(
        identity=identity,
        method=method,
        calls=counts.calls,
        completed=counts.completed,
        denied=counts.denied,
        failed=counts.failed,
        unfinished=counts.unfinished,
        rows_requested=counts.rows_requested,
        rows_returned=counts.rows_returned,
        budget_used=counts.budget_used,
        budget_remaining=counts.budget_remaining,
        first_ts=None if counts.first is None else counts.first[1],
        last_ts=None if counts.last is None else counts.last[1],
        causes=causes,
    )

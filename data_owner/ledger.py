"""The budget ledger and idempotency record: rows charged per identity and method, in SQLite.

Every row-carrying request is charged once, atomically, before it is answered, and recorded under
its (identity, request id) with a SHA-256 of its payload. A retry with the same id and payload finds
the record and is never charged again; once the answer is stored it gets that same answer back.

How a caller wraps one answer (unary or streamed)::

    reservation = ledger.reserve(identity, method, request_id,
                                 request_hash=payload_digest(payload), rows=rows, limit=budget)
    if reservation.answer is not None:           # a completed earlier attempt: send it again
        send(reservation.answer)
    else:                                       # new, or charged but never completed (a crash)
        answer = compute()                      # the whole answer; a stream packs its messages
        send(ledger.complete(identity, request_id, answer))   # stored first, then sent

``complete`` stores the answer before any byte of it leaves and returns the answer on record,
which is another attempt's if a concurrent retry completed first; sending only that keeps every
answer to one request id identical, so broken streams cannot be used to draw fresh samples for free.

Stored answers are kept until ``prune`` (``fair4free-owner ledger prune``) forgets old ones. A
pruned request keeps its id, rows and hash, so a late retry is refused (ANSWER_PRUNED) instead of
being charged twice or answered with fresh samples; its charge stays, so pruning refunds nothing.

The database runs in WAL mode with ``synchronous=FULL``; each change is one ``BEGIN IMMEDIATE``
transaction, so threads (one connection each) and processes sharing the file serialise their
charges and a budget is never overspent. A charge is committed before ``reserve`` returns and
survives a crash. Open one ``Ledger`` per process (not across ``fork``).
"""

from __future__ import annotations

import datetime
import hashlib
import re
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from fair4free.common.closing import ClosesOnExit
from fair4free.common.errors import ErrorCode, Fair4FreeError
from fair4free.data_owner.ledger_schema import prepare

BUSY_TIMEOUT_SECONDS: Final = 30.0

REQUEST_ID_REUSED: Final = "request id {request_id} reused for a different request"
ANSWER_PRUNED: Final = (
    "the answer to request id {request_id} was pruned from the ledger on {pruned:%Y-%m-%d} UTC; "
    "it was charged once and is not sent again"
)
_HASH = re.compile(r"[0-9a-f]{64}")
_FRAME = struct.Struct(">Q")


class BudgetExhaustedError(Fair4FreeError):
    """A charge that would take a budget past its limit; nothing was charged or recorded."""

    def __init__(self, *, identity: str, method: str, limit: int, used: int, needed: int) -> None:
        self.identity = identity
        self.method = method
        self.limit = limit
        self.used = used
        self.needed = needed
        self.remaining = max(0, limit - used)
        super().__init__(
            ErrorCode.BUDGET_EXHAUSTED,
            f"{method} budget of {identity} exhausted: {needed} rows needed, "
            f"{self.remaining} of {limit} remaining",
        )


@dataclass(frozen=True, kw_only=True)
class Reservation:
    """A request on record: charged now, or found from an earlier attempt (``replayed``)."""

    identity: str
    method: str
    request_id: str
    rows: int
    replayed: bool
    """True if this request id was already on record: nothing was charged by this call."""
    answer: bytes | None
    """The stored answer of a completed earlier attempt; None until ``complete`` stores one."""
    used: int
    """Rows charged to (identity, method) so far, this request included."""
    limit: int

    @property
    def remaining(self) -> int:
        """Rows left in the budget after this request."""
        return max(0, self.limit - self.used)


@dataclass(frozen=True, kw_only=True)
class Usage:
    """One line of a usage report: what one identity drew through one method."""

    identity: str
    method: str
    rows: int
    calls: int
    """Requests charged (replays are not counted again)."""
    pending: int
    """Requests charged whose answer was never stored (cut off by a crash or an error)."""
    updated_at: float


@dataclass(frozen=True, kw_only=True)
class PrunedAnswers:
    """What one prune forgot of one identity's answers through one method."""

    identity: str
    method: str
    answers: int
    rows: int
    """Rows those requests were charged; they stay charged."""
    answer_bytes: int


class Ledger(ClosesOnExit):
    """Budgets and request records in one SQLite file. Thread-safe: a connection per thread."""

    def __init__(self, path: Path, *, clock: Callable[[], float]) -> None:
        self._path = path
        self._clock = clock
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._closed = False

    @classmethod
    def open(cls, path: Path | str, *, clock: Callable[[], float] = time.time) -> Ledger:
        """Open the ledger at ``path``, creating it (and its tables) if it does not exist.

        :param clock: wall-clock seconds for the timestamps on record.
        :raises Fair4FreeError: CONFIG_INVALID if the file cannot be opened as a ledger.
        """
        ledger = cls(Path(path), clock=clock)
        try:
            with ledger._write() as db:
                prepare(db, ledger.path)
        except sqlite3.Error as exc:
            ledger.close()
            raise Fair4FreeError(
                ErrorCode.CONFIG_INVALID, f"ledger {path} cannot be opened: {exc}"
            ) from None
        except BaseException:
            ledger.close()
            raise
        return ledger

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    def reserve(
        self,
        identity: str,
        method: str,
        request_id: str,
        *,
        request_hash: str,
        rows: int,
        limit: int,
    ) -> Reservation:
        """Charge ``rows`` to (identity, method) for this request, or find it on record.

        Atomic: either the request is recorded and charged, or nothing changes. A request id
        already on record with the same method, rows and hash is returned with ``replayed=True``
        and its stored answer (if any), and is not charged again, whatever the limit is now.

        :param request_hash: SHA-256 hex of the request payload (see ``payload_digest``).
        :param limit: the budget of (identity, method) in rows.
        :raises Fair4FreeError: REQUEST_INVALID if the id is on record for a different request;
            ANSWER_PRUNED if it is on record but its answer was pruned.
        :raises BudgetExhaustedError: BUDGET_EXHAUSTED if the charge would pass ``limit``.
        """
        _check_args(request_id, request_hash, rows, limit)
        with self._write() as db:
            found = db.execute(
                "SELECT method, rows, request_hash, answer FROM requests"
                " WHERE identity = ? AND request_id = ?",
                (identity, request_id),
            ).fetchone()
            used = self._used(db, identity, method)
            asked = (method, rows, request_hash)
            if found is not None:
                _refuse_reuse(request_id, tuple(found[:3]), asked)
                return Reservation(
                    identity=identity,
                    method=method,
                    request_id=request_id,
                    rows=rows,
                    replayed=True,
                    answer=found[3],
                    used=used,
                    limit=limit,
                )
            _refuse_pruned(db, identity, request_id, asked)
            if used + rows > limit:
                raise BudgetExhaustedError(
                    identity=identity, method=method, limit=limit, used=used, needed=rows
                )
            now = self._clock()
            db.execute(
                "INSERT INTO charges (identity, method, rows_used, calls, updated_at)"
                " VALUES (?, ?, ?, 1, ?) ON CONFLICT (identity, method) DO UPDATE SET"
                " rows_used = rows_used + excluded.rows_used, calls = calls + 1,"
                " updated_at = excluded.updated_at",
                (identity, method, rows, now),
            )
            db.execute(
                "INSERT INTO requests (identity, request_id, method, rows, request_hash, status,"
                " answer, created_at, completed_at) VALUES (?, ?, ?, ?, ?, 'reserved', NULL, ?,"
                " NULL)",
                (identity, request_id, method, rows, request_hash, now),
            )
        return Reservation(
            identity=identity,
            method=method,
            request_id=request_id,
            rows=rows,
            replayed=False,
            answer=None,
            used=used + rows,
            limit=limit,
        )

    def complete(self, identity: str, request_id: str, answer: bytes) -> bytes:
        """Store the answer of a reserved request; returns the answer to send.

        That is ``answer``, unless an attempt at the same request stored one first: then that
        stored answer, unchanged, so every attempt sends the same bytes.

        :raises LookupError: if the request was never reserved (a bug in the caller).
        """
        with self._write() as db:
            found = db.execute(
                "SELECT answer FROM requests WHERE identity = ? AND request_id = ?",
                (identity, request_id),
            ).fetchone()
            if found is None:
                raise LookupError(f"request {request_id} of {identity} was never reserved")
            if found[0] is not None:
                stored: bytes = found[0]
                return stored
            db.execute(
                "UPDATE requests SET status = 'complete', answer = ?, completed_at = ?"
                " WHERE identity = ? AND request_id = ?",
                (answer, self._clock(), identity, request_id),
            )
        return answer

    def release(self, identity: str, request_id: str) -> bool:
        """Refund a reserved request that produced no answer (it failed validation, say).

        Only a request still without an answer is released, so a completed one can never be
        refunded and re-asked. Returns whether anything was refunded.
        """
        with self._write() as db:
            found = db.execute(
                "SELECT method, rows FROM requests"
                " WHERE identity = ? AND request_id = ? AND status = 'reserved'",
                (identity, request_id),
            ).fetchone()
            if found is None:
                return False
            db.execute(
                "UPDATE charges SET rows_used = rows_used - ?, calls = calls - 1, updated_at = ?"
                " WHERE identity = ? AND method = ?",
                (found[1], self._clock(), identity, found[0]),
            )
            db.execute(
                "DELETE FROM requests WHERE identity = ? AND request_id = ?",
                (identity, request_id),
            )
        return True

    def answer(self, identity: str, request_id: str) -> bytes | None:
        """The stored answer of a request, or None if it is unknown or was never completed."""
        db = self._db()
        found = db.execute(
            "SELECT answer FROM requests WHERE identity = ? AND request_id = ?",
            (identity, request_id),
        ).fetchone()
        return None if found is None else found[0]

    def used(self, identity: str, method: str) -> int:
        """Rows charged to (identity, method) so far."""
        return self._used(self._db(), identity, method)

    def remaining(self, identity: str, method: str, limit: int) -> int:
        """Rows left of a budget of ``limit`` rows for (identity, method)."""
        return max(0, limit - self.used(identity, method))

    def usage(self) -> list[Usage]:
        """Rows and calls charged per identity and method, sorted, for reports."""
        db = self._db()
        found = db.execute(
            "SELECT c.identity, c.method, c.rows_used, c.calls, c.updated_at,"
            " (SELECT COUNT(*) FROM requests r WHERE r.identity = c.identity"
            "  AND r.method = c.method AND r.status = 'reserved')"
            " FROM charges c ORDER BY c.identity, c.method"
        ).fetchall()
        return [
            Usage(
                identity=identity,
                method=method,
                rows=rows,
                calls=calls,
                pending=pending,
                updated_at=updated_at,
            )
            for identity, method, rows, calls, updated_at, pending in found
        ]

    def prune(self, *, completed_before: float) -> list[PrunedAnswers]:
        """Forget the stored answers of requests completed before a time; say what went.

        Charges stay: pruning never refunds a budget. Each pruned request keeps its id, method,
        rows and hash (not its answer), so a late retry is refused with ANSWER_PRUNED rather than
        charged again or answered afresh. One transaction, safe while the daemon runs.
        """
        completed = "FROM requests WHERE status = 'complete' AND completed_at < ?"
        with self._write() as db:
            found = db.execute(
                "SELECT identity, method, COUNT(*), SUM(rows), SUM(LENGTH(answer))"
                f" {completed} GROUP BY identity, method ORDER BY identity, method",
                (completed_before,),
            ).fetchall()
            db.execute(
                "INSERT INTO pruned (identity, request_id, method, rows, request_hash,"
                " completed_at, pruned_at) SELECT identity, request_id, method, rows,"
                f" request_hash, completed_at, ? {completed}",
                (self._clock(), completed_before),
            )
            db.execute(f"DELETE {completed}", (completed_before,))
        return [
            PrunedAnswers(identity=identity, method=method, answers=n, rows=rows, answer_bytes=size)
            for identity, method, n, rows, size in found
        ]

    def compact(self) -> int:
        """Give the space of deleted answers back to the file system; returns the bytes freed.

        Deleting rows only marks their pages free for later answers, so after ``prune`` the file
        is as large as before. VACUUM rewrites it without them; it needs free disk about the
        size of the ledger and raises ``sqlite3.OperationalError`` (nothing lost) where there is
        none. A daemon serving the same file waits for it at most the busy timeout.
        """
        db = self._db()
        free_pages, page_size = (
            int(db.execute(f"PRAGMA {name}").fetchone()[0])
            for name in ("freelist_count", "page_size")
        )
        db.execute("VACUUM")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the rewrite passes through the WAL file
        return free_pages * page_size

    def close(self) -> None:
        """Close every thread's connection; the ledger cannot be used afterwards."""
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for connection in connections:
            connection.close()

    @staticmethod
    def _used(db: sqlite3.Connection, identity: str, method: str) -> int:
        found = db.execute(
            "SELECT rows_used FROM charges WHERE identity = ? AND method = ?", (identity, method)
        ).fetchone()
        return 0 if found is None else int(found[0])

    def _db(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use."""
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if self._closed:
            raise RuntimeError(f"ledger {self._path} is closed")
        if connection is not None:
            return connection
        with self._lock:
            if self._closed:
                raise RuntimeError(f"ledger {self._path} is closed")
            connection = sqlite3.connect(
                self._path,
                timeout=BUSY_TIMEOUT_SECONDS,
                isolation_level=None,  # transactions are explicit: BEGIN IMMEDIATE ... COMMIT
                check_same_thread=False,  # used by its own thread only; closed by close()
            )
            self._connections.append(connection)
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA synchronous = FULL")
        self._local.connection = connection
        return connection

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, holding SQLite's write lock from its start."""
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise


def payload_digest(payload: bytes) -> str:
    """SHA-256 hex of a request payload, e.g. ``request.SerializeToString(deterministic=True)``."""
    return hashlib.sha256(payload).hexdigest()


def pack_messages(messages: Sequence[bytes]) -> bytes:
    """One answer from the serialised messages of a stream: each prefixed by its length."""
    return b"".join(_FRAME.pack(len(message)) + message for message in messages)


def unpack_messages(answer: bytes) -> list[bytes]:
    """The serialised messages that ``pack_messages`` packed, in order.

    :raises ValueError: if ``answer`` is not a packed sequence.
    """
    messages: list[bytes] = []
    offset = 0
    while offset < len(answer):
        if offset + _FRAME.size > len(answer):
            raise ValueError("packed messages end inside a length prefix")
        (length,) = _FRAME.unpack_from(answer, offset)
        offset += _FRAME.size
        if offset + length > len(answer):
            raise ValueError("packed messages end inside a message")
        messages.append(answer[offset : offset + length])
        offset += length
    return messages


def _refuse_reuse(
    request_id: str, on_record: tuple[object, ...], asked: tuple[str, int, str]
) -> None:
    """Refuse an id on record for another request: its answer (or refusal) is not this one's."""
    if on_record != asked:
        raise Fair4FreeError(
            ErrorCode.REQUEST_INVALID, REQUEST_ID_REUSED.format(request_id=request_id)
        )


def _refuse_pruned(
    db: sqlite3.Connection, identity: str, request_id: str, asked: tuple[str, int, str]
) -> None:
    """Refuse an id whose answer was pruned: it was charged once and can be answered never again."""
    found = db.execute(
        "SELECT method, rows, request_hash, pruned_at FROM pruned"
        " WHERE identity = ? AND request_id = ?",
        (identity, request_id),
    ).fetchone()
    if found is None:
        return
    _refuse_reuse(request_id, tuple(found[:3]), asked)
    pruned = datetime.datetime.fromtimestamp(found[3], datetime.UTC)
    raise Fair4FreeError(
        ErrorCode.ANSWER_PRUNED, ANSWER_PRUNED.format(request_id=request_id, pruned=pruned)
    )


def _check_args(request_id: str, request_hash: str, rows: int, limit: int) -> None:
    if not request_id:
        raise Fair4FreeError(ErrorCode.REQUEST_INVALID, "request_id must not be empty")
    if not _HASH.fullmatch(request_hash):
        raise ValueError(f"request_hash must be SHA-256 hex, got {request_hash!r}")
    if rows < 0 or limit < 0:
        raise ValueError(f"rows and limit must be non-negative, got {rows} and {limit}")

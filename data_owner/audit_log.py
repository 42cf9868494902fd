"""The daemon's tamper-evident audit log: append-only, hash-chained, fsynced, signed, fail-closed.

The record format is in :mod:`fair4free.data_owner.audit_record`. How the daemon uses it::

    log = AuditLog.open(state_dir / "audit", signing_key=load_signing_key(key_path))
    log.append(AuditEvent(server_id=..., method=..., outcome="started", request_id=...))
    ...                                          # answer the call
    log.append(AuditEvent(..., outcome="completed", response_sha256=...))
    trailer = log.latest_checkpoint().to_compact()   # for the consumer to keep
    log.close()

- One writer: a lock serialises appends in the process, an exclusive ``flock`` on ``audit.lock``
  keeps other processes out. Segments are opened ``O_APPEND``; ``append`` returns only after the
  record is written and ``fsync``-ed.
- Fail closed: any ``OSError`` raises ``AUDIT_UNAVAILABLE`` and leaves the log failed: every later
  ``append`` raises too, nothing is retried. Reopening (a restart) recovers.
- Checkpoints: every ``checkpoint_every`` records or ``checkpoint_seconds`` seconds (a timer
  covers an idle log), on open, on close and at every seal, a signed checkpoint of the head is
  appended and kept as :meth:`AuditLog.latest_checkpoint`.
- Segments: once a segment reaches ``segment_bytes`` a seal is written and fsynced, the next
  segment is created (``O_EXCL``) and the directory fsynced; the chain continues from the seal.
- Crash recovery on open, unless the log ended with a clean close: a torn final line (no newline,
  or not a valid record) is cut, a ``recovery`` record says what was cut, and each request whose
  last record is ``started`` gets a ``failed`` record with reason ``crash``. Any other damage
  refuses to open (run the verifier); the log is never "repaired" beyond its torn tail.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import math
import os
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fair4free.common.closing import ClosesOnExit
from fair4free.common.errors import ErrorCode, Fair4FreeError
from fair4free.data_owner.audit_record import (
    TERMINAL_OUTCOMES,
    AuditEvent,
    Kind,
    SignedCheckpoint,
    Trigger,
    encode_record,
    line_digest,
    segment_name,
    utc_now,
)
from fair4free.data_owner.audit_recovery import Found, RequestKey, request_key, scan

logger = logging.getLogger(__name__)

MIB: Final = 1024 * 1024
LOCK_FILE: Final = "audit.lock"
FILE_MODE: Final = 0o600
DIR_MODE: Final = 0o700

WRITE_FAILED: Final = "cannot write audit log {path}: {why}"
FAILED_EARLIER: Final = "the audit log failed earlier and stays closed until a restart ({why})"
CLOSED: Final = "the audit log is closed"
LOCKED: Final = "audit log {directory} is open in another process"
BAD_SETTING: Final = "audit setting {name} must be positive, got {value}"


class AuditLog(ClosesOnExit):
    """An open audit log directory; create with :meth:`open`, then ``append`` and ``close``."""

    def __init__(
        self,
        directory: Path,
        *,
        signing_key: Ed25519PrivateKey,
        checkpoint_every: int,
        checkpoint_seconds: float,
        segment_bytes: int,
        lock_fd: int,
        found: Found,
    ) -> None:
        self._directory = directory
        self._key = signing_key
        self._every = checkpoint_every
        self._seconds = checkpoint_seconds
        self._segment_bytes = segment_bytes
        self._lock_fd = lock_fd
        self._lock = threading.Lock()
        self._fd = -1
        self._segment = found.segment
        self._size = found.size
        self._next_seq = found.next_seq
        self._prev = found.prev
        self._pending = 0
        self._last_checkpoint_at = time.monotonic()
        self._latest: SignedCheckpoint | None = None
        self._open: dict[RequestKey, dict[str, Any]] = {}
        self._failure: str | None = None
        self._closed = False
        self._timer: threading.Timer | None = None

    @classmethod
    def open(
        cls,
        directory: Path,
        *,
        signing_key: Ed25519PrivateKey,
        checkpoint_every: int = 100,
        checkpoint_seconds: float = 60.0,
        segment_bytes: int = 64 * MIB,
    ) -> AuditLog:
        """Open (or create) the log in ``directory``, recover a crash, and write a checkpoint.

        :raises Fair4FreeError: AUDIT_UNAVAILABLE if the directory cannot be written, another
            process holds the log, or a record before the torn tail is damaged.
        """
        settings = {"checkpoint_every": checkpoint_every, "segment_bytes": segment_bytes}
        for name, value in {**settings, "checkpoint_seconds": checkpoint_seconds}.items():
            if not value > 0 or (isinstance(value, float) and math.isnan(value)):
                raise Fair4FreeError(
                    ErrorCode.CONFIG_INVALID, BAD_SETTING.format(name=name, value=value)
                )
        lock_fd = _lock_directory(directory)
        try:
            found = scan(directory)
        except BaseException:
            os.close(lock_fd)
            raise
        log = cls(
            directory,
            signing_key=signing_key,
            checkpoint_every=checkpoint_every,
            checkpoint_seconds=checkpoint_seconds,
            segment_bytes=segment_bytes,
            lock_fd=lock_fd,
            found=found,
        )
        with log._lock:
            try:
                log._open_segment(found.segment, new=found.new_segment)
                if not found.clean:
                    log._recover(found)
                log._checkpoint("open")
                log._after_record()
            except BaseException:
                log._release()
                raise
        return log

    @property
    def directory(self) -> Path:
        """The folder holding the segments."""
        return self._directory

    @property
    def failed(self) -> bool:
        """Whether a write failed, so that every append now raises AUDIT_UNAVAILABLE."""
        return self._failure is not None

    def append(self, event: AuditEvent) -> int:
        """Write ``event`` as the next record, fsync it, and return its ``seq``.

        :raises Fair4FreeError: AUDIT_UNAVAILABLE if it cannot be written, or a write failed
            before; the caller must not answer.
        """
        with self._lock:
            fields = event.to_dict()
            seq = self._write("event", fields)
            self._track(fields)
            self._pending += 1
            self._after_record()
            return seq

    def checkpoint(self) -> SignedCheckpoint:
        """Sign the current head now (a checkpoint record) and return that checkpoint.

        :raises Fair4FreeError: AUDIT_UNAVAILABLE as :meth:`append` does.
        """
        with self._lock:
            return self._checkpoint("request")

    def latest_checkpoint(self) -> SignedCheckpoint:
        """The last checkpoint written: what the daemon sends consumers in trailing metadata."""
        with self._lock:
            assert self._latest is not None  # open() writes one
            return self._latest

    def close(self) -> None:
        """Fail any requests still open (reason ``shutdown``), write a closing checkpoint, release.

        A failed log is released without writing. Closing twice does nothing.

        :raises Fair4FreeError: AUDIT_UNAVAILABLE if the closing records cannot be written.
        """
        with self._lock:
            if self._closed:
                return
            self._cancel_timer()
            try:
                if self._failure is None:
                    for started in list(self._open.values()):
                        self._write_failed(started, "shutdown")
                    self._checkpoint("close")
            finally:
                self._release()

    # Everything below runs with self._lock held.

    def _release(self) -> None:
        self._closed = True
        self._cancel_timer()
        for fd in (self._fd, self._lock_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fd = self._lock_fd = -1

    def _write(self, kind: Kind, event: dict[str, Any], ts: str | None = None) -> int:
        if self._closed:
            raise Fair4FreeError(ErrorCode.AUDIT_UNAVAILABLE, CLOSED)
        if self._failure is not None:
            why = FAILED_EARLIER.format(why=self._failure)
            raise Fair4FreeError(ErrorCode.AUDIT_UNAVAILABLE, why)
        line = encode_record(seq=self._next_seq, prev=self._prev, kind=kind, event=event, ts=ts)
        try:
            view = memoryview(line)
            while view:  # a short write (a full disk) is retried until it raises
                view = view[os.write(self._fd, view) :]
            os.fsync(self._fd)
        except OSError as exc:
            self._fail(exc)
        seq = self._next_seq
        self._next_seq += 1
        self._prev = line_digest(line)
        self._size += len(line)
        return seq

    def _fail(self, exc: OSError) -> None:
        path = self._directory / segment_name(self._segment)
        self._failure = WRITE_FAILED.format(path=path, why=exc.strerror or exc)
        self._cancel_timer()
        logger.error("audit log failed: %s", self._failure)
        raise Fair4FreeError(ErrorCode.AUDIT_UNAVAILABLE, self._failure) from None

    def _track(self, event: dict[str, Any]) -> None:
        key = request_key(event)
        if key is not None and event["outcome"] == "started":
            self._open[key] = event
        elif key is not None and event["outcome"] in TERMINAL_OUTCOMES:
            self._open.pop(key, None)

    def _write_failed(self, started: dict[str, Any], reason: str) -> None:
        fields = replace(AuditEvent.from_dict(started), outcome="failed", reason=reason).to_dict()
        self._write("event", fields)
        self._track(fields)
        self._pending += 1

    def _after_record(self) -> None:
        if self._size >= self._segment_bytes:
            self._seal()
        elif self._pending >= self._every:
            self._checkpoint("count")
        elif self._pending and time.monotonic() - self._last_checkpoint_at >= self._seconds:
            self._checkpoint("time")
        else:
            self._arm_timer()

    def _sign_head(self) -> SignedCheckpoint:
        return SignedCheckpoint.sign(
            self._key, seq=self._next_seq - 1, head_hash=self._prev, ts=utc_now()
        )

    def _checkpoint(self, trigger: Trigger) -> SignedCheckpoint:
        checkpoint = self._sign_head()
        self._write("checkpoint", {**checkpoint.to_event(), "trigger": trigger}, checkpoint.ts)
        self._signed(checkpoint)
        return checkpoint

    def _signed(self, checkpoint: SignedCheckpoint) -> None:
        self._latest = checkpoint
        self._pending = 0
        self._last_checkpoint_at = time.monotonic()
        self._cancel_timer()

    def _seal(self) -> None:
        checkpoint = self._sign_head()
        sealed = segment_name(self._segment)
        self._write("seal", {**checkpoint.to_event(), "segment": sealed}, checkpoint.ts)
        self._signed(checkpoint)
        os.close(self._fd)
        self._fd = -1
        self._open_segment(self._segment + 1, new=True)

    def _open_segment(self, number: int, *, new: bool) -> None:
        path = self._directory / segment_name(number)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | (os.O_EXCL if new else 0)
        try:
            self._fd = os.open(path, flags, FILE_MODE)
            if new:
                _fsync_directory(self._directory)
        except OSError as exc:
            self._segment = number
            self._fail(exc)
        self._segment = number
        if new:
            self._size = 0

    def _recover(self, found: Found) -> None:
        """Say what the crash cut, then fail every request it left open."""
        event: dict[str, Any] = {
            "reason": "crash",
            "segment": segment_name(found.segment),
            "truncated_bytes": len(found.truncated),
            "open_requests": len(found.open_requests),
        }
        if found.truncated:
            event["truncated_sha256"] = hashlib.sha256(found.truncated).hexdigest()
        self._write("recovery", event)
        self._pending += 1
        for started in found.open_requests.values():
            self._write_failed(started, "crash")
        logger.warning(
            "audit log recovered from a crash: cut %d torn bytes, failed %d open requests",
            len(found.truncated),
            len(found.open_requests),
        )

    def _arm_timer(self) -> None:
        if self._timer is None and self._pending and math.isfinite(self._seconds):
            delay = max(0.0, self._seconds - (time.monotonic() - self._last_checkpoint_at))
            self._timer = threading.Timer(delay, self._on_timer)
            self._timer.daemon = True
            self._timer.start()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        with self._lock:
            self._timer = None
            if self._closed or self._failure is not None or not self._pending:
                return
            try:
                self._after_record()
            except Fair4FreeError:
                return  # logged by _fail; the log is failed and the next append raises


def _lock_directory(directory: Path) -> int:
    """Create the directory if needed and hold its lock file exclusively."""
    try:
        directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    except OSError as exc:
        raise Fair4FreeError(
            ErrorCode.AUDIT_UNAVAILABLE,
            WRITE_FAILED.format(path=directory, why=exc.strerror or exc),
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise Fair4FreeError(
            ErrorCode.AUDIT_UNAVAILABLE, LOCKED.format(directory=directory)
        ) from None
    return fd


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

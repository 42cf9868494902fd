"""Opening an audit log after a crash: find the head, cut a torn tail, list what was left open.

Only the final line of the last segment may be cut, and only if it is torn: it has no newline, or
is not a valid record (a write the crash interrupted, which was never acknowledged). Records since
the last clean close are read back, newest first, to find requests whose last record is
``started``; the writer fails those with reason ``crash``. Any other damage is refused, never
repaired: the verifier must look at it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from fair4free.common.errors import ErrorCode, Fair4FreeError
from fair4free.data_owner.audit_record import (
    GENESIS,
    TERMINAL_OUTCOMES,
    RecordError,
    decode_record,
    line_digest,
    list_segments,
)

UNREADABLE: Final = "cannot read or repair audit log {path}: {why}"
DAMAGED: Final = "audit log {segment} line {line} is damaged ({why}); run the audit verifier"

RequestKey = tuple[str, str]
"""(identity, request id): request ids are unique per caller."""


def request_key(event: dict[str, Any]) -> RequestKey | None:
    """The key of the request an event belongs to, or ``None`` for events of no request."""
    request_id = event.get("request_id")
    if request_id is None:
        return None
    return (str(event.get("identity", "")), str(request_id))


@dataclass(kw_only=True)
class Found:
    """What opening found: where to continue, whether the last run closed cleanly, what is open."""

    segment: int = 1
    new_segment: bool = True
    size: int = 0
    next_seq: int = 0
    prev: str = GENESIS
    clean: bool = True
    truncated: bytes = b""
    open_requests: dict[RequestKey, dict[str, Any]] = field(default_factory=dict)


def scan(directory: Path) -> Found:
    """Find the head, cut a torn tail, and collect what a crash left open since the last close.

    :raises Fair4FreeError: AUDIT_UNAVAILABLE if a segment cannot be read or cut, or a record
        other than a torn final line is damaged.
    """
    try:
        segments = list_segments(directory)
        if not segments:
            return Found()
        last_number, last_path = segments[-1]
        data = last_path.read_bytes()
        good = _intact_length(data)
        if good < len(data):
            with open(last_path, "r+b") as handle:
                handle.truncate(good)
                handle.flush()
                os.fsync(handle.fileno())
    except OSError as exc:
        raise Fair4FreeError(
            ErrorCode.AUDIT_UNAVAILABLE,
            UNREADABLE.format(path=directory, why=exc.strerror or exc),
        ) from None
    found = Found(segment=last_number, new_segment=False, size=good, truncated=data[good:])
    tail: list[dict[str, Any]] = []  # records since the last clean close, newest first
    head: tuple[dict[str, Any], bytes] | None = None
    for position, (number, path) in enumerate(reversed(segments)):
        content = data[:good] if position == 0 else _read(path)
        lines = content.split(b"\n")[:-1]
        for index in range(len(lines) - 1, -1, -1):
            try:
                record = decode_record(lines[index])
            except RecordError as exc:
                raise Fair4FreeError(
                    ErrorCode.AUDIT_UNAVAILABLE,
                    DAMAGED.format(segment=path.name, line=index + 1, why=exc),
                ) from None
            if head is None:
                head = (record, lines[index])
                found.new_segment = record["kind"] == "seal" and number == last_number
            if record["kind"] == "checkpoint" and record["event"].get("trigger") == "close":
                break
            tail.append(record)
        else:
            continue
        break
    if head is not None:
        found.next_seq = head[0]["seq"] + 1
        found.prev = line_digest(head[1])
    if found.new_segment:
        found.segment, found.size = last_number + 1, 0
    found.clean = not tail and not found.truncated
    for record in reversed(tail):
        key = request_key(record["event"]) if record["kind"] == "event" else None
        if key is not None and record["event"]["outcome"] == "started":
            found.open_requests[key] = record["event"]
        elif key is not None and record["event"]["outcome"] in TERMINAL_OUTCOMES:
            found.open_requests.pop(key, None)
    return found


def _intact_length(data: bytes) -> int:
    """The length of ``data`` without a torn final line: one with no newline, or not a record."""
    end = data.rfind(b"\n", 0, len(data) - 1) + 1 if data.endswith(b"\n") else None
    if end is None:  # no newline at the end: the text after the last newline is torn
        return data.rfind(b"\n") + 1
    try:
        decode_record(data[end:-1])
    except RecordError:
        return end
    return len(data)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise Fair4FreeError(
            ErrorCode.AUDIT_UNAVAILABLE, UNREADABLE.format(path=path, why=exc.strerror or exc)
        ) from None

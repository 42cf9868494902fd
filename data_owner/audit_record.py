"""The audit record format: canonical JSON lines, hash-chained, with Ed25519-signed checkpoints.

Every line of an audit segment (``audit-000001.jsonl``, ...) is the canonical JSON of one record
(sorted keys, no whitespace, ASCII and hence UTF-8), ended by a newline::

    {"event":{...},"hash":"<hex>","kind":"event","prev":"<hex>","seq":41,"ts":"...Z"}

- ``seq`` counts records from 0, across segments.
- ``prev`` is the SHA-256 of the previous record's line (without its newline); ``GENESIS`` for the
  very first. The chain crosses segments: a segment ends with a ``seal`` record and the first
  record of the next segment chains to that seal's line.
- ``hash`` is the SHA-256 of the canonical JSON of the record without ``hash``.
- ``ts`` is the UTC time of writing, ISO-8601 with microseconds.
- ``kind`` says what ``event`` holds:

  - ``event``: the fields of :class:`AuditEvent` that are set; payload hashes, never payloads;
  - ``checkpoint``: a :class:`SignedCheckpoint` of the record before it, and its ``trigger``;
  - ``seal``: the same, closing the ``segment`` it names;
  - ``recovery``: what opening the log after a crash found (see :data:`RECOVERY_FIELDS`).

A checkpoint in record n always covers record n - 1: its ``seq`` is n - 1 and its ``head_hash``
is record n's ``prev``. Nothing else may appear in a record; the verifier refuses other fields.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Final, Literal, get_args

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fair4free.common.codec import canonical_json
from fair4free.common.errors import ErrorCode, Fair4FreeError

GENESIS: Final = "0" * 64
"""The ``prev`` of the very first record (and ``head_hash`` of a checkpoint of an empty log)."""

Kind = Literal["event", "checkpoint", "seal", "recovery"]
Outcome = Literal["started", "completed", "failed", "denied"]
Trigger = Literal["open", "count", "time", "request", "close"]
TERMINAL_OUTCOMES: Final = frozenset({"completed", "failed", "denied"})

RECORD_FIELDS: Final = frozenset({"seq", "prev", "hash", "ts", "kind", "event"})
SIGNED_FIELDS: Final = frozenset({"seq", "head_hash", "ts"})
CHECKPOINT_FIELDS: Final = SIGNED_FIELDS | {"signature", "trigger"}
SEAL_FIELDS: Final = SIGNED_FIELDS | {"signature", "segment"}
RECOVERY_FIELDS: Final = frozenset(
    {"reason", "segment", "truncated_bytes", "truncated_sha256", "open_requests"}
)
"""``segment`` is the file whose torn tail was cut (``truncated_bytes`` long, SHA-256 given);
``open_requests`` counts the requests that get a ``failed`` record with reason ``crash``."""

MAX_TEXT: Final = 1024
"""The longest text an event field may hold: identifiers and short reasons, never payloads."""

SEGMENT_PATTERN: Final = re.compile(r"audit-(\d{6})\.jsonl")

NOT_JSON: Final = "the line is not a JSON object"
TOO_DEEP: Final = "the line nests deeper than any record does"
NOT_CANONICAL: Final = "the line is not canonical JSON"
BAD_FIELDS: Final = "the record has fields {got}, expected {expected}"
BAD_VALUE: Final = "the record's {field} is malformed"
UNDOCUMENTED: Final = "the {kind} record holds undocumented fields {names}"
BAD_HASH: Final = "the record's hash does not match its content"
BAD_CHECKPOINT: Final = "malformed audit checkpoint: {why}"

_HEX64 = re.compile(r"[0-9a-f]{64}")
_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
_SHA256_FIELDS = ("model_hash", "request_sha256", "response_sha256")
_COUNT_FIELDS = ("rows_requested", "rows_returned", "budget_used", "budget_remaining")


class RecordError(ValueError):
    """A line that is not a well-formed, self-consistent record; the message says why."""


@dataclass(frozen=True, kw_only=True)
class AuditEvent:
    """What the daemon records about one call at one stage (``outcome``); unset fields are omitted.

    Payloads are never recorded, only their SHA-256 (``request_sha256``, ``response_sha256``).
    """

    server_id: str
    method: str
    outcome: Outcome
    request_id: str | None = None
    identity: str | None = None
    cert_serial: str | None = None
    cert_fingerprint: str | None = None
    peer: str | None = None
    model_id: str | None = None
    model_hash: str | None = None
    rows_requested: int | None = None
    rows_returned: int | None = None
    request_sha256: str | None = None
    response_sha256: str | None = None
    grpc_status: str | None = None
    latency_ms: float | None = None
    budget_used: int | None = None
    budget_remaining: int | None = None
    reason: str | None = None

    def __post_init__(self) -> None:
        if self.outcome not in get_args(Outcome):
            raise ValueError(f"audit outcome must be one of {get_args(Outcome)}: {self.outcome!r}")
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, str) and len(value) > MAX_TEXT:
                raise ValueError(f"audit field {item.name} is over {MAX_TEXT} characters")
        for name in _SHA256_FIELDS:
            value = getattr(self, name)
            if value is not None and not _HEX64.fullmatch(value):
                raise ValueError(f"audit field {name} must be a lowercase hex SHA-256")
        for name in _COUNT_FIELDS:
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or value < 0):
                raise ValueError(f"audit field {name} must be a count, got {value!r}")
        if self.latency_ms is not None and not (
            math.isfinite(self.latency_ms) and self.latency_ms >= 0
        ):
            raise ValueError(f"audit latency must be finite and >= 0, got {self.latency_ms}")

    def to_dict(self) -> dict[str, Any]:
        """The ``event`` object of the record: every field that is set."""
        values = ((item.name, getattr(self, item.name)) for item in fields(self))
        return {name: value for name, value in values if value is not None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuditEvent:
        """Rebuild an event from a record's ``event`` object (as recovery does)."""
        return cls(**dict(data))


EVENT_FIELDS: Final = frozenset(item.name for item in fields(AuditEvent))
FIELDS_BY_KIND: Final[Mapping[str, frozenset[str]]] = {
    "event": EVENT_FIELDS,
    "checkpoint": CHECKPOINT_FIELDS,
    "seal": SEAL_FIELDS,
    "recovery": RECOVERY_FIELDS,
}


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, kw_only=True)
class SignedCheckpoint:
    """The owner's signed statement that record ``seq`` of its log has line hash ``head_hash``.

    The daemon hands these to consumers (:meth:`to_compact`, one ASCII token); a consumer who keeps
    them can later prove that the log was cut or rewritten behind that point.
    """

    seq: int
    head_hash: str
    ts: str
    signature: bytes

    @staticmethod
    def _payload(seq: int, head_hash: str, ts: str) -> bytes:
        return canonical_json({"seq": seq, "head_hash": head_hash, "ts": ts}).encode("ascii")

    @classmethod
    def sign(cls, key: Ed25519PrivateKey, *, seq: int, head_hash: str, ts: str) -> SignedCheckpoint:
        """Sign the canonical JSON of ``{seq, head_hash, ts}``."""
        signature = key.sign(cls._payload(seq, head_hash, ts))
        return cls(seq=seq, head_hash=head_hash, ts=ts, signature=signature)

    def is_signed_by(self, public_key: Ed25519PublicKey) -> bool:
        """Tell whether ``public_key`` made this signature over exactly these fields."""
        try:
            public_key.verify(self.signature, self._payload(self.seq, self.head_hash, self.ts))
        except InvalidSignature:
            return False
        return True

    def to_compact(self) -> str:
        """``base64url(canonical JSON) "." base64url(signature)``, fit for gRPC metadata."""
        payload = self._payload(self.seq, self.head_hash, self.ts)
        return f"{_b64encode(payload)}.{_b64encode(self.signature)}"

    @classmethod
    def from_compact(cls, token: str) -> SignedCheckpoint:
        """Parse :meth:`to_compact`'s form; the signature is not checked here.

        :raises Fair4FreeError: AUDIT_CHECKPOINT_INVALID saying what is malformed.
        """
        payload_text, dot, signature_text = token.strip().partition(".")
        try:
            if not dot:
                raise ValueError("no '.' between payload and signature")
            payload = _b64decode(payload_text)
            signature = _b64decode(signature_text)
            fields_ = json.loads(payload)
            if not isinstance(fields_, dict) or set(fields_) != SIGNED_FIELDS:
                raise ValueError(f"the payload must hold exactly {sorted(SIGNED_FIELDS)}")
            checkpoint = cls._checked(fields_, signature)
            if cls._payload(checkpoint.seq, checkpoint.head_hash, checkpoint.ts) != payload:
                raise ValueError("the payload is not canonical JSON")
        except (ValueError, binascii.Error) as exc:
            raise Fair4FreeError(
                ErrorCode.AUDIT_CHECKPOINT_INVALID, BAD_CHECKPOINT.format(why=exc)
            ) from None
        except RecursionError:  # a consumer-supplied token nested "[[[[..." past the stack
            raise Fair4FreeError(
                ErrorCode.AUDIT_CHECKPOINT_INVALID, BAD_CHECKPOINT.format(why=TOO_DEEP)
            ) from None
        return checkpoint

    def to_event(self) -> dict[str, Any]:
        """The fields a checkpoint or seal record holds (the record adds its own)."""
        return {
            "seq": self.seq,
            "head_hash": self.head_hash,
            "ts": self.ts,
            "signature": _b64encode(self.signature),
        }

    @classmethod
    def from_event(cls, event: Mapping[str, Any]) -> SignedCheckpoint:
        """Read the checkpoint held by a checkpoint or seal record.

        :raises RecordError: if a field is missing or malformed.
        """
        try:
            return cls._checked(event, _b64decode(str(event["signature"])))
        except (KeyError, ValueError, binascii.Error) as exc:
            raise RecordError(BAD_VALUE.format(field="checkpoint")) from exc

    @classmethod
    def _checked(cls, data: Mapping[str, Any], signature: bytes) -> SignedCheckpoint:
        seq, head_hash, ts = data["seq"], data["head_hash"], data["ts"]
        if type(seq) is not int or seq < -1:
            raise ValueError(f"seq must be an integer >= -1, got {seq!r}")
        if not isinstance(head_hash, str) or not _HEX64.fullmatch(head_hash):
            raise ValueError("head_hash must be a lowercase hex SHA-256")
        if not isinstance(ts, str) or not _TIMESTAMP.fullmatch(ts):
            raise ValueError("ts must be a UTC timestamp with microseconds")
        if len(signature) != 64:
            raise ValueError("an Ed25519 signature is 64 bytes")
        return cls(seq=seq, head_hash=head_hash, ts=ts, signature=signature)


def utc_now() -> str:
    """The current UTC time as ``YYYY-MM-DDTHH:MM:SS.ffffffZ``."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def line_digest(line: bytes) -> str:
    """The hex SHA-256 of a record's line, without its newline: the next record's ``prev``."""
    return hashlib.sha256(line.removesuffix(b"\n")).hexdigest()


def encode_record(
    *, seq: int, prev: str, kind: Kind, event: Mapping[str, Any], ts: str | None = None
) -> bytes:
    """One record as its line, newline included."""
    body = {"seq": seq, "prev": prev, "ts": ts or utc_now(), "kind": kind, "event": dict(event)}
    body["hash"] = hashlib.sha256(canonical_json(body).encode("ascii")).hexdigest()
    return canonical_json(body).encode("ascii") + b"\n"


def decode_record(line: bytes) -> dict[str, Any]:
    """Parse and check one line (without its newline): fields, types, canonical form, hash.

    It does not check the chain (``seq``, ``prev``) or signatures; those need the neighbours.

    :raises RecordError: naming the first thing wrong.
    """
    try:
        record = json.loads(line)
    except ValueError:  # includes UnicodeDecodeError
        raise RecordError(NOT_JSON) from None
    except RecursionError:  # "[[[[..." is valid JSON to the grammar, but not to the stack
        raise RecordError(TOO_DEEP) from None
    if not isinstance(record, dict):
        raise RecordError(NOT_JSON)
    if set(record) != RECORD_FIELDS:
        raise RecordError(BAD_FIELDS.format(got=sorted(record), expected=sorted(RECORD_FIELDS)))
    seq, kind, event = record["seq"], record["kind"], record["event"]
    checks = {
        "seq": type(seq) is int and seq >= 0,
        "prev": isinstance(record["prev"], str) and bool(_HEX64.fullmatch(record["prev"])),
        "hash": isinstance(record["hash"], str) and bool(_HEX64.fullmatch(record["hash"])),
        "ts": isinstance(record["ts"], str) and bool(_TIMESTAMP.fullmatch(record["ts"])),
        "kind": kind in FIELDS_BY_KIND,
        "event": isinstance(event, dict),
    }
    for name, good in checks.items():
        if not good:
            raise RecordError(BAD_VALUE.format(field=name))
    extra = set(event) - FIELDS_BY_KIND[kind]
    if extra:
        raise RecordError(UNDOCUMENTED.format(kind=kind, names=sorted(extra)))
    try:  # NaN or Infinity parse, but have no canonical form
        canonical = canonical_json(record).encode("ascii")
        body = {name: value for name, value in record.items() if name != "hash"}
        digest = hashlib.sha256(canonical_json(body).encode("ascii")).hexdigest()
    except ValueError:
        raise RecordError(NOT_CANONICAL) from None
    except RecursionError:  # nesting just shallow enough to parse can be too deep to encode
        raise RecordError(TOO_DEEP) from None
    if canonical != line:
        raise RecordError(NOT_CANONICAL)
    if digest != record["hash"]:
        raise RecordError(BAD_HASH)
    return record


def segment_name(number: int) -> str:
    """The file name of segment ``number`` (from 1)."""
    return f"audit-{number:06d}.jsonl"


def list_segments(directory: Path) -> list[tuple[int, Path]]:
    """The segment files in ``directory`` as (number, path), by number; other files are ignored.

    :raises OSError: if the directory cannot be listed.
    """
    found = []
    for path in directory.iterdir():
        match = SEGMENT_PATTERN.fullmatch(path.name)
        if match is not None:
            found.append((int(match.group(1)), path))
    return sorted(found)

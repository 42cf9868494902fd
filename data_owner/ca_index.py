"""The CA's record of every client certificate it issued and revoked, kept as one JSON file.

Revoking needs the serial of what was issued, and an audit needs to know who was granted which
identity, when, and for which key. So every issuance is recorded here *before* the certificate is
handed out (a certificate that exists can always be found and revoked), and the number of the last
published revocation list lives here too, so that numbers only ever increase.

The file is plain JSON, never pickle; it is replaced atomically and read strictly: a damaged or
foreign index is refused with its path, never guessed at.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Any

from fair4free.common.errors import ErrorCode, Fair4FreeError
from fair4free.common.secure_files import PUBLIC_MODE, replace_file

INDEX_FILE = "index.json"
"""File name of the index inside a PKI directory."""

INDEX_KIND = "fair4free-ca-index"
INDEX_VERSION = 1


class Origin(Enum):
    """Who made the key a certificate certifies."""

    CONSUMER_CSR = "consumer-csr"
    """The consumer made it and sent a signing request; the key never left the consumer."""
    OWNER_KEY = "owner-key"
    """``pki issue-client`` made it on the owner's machine (single-organisation setups, tests)."""


@dataclass(frozen=True, kw_only=True)
class IssuedCertificate:
    """One client certificate the CA issued: to whom, for which key, until when, and if revoked."""

    serial: int
    name: str
    origin: Origin
    issued_at: datetime.datetime
    not_after: datetime.datetime
    sha256: str
    """SHA-256 of the certificate's DER, as ``certificate_fingerprint`` gives it."""
    key_sha256: str
    """SHA-256 of the certified public key, as ``public_key_fingerprint`` gives it."""
    revoked_at: datetime.datetime | None = None

    @property
    def serial_hex(self) -> str:
        """The serial as lower-case hex, the way the CLI and the index spell it."""
        return format(self.serial, "x")

    def retired(self, now: datetime.datetime) -> bool:
        """Tell whether this certificate no longer grants its identity (revoked or expired)."""
        return self.revoked_at is not None or self.not_after <= now

    def to_json(self) -> dict[str, Any]:
        """Return the JSON object stored for this certificate."""
        return {
            "serial": self.serial_hex,
            "name": self.name,
            "origin": self.origin.value,
            "issued_at": self.issued_at.isoformat(),
            "not_after": self.not_after.isoformat(),
            "sha256": self.sha256,
            "key_sha256": self.key_sha256,
            "revoked_at": None if self.revoked_at is None else self.revoked_at.isoformat(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> IssuedCertificate:
        """Rebuild a record; KeyError, TypeError or ValueError if ``data`` is not one."""
        revoked_at = data["revoked_at"]
        return cls(
            serial=int(_text(data["serial"]), 16),
            name=_text(data["name"]),
            origin=Origin(data["origin"]),
            issued_at=_instant(data["issued_at"]),
            not_after=_instant(data["not_after"]),
            sha256=_text(data["sha256"]),
            key_sha256=_text(data["key_sha256"]),
            revoked_at=None if revoked_at is None else _instant(revoked_at),
        )


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _instant(value: object) -> datetime.datetime:
    instant = datetime.datetime.fromisoformat(_text(value))
    if instant.utcoffset() is None:
        raise ValueError(f"time {value!r} has no time zone")
    return instant


@dataclass(frozen=True)
class CaIndex:
    """The issued certificates in issuance order, and the last revocation list number used.

    Frozen: each change returns a new index, and nothing is on disk until :meth:`save`.
    """

    path: Path
    certificates: tuple[IssuedCertificate, ...] = ()
    crl_number: int = 0

    @classmethod
    def load(cls, path: Path) -> CaIndex:
        """Read the index at ``path``; a PKI that has issued nothing yet has none, and gets one.

        :raises Fair4FreeError: TLS_MATERIAL naming the file if it is unreadable or damaged.
        """
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return cls(path)
        except (OSError, UnicodeDecodeError) as exc:
            raise _damaged(path, str(exc)) from None
        try:
            data = json.loads(text)
            if (data["kind"], data["version"]) != (INDEX_KIND, INDEX_VERSION):
                raise ValueError(f"it is a {data['kind']!r} version {data['version']!r} file")
            certificates = tuple(IssuedCertificate.from_json(c) for c in data["certificates"])
            crl_number = data["crl_number"]
            if not isinstance(crl_number, int) or crl_number < 0:
                raise ValueError(f"crl_number {crl_number!r} is not a count")
        except (KeyError, TypeError, ValueError) as exc:
            raise _damaged(path, f"{type(exc).__name__}: {exc}") from None
        if len({c.serial for c in certificates}) != len(certificates):
            raise _damaged(path, "a serial number is recorded twice")
        return cls(path, certificates, crl_number)

    def save(self) -> None:
        """Replace the file atomically, so a reader or a crash never sees half an index.

        :raises Fair4FreeError: OUTPUT_UNWRITABLE naming the file.
        """
        document = {
            "kind": INDEX_KIND,
            "version": INDEX_VERSION,
            "crl_number": self.crl_number,
            "certificates": [c.to_json() for c in self.certificates],
        }
        text = json.dumps(document, indent=2, sort_keys=True) + "\n"
        replace_file(self.path, text.encode("utf-8"), PUBLIC_MODE)

    def current(self, name: str) -> IssuedCertificate | None:
        """Return the certificate last issued to ``name``, or None if there never was one."""
        for certificate in reversed(self.certificates):
            if certificate.name == name:
                return certificate
        return None

    def certifying(self, key_sha256: str) -> tuple[IssuedCertificate, ...]:
        """Return every certificate issued for the public key with this fingerprint."""
        return tuple(c for c in self.certificates if c.key_sha256 == key_sha256)

    def revoked(self) -> tuple[IssuedCertificate, ...]:
        """Return every revoked certificate, the entries of the next revocation list."""
        return tuple(c for c in self.certificates if c.revoked_at is not None)

    def with_issued(self, certificate: IssuedCertificate) -> CaIndex:
        """Return this index with ``certificate`` recorded as the newest one."""
        return replace(self, certificates=(*self.certificates, certificate))

    def with_revoked(self, serial: int, when: datetime.datetime) -> CaIndex:
        """Return this index with the certificate ``serial`` marked revoked at ``when``."""
        return replace(
            self,
            certificates=tuple(
                replace(c, revoked_at=when) if c.serial == serial else c for c in self.certificates
            ),
        )

    def with_next_crl_number(self) -> CaIndex:
        """Return this index with the revocation list number advanced by one."""
        return replace(self, crl_number=self.crl_number + 1)


def _damaged(path: Path, why: str) -> Fair4FreeError:
    return Fair4FreeError(
        ErrorCode.TLS_MATERIAL,
        f"CA index {path} is damaged ({why}); restore it from a backup, never delete it",
    )

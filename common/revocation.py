"""Certificate revocation as the daemon checks it on every call: a verified, reloadable serial set.

The owner's CA publishes ``crl.pem`` (``fair4free-owner pki crl``). :class:`RevocationList` loads
it only after checking that the owner's CA signed it and that it is current, then answers
:meth:`~RevocationList.is_revoked` with a set lookup. :meth:`~RevocationList.reload_if_changed`
costs one ``stat`` and swaps in a newly published list without a restart.

Fail closed: a missing, unsigned, foreign, expired or rolled-back list is an error, never an
empty list, and a loaded list that expires makes every check fail until a fresh one is published.
"""

from __future__ import annotations

import datetime
import functools
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from fair4free.common.errors import ErrorCode, Fair4FreeError
from fair4free.common.tls import load_certificates, read_pem

CRL_FILE = "crl.pem"
"""File name of the certificate revocation list inside a PKI directory."""

# DSA is left out: no CA this project makes uses it, and cryptography 51 deprecates it.
_ISSUER_KEY_TYPES = (
    ec.EllipticCurvePublicKey,
    ed448.Ed448PublicKey,
    ed25519.Ed25519PublicKey,
    rsa.RSAPublicKey,
)
# A list dated a little in the future is accepted, as the CA backdates by as much.
_CLOCK_SKEW = datetime.timedelta(minutes=5)
_REFRESH_HINT = "publish a fresh one with 'fair4free-owner pki crl'"


def certificate_serial(pem: bytes) -> int:
    """Return the serial number of a PEM certificate, as :meth:`RevocationList.is_revoked` takes.

    Recently seen certificates are remembered, so calling this on every request stays cheap.

    :raises Fair4FreeError: TLS_MATERIAL if ``pem`` is not a certificate.
    """
    return _serial(bytes(pem))


@functools.lru_cache(maxsize=1024)
def _serial(pem: bytes) -> int:
    try:
        return x509.load_pem_x509_certificate(pem).serial_number
    except ValueError:
        raise Fair4FreeError(ErrorCode.TLS_MATERIAL, "the data is not a PEM certificate") from None


@dataclass(frozen=True)
class _Snapshot:
    """One verified list: its revoked serials, number, end of validity and the file it came from."""

    serials: frozenset[int]
    number: int
    next_update: datetime.datetime
    expires_at: float
    """``next_update`` as a POSIX timestamp, so checking it per call is one float comparison."""
    stamp: tuple[int, int, int, int]
    """(device, inode, size, mtime in ns) of the file read; any change means a new list."""


def _stamp(stat: os.stat_result) -> tuple[int, int, int, int]:
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


class RevocationList:
    """The serials the owner's CA has revoked, from a list verified against that CA.

    Safe to share between server threads: each check reads one immutable snapshot, and a reload
    replaces it whole.
    """

    def __init__(
        self, crl_path: Path, ca_cert_path: Path, ca: x509.Certificate, snapshot: _Snapshot
    ) -> None:
        """Use :meth:`load`; this only wires up what it verified."""
        self._path = crl_path
        self._ca_path = ca_cert_path
        self._ca = ca
        self._snapshot = snapshot
        self._reload_lock = threading.Lock()

    @classmethod
    def load(cls, crl_path: Path, ca_cert_path: Path) -> RevocationList:
        """Read ``crl_path`` and verify it against the CA certificate at ``ca_cert_path``.

        :raises Fair4FreeError: TLS_MATERIAL if either file is missing or unusable, or the list
            was not signed by that CA, names no next update, or has expired.
        """
        ca = load_certificates(ca_cert_path, "CA certificate")[0]
        return cls(crl_path, ca_cert_path, ca, _read(crl_path, ca, ca_cert_path))

    @property
    def path(self) -> Path:
        """The file the list is read from."""
        return self._path

    @property
    def number(self) -> int:
        """The CRL number of the loaded list; each list the CA publishes has a larger one."""
        return self._snapshot.number

    @property
    def next_update(self) -> datetime.datetime:
        """When the loaded list expires; checks fail from then until a fresh list is loaded."""
        return self._snapshot.next_update

    @property
    def serials(self) -> frozenset[int]:
        """Every serial the loaded list revokes."""
        return self._snapshot.serials

    def is_revoked(self, serial: int) -> bool:
        """Tell whether the CA revoked the certificate with ``serial``: a set lookup.

        :raises Fair4FreeError: TLS_MATERIAL once the loaded list has expired, so a daemon whose
            list is no longer refreshed refuses rather than trusts stale news.
        """
        snapshot = self._snapshot
        if time.time() >= snapshot.expires_at:
            raise Fair4FreeError(
                ErrorCode.TLS_MATERIAL,
                f"certificate revocation list {self._path} expired at "
                f"{snapshot.next_update:%Y-%m-%d %H:%M} UTC; {_REFRESH_HINT}",
            )
        return serial in snapshot.serials

    def reload_if_changed(self) -> bool:
        """Load the list again if its file changed since it was read; tell whether it did.

        One ``stat`` when nothing changed. A replacement is verified like the first list and must
        not have a smaller number (no rollback to a list from before a revocation). If it fails,
        the loaded list stays in place, the error is raised, and the next call tries again.

        :raises Fair4FreeError: TLS_MATERIAL naming what is wrong with the new file.
        """
        if self._current_stamp() == self._snapshot.stamp:
            return False
        with self._reload_lock:
            old = self._snapshot
            if self._current_stamp() == old.stamp:
                return False  # another thread reloaded meanwhile
            new = _read(self._path, self._ca, self._ca_path)
            if new.number < old.number:
                raise Fair4FreeError(
                    ErrorCode.TLS_MATERIAL,
                    f"certificate revocation list {self._path} has number {new.number}, older "
                    f"than the loaded number {old.number}; refusing to roll back; {_REFRESH_HINT}",
                )
            self._snapshot = new
            return True

    def _current_stamp(self) -> tuple[int, int, int, int] | None:
        try:
            return _stamp(self._path.stat())
        except OSError:
            return None


def _read(path: Path, ca: x509.Certificate, ca_path: Path) -> _Snapshot:
    """Read and verify one list.

    The file is stamped before it is read: if it is replaced in between, the stamp is the old
    file's and the next :meth:`RevocationList.reload_if_changed` reads it again, rather than never.
    """
    try:
        stamp = _stamp(path.stat())
    except OSError:
        stamp = (0, 0, 0, 0)  # read_pem below names the problem
    data = read_pem(path, "certificate revocation list")
    what = f"certificate revocation list {path}"
    try:
        crl = x509.load_pem_x509_crl(data)
    except ValueError:
        raise Fair4FreeError(ErrorCode.TLS_MATERIAL, f"{what} holds no valid PEM CRL") from None
    next_update = _verify(crl, ca, what, ca_path)
    try:
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except (x509.ExtensionNotFound, x509.DuplicateExtension, ValueError):
        raise Fair4FreeError(ErrorCode.TLS_MATERIAL, f"{what} has no CRL number") from None
    return _Snapshot(
        serials=frozenset(entry.serial_number for entry in crl),
        number=number,
        next_update=next_update,
        expires_at=next_update.timestamp(),
        stamp=stamp,
    )


def _verify(
    crl: x509.CertificateRevocationList, ca: x509.Certificate, what: str, ca_path: Path
) -> datetime.datetime:
    """Check that ``ca`` signed ``crl`` and that it is current now; return its next update."""
    ca_name = f"the CA in {ca_path}"
    public_key = ca.public_key()
    if crl.issuer != ca.subject:
        raise Fair4FreeError(
            ErrorCode.TLS_MATERIAL,
            f"{what} was issued by {crl.issuer.rfc4514_string()!r}, not by {ca_name} "
            f"({ca.subject.rfc4514_string()!r})",
        )
    if not isinstance(public_key, _ISSUER_KEY_TYPES) or not crl.is_signature_valid(public_key):
        raise Fair4FreeError(
            ErrorCode.TLS_MATERIAL, f"{what} is not signed by {ca_name}; {_REFRESH_HINT}"
        )
    now = datetime.datetime.now(datetime.UTC)
    if crl.last_update_utc > now + _CLOCK_SKEW:
        raise Fair4FreeError(
            ErrorCode.TLS_MATERIAL,
            f"{what} is not valid before {crl.last_update_utc:%Y-%m-%d %H:%M} UTC; check the clock",
        )
    next_update = crl.next_update_utc
    if next_update is None:
        raise Fair4FreeError(
            ErrorCode.TLS_MATERIAL, f"{what} has no next update time; {_REFRESH_HINT}"
        )
    if next_update <= now:
        raise Fair4FreeError(
            ErrorCode.TLS_MATERIAL,
            f"{what} expired at {next_update:%Y-%m-%d %H:%M} UTC; {_REFRESH_HINT}",
        )
    return next_update

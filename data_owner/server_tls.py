"""The daemon's TLS credentials, which pick up a renewed server certificate without a restart.

A restart to rotate the server certificate would drop every consumer's connection and the calls
in flight, so the daemon serves with gRPC's dynamic credentials: before every new TLS handshake
gRPC asks :meth:`ServedCertificate.fetch` whether the certificate changed. That costs two
``stat`` calls while nothing changes; when the files' identity (device, inode, size, mtime)
changes, the pair is read again. A replacement that is unreadable, mismatched, outside its
lifetime or issued by another CA is refused with an error in the log and the pair loaded before
keeps serving: a bad copy must never take the daemon off the air, and the next change is tried
again. Connections already open keep the certificate they were made with until they are aged
out (``ServerConfig.max_connection_age_seconds``).

Client certificates from the CA are required on every handshake; there is no switch to turn that
off, since without one there is no consumer identity.
"""

from __future__ import annotations

import datetime
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from fair4free.common.errors import ErrorCode, Fair4FreeError
from fair4free.common.tls import TlsFiles, load_ca, load_identity

logger = logging.getLogger(__name__)

FileStamp = tuple[int, int, int, int] | None
"""(device, inode, size, mtime in ns) of a file, or None if it cannot be stat'ed."""

NOT_ISSUED_BY_CA = "server certificate {cert} was not issued by the CA in {ca}"


@dataclass(frozen=True, kw_only=True)
class ServerPair:
    """A server certificate chain and its key, checked and ready to serve."""

    chain: bytes
    key: bytes
    serial: int
    not_after: datetime.datetime


def load_server_pair(files: TlsFiles, root: bytes) -> ServerPair:
    """Read and check the daemon's certificate and key against the CA bundle ``root``.

    :raises Fair4FreeError: TLS_MATERIAL naming the unusable, mismatched or out-of-date file, or a
        certificate that no CA in ``root`` issued (consumers would refuse it).
    """
    chain, key = load_identity(files.cert, files.key, "server")
    leaf = x509.load_pem_x509_certificates(chain)[0]  # load_identity parsed it already
    if not any(_issued_by(leaf, ca) for ca in x509.load_pem_x509_certificates(root)):
        raise Fair4FreeError(
            ErrorCode.TLS_MATERIAL, NOT_ISSUED_BY_CA.format(cert=files.cert, ca=files.ca)
        )
    return ServerPair(
        chain=chain, key=key, serial=leaf.serial_number, not_after=leaf.not_valid_after_utc
    )


def _issued_by(leaf: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        leaf.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _stamp(path: Path) -> FileStamp:
    try:
        found = os.stat(path)
    except OSError:
        return None
    return (found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns)


class ServedCertificate:
    """The server certificate the daemon presents, reloaded when its files change.

    Thread-safe: gRPC may call :meth:`fetch` from several threads at once.
    """

    def __init__(self, files: TlsFiles) -> None:
        """Load the CA bundle and the pair now, so that bad files stop the daemon at start.

        :raises Fair4FreeError: TLS_MATERIAL naming the unusable file.
        """
        self._files = files
        self._root = load_ca(files.ca)
        self._lock = threading.Lock()
        self._stamps = self._current_stamps()  # taken first: a change while reading is seen next
        self._pair = load_server_pair(files, self._root)

    def credentials(self) -> grpc.ServerCredentials:
        """Server credentials that require a client certificate and ask :meth:`fetch` each time."""
        with self._lock:
            initial = self._configuration(self._pair)
        # grpc-stubs type the fetcher's result without None, which gRPC documents as "no change".
        fetcher = cast(Callable[[], grpc.ServerCertificateConfiguration], self.fetch)
        return grpc.dynamic_ssl_server_credentials(
            initial, fetcher, require_client_authentication=True
        )

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """A new configuration if the files changed and hold a usable pair; None keeps the old.

        Never raises: gRPC calls this on its own threads before each handshake.
        """
        try:
            with self._lock:
                stamps = self._current_stamps()
                if stamps == self._stamps:
                    return None
                self._stamps = stamps  # one attempt (and one log line) per change
                previous = self._pair
                try:
                    self._pair = load_server_pair(self._files, self._root)
                except Fair4FreeError as exc:
                    logger.error(
                        "server certificate not reloaded, still serving serial %x: %s",
                        previous.serial,
                        exc.public_message(),
                    )
                    return None
                logger.info(
                    "server certificate reloaded: serial %x (was %x), valid until %s UTC",
                    self._pair.serial,
                    previous.serial,
                    f"{self._pair.not_after:%Y-%m-%d %H:%M}",
                )
                return self._configuration(self._pair)
        except Exception:
            logger.exception("server certificate reload failed; still serving the previous one")
            return None

    def _current_stamps(self) -> tuple[FileStamp, FileStamp]:
        return _stamp(self._files.cert), _stamp(self._files.key)

    def _configuration(self, pair: ServerPair) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(pair.key, pair.chain)], root_certificates=self._root
        )


def server_credentials(*, ca: Path, cert: Path, key: Path) -> grpc.ServerCredentials:
    """Build the daemon's credentials; client certificates from ``ca`` are always required.

    The certificate and key are re-read when they change (see :class:`ServedCertificate`).

    :raises Fair4FreeError: TLS_MATERIAL naming the unusable file.
    """
    return ServedCertificate(TlsFiles(ca=ca, cert=cert, key=key)).credentials()

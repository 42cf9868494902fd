"""Where a PKI directory keeps each file, so the issuer, the daemon and the tools agree on names.

Its own module so that each workflow on the PKI (``pki``, ``server_cert``) can name the files
without importing the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fair4free.common.revocation import CRL_FILE
from fair4free.common.tls import CA_CERT_FILE, CLIENTS_DIR, TlsFiles, check_client_name
from fair4free.data_owner.ca_index import INDEX_FILE


@dataclass(frozen=True)
class PkiLayout:
    """Where a PKI directory keeps each file, so issuer, daemon and tools agree on the names."""

    root: Path

    @property
    def ca_key(self) -> Path:
        """The CA's private key: whoever holds it can mint any consumer identity."""
        return self.root / "ca.key"

    @property
    def ca_cert(self) -> Path:
        """The CA certificate, the trust root both sides are configured with."""
        return self.root / CA_CERT_FILE

    @property
    def server_key(self) -> Path:
        """The daemon's private key."""
        return self.root / "server.key"

    @property
    def server_cert(self) -> Path:
        """The daemon's certificate."""
        return self.root / "server.crt"

    @property
    def clients_dir(self) -> Path:
        """The folder of consumer certificates and keys."""
        return self.root / CLIENTS_DIR

    @property
    def crl(self) -> Path:
        """The revocation list the CA publishes and the daemon checks on every call."""
        return self.root / CRL_FILE

    @property
    def index(self) -> Path:
        """The CA's JSON record of issued and revoked client certificates."""
        return self.root / INDEX_FILE

    def client_cert(self, name: str) -> Path:
        """Name consumer ``name``'s certificate; CONFIG_INVALID for a name that could escape."""
        return self.clients_dir / f"{check_client_name(name)}.crt"

    def client_key(self, name: str) -> Path:
        """Name consumer ``name``'s private key; CONFIG_INVALID for a name that could escape."""
        return self.clients_dir / f"{check_client_name(name)}.key"

    def server_files(self) -> TlsFiles:
        """Name the daemon's side of the connection, ready for ``server_credentials``."""
        return TlsFiles(ca=self.ca_cert, cert=self.server_cert, key=self.server_key)

    def client_files(self, name: str) -> TlsFiles:
        """Name consumer ``name``'s side of the connection, ready for ``channel_credentials``."""
        return TlsFiles.from_pki_dir(self.root, name)

"""The daemon's own certificate: the names consumers dial, its issue at init and its renewal.

``pki init`` and ``pki renew-server`` issue it through :func:`issue_server_certificate`, so a
renewed certificate has exactly the shape of the first: server authentication only, no CA rights,
a SAN naming every address consumers dial (gRPC checks the target against it), and a lifetime
that ends no later than the CA's. Renewal replaces the files the daemon serves, which picks them
up without a restart (``server_tls``).
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from fair4free.common.errors import ErrorCode, Fair4FreeError
from fair4free.common.secure_files import PRIVATE_MODE, PUBLIC_MODE, replace_file
from fair4free.common.tls import load_certificates
from fair4free.data_owner.ca_signing import (
    Signer,
    cert_pem,
    check_days,
    issue,
    key_pem,
    leaf_extensions,
    load_signer,
    new_key,
    subject_name,
)
from fair4free.data_owner.pki_layout import PkiLayout

SERVER_SUBJECT = "fair4free data owner"

_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)

NAMES_UNREADABLE = (
    "cannot take the names of the current server certificate: {problem}; "
    "pass --hostname and --ip to name the server"
)


def server_alt_names(
    hostnames: Sequence[str], ip_addresses: Sequence[str]
) -> list[x509.GeneralName]:
    """Turn the addresses consumers dial into SAN entries, refusing what gRPC could not match.

    :raises Fair4FreeError: CONFIG_INVALID for a bad host name or IP address, or no name at all.
    """
    names: list[x509.GeneralName] = []
    for hostname in hostnames:
        if not _HOSTNAME.fullmatch(hostname):
            raise Fair4FreeError(
                ErrorCode.CONFIG_INVALID,
                f"host name {hostname!r} is invalid: use letters, digits, '-' and '.' only",
            )
        names.append(x509.DNSName(hostname.lower()))
    for address in ip_addresses:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(address)))
        except ValueError:
            raise Fair4FreeError(
                ErrorCode.CONFIG_INVALID, f"IP address {address!r} is not a valid IPv4/IPv6 address"
            ) from None
    if not names:
        raise Fair4FreeError(
            ErrorCode.CONFIG_INVALID,
            "the server certificate needs at least one host name or IP address",
        )
    return names


def current_server_names(path: Path) -> list[x509.GeneralName]:
    """The DNS names and IP addresses of the served certificate, so a renewal keeps them.

    :raises Fair4FreeError: CONFIG_INVALID if the certificate cannot be read or names nothing.
    """
    try:
        leaf = load_certificates(path, "server certificate")[0]
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except Fair4FreeError as exc:
        raise Fair4FreeError(
            ErrorCode.CONFIG_INVALID, NAMES_UNREADABLE.format(problem=exc.detail)
        ) from None
    except (ValueError, x509.ExtensionNotFound, x509.DuplicateExtension):
        raise Fair4FreeError(
            ErrorCode.CONFIG_INVALID,
            NAMES_UNREADABLE.format(problem=f"{path} has no usable subject alternative name"),
        ) from None
    names: list[x509.GeneralName] = [
        name for name in san if isinstance(name, x509.DNSName | x509.IPAddress)
    ]
    if not names:
        raise Fair4FreeError(
            ErrorCode.CONFIG_INVALID,
            NAMES_UNREADABLE.format(problem=f"{path} names no host name or IP address"),
        )
    return names


def describe_names(names: Sequence[x509.GeneralName]) -> str:
    """The names as a reader would type them: ``localhost, 127.0.0.1``."""
    return ", ".join(str(name.value) for name in names)


def issue_server_certificate(
    signer: Signer, alt_names: Sequence[x509.GeneralName], *, days: int
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A fresh key and a server certificate for it, naming ``alt_names``, valid for ``days``."""
    key = new_key()
    cert = issue(
        subject=subject_name(SERVER_SUBJECT),
        public_key=key.public_key(),
        signer=signer,
        days=days,
        extensions=leaf_extensions(ExtendedKeyUsageOID.SERVER_AUTH, alt_names),
    )
    return key, cert


@dataclass(frozen=True, kw_only=True)
class RenewedServer:
    """A server certificate just renewed: where, its serial and end, what it names and replaced."""

    cert: Path
    serial_hex: str
    not_after: datetime.datetime
    names: str
    replaced_serial_hex: str | None
    """Serial of the certificate it replaced; None if that file was missing or unreadable."""


def renew_server(
    root: Path,
    *,
    hostnames: Sequence[str] | None = None,
    ip_addresses: Sequence[str] | None = None,
    days: int = 365,
) -> RenewedServer:
    """Give the daemon a new key and certificate from the CA, replacing the files it serves.

    A running daemon presents them from its next TLS handshake (``server_tls``); consumers trust
    the CA, not the certificate, so nothing changes for them. The old certificate is not revoked:
    it stays valid until it expires, for connections still open. The new one names what the old
    one did unless ``hostnames`` or ``ip_addresses`` are given. The key is replaced first, then
    the certificate, each atomically; a daemon reading in between keeps its old pair.

    :raises Fair4FreeError: CONFIG_INVALID for a bad lifetime or name, or a current certificate
        whose names cannot be read; TLS_MATERIAL if the CA is unusable; OUTPUT_UNWRITABLE if a file
        cannot be written (rerun: until both are written the daemon keeps serving its old pair).
    """
    check_days(days)
    layout = PkiLayout(root)
    signer = load_signer(layout.ca_cert, layout.ca_key)
    if hostnames is None and ip_addresses is None:
        alt_names = current_server_names(layout.server_cert)
    else:
        alt_names = server_alt_names(hostnames or (), ip_addresses or ())
    previous = _serial_or_none(layout.server_cert)
    key, cert = issue_server_certificate(signer, alt_names, days=days)
    replace_file(layout.server_key, key_pem(key), PRIVATE_MODE)
    replace_file(layout.server_cert, cert_pem(cert), PUBLIC_MODE)
    return RenewedServer(
        cert=layout.server_cert,
        serial_hex=format(cert.serial_number, "x"),
        not_after=cert.not_valid_after_utc,
        names=describe_names(alt_names),
        replaced_serial_hex=previous,
    )


def _serial_or_none(path: Path) -> str | None:
    try:
        return format(load_certificates(path, "server certificate")[0].serial_number, "x")
    except Fair4FreeError:
        return None

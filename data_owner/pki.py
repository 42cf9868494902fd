"""A small development PKI: one CA, the daemon's server certificate, one certificate per consumer.

The daemon identifies a consumer only by the ``fair4free://consumer/<name>`` SAN URI in the client
certificate this CA issued, so issuing a certificate *is* granting an identity. Hence the care
below: keys are created owner-only and never overwritten, an existing CA is never replaced (that
would orphan every certificate issued under it), and no certificate outlives its CA.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fair4free.common.errors import ErrorCode, Fair4FreeError
from fair4free.common.tls import (
    CA_CERT_FILE,
    CLIENTS_DIR,
    TlsFiles,
    check_client_name,
    client_identity_uri,
    key_matches,
    load_certificates,
    load_private_key,
)

__all__ = [
    "PkiLayout",
    "client_identity_uri",
    "init_pki",
    "issue_client",
]

_KEY_MODE = 0o600
_CERT_MODE = 0o644
_DIR_MODE = 0o700
_MAX_DAYS = 3650
# Certificates start a few minutes in the past so a peer whose clock lags slightly accepts them.
_CLOCK_SKEW = datetime.timedelta(minutes=5)
_ORGANIZATION = "fair4free"
_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


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
        """Where a certificate revocation list goes once revocation exists; optional."""
        return self.root / "crl.pem"

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


@dataclass(frozen=True)
class _Signer:
    """What issuing under a CA needs: its name, its key, its key identifier and its end of life."""

    name: x509.Name
    key: ec.EllipticCurvePrivateKey
    key_identifier: x509.SubjectKeyIdentifier
    not_after: datetime.datetime


def init_pki(
    root: Path,
    *,
    hostnames: Sequence[str] = ("localhost",),
    ip_addresses: Sequence[str] = ("127.0.0.1",),
    days: int = 365,
) -> PkiLayout:
    """Create a CA and the daemon's certificate for ``hostnames`` and ``ip_addresses`` in ``root``.

    The server certificate names every address consumers will dial, since gRPC checks the target
    against its SAN. Nothing is overwritten: an existing CA is refused outright.

    :raises Fair4FreeError: OUTPUT_UNWRITABLE if a PKI already exists or ``root`` is not writable;
        CONFIG_INVALID for a bad host name, IP address or lifetime.
    """
    _check_days(days)
    alt_names = _server_alt_names(hostnames, ip_addresses)
    layout = PkiLayout(root)
    if layout.ca_key.exists() or layout.ca_cert.exists():
        raise Fair4FreeError(
            ErrorCode.OUTPUT_UNWRITABLE,
            f"a PKI already exists in {root} ({layout.ca_cert.name}/{layout.ca_key.name}); "
            "refusing to replace its CA, which would invalidate every certificate it issued",
        )
    ca_key = _new_key()
    ca_name = _name(f"fair4free development CA {secrets.token_hex(4)}")
    ca_cert = _issue(
        subject=ca_name,
        key=ca_key,
        signer=None,
        days=days,
        extensions=_ca_extensions(),
    )
    server_key = _new_key()
    server_cert = _issue(
        subject=_name("fair4free data owner"),
        key=server_key,
        signer=_signer(ca_cert, ca_key),
        days=days,
        extensions=_leaf_extensions(ExtendedKeyUsageOID.SERVER_AUTH, alt_names),
    )
    _make_dir(root)
    _write_new_files(
        [
            (layout.ca_key, _key_pem(ca_key), _KEY_MODE),
            (layout.ca_cert, _cert_pem(ca_cert), _CERT_MODE),
            (layout.server_key, _key_pem(server_key), _KEY_MODE),
            (layout.server_cert, _cert_pem(server_cert), _CERT_MODE),
        ]
    )
    return layout


def issue_client(root: Path, name: str, *, days: int = 90) -> tuple[Path, Path]:
    """Issue consumer ``name`` a client certificate; return its (certificate, key) paths.

    The certificate carries the one SAN URI the daemon reads the identity from. Its lifetime ends
    no later than the CA's. An existing consumer of that name is never replaced, so an identity
    cannot silently change hands.

    :raises Fair4FreeError: CONFIG_INVALID for a bad name or lifetime; TLS_MATERIAL if the CA is
        missing or unusable; OUTPUT_UNWRITABLE if the consumer exists or files cannot be written.
    """
    uri = client_identity_uri(name)
    _check_days(days)
    layout = PkiLayout(root)
    cert_path, key_path = layout.client_cert(name), layout.client_key(name)
    _refuse_existing([cert_path, key_path], f"client {name!r} already exists")
    signer = _load_signer(layout)
    client_key = _new_key()
    client_cert = _issue(
        subject=_name(name),
        key=client_key,
        signer=signer,
        days=days,
        extensions=_leaf_extensions(
            ExtendedKeyUsageOID.CLIENT_AUTH, [x509.UniformResourceIdentifier(uri)]
        ),
    )
    _make_dir(layout.clients_dir)
    _write_new_files(
        [
            (key_path, _key_pem(client_key), _KEY_MODE),
            (cert_path, _cert_pem(client_cert), _CERT_MODE),
        ]
    )
    return cert_path, key_path


def _check_days(days: int) -> None:
    """Reject lifetimes that are empty or so long that a leaked key stays useful for decades."""
    if not 1 <= days <= _MAX_DAYS:
        raise Fair4FreeError(
            ErrorCode.CONFIG_INVALID,
            f"certificate lifetime of {days} days is invalid: use 1 to {_MAX_DAYS} days",
        )


def _server_alt_names(
    hostnames: Sequence[str], ip_addresses: Sequence[str]
) -> list[x509.GeneralName]:
    """Turn the addresses consumers dial into SAN entries, refusing what gRPC could not match."""
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


def _new_key() -> ec.EllipticCurvePrivateKey:
    """Generate a P-256 key: small, fast, and supported by every gRPC TLS stack."""
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    """Build a subject or issuer name under the project's organization."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _ca_extensions() -> list[x509.ExtensionType]:
    """Extensions of a CA that may sign leaves only, never another CA."""
    return [
        x509.BasicConstraints(ca=True, path_length=0),
        _key_usage(key_cert_sign=True, crl_sign=True),
    ]


def _leaf_extensions(
    purpose: x509.ObjectIdentifier, alt_names: Iterable[x509.GeneralName]
) -> list[x509.ExtensionType]:
    """Extensions of an end-entity certificate usable for one TLS role (``purpose``) only."""
    return [
        x509.BasicConstraints(ca=False, path_length=None),
        _key_usage(digital_signature=True),
        x509.ExtendedKeyUsage([purpose]),
        x509.SubjectAlternativeName(list(alt_names)),
    ]


def _key_usage(
    *, digital_signature: bool = False, key_cert_sign: bool = False, crl_sign: bool = False
) -> x509.KeyUsage:
    """Build a KeyUsage with only the named bits set, the others spelled out once here."""
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


# Extensions a verifier must understand to use the certificate safely are marked critical.
_CRITICAL = (x509.BasicConstraints, x509.KeyUsage)


def _issue(
    *,
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    signer: _Signer | None,
    days: int,
    extensions: Iterable[x509.ExtensionType],
) -> x509.Certificate:
    """Certify ``key`` as ``subject``; ``signer=None`` makes the certificate self-signed (a CA).

    Every certificate gets a random serial and a subject key identifier; issued ones also get the
    authority key identifier of their CA and end no later than it does.
    """
    now = datetime.datetime.now(datetime.UTC)
    not_after = now + datetime.timedelta(days=days)
    subject_key = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .public_key(subject_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(subject_key), critical=False)
    )
    if signer is None:
        signing_key = key
        builder = builder.issuer_name(subject)
    else:
        signing_key = signer.key
        not_after = min(not_after, signer.not_after)
        builder = builder.issuer_name(signer.name).add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(signer.key_identifier),
            critical=False,
        )
    for extension in extensions:
        builder = builder.add_extension(extension, critical=isinstance(extension, _CRITICAL))
    return builder.not_valid_after(not_after).sign(signing_key, hashes.SHA256())


def _signer(ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey) -> _Signer:
    """Describe a CA for issuing, taking its key identifier from its certificate."""
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    return _Signer(
        name=ca_cert.subject, key=ca_key, key_identifier=ski, not_after=ca_cert.not_valid_after_utc
    )


def _load_signer(layout: PkiLayout) -> _Signer:
    """Load the CA from disk, checking it is one this module made and that it can still issue."""
    ca_cert = load_certificates(layout.ca_cert, "CA certificate")[0]
    ca_key = load_private_key(layout.ca_key, "CA private key")
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey) or not key_matches(ca_cert, ca_key):
        raise Fair4FreeError(
            ErrorCode.TLS_MATERIAL,
            f"CA private key {layout.ca_key} does not belong to CA certificate {layout.ca_cert}",
        )
    if ca_cert.not_valid_after_utc <= datetime.datetime.now(datetime.UTC):
        raise Fair4FreeError(
            ErrorCode.TLS_MATERIAL,
            f"CA certificate {layout.ca_cert} expired on {ca_cert.not_valid_after_utc:%Y-%m-%d}",
        )
    return _signer(ca_cert, ca_key)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """Serialize a private key unencrypted, as gRPC loads it; file permissions protect it."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    """Serialize a certificate as PEM."""
    return cert.public_bytes(serialization.Encoding.PEM)


def _make_dir(path: Path) -> None:
    """Create a folder (and parents) readable by the owner only, since it will hold private keys."""
    try:
        path.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
    except OSError as exc:
        raise Fair4FreeError(
            ErrorCode.OUTPUT_UNWRITABLE, f"cannot create folder {path}: {exc.strerror or exc}"
        ) from None


def _refuse_existing(paths: Iterable[Path], reason: str) -> None:
    """Refuse before anything is written if any target exists, so a refusal leaves no debris."""
    for path in paths:
        if path.exists():
            raise Fair4FreeError(
                ErrorCode.OUTPUT_UNWRITABLE, f"{reason}: {path} exists; refusing to overwrite it"
            )


def _write_new_files(files: Sequence[tuple[Path, bytes, int]]) -> None:
    """Create each (path, data, mode) exclusively, all or none.

    ``O_EXCL`` makes creation fail rather than follow or replace anything placed there meanwhile,
    and the mode is set at creation so a key is never readable by others, even briefly. On any
    failure the files created so far are removed, leaving no half-made PKI behind.
    """
    _refuse_existing((path for path, _, _ in files), "a file of the PKI already exists")
    created: list[Path] = []
    try:
        for path, data, mode in files:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            created.append(path)
            with os.fdopen(fd, "wb") as handle:
                os.fchmod(handle.fileno(), mode)  # the umask may have narrowed it
                handle.write(data)
    except OSError as exc:
        for path in created:
            path.unlink(missing_ok=True)
        raise Fair4FreeError(
            ErrorCode.OUTPUT_UNWRITABLE,
            f"cannot create {exc.filename or 'a PKI file'}: {exc.strerror or exc}",
        ) from None

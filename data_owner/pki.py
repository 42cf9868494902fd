"""The owner's PKI: one CA, the daemon's server certificate, one certificate per consumer.

The daemon identifies a consumer only by the ``fair4free://consumer/<name>`` SAN URI in the client
certificate this CA issued, so issuing a certificate *is* granting an identity. Hence the care
below: keys are created owner-only and never overwritten, an existing CA is never replaced (that
would orphan every certificate issued under it), and no certificate outlives its CA.

Two organisations: a consumer makes its own key and sends a certificate signing request
(``fair4free-consumer pki request``); :func:`sign_csr` certifies it without the key ever leaving
the consumer. :func:`issue_client` makes the key here instead, for one-organisation setups. Both
grant through one path that records the certificate in the CA index (:mod:`.ca_index`) before it
is handed out; :func:`revoke_client` marks it revoked there and :func:`publish_crl` publishes the
signed revocation list the daemon checks on every call (``fair4free.common.revocation``). The
daemon's own certificate is issued and renewed by :mod:`.server_cert` (``renew_server``, re-exported
here), which a running daemon picks up without a restart.
"""

from __future__ import annotations

import contextlib
import datetime
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID

from fair4free.common.errors import ErrorCode, Fair4FreeError
from fair4free.common.secure_files import (
    PRIVATE_MODE,
    PUBLIC_MODE,
    make_private_dir,
    refuse_existing,
    replace_file,
    write_new_files,
)
from fair4free.common.tls import (
    certificate_fingerprint,
    check_client_name,
    client_identity_uri,
    csr_client_name,
    public_key_fingerprint,
    read_pem,
)
from fair4free.data_owner.ca_index import CaIndex, IssuedCertificate, Origin
from fair4free.data_owner.ca_signing import (
    Signer,
    acceptable_public_key,
    ca_extensions,
    cert_pem,
    check_days,
    issue,
    key_pem,
    leaf_extensions,
    load_signer,
    new_key,
    self_signer,
    sign_crl,
    signer_for,
    subject_name,
)
from fair4free.data_owner.pki_layout import PkiLayout
from fair4free.data_owner.server_cert import (
    RenewedServer,
    issue_server_certificate,
    renew_server,
    server_alt_names,
)

__all__ = [
    "IssuedCertificate",
    "PkiLayout",
    "PublishedCrl",
    "RenewedServer",
    "client_identity_uri",
    "init_pki",
    "issue_client",
    "publish_crl",
    "renew_server",
    "revoke_client",
    "sign_csr",
]

_CRL_DAYS = 7
_MAX_CRL_DAYS = 366


@dataclass(frozen=True, kw_only=True)
class PublishedCrl:
    """A revocation list just published: where, its number, when it must be replaced, its size."""

    path: Path
    number: int
    next_update: datetime.datetime
    revoked: int


def init_pki(
    root: Path,
    *,
    hostnames: Sequence[str] = ("localhost",),
    ip_addresses: Sequence[str] = ("127.0.0.1",),
    days: int = 365,
) -> PkiLayout:
    """Create a CA, the daemon's certificate and a first, empty revocation list in ``root``.

    The server certificate names every address consumers will dial (``hostnames`` and
    ``ip_addresses``), since gRPC checks the target against its SAN. Nothing is overwritten: an
    existing CA is refused outright.

    :raises Fair4FreeError: OUTPUT_UNWRITABLE if a PKI already exists or ``root`` is not writable;
        CONFIG_INVALID for a bad host name, IP address or lifetime.
    """
    check_days(days)
    alt_names = server_alt_names(hostnames, ip_addresses)
    layout = PkiLayout(root)
    if layout.ca_key.exists() or layout.ca_cert.exists():
        raise Fair4FreeError(
            ErrorCode.OUTPUT_UNWRITABLE,
            f"a PKI already exists in {root} ({layout.ca_cert.name}/{layout.ca_key.name}); "
            "refusing to replace its CA, which would invalidate every certificate it issued",
        )
    ca_key = new_key()
    ca_name = subject_name(f"fair4free development CA {secrets.token_hex(4)}")
    ca_cert = issue(
        subject=ca_name,
        public_key=ca_key.public_key(),
        signer=self_signer(ca_name, ca_key),
        days=days,
        extensions=ca_extensions(),
    )
    signer = signer_for(ca_cert, ca_key)
    server_key, server_cert = issue_server_certificate(signer, alt_names, days=days)
    refuse_existing([layout.index, layout.crl], "a file of the PKI already exists")
    make_private_dir(root)
    write_new_files(
        [
            (layout.ca_key, key_pem(ca_key), PRIVATE_MODE),
            (layout.ca_cert, cert_pem(ca_cert), PUBLIC_MODE),
            (layout.server_key, key_pem(server_key), PRIVATE_MODE),
            (layout.server_cert, cert_pem(server_cert), PUBLIC_MODE),
        ]
    )
    _publish(layout, signer, CaIndex.load(layout.index), _CRL_DAYS)
    return layout


def issue_client(root: Path, name: str, *, days: int = 90) -> tuple[Path, Path]:
    """Make consumer ``name`` a key and a client certificate here; return their paths.

    For one-organisation setups and tests: the key is made on the owner's machine. Across
    organisations use :func:`sign_csr`, so the consumer's key never leaves it. An existing consumer
    of that name is never replaced, so an identity cannot silently change hands.

    :raises Fair4FreeError: CONFIG_INVALID for a bad name or lifetime; TLS_MATERIAL if the CA or its
        index is missing or unusable; OUTPUT_UNWRITABLE if the consumer exists or files cannot be
        written.
    """
    check_client_name(name)
    check_days(days)
    layout = PkiLayout(root)
    cert_path, key_path = layout.client_cert(name), layout.client_key(name)
    refuse_existing([cert_path, key_path], f"client {name!r} already exists")
    client_key = new_key()
    _grant(
        layout,
        name,
        client_key.public_key(),
        days=days,
        origin=Origin.OWNER_KEY,
        key_pem=key_pem(client_key),
    )
    return cert_path, key_path


def sign_csr(root: Path, csr_path: Path, *, days: int = 90) -> IssuedCertificate:
    """Certify the key in a consumer's signing request; write ``clients/<name>.crt``.

    The name comes from the request's one ``fair4free://consumer/<name>`` SAN URI (see
    :func:`~fair4free.common.tls.csr_client_name`); everything else in the certificate is the CA's
    choice, whatever the request asks for: subject, client-authentication use only, no CA rights,
    a lifetime of ``days`` that ends no later than the CA's. A name whose certificate is still
    valid is refused until it is revoked (or has expired).

    :raises Fair4FreeError: CONFIG_INVALID for a bad lifetime; TLS_MATERIAL for an unusable request
        (unreadable, forged, asking for no, several or a malformed identity, a weak key) or CA;
        OUTPUT_UNWRITABLE if the name is taken or files cannot be written.
    """
    check_days(days)
    csr = _load_csr(csr_path)
    name = csr_client_name(csr, str(csr_path))
    public_key = acceptable_public_key(csr, csr_path)
    return _grant(PkiLayout(root), name, public_key, days=days, origin=Origin.CONSUMER_CSR)


def revoke_client(
    root: Path, name: str, *, crl_days: int = _CRL_DAYS
) -> tuple[IssuedCertificate, PublishedCrl]:
    """Revoke consumer ``name``'s current certificate, then publish a new revocation list.

    :raises Fair4FreeError: CONFIG_INVALID for a bad name or list lifetime, or a name with no
        certificate to revoke; TLS_MATERIAL if the CA or its index is unusable; OUTPUT_UNWRITABLE
        if the index or list cannot be written.
    """
    check_client_name(name)
    check_days(crl_days, what="revocation list validity", most=_MAX_CRL_DAYS)
    layout = PkiLayout(root)
    signer = load_signer(layout.ca_cert, layout.ca_key)
    index = CaIndex.load(layout.index)
    current = index.current(name)
    if current is None:
        raise Fair4FreeError(
            ErrorCode.CONFIG_INVALID,
            f"client {name!r} has no certificate on record in {layout.index}; nothing to revoke",
        )
    if current.revoked_at is not None:
        raise Fair4FreeError(
            ErrorCode.CONFIG_INVALID,
            f"client {name!r}: certificate serial {current.serial_hex} was already revoked on "
            f"{current.revoked_at:%Y-%m-%d %H:%M} UTC",
        )
    now = datetime.datetime.now(datetime.UTC)
    index = index.with_revoked(current.serial, now)
    index.save()
    return replace(current, revoked_at=now), _publish(layout, signer, index, crl_days)


def publish_crl(root: Path, *, days: int = _CRL_DAYS) -> PublishedCrl:
    """Sign and publish ``crl.pem`` listing every revoked certificate, valid for ``days``.

    Run it again before the list's next update (a daily timer, say): the daemon refuses every call
    once its list has expired, rather than trust a stale one.

    :raises Fair4FreeError: CONFIG_INVALID for a bad lifetime; TLS_MATERIAL if the CA or its index
        is unusable; OUTPUT_UNWRITABLE if the index or list cannot be written.
    """
    check_days(days, what="revocation list validity", most=_MAX_CRL_DAYS)
    layout = PkiLayout(root)
    return _publish(
        layout, load_signer(layout.ca_cert, layout.ca_key), CaIndex.load(layout.index), days
    )


def _grant(
    layout: PkiLayout,
    name: str,
    public_key: CertificatePublicKeyTypes,
    *,
    days: int,
    origin: Origin,
    key_pem: bytes | None = None,
) -> IssuedCertificate:
    """The one path by which the CA grants a consumer identity: check, certify, record, hand out.

    The record is saved before the certificate is written, so no certificate ever exists that the
    index cannot revoke; if writing fails, the record is withdrawn again. With ``key_pem`` the key
    is written beside the certificate (owner-made keys); otherwise only the certificate is, and it
    may replace the file of the name's retired (revoked or expired) certificate, nothing else.
    """
    uri = client_identity_uri(name)
    signer = load_signer(layout.ca_cert, layout.ca_key)
    index = CaIndex.load(layout.index)
    current = index.current(name)
    now = datetime.datetime.now(datetime.UTC)
    if current is not None and not current.retired(now):
        raise Fair4FreeError(
            ErrorCode.OUTPUT_UNWRITABLE,
            f"client {name!r} already holds certificate serial {current.serial_hex}, valid until "
            f"{current.not_after:%Y-%m-%d}; revoke it first with "
            f"'fair4free-owner pki revoke --name {name}'",
        )
    if key_pem is None and layout.client_key(name).exists():
        raise Fair4FreeError(
            ErrorCode.OUTPUT_UNWRITABLE,
            f"client {name!r} has a private key made by the owner, {layout.client_key(name)}; "
            "remove it before certifying a key the consumer made, so no mismatched pair remains",
        )
    key_sha256 = public_key_fingerprint(public_key)
    _refuse_reused_key(index, name, key_sha256)
    cert_path = layout.client_cert(name)
    if current is None or _fingerprint_or_none(cert_path) != current.sha256:
        refuse_existing([cert_path], f"client {name!r} already exists")
    cert = issue(
        subject=subject_name(name),
        public_key=public_key,
        signer=signer,
        days=days,
        extensions=leaf_extensions(
            ExtendedKeyUsageOID.CLIENT_AUTH, [x509.UniformResourceIdentifier(uri)]
        ),
    )
    pem = cert_pem(cert)
    record = IssuedCertificate(
        serial=cert.serial_number,
        name=name,
        origin=origin,
        issued_at=now,
        not_after=cert.not_valid_after_utc,
        sha256=certificate_fingerprint(pem),
        key_sha256=key_sha256,
    )
    index.with_issued(record).save()
    try:
        make_private_dir(layout.clients_dir)
        if key_pem is None:
            replace_file(cert_path, pem, PUBLIC_MODE)
        else:
            write_new_files(
                [
                    (layout.client_key(name), key_pem, PRIVATE_MODE),
                    (cert_path, pem, PUBLIC_MODE),
                ]
            )
    except Fair4FreeError:
        with contextlib.suppress(Fair4FreeError):
            index.save()  # withdraw the record of a certificate nobody received
        raise
    return record


def _refuse_reused_key(index: CaIndex, name: str, key_sha256: str) -> None:
    """Certify a key for one identity only, and never again once a certificate for it is revoked.

    Revocation may mean the key leaked. Renewing an expired certificate with the same key and name
    is fine.
    """
    for earlier in index.certifying(key_sha256):
        if earlier.revoked_at is not None:
            problem = f"was in certificate serial {earlier.serial_hex}, revoked on "
            problem += f"{earlier.revoked_at:%Y-%m-%d}; the consumer must make a new key"
        elif earlier.name != name:
            problem = f"is already certified for client {earlier.name!r} (serial "
            problem += f"{earlier.serial_hex}); each consumer needs a key of its own"
        else:
            continue
        raise Fair4FreeError(
            ErrorCode.TLS_MATERIAL, f"the public key sha256:{key_sha256} {problem}"
        )


def _fingerprint_or_none(path: Path) -> str | None:
    """Return the fingerprint of the certificate at ``path``, or None if there is none usable."""
    try:
        return certificate_fingerprint(path.read_bytes())
    except (OSError, Fair4FreeError):
        return None


def _publish(layout: PkiLayout, signer: Signer, index: CaIndex, days: int) -> PublishedCrl:
    """Sign a list of ``index``'s revoked certificates and replace ``crl.pem`` with it.

    The list's number is saved before the list is written, so a number is never used twice even if
    writing fails: numbers only ever increase.
    """
    index = index.with_next_crl_number()
    index.save()
    revoked = [(c.serial, c.revoked_at) for c in index.revoked() if c.revoked_at is not None]
    crl = sign_crl(signer, revoked, number=index.crl_number, days=days)
    replace_file(layout.crl, crl.public_bytes(serialization.Encoding.PEM), PUBLIC_MODE)
    return PublishedCrl(
        path=layout.crl,
        number=index.crl_number,
        next_update=crl.next_update_utc or signer.not_after,
        revoked=len(revoked),
    )


def _load_csr(path: Path) -> x509.CertificateSigningRequest:
    """Read a PEM certificate signing request, naming the file if it is not one."""
    data = read_pem(path, "certificate request")
    try:
        return x509.load_pem_x509_csr(data)
    except ValueError:
        raise Fair4FreeError(
            ErrorCode.TLS_MATERIAL,
            f"certificate request file {path} holds no valid PEM certificate signing request",
        ) from None

"""Signing under the owner's CA: keys, names, extensions, certificates and revocation lists.

The workflows in :mod:`.pki` decide *whether* to sign; this module decides *what* a signed object
says, so every certificate of a kind has the same shape whoever asked for it: client certificates
are for client authentication only, with no CA rights, a subject and SAN the CA chose, and a
lifetime that ends no later than the CA's.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import NameOID

from fair4free.common.errors import ErrorCode, Fair4FreeError
from fair4free.common.tls import key_matches, load_certificates, load_private_key

CLOCK_SKEW = datetime.timedelta(minutes=5)
"""Certificates and lists start this far in the past, so a peer whose clock lags accepts them."""

EC_CURVES = (ec.SECP256R1, ec.SECP384R1)
"""Curves of the consumer keys the CA certifies."""

MIN_RSA_BITS = 2048
"""The smallest RSA consumer key the CA certifies."""

MAX_DAYS = 3650
"""The longest lifetime the CA gives: longer, and a leaked key stays useful for a decade."""

_ORGANIZATION = "fair4free"
_END_OF_TIME = datetime.datetime.max.replace(tzinfo=datetime.UTC)


@dataclass(frozen=True)
class Signer:
    """What issuing under a CA needs: its name, its key, its key identifier and its end of life."""

    name: x509.Name
    key: ec.EllipticCurvePrivateKey
    key_identifier: x509.SubjectKeyIdentifier
    not_after: datetime.datetime


def self_signer(name: x509.Name, key: ec.EllipticCurvePrivateKey) -> Signer:
    """Describe a CA about to sign its own certificate; :func:`issue` then omits the AKI."""
    return Signer(
        name=name,
        key=key,
        key_identifier=x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
        not_after=_END_OF_TIME,
    )


def new_key() -> ec.EllipticCurvePrivateKey:
    """Generate a P-256 key: small, fast, and supported by every gRPC TLS stack."""
    return ec.generate_private_key(ec.SECP256R1())


def subject_name(common_name: str) -> x509.Name:
    """Build a subject or issuer name under the project's organization."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def ca_extensions() -> list[x509.ExtensionType]:
    """Extensions of a CA that may sign leaves only, never another CA."""
    return [
        x509.BasicConstraints(ca=True, path_length=0),
        _key_usage(key_cert_sign=True, crl_sign=True),
    ]


def leaf_extensions(
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


def issue(
    *,
    subject: x509.Name,
    public_key: CertificatePublicKeyTypes,
    signer: Signer,
    days: int,
    extensions: Iterable[x509.ExtensionType],
) -> x509.Certificate:
    """Certify ``public_key`` as ``subject``; self-signed (a CA) when ``signer`` has that name.

    Every certificate gets a random serial and a subject key identifier; issued ones also get the
    authority key identifier of their CA and end no later than it does.
    """
    now = datetime.datetime.now(datetime.UTC)
    not_after = min(now + datetime.timedelta(days=days), signer.not_after)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(signer.name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    if signer.name != subject:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(signer.key_identifier),
            critical=False,
        )
    for extension in extensions:
        builder = builder.add_extension(extension, critical=isinstance(extension, _CRITICAL))
    return builder.sign(signer.key, hashes.SHA256())


def signer_for(ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey) -> Signer:
    """Describe a CA for issuing, taking its key identifier from its certificate."""
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    return Signer(
        name=ca_cert.subject, key=ca_key, key_identifier=ski, not_after=ca_cert.not_valid_after_utc
    )


def load_signer(ca_cert_path: Path, ca_key_path: Path) -> Signer:
    """Load the CA from disk, checking it is one this module made and that it can still issue.

    :raises Fair4FreeError: TLS_MATERIAL naming the unusable, mismatched or expired file.
    """
    ca_cert = load_certificates(ca_cert_path, "CA certificate")[0]
    ca_key = load_private_key(ca_key_path, "CA private key")
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey) or not key_matches(ca_cert, ca_key):
        raise Fair4FreeError(
            ErrorCode.TLS_MATERIAL,
            f"CA private key {ca_key_path} does not belong to CA certificate {ca_cert_path}",
        )
    if ca_cert.not_valid_after_utc <= datetime.datetime.now(datetime.UTC):
        raise Fair4FreeError(
            ErrorCode.TLS_MATERIAL,
            f"CA certificate {ca_cert_path} expired on {ca_cert.not_valid_after_utc:%Y-%m-%d}",
        )
    return signer_for(ca_cert, ca_key)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """Serialize a private key unencrypted, as gRPC loads it; file permissions protect it."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    """Serialize a certificate as PEM."""
    return cert.public_bytes(serialization.Encoding.PEM)


def acceptable_public_key(
    csr: x509.CertificateSigningRequest, path: Path
) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
    """Return the request's public key if the CA certifies keys of its kind and strength.

    :raises Fair4FreeError: TLS_MATERIAL naming the request and the kind of key it carries.
    """
    try:
        key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm):
        key = None
    if isinstance(key, ec.EllipticCurvePublicKey):
        if isinstance(key.curve, EC_CURVES):
            return key
        kind = f"EC {key.curve.name}"
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size >= MIN_RSA_BITS:
            return key
        kind = f"{key.key_size}-bit RSA"
    else:
        kind = "unsupported algorithm" if key is None else type(key).__name__
    raise Fair4FreeError(
        ErrorCode.TLS_MATERIAL,
        f"certificate request {path} carries a key the CA does not certify ({kind}); use an EC "
        f"P-256 or P-384 key or an RSA key of at least {MIN_RSA_BITS} bits",
    )


def sign_crl(
    signer: Signer,
    revoked: Sequence[tuple[int, datetime.datetime]],
    *,
    number: int,
    days: int,
) -> x509.CertificateRevocationList:
    """Sign a revocation list of (serial, revocation time) pairs, valid for ``days``.

    It carries its number and the CA's key identifier; its next update never falls after the CA's
    end, since no certificate it could list outlives the CA.
    """
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(signer.name)
        .last_update(now - CLOCK_SKEW)
        .next_update(min(now + datetime.timedelta(days=days), signer.not_after))
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(signer.key_identifier),
            critical=False,
        )
    )
    for serial, when in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
        )
    return builder.sign(signer.key, hashes.SHA256())


def check_days(days: int, *, what: str = "certificate lifetime", most: int = MAX_DAYS) -> None:
    """Reject lifetimes that are empty or so long that a leaked key stays useful for decades."""
    if not 1 <= days <= most:
        raise Fair4FreeError(
            ErrorCode.CONFIG_INVALID, f"{what} of {days} days is invalid: use 1 to {most} days"
        )

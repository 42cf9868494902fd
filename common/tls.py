"""TLS material and identity shared by the owner's daemon and the consumer's client.

Every connection is mutual TLS. A consumer's identity is taken only from the SAN URI of the client
certificate the owner's CA issued to it, never from metadata the client could choose; so the URI
scheme, the allowed names and the parsing of a peer certificate live here, next to the loaders of
TLS material, where both sides agree on them. The daemon's credentials, which reload a renewed
server certificate, are the owner's alone (``fair4free.data_owner.server_tls``).
"""

from __future__ import annotations

import datetime
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificatePublicKeyTypes,
    PrivateKeyTypes,
    PublicKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fair4free.common.errors import ErrorCode, Fair4FreeError

CLIENT_URI_PREFIX = "fair4free://consumer/"
"""Prefix of the SAN URI that names a consumer; the text after it is the consumer's name."""

CLIENT_NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
"""Consumer names: short, lower-case and safe both as a file name and inside a URI."""

CA_CERT_FILE = "ca.crt"
"""File name of the CA certificate inside a PKI directory (the trust root of both sides)."""

CLIENTS_DIR = "clients"
"""Folder of a PKI directory holding ``<name>.crt`` and ``<name>.key`` for each consumer."""

AUTH_CONTEXT_PEER_CERT = "x509_pem_cert"
"""The gRPC auth-context property holding the peer's leaf certificate as PEM."""

AuthContext = Mapping[str, Sequence[bytes] | bytes]
"""A gRPC auth context: property name to values.

At run time grpcio gives lists of bytes; grpc-stubs declares plain bytes. Both are accepted so
``context.auth_context()`` can be passed on as it is.
"""


def check_client_name(name: str) -> str:
    """Return ``name`` if it may name a consumer, so bad names fail before any file or URI is made.

    :raises Fair4FreeError: CONFIG_INVALID naming the rejected value.
    """
    if not CLIENT_NAME_PATTERN.fullmatch(name):
        raise Fair4FreeError(
            ErrorCode.CONFIG_INVALID,
            f"client name {name!r} is invalid: use 1-63 characters from a-z, 0-9, '.', '_', '-', "
            "starting with a letter or digit",
        )
    return name


def client_identity_uri(name: str) -> str:
    """Return consumer ``name``'s SAN URI; issuer and server share this to agree on identities."""
    return CLIENT_URI_PREFIX + check_client_name(name)


def read_pem(path: Path, what: str) -> bytes:
    """Read a PEM file, so that a wrong path fails here with its name, not as a failed handshake.

    :param what: what the file should hold, e.g. ``"CA certificate"``; it goes into the message.
    :raises Fair4FreeError: TLS_MATERIAL if the file is missing, unreadable or not PEM.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise Fair4FreeError(ErrorCode.TLS_MATERIAL, f"{what} file {path} does not exist") from None
    except OSError as exc:
        raise Fair4FreeError(
            ErrorCode.TLS_MATERIAL, f"cannot read {what} file {path}: {exc.strerror or exc}"
        ) from None
    if b"-----BEGIN " not in data or b"-----END " not in data:
        raise Fair4FreeError(
            ErrorCode.TLS_MATERIAL, f"{what} file {path} is not PEM (no BEGIN/END block)"
        )
    return data


def _parse_certificates(data: bytes, path: Path, what: str) -> list[x509.Certificate]:
    """Parse PEM certificates (leaf first) read from ``path``, naming the file if they are bad."""
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise Fair4FreeError(
            ErrorCode.TLS_MATERIAL, f"{what} file {path} holds no valid PEM certificate"
        ) from None


def _parse_private_key(data: bytes, path: Path, what: str) -> PrivateKeyTypes:
    """Parse an unencrypted PEM private key read from ``path``, naming the file if it is bad."""
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise Fair4FreeError(
            ErrorCode.TLS_MATERIAL, f"{what} file {path} is not an unencrypted PEM private key"
        ) from None


def load_certificates(path: Path, what: str) -> list[x509.Certificate]:
    """Read and parse a PEM certificate chain (leaf first), rejecting files gRPC would choke on.

    :raises Fair4FreeError: TLS_MATERIAL if the file is unusable or holds no certificate.
    """
    return _parse_certificates(read_pem(path, what), path, what)


def load_private_key(path: Path, what: str) -> PrivateKeyTypes:
    """Read and parse an unencrypted PEM private key, so a bad key is named before serving starts.

    :raises Fair4FreeError: TLS_MATERIAL if the file is unusable, encrypted or not a private key.
    """
    return _parse_private_key(read_pem(path, what), path, what)


def _public_der(key: PublicKeyTypes | CertificatePublicKeyTypes) -> bytes:
    """Return a public key's SubjectPublicKeyInfo DER, a form that compares across key types."""
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_matches(certificate: x509.Certificate, private_key: PrivateKeyTypes) -> bool:
    """Tell whether ``private_key`` is the key ``certificate`` certifies.

    A mismatch otherwise surfaces only as an opaque handshake failure on the other side.
    """
    return _public_der(certificate.public_key()) == _public_der(private_key.public_key())


def load_identity(cert: Path, key: Path, what: str) -> tuple[bytes, bytes]:
    """Return (chain PEM, key PEM) after checking they belong together and are in their lifetime.

    :param what: whose pair it is (``"server"``, ``"client"``); it goes into every message.
    :raises Fair4FreeError: TLS_MATERIAL naming the unusable, mismatched or out-of-date file.

    gRPC reports a mismatched or expired certificate only as an opaque handshake failure on the
    other side; checking here names the file instead. Each file is read once, so what is checked
    is what is used.
    """
    chain_pem = read_pem(cert, f"{what} certificate")
    key_pem = read_pem(key, f"{what} private key")
    leaf = _parse_certificates(chain_pem, cert, f"{what} certificate")[0]
    private_key = _parse_private_key(key_pem, key, f"{what} private key")
    if not key_matches(leaf, private_key):
        raise Fair4FreeError(
            ErrorCode.TLS_MATERIAL,
            f"{what} private key {key} does not belong to the certificate {cert}",
        )
    now = datetime.datetime.now(datetime.UTC)
    if now < leaf.not_valid_before_utc:
        raise Fair4FreeError(
            ErrorCode.TLS_MATERIAL,
            f"{what} certificate {cert} is not valid before {leaf.not_valid_before_utc:%Y-%m-%d}",
        )
    if now > leaf.not_valid_after_utc:
        raise Fair4FreeError(
            ErrorCode.TLS_MATERIAL,
            f"{what} certificate {cert} expired on {leaf.not_valid_after_utc:%Y-%m-%d}",
        )
    return chain_pem, key_pem


def load_ca(ca: Path) -> bytes:
    """Return the CA bundle PEM after checking that it parses as certificates.

    :raises Fair4FreeError: TLS_MATERIAL naming the unusable file.
    """
    data = read_pem(ca, "CA certificate")
    _parse_certificates(data, ca, "CA certificate")
    return data


def channel_credentials(
    *, ca: Path, cert: Path | None, key: Path | None
) -> grpc.ChannelCredentials:
    """Build a client's credentials trusting only ``ca``; give ``cert`` and ``key`` to be known.

    The owner's daemon refuses a channel without a client certificate; allowing ``None`` exists so
    tools and tests can show that refusal.

    :raises Fair4FreeError: CONFIG_INVALID if only one of ``cert``/``key`` is given, TLS_MATERIAL
        naming an unusable file.
    """
    if (cert is None) != (key is None):
        raise Fair4FreeError(
            ErrorCode.CONFIG_INVALID,
            "a client certificate and its private key must be given together "
            f"(certificate: {cert}, key: {key})",
        )
    root = load_ca(ca)
    if cert is None or key is None:
        return grpc.ssl_channel_credentials(root_certificates=root)
    chain, private_key = load_identity(cert, key, "client")
    return grpc.ssl_channel_credentials(
        root_certificates=root, private_key=private_key, certificate_chain=chain
    )


@dataclass(frozen=True)
class TlsFiles:
    """The three files one side of a connection needs: trust root, own certificate, own key."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def from_pki_dir(cls, root: Path, name: str) -> TlsFiles:
        """Name consumer ``name``'s files in a PKI directory laid out by the owner's ``pki`` tool.

        :raises Fair4FreeError: CONFIG_INVALID if ``name`` is not a valid consumer name.
        """
        check_client_name(name)
        clients = root / CLIENTS_DIR
        return cls(
            ca=root / CA_CERT_FILE, cert=clients / f"{name}.crt", key=clients / f"{name}.key"
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Build mTLS channel credentials from these files (see :func:`channel_credentials`)."""
        return channel_credentials(ca=self.ca, cert=self.cert, key=self.key)


def certificate_fingerprint(pem: bytes) -> str:
    """Return the SHA-256 of a PEM certificate's DER as lower-case hex, to pin it in audit logs.

    :raises Fair4FreeError: TLS_MATERIAL if ``pem`` is not a certificate.
    """
    try:
        certificate = x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise Fair4FreeError(ErrorCode.TLS_MATERIAL, "the data is not a PEM certificate") from None
    return hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()


def _auth_values(auth_context: AuthContext, prop: str) -> list[bytes]:
    """Return the values of ``prop`` as a list, whichever of the two shapes the context has."""
    values = auth_context.get(prop)
    if values is None:
        return []
    if isinstance(values, bytes):
        return [values]
    return list(values)


def peer_certificate(auth_context: AuthContext) -> bytes | None:
    """The PEM of the single verified peer certificate, or None if there is not exactly one."""
    pems = _auth_values(auth_context, AUTH_CONTEXT_PEER_CERT)
    return pems[0] if len(pems) == 1 else None


def peer_identity(auth_context: AuthContext) -> str | None:
    """Return the consumer URI of an authenticated peer, or None if it has no usable one.

    The handshake has already checked the chain against the owner's CA; this picks the identity out
    of the verified leaf. Only one ``fair4free://consumer/<name>`` SAN URI with a valid name, on a
    certificate meant for client authentication, counts: zero or several such URIs, an invalid
    name or a missing or unparsable certificate give None, so the caller refuses rather than guess.
    """
    pems = _auth_values(auth_context, AUTH_CONTEXT_PEER_CERT)
    if len(pems) != 1:
        return None
    try:
        certificate = x509.load_pem_x509_certificate(pems[0])
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        eku = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except (ValueError, x509.ExtensionNotFound, x509.DuplicateExtension):
        return None
    if ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        return None
    uris = [
        uri
        for uri in san.get_values_for_type(x509.UniformResourceIdentifier)
        if uri.startswith(CLIENT_URI_PREFIX)
    ]
    if len(uris) != 1:
        return None
    (uri,) = uris
    if not CLIENT_NAME_PATTERN.fullmatch(uri[len(CLIENT_URI_PREFIX) :]):
        return None
    return uri


def public_key_fingerprint(key: CertificatePublicKeyTypes) -> str:
    """Return the SHA-256 of a public key's SubjectPublicKeyInfo DER as lower-case hex.

    The consumer's ``pki request`` and the owner's ``pki sign`` both print it, so the two
    organisations can compare it over a second channel before an identity is granted.
    """
    return hashlib.sha256(_public_der(key)).hexdigest()


def csr_client_name(csr: x509.CertificateSigningRequest, source: str) -> str:
    """Return the consumer name a certificate signing request asks for, or refuse the request.

    One rule for both sides: the consumer checks its request with it before sending it, the owner
    before signing. The signature must verify (the requester holds the key); the request must ask
    for exactly one SAN URI, ``fair4free://consumer/<name>`` with a valid name; and its subject
    must hold exactly one common name, that name. Whatever else it asks for is the CA's to decide.

    :param source: where the request came from (its file), named in every message.
    :raises Fair4FreeError: TLS_MATERIAL saying what the request gets wrong.
    """

    def refused(problem: str) -> Fair4FreeError:
        return Fair4FreeError(ErrorCode.TLS_MATERIAL, f"certificate request {source} {problem}")

    try:
        signature_valid = csr.is_signature_valid
        extensions = csr.extensions
    except (ValueError, UnsupportedAlgorithm, x509.DuplicateExtension):
        raise refused("has a malformed signature or extensions") from None
    if not signature_valid:
        raise refused("has an invalid signature, so it does not prove possession of its key")
    try:
        san = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    wanted = f"it must ask for exactly one, {CLIENT_URI_PREFIX}<name>"
    if not uris:
        raise refused(f"asks for no SAN URI; {wanted}")
    if len(uris) > 1:
        raise refused(f"asks for {len(uris)} SAN URIs ({', '.join(map(repr, uris))}); {wanted}")
    (uri,) = uris
    if not uri.startswith(CLIENT_URI_PREFIX):
        raise refused(f"asks for SAN URI {uri!r}, which names no consumer; {wanted}")
    try:
        name = check_client_name(uri[len(CLIENT_URI_PREFIX) :])
    except Fair4FreeError as exc:
        raise refused(f"asks for an invalid name: {exc.detail}") from None
    common_names = [a.value for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if common_names != [name]:
        shown = " and ".join(map(repr, common_names)) or "none"
        raise refused(
            f"has subject common name {shown} but asks for consumer {name!r}; they must be equal"
        )
    return name

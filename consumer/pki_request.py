"""The consumer's half of the two-organisation PKI: its own key, and a request to certify it.

The consumer makes its private key here and never sends it anywhere; the owner's CA certifies the
public half from a certificate signing request (``fair4free-owner pki sign``) and returns a
certificate naming the consumer ``fair4free://consumer/<name>``. The key file is created owner-only
and exclusively, so an existing key is never overwritten (and never replaced under the nose of a
certificate that certifies it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fair4free.common.secure_files import (
    PRIVATE_MODE,
    PUBLIC_MODE,
    make_private_dir,
    write_new_files,
)
from fair4free.common.tls import (
    check_client_name,
    client_identity_uri,
    csr_client_name,
    public_key_fingerprint,
)

__all__ = ["CertificateRequest", "request_certificate"]


@dataclass(frozen=True, kw_only=True)
class CertificateRequest:
    """What ``request_certificate`` made: the identity asked for and where its files are."""

    name: str
    uri: str
    key: Path
    """The private key: stays on this machine, mode 0600."""
    csr: Path
    """The signing request to send to the data owner; it holds no secret."""
    key_sha256: str
    """SHA-256 of the public key, to read out to the owner over a second channel."""

    def instructions(self) -> str:
        """Say what to send to the owner, what to keep, and how to check nothing was swapped."""
        return "\n".join(
            [
                f"send {self.csr} to the data owner, to be certified as {self.uri}",
                f"keep {self.key} on this machine; never send it to anyone",
                f"read this key fingerprint to the owner by another channel (phone, in person); "
                f"'fair4free-owner pki sign' prints the same: sha256:{self.key_sha256}",
                f"with the owner's ca.crt and your {self.name}.crt, connect using "
                f"--ca ca.crt --cert {self.name}.crt --key {self.key}",
            ]
        )


def request_certificate(directory: Path, name: str) -> CertificateRequest:
    """Make a P-256 key and a signing request for consumer ``name`` in ``directory``.

    Writes ``<name>.key`` (mode 0600) and ``<name>.csr``; neither may exist already. The request
    names ``name`` as its subject common name and asks for the SAN URI
    ``fair4free://consumer/<name>``, exactly what the owner's CA accepts, which is checked with the
    owner's own rule before anything is written.

    :raises Fair4FreeError: CONFIG_INVALID for a bad name; OUTPUT_UNWRITABLE if either file exists
        or ``directory`` is not writable.
    """
    uri = client_identity_uri(check_client_name(name))
    key_path, csr_path = directory / f"{name}.key", directory / f"{name}.csr"
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    csr_client_name(csr, str(csr_path))  # the owner's rule; raises if this code drifted from it
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    make_private_dir(directory)
    write_new_files(
        [
            (key_path, key_pem, PRIVATE_MODE),
            (csr_path, csr.public_bytes(serialization.Encoding.PEM), PUBLIC_MODE),
        ],
        reason=f"a key or request for {name!r} already exists",
    )
    return CertificateRequest(
        name=name,
        uri=uri,
        key=key_path,
        csr=csr_path,
        key_sha256=public_key_fingerprint(key.public_key()),
    )

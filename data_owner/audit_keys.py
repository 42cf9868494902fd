"""The audit signing key: an Ed25519 key of its own, never a TLS key, that signs log checkpoints.

The private key (PKCS#8 PEM, mode 0600) stays with the daemon; the public key (SubjectPublicKeyInfo
PEM) goes to whoever verifies the log, consumers included. Both are created exclusively, so an
existing key is never overwritten: a new key would orphan every checkpoint signed so far.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fair4free.common.errors import ErrorCode, Fair4FreeError
from fair4free.common.secure_files import (
    PRIVATE_MODE,
    PUBLIC_MODE,
    make_private_dir,
    write_new_files,
)

PRIVATE_KEY_FILE: Final = "audit-signing.key"
PUBLIC_KEY_FILE: Final = "audit-signing.pub"

KEY_EXISTS: Final = "an audit signing key already exists"
KEY_MISSING: Final = "audit key file {path} does not exist"
KEY_UNREADABLE: Final = "cannot read audit key file {path}: {why}"
NOT_PRIVATE_KEY: Final = "audit key file {path} is not an unencrypted Ed25519 private key in PEM"
NOT_PUBLIC_KEY: Final = "audit key file {path} is not an Ed25519 public key in PEM"


@dataclass(frozen=True, kw_only=True)
class AuditKeyFiles:
    """Where a generated key pair was written."""

    private_key: Path
    public_key: Path


def generate_signing_key(directory: Path) -> AuditKeyFiles:
    """Create a fresh key pair in ``directory`` (made 0700 if new); refuses to replace one.

    :raises Fair4FreeError: OUTPUT_UNWRITABLE if either file exists or cannot be written.
    """
    make_private_dir(directory)
    key = Ed25519PrivateKey.generate()
    files = AuditKeyFiles(
        private_key=directory / PRIVATE_KEY_FILE, public_key=directory / PUBLIC_KEY_FILE
    )
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_new_files(
        [
            (files.private_key, private_pem, PRIVATE_MODE),
            (files.public_key, public_key_pem(key.public_key()), PUBLIC_MODE),
        ],
        reason=KEY_EXISTS,
    )
    return files


def public_key_pem(key: Ed25519PublicKey) -> bytes:
    """A public key as SubjectPublicKeyInfo PEM."""
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """Read the private key the daemon signs checkpoints with.

    :raises Fair4FreeError: AUDIT_KEY_INVALID if it is missing, unreadable or not Ed25519.
    """
    data = _read(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise Fair4FreeError(
            ErrorCode.AUDIT_KEY_INVALID, NOT_PRIVATE_KEY.format(path=path)
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise Fair4FreeError(ErrorCode.AUDIT_KEY_INVALID, NOT_PRIVATE_KEY.format(path=path))
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Read the public key a verifier checks checkpoints with.

    :raises Fair4FreeError: AUDIT_KEY_INVALID if it is missing, unreadable or not Ed25519.
    """
    data = _read(path)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise Fair4FreeError(
            ErrorCode.AUDIT_KEY_INVALID, NOT_PUBLIC_KEY.format(path=path)
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise Fair4FreeError(ErrorCode.AUDIT_KEY_INVALID, NOT_PUBLIC_KEY.format(path=path))
    return key


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise Fair4FreeError(ErrorCode.AUDIT_KEY_INVALID, KEY_MISSING.format(path=path)) from None
    except OSError as exc:
        raise Fair4FreeError(
            ErrorCode.AUDIT_KEY_INVALID, KEY_UNREADABLE.format(path=path, why=exc.strerror or exc)
        ) from None

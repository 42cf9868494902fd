"""Versioned artifact directories: JSON metadata + tensor weights, hashed, written atomically.

Both parties save models this way (the owner's teacher, the consumer's student). Nothing is
pickled: weights are plain tensors loaded with ``torch.load(weights_only=True)`` and metadata is
JSON. A directory is written under a temporary name and renamed into place, so a crash leaves
either the whole artifact or none, and an existing directory is never overwritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import torch

from fair4free.common.codec import canonical_json
from fair4free.common.errors import ErrorCode, Fair4FreeError

METADATA_FILE = "artifact.json"
WEIGHTS_FILE = "weights.pt"

StateDicts = Mapping[str, Mapping[str, torch.Tensor]]


@dataclass(frozen=True, kw_only=True)
class Artifact:
    """A loaded artifact: its metadata, its named state dicts and its content hash."""

    metadata: Mapping[str, Any]
    weights: dict[str, dict[str, torch.Tensor]]
    content_hash: str


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape a model's numbers, recorded for reproducibility."""
    names = ("fair4free", "torch", "numpy", "pandas", "scikit-learn", "grpcio")
    versions = {}
    for name in names:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _content_hash(metadata_json: str, weights_bytes: bytes) -> str:
    digest = hashlib.sha256()
    digest.update(metadata_json.encode())
    digest.update(b"\0")
    digest.update(weights_bytes)
    return digest.hexdigest()


def write_artifact(
    directory: Path,
    *,
    kind: str,
    format_version: int,
    metadata: Mapping[str, Any],
    weights: StateDicts,
) -> str:
    """Write a new artifact directory and return its content hash; refuses to overwrite."""
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise Fair4FreeError(
            ErrorCode.OUTPUT_UNWRITABLE, f"{directory} already exists and is not empty"
        )
    document = {
        "kind": kind,
        "format_version": format_version,
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "packages": package_versions(),
        **metadata,
    }
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        try:
            weights_path = staging / WEIGHTS_FILE
            torch.save({name: dict(state) for name, state in weights.items()}, weights_path)
            body = canonical_json(document)
            content_hash = _content_hash(body, weights_path.read_bytes())
            final = {**document, "content_hash": content_hash}
            (staging / METADATA_FILE).write_text(json.dumps(final, indent=2, sort_keys=True))
            for path in (weights_path, staging / METADATA_FILE):
                with path.open("rb") as handle:
                    os.fsync(handle.fileno())
            if directory.exists():
                directory.rmdir()
            staging.rename(directory)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    except OSError as exc:
        raise Fair4FreeError(
            ErrorCode.OUTPUT_UNWRITABLE, f"cannot write {directory}: {exc.strerror or exc}"
        ) from None
    return content_hash


def read_artifact(directory: Path, *, kind: str, format_version: int) -> Artifact:
    """Load and verify an artifact of the given kind and format version."""
    if not directory.is_dir():
        raise Fair4FreeError(ErrorCode.FILE_NOT_FOUND, f"no {kind} directory at {directory}")
    metadata_path = directory / METADATA_FILE
    weights_path = directory / WEIGHTS_FILE
    try:
        document = json.loads(metadata_path.read_text())
        weights_bytes = weights_path.read_bytes()
    except (OSError, json.JSONDecodeError) as exc:
        raise Fair4FreeError(
            ErrorCode.ARTIFACT_CORRUPT, f"{directory} is not a readable {kind}: {exc}"
        ) from None
    if not isinstance(document, dict) or document.get("kind") != kind:
        raise Fair4FreeError(ErrorCode.ARTIFACT_CORRUPT, f"{directory} does not hold a {kind}")
    if document.get("format_version") != format_version:
        raise Fair4FreeError(
            ErrorCode.ARTIFACT_VERSION,
            f"{directory} holds {kind} format {document.get('format_version')}, "
            f"this version of fair4free reads format {format_version}",
        )
    stored_hash = document.pop("content_hash", None)
    if stored_hash != _content_hash(canonical_json(document), weights_bytes):
        raise Fair4FreeError(
            ErrorCode.ARTIFACT_CORRUPT, f"{directory}: content hash does not match its files"
        )
    try:
        weights = torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for a damaged file
        raise Fair4FreeError(
            ErrorCode.ARTIFACT_CORRUPT, f"{weights_path} cannot be loaded: {exc}"
        ) from None
    return Artifact(metadata=document, weights=weights, content_hash=str(stored_hash))

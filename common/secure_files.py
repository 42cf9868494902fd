"""Files that hold keys, certificates and the CA's records, written so that nothing leaks or tears.

Both organisations write private keys (the owner its CA and server keys, a consumer its client
key), and neither side may import the other; so the one careful way of creating such files lives
here. New files are created exclusively with their final mode from the first byte; files that
must change (a revocation list, the CA's index) are replaced atomically, so a reader sees the old
version or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from fair4free.common.errors import ErrorCode, Fair4FreeError

PRIVATE_MODE = 0o600
"""Mode of a private key: readable by its owner only."""

PUBLIC_MODE = 0o644
"""Mode of a certificate, request or revocation list: readable by anyone on the machine."""

PRIVATE_DIR_MODE = 0o700
"""Mode of a folder that holds private keys."""


def make_private_dir(path: Path) -> None:
    """Create a folder (and parents) readable by the owner only, since it will hold private keys.

    :raises Fair4FreeError: OUTPUT_UNWRITABLE naming the folder.
    """
    try:
        path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    except OSError as exc:
        raise Fair4FreeError(
            ErrorCode.OUTPUT_UNWRITABLE, f"cannot create folder {path}: {exc.strerror or exc}"
        ) from None


def refuse_existing(paths: Iterable[Path], reason: str) -> None:
    """Refuse before anything is written if any target exists, so a refusal leaves no debris.

    :raises Fair4FreeError: OUTPUT_UNWRITABLE naming ``reason`` and the first existing path.
    """
    for path in paths:
        if path.exists():
            raise Fair4FreeError(
                ErrorCode.OUTPUT_UNWRITABLE, f"{reason}: {path} exists; refusing to overwrite it"
            )


def write_new_files(
    files: Sequence[tuple[Path, bytes, int]], *, reason: str = "a file of the PKI already exists"
) -> None:
    """Create each (path, data, mode) exclusively, all or none.

    ``O_EXCL`` makes creation fail rather than follow or replace anything placed there meanwhile,
    and the mode is set at creation so a key is never readable by others, even briefly. On any
    failure the files created so far are removed, leaving nothing half-made behind.

    :raises Fair4FreeError: OUTPUT_UNWRITABLE if a target exists (``reason`` says why that matters)
        or cannot be written.
    """
    refuse_existing((path for path, _, _ in files), reason)
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


def replace_file(path: Path, data: bytes, mode: int = PUBLIC_MODE) -> None:
    """Write ``data`` beside ``path``, flush it to disk, then rename it over ``path`` atomically.

    A concurrent reader (the daemon reloading a revocation list or its certificate) sees the old
    file or the new one, and a crash leaves one of them intact. The staging file has ``mode`` from
    its first byte, so with ``PRIVATE_MODE`` a key is never readable by others, even briefly. Only
    the daemon's own key is ever replaced (its renewal); CA and consumer keys never are.

    :raises Fair4FreeError: OUTPUT_UNWRITABLE naming ``path``.
    """
    staging: str | None = None
    try:
        fd, staging = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(staging, path)
        staging = None
        _fsync_dir(path.parent)
    except OSError as exc:
        raise Fair4FreeError(
            ErrorCode.OUTPUT_UNWRITABLE, f"cannot write {path}: {exc.strerror or exc}"
        ) from None
    finally:
        if staging is not None:
            Path(staging).unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable; best effort where folders cannot be opened (not POSIX)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

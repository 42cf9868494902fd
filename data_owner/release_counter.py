"""The Gaussian latent release's durable state: its position counter and its schedule key.

The counter is the number of schedule positions handed out for a model, to all callers together,
in ``<state>/latent-release.sqlite``. It only grows: a call reserves its range in one
``BEGIN IMMEDIATE`` transaction before any latent is drawn, so concurrent calls (threads, or
daemons sharing the state folder) get disjoint ranges and the capacity is never passed, and it is
never given back, not for a failed call nor for one whose row charge is refunded: a position may
have been drawn, and overcounting only overstates epsilon. Each reservation opens its own
connection, so there is nothing to close.

The counter also records the noise multiplier and the record count it was made under, since the
accounting assumes one sigma and one schedule for every row: a restart with another sigma is
refused. The clip radius, limit and delta may change (epsilon does not depend on C).

The key (``<state>/latent-release.key``, 32 random bytes, mode 0600, made on first use) orders
the records within each pass. It is never served; it only keeps the order private.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from fair4free.common.errors import ErrorCode, Fair4FreeError
from fair4free.common.secure_files import PRIVATE_MODE
from fair4free.data_owner.latent_release import KEY_BYTES, ReleasePlan

COUNTER_FILE: Final = "latent-release.sqlite"
KEY_FILE: Final = "latent-release.key"
BUSY_TIMEOUT_SECONDS: Final = 30.0
SCHEMA_VERSION: Final = 1

_TABLE: Final = """
CREATE TABLE IF NOT EXISTS latent_release (
    model_hash       TEXT    PRIMARY KEY,
    records          INTEGER NOT NULL CHECK (records > 0),
    noise_multiplier REAL    NOT NULL CHECK (noise_multiplier > 0),
    released         INTEGER NOT NULL CHECK (released >= 0),
    created_at       REAL    NOT NULL,
    updated_at       REAL    NOT NULL
)"""

RELEASE_EXHAUSTED: Final = (
    "latent release budget exhausted: {asked} rows asked, {remaining} of {capacity} rows remain "
    "under epsilon limit {limit:g} (delta {delta:g}); ask for at most {remaining}"
)
SETTINGS_CHANGED: Final = (
    "model {model} has released {released} latent rows from {path} at noise multiplier {stored:g} "
    "over {stored_records} records; serve it with --latent-noise-multiplier {stored:g}, or a new "
    "--state-dir if these records were never released (now: {sigma:g} over {records} records)"
)


class PrivacyBudgetExhaustedError(Fair4FreeError):
    """A release that would pass the capacity; nothing was reserved."""

    def __init__(self, *, asked: int, remaining: int, plan: ReleasePlan) -> None:
        self.asked = asked
        self.remaining = remaining
        super().__init__(
            ErrorCode.PRIVACY_BUDGET_EXHAUSTED,
            RELEASE_EXHAUSTED.format(
                asked=asked,
                remaining=remaining,
                capacity=plan.capacity,
                limit=plan.epsilon_limit,
                delta=plan.delta,
            ),
        )


class ReleaseCounter:
    """Schedule positions handed out for one model, in SQLite; safe across threads and processes."""

    def __init__(self, path: Path, *, model_hash: str, plan: ReleasePlan) -> None:
        self._path = path
        self._model_hash = model_hash
        self._plan = plan

    @classmethod
    def open(cls, state_dir: Path, *, model_hash: str, plan: ReleasePlan) -> ReleaseCounter:
        """The model's counter in ``state_dir``, created at 0 the first time.

        :raises Fair4FreeError: PRIVACY_SETTINGS_INVALID if the model's earlier releases used
            another noise multiplier or record count; CONFIG_INVALID if the file is unreadable.
        """
        counter = cls(state_dir / COUNTER_FILE, model_hash=model_hash, plan=plan)
        with counter._write() as db:
            db.execute(_TABLE)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            now = time.time()
            db.execute(
                "INSERT OR IGNORE INTO latent_release (model_hash, records, noise_multiplier,"
                " released, created_at, updated_at) VALUES (?, ?, ?, 0, ?, ?)",
                (model_hash, plan.records, plan.noise_multiplier, now, now),
            )
            records, sigma, released = db.execute(
                "SELECT records, noise_multiplier, released FROM latent_release"
                " WHERE model_hash = ?",
                (model_hash,),
            ).fetchone()
        if (records, sigma) != (plan.records, plan.noise_multiplier):
            raise Fair4FreeError(
                ErrorCode.PRIVACY_SETTINGS_INVALID,
                SETTINGS_CHANGED.format(
                    model=model_hash[:12], released=released, path=counter._path, stored=sigma,
                    stored_records=records, sigma=plan.noise_multiplier, records=plan.records,
                ),
            )  # fmt: skip
        return counter

    @property
    def plan(self) -> ReleasePlan:
        """The release this counter meters."""
        return self._plan

    def released(self) -> int:
        """Positions handed out so far (rows released, or drawn for a call that then failed)."""
        with self._connection() as db:
            return self._released(db)

    def reserve(self, rows: int) -> int:
        """Hand out the next ``rows`` positions; returns the first.

        :raises PrivacyBudgetExhaustedError: if they would pass the capacity (nothing reserved).
        """
        if rows < 1:
            raise ValueError(f"rows must be at least 1, got {rows}")
        with self._write() as db:
            start = self._released(db)
            if start + rows > self._plan.capacity:
                remaining = max(0, self._plan.capacity - start)
                raise PrivacyBudgetExhaustedError(asked=rows, remaining=remaining, plan=self._plan)
            db.execute(
                "UPDATE latent_release SET released = ?, updated_at = ? WHERE model_hash = ?",
                (start + rows, time.time(), self._model_hash),
            )
        return start

    def _released(self, db: sqlite3.Connection) -> int:
        found = db.execute(
            "SELECT released FROM latent_release WHERE model_hash = ?", (self._model_hash,)
        ).fetchone()
        if found is None:  # the row is made by open(); someone deleted it meanwhile
            raise Fair4FreeError(
                ErrorCode.CONFIG_INVALID, f"{self._path} lost the counter of its model"
            )
        return int(found[0])

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, holding SQLite's write lock from its start."""
        with self._connection() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """A connection of its own (autocommit), closed afterwards; SQLite errors named."""
        try:
            db = sqlite3.connect(self._path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
        except sqlite3.Error as exc:
            raise Fair4FreeError(
                ErrorCode.CONFIG_INVALID, f"latent release counter {self._path}: {exc}"
            ) from None
        try:
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = FULL")
            yield db
        except sqlite3.Error as exc:
            raise Fair4FreeError(
                ErrorCode.CONFIG_INVALID, f"latent release counter {self._path}: {exc}"
            ) from None
        finally:
            db.close()


def schedule_key(state_dir: Path) -> bytes:
    """The release schedule's secret key, made on first use with mode 0600 and never replaced.

    Written whole to a private temporary file, then linked to its name, which fails if a key is
    already there: two daemons starting together on one state folder agree on one key, and none
    ever reads a half-written one.

    :raises Fair4FreeError: CONFIG_INVALID for a key file that is not ``KEY_BYTES`` long;
        OUTPUT_UNWRITABLE if it cannot be created.
    """
    path = state_dir / KEY_FILE
    if not path.exists():
        try:
            fd, staging = tempfile.mkstemp(dir=state_dir, prefix=f".{KEY_FILE}.")
            try:
                with os.fdopen(fd, "wb") as handle:
                    os.fchmod(handle.fileno(), PRIVATE_MODE)
                    handle.write(secrets.token_bytes(KEY_BYTES))
                    handle.flush()
                    os.fsync(handle.fileno())
                with contextlib.suppress(FileExistsError):
                    os.link(staging, path)
            finally:
                os.unlink(staging)
        except OSError as exc:
            raise Fair4FreeError(
                ErrorCode.OUTPUT_UNWRITABLE, f"cannot create {path}: {exc.strerror or exc}"
            ) from None
    try:
        key = path.read_bytes()
    except OSError as exc:
        raise Fair4FreeError(
            ErrorCode.CONFIG_INVALID, f"cannot read {path}: {exc.strerror or exc}"
        ) from None
    if len(key) != KEY_BYTES:
        raise Fair4FreeError(
            ErrorCode.CONFIG_INVALID,
            f"{path} holds {len(key)} bytes, not a {KEY_BYTES}-byte key; restore it from a backup",
        )
    return key

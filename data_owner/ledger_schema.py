"""The ledger's tables, their version, and the upgrade of a ledger an older release wrote.

A ledger outlives daemon upgrades (it is the budgets' only record), so a newer release upgrades
an older file in place, inside the opening transaction, instead of refusing it; a file from a
newer release is refused, since this one cannot know what its tables mean.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Final

from fair4free.common.errors import ErrorCode, Fair4FreeError

SCHEMA_VERSION: Final = 2
"""The version this release writes; SQLite's ``user_version`` holds it."""

_CHARGES: Final = """
CREATE TABLE charges (
    identity   TEXT    NOT NULL,
    method     TEXT    NOT NULL,
    rows_used  INTEGER NOT NULL CHECK (rows_used >= 0),
    calls      INTEGER NOT NULL CHECK (calls >= 0),
    updated_at REAL    NOT NULL,
    PRIMARY KEY (identity, method)
)"""

_REQUESTS: Final = """
CREATE TABLE requests (
    identity     TEXT    NOT NULL,
    request_id   TEXT    NOT NULL,
    method       TEXT    NOT NULL,
    rows         INTEGER NOT NULL CHECK (rows >= 0),
    request_hash TEXT    NOT NULL,
    status       TEXT    NOT NULL CHECK (status IN ('reserved', 'complete')),
    answer       BLOB,
    created_at   REAL    NOT NULL,
    completed_at REAL,
    PRIMARY KEY (identity, request_id),
    CHECK ((status = 'complete') = (answer IS NOT NULL))
)"""

# Version 2. A request whose stored answer was pruned keeps its id here (without the answer), so
# a late retry is told the answer is gone instead of being answered or charged again.
_PRUNED: Final = """
CREATE TABLE pruned (
    identity     TEXT    NOT NULL,
    request_id   TEXT    NOT NULL,
    method       TEXT    NOT NULL,
    rows         INTEGER NOT NULL CHECK (rows >= 0),
    request_hash TEXT    NOT NULL,
    completed_at REAL    NOT NULL,
    pruned_at    REAL    NOT NULL,
    PRIMARY KEY (identity, request_id)
)"""

_UPGRADES: Final[dict[int, tuple[str, ...]]] = {1: (_PRUNED,)}
"""Statements that take a ledger from a version to the next."""


def prepare(db: sqlite3.Connection, path: Path) -> None:
    """Create the tables in a new ledger or upgrade an older one; inside a write transaction.

    :raises Fair4FreeError: CONFIG_INVALID for a ledger of a version this release cannot read.
    """
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version == 0:
        for statement in (_CHARGES, _REQUESTS, _PRUNED):
            db.execute(statement)
    elif version != SCHEMA_VERSION:
        if version not in _UPGRADES:
            raise Fair4FreeError(
                ErrorCode.CONFIG_INVALID,
                f"ledger {path} has schema version {version}, "
                f"this version of fair4free reads {SCHEMA_VERSION}",
            )
        for step in range(version, SCHEMA_VERSION):
            for statement in _UPGRADES[step]:
                db.execute(statement)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

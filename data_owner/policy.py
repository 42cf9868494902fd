"""Who may ask what: the owner's access policy, read from a TOML file and validated once.

Deny by default: an identity that the file does not name, or a method that its entry does not
list, is refused. Identities are the SAN URIs of client certificates (``fair4free://consumer/<name>``).
The format::

    [defaults]                                      # optional
    max_rows_per_call = 4096                        # 1..1000000, default 4096
    rate_per_minute = 120                           # 1..1000000 calls, default 60

    [clients."fair4free://consumer/acme"]
    methods = ["GetManifest", "SampleLatents", "Decode", "Evaluate"]
    max_rows_per_call = 2048                        # optional, overrides the default
    rate_per_minute = 60                            # optional, overrides the default

    [clients."fair4free://consumer/acme".budgets]   # rows per method, over the policy's lifetime
    SampleLatents = 50000
    Decode = 100000
    Evaluate = 20000                                # synthetic rows uploaded to be scored

Rules, each checked at load so that a typo can never silently widen access:

- Only the keys shown above are allowed, at every level; an unknown key is an error.
- ``methods`` is required and names methods of ``fair4free.v1.OwnerService`` at most once each.
- A method that carries rows (``SampleLatents``, ``Decode``, ``Evaluate``) is allowed only with a
  budget, a non-negative integer; ``GetManifest`` carries no rows and takes no budget. A budget
  for a method not listed in ``methods`` is an error too (it would read as access that is not
  granted).
- The per-call row cap here is the client's; the daemon's own ``--max-rows-per-call`` still applies.

Every error is a ``Fair4FreeError`` CONFIG_INVALID naming the field by its path and the value, e.g.
``clients."fair4free://consumer/acme".budgets.Decode: must be a non-negative integer, got -5``.
``PolicyFile`` reloads the file when it changes and keeps the last good policy if the new one is
invalid, so the owner can edit the policy without a restart.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from fair4free.common.errors import ErrorCode, Fair4FreeError
from fair4free.common.tls import CLIENT_NAME_PATTERN, CLIENT_URI_PREFIX

logger = logging.getLogger(__name__)

METHODS: Final = ("GetManifest", "SampleLatents", "Decode", "Evaluate")
"""The methods of ``fair4free.v1.OwnerService`` a policy may grant, by their short names."""

ROW_METHODS: Final = frozenset({"SampleLatents", "Decode", "Evaluate"})
"""Methods that carry rows (answered, or uploaded to be scored), so every grant needs a budget."""

DEFAULT_EVALUATE_BUDGET: Final = 50_000
"""Evaluate rows ``policy init`` grants unless told fewer: each call scores synthetic rows against
the owner's hold-out, so each is also a probe of it (docs/security.md); about a dozen full
evaluations, not an open-ended oracle."""

DEFAULT_MAX_ROWS_PER_CALL: Final = 4096
DEFAULT_RATE_PER_MINUTE: Final = 60
MAX_SETTING: Final = 1_000_000

# Error texts (the detail is "<path>: <text>" or "<path>: <text>, got <value>").
NOT_A_TABLE: Final = "must be a table"
UNKNOWN_KEY: Final = "unknown key, expected one of"
NOT_AN_IDENTITY: Final = "is not a consumer identity, expected fair4free://consumer/<name>"
SETTING_RANGE: Final = f"must be an integer from 1 to {MAX_SETTING}"
METHODS_MISSING: Final = "is required: list the methods this client may call"
NOT_A_LIST_OF_NAMES: Final = "must be an array of method names"
UNKNOWN_METHOD: Final = "unknown method, expected one of " + ", ".join(METHODS)
DUPLICATE_METHOD: Final = "is listed twice"
BUDGET_MISSING: Final = "is required: a method that carries rows is allowed only with a row budget"
BUDGET_VALUE: Final = "must be a non-negative integer"
BUDGET_NO_ROWS: Final = "takes no budget: the method carries no rows"
BUDGET_NOT_LISTED: Final = "is a budget for a method not listed in methods"

_TOP_KEYS: Final = ("clients", "defaults")
_LIMIT_KEYS: Final = ("max_rows_per_call", "rate_per_minute")
_CLIENT_KEYS: Final = ("budgets", "max_rows_per_call", "methods", "rate_per_minute")
_ROW_METHOD_NAMES: Final = tuple(m for m in METHODS if m in ROW_METHODS)
_BARE_KEY: Final = re.compile(r"[A-Za-z0-9_-]+")


class DenialReason(Enum):
    """Why a call is refused."""

    UNKNOWN_IDENTITY = "unknown_identity"
    METHOD_NOT_ALLOWED = "method_not_allowed"


@dataclass(frozen=True, kw_only=True)
class ClientPolicy:
    """What one consumer identity may do."""

    identity: str
    methods: frozenset[str]
    max_rows_per_call: int
    rate_per_minute: int
    budgets: Mapping[str, int]
    """Row budget per allowed row method (read-only)."""

    def budget(self, method: str) -> int | None:
        """The row budget of ``method``, or None for a method that carries no rows."""
        return self.budgets.get(method)


@dataclass(frozen=True, kw_only=True)
class Decision:
    """The policy's answer for one call: allowed (``reason`` is None) or refused, and why."""

    identity: str | None
    method: str
    reason: DenialReason | None
    client: ClientPolicy | None
    """The caller's entry, when the identity is known (even if the method is refused)."""

    @property
    def allowed(self) -> bool:
        """Whether the call may proceed."""
        return self.reason is None

    @property
    def detail(self) -> str:
        """One line saying what was decided, safe to send to the caller."""
        if self.reason is DenialReason.UNKNOWN_IDENTITY:
            who = "the caller" if self.identity is None else self.identity
            return f"{who} is not a client in the owner's policy"
        if self.reason is DenialReason.METHOD_NOT_ALLOWED:
            return f"{self.identity} may not call {self.method}"
        return f"{self.identity} may call {self.method}"

    def enforce(self) -> ClientPolicy:
        """The caller's entry if the call is allowed.

        :raises Fair4FreeError: SERVER_REFUSED (PERMISSION_DENIED) with ``detail`` otherwise.
        """
        if self.reason is not None or self.client is None:
            raise Fair4FreeError(ErrorCode.SERVER_REFUSED, self.detail)
        return self.client


@dataclass(frozen=True, kw_only=True)
class Policy:
    """A validated policy: the allowed identities and their limits; built by ``load``."""

    clients: Mapping[str, ClientPolicy]
    digest: str
    """SHA-256 of the file's bytes, to name the policy version in logs and audit records."""

    @classmethod
    def load(cls, path: Path | str) -> Policy:
        """Read and validate a policy file.

        :raises Fair4FreeError: FILE_NOT_FOUND if the file is missing, CONFIG_INVALID otherwise.
        """
        return cls.parse(_read(Path(path)), source=str(path))

    @classmethod
    def parse(cls, data: bytes, *, source: str = "<policy>") -> Policy:
        """Validate the bytes of a policy file; ``source`` names it in syntax errors."""
        try:
            document = tomllib.loads(data.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise _invalid(f"policy file {source}: not UTF-8 text ({exc.reason})") from None
        except tomllib.TOMLDecodeError as exc:
            raise _invalid(f"policy file {source}: invalid TOML: {exc}") from None
        _check_keys(document, _TOP_KEYS, "")
        defaults = _table(document.get("defaults", {}), "defaults")
        _check_keys(defaults, _LIMIT_KEYS, "defaults")
        max_rows = _setting(defaults, "max_rows_per_call", "defaults", DEFAULT_MAX_ROWS_PER_CALL)
        rate = _setting(defaults, "rate_per_minute", "defaults", DEFAULT_RATE_PER_MINUTE)
        clients = _table(document.get("clients", {}), "clients")
        entries = {
            identity: _client(identity, entry, max_rows=max_rows, rate=rate)
            for identity, entry in clients.items()
        }
        return cls(clients=MappingProxyType(entries), digest=hashlib.sha256(data).hexdigest())

    def client(self, identity: str | None) -> ClientPolicy | None:
        """The entry of ``identity``, or None if the policy does not name it."""
        return None if identity is None else self.clients.get(identity)

    def decide(self, identity: str | None, method: str) -> Decision:
        """Whether ``identity`` may call ``method`` (its short name, e.g. ``"Decode"``)."""
        client = self.client(identity)
        if client is None:
            reason: DenialReason | None = DenialReason.UNKNOWN_IDENTITY
        elif method not in client.methods:
            reason = DenialReason.METHOD_NOT_ALLOWED
        else:
            reason = None
        return Decision(identity=identity, method=method, reason=reason, client=client)


class PolicyFile:
    """A policy file that is reloaded when it changes, so edits apply without a restart.

    ``current()`` checks the file's size, modification time and inode on each call (one ``stat``)
    and reloads it when any of them changed. A new file that fails validation is not applied: the
    last good policy stays in force and ``error`` says what is wrong, until the file is fixed.
    Thread-safe. The first load happens in the constructor and raises if the file is invalid.
    """

    def __init__(self, path: Path | str) -> None:
        self._path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = _stamp(self._path)
        self._policy = Policy.load(self._path)
        self._error: Fair4FreeError | None = None

    @property
    def path(self) -> Path:
        """The watched file."""
        return self._path

    @property
    def error(self) -> Fair4FreeError | None:
        """Why the file as it is now is not applied; None when the policy in force is the file's."""
        with self._lock:
            return self._error

    def current(self) -> Policy:
        """The policy in force: the file's, reloaded if it changed, or the last good one."""
        with self._lock:
            try:
                stamp = _stamp(self._path)
            except Fair4FreeError as exc:
                self._reject(exc, stamp=None)
                return self._policy
            if stamp == self._stamp:
                return self._policy
            try:
                policy = Policy.load(self._path)
            except Fair4FreeError as exc:
                self._reject(exc, stamp=stamp)
                return self._policy
            self._policy, self._stamp, self._error = policy, stamp, None
            logger.info("policy %s reloaded (sha256 %s)", self._path, policy.digest)
            return policy

    def _reject(self, exc: Fair4FreeError, *, stamp: tuple[int, int, int] | None) -> None:
        if self._error is None or self._error.detail != exc.detail:
            logger.warning("policy %s not applied, keeping the last good one: %s", self._path, exc)
        self._error, self._stamp = exc, stamp


def _stamp(path: Path) -> tuple[int, int, int]:
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        raise Fair4FreeError(ErrorCode.FILE_NOT_FOUND, f"policy file {path} not found") from None
    except OSError as exc:
        raise _invalid(f"policy file {path}: cannot read it: {exc.strerror}") from None
    return stat.st_mtime_ns, stat.st_size, stat.st_ino


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise Fair4FreeError(ErrorCode.FILE_NOT_FOUND, f"policy file {path} not found") from None
    except OSError as exc:
        raise _invalid(f"policy file {path}: cannot read it: {exc.strerror}") from None


def _client(identity: str, entry: Any, *, max_rows: int, rate: int) -> ClientPolicy:
    path = f"clients.{_key(identity)}"
    name = identity.removeprefix(CLIENT_URI_PREFIX)
    if name == identity or not CLIENT_NAME_PATTERN.fullmatch(name):
        raise _invalid(f"{path}: {NOT_AN_IDENTITY}")
    table = _table(entry, path)
    _check_keys(table, _CLIENT_KEYS, path)
    methods = _methods(table, path)
    budgets = _table(table.get("budgets", {}), f"{path}.budgets")
    for method, value in budgets.items():
        where = f"{path}.budgets.{_key(method)}"
        if method in METHODS and method not in ROW_METHODS:
            raise _invalid(f"{where}: {BUDGET_NO_ROWS}")
        _check_keys({method: value}, _ROW_METHOD_NAMES, f"{path}.budgets")
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise _invalid(f"{where}: {BUDGET_VALUE}, got {_show(value)}")
        if method not in methods:
            raise _invalid(f"{where}: {BUDGET_NOT_LISTED}")
    for method in sorted(ROW_METHODS & methods):
        if method not in budgets:
            raise _invalid(f"{path}.budgets.{method}: {BUDGET_MISSING}")
    return ClientPolicy(
        identity=identity,
        methods=methods,
        max_rows_per_call=_setting(table, "max_rows_per_call", path, max_rows),
        rate_per_minute=_setting(table, "rate_per_minute", path, rate),
        budgets=MappingProxyType(dict(budgets)),
    )


def _methods(table: dict[str, Any], path: str) -> frozenset[str]:
    if "methods" not in table:
        raise _invalid(f"{path}.methods: {METHODS_MISSING}")
    listed = table["methods"]
    if not isinstance(listed, list):
        raise _invalid(f"{path}.methods: {NOT_A_LIST_OF_NAMES}, got {_show(listed)}")
    seen: set[str] = set()
    for index, method in enumerate(listed):
        where = f"{path}.methods[{index}]"
        if not isinstance(method, str):
            raise _invalid(f"{where}: {NOT_A_LIST_OF_NAMES}, got {_show(method)}")
        if method not in METHODS:
            raise _invalid(f"{where}: {UNKNOWN_METHOD}, got {_show(method)}")
        if method in seen:
            raise _invalid(f"{where}: {method} {DUPLICATE_METHOD}")
        seen.add(method)
    return frozenset(seen)


def _setting(table: dict[str, Any], key: str, path: str, default: int) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SETTING:
        raise _invalid(f"{_join(path, key)}: {SETTING_RANGE}, got {_show(value)}")
    return value


def _table(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _invalid(f"{path}: {NOT_A_TABLE}, got {_show(value)}")
    return value


def _check_keys(table: dict[str, Any], allowed: tuple[str, ...], path: str) -> None:
    for key in table:
        if key not in allowed:
            raise _invalid(f"{_join(path, _key(key))}: {UNKNOWN_KEY} {', '.join(allowed)}")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _key(key: str) -> str:
    """A key as TOML would write it: bare when it can be, quoted otherwise."""
    return key if _BARE_KEY.fullmatch(key) else json.dumps(key)


def _show(value: Any) -> str:
    """A value as it would appear in the TOML file; tables and arrays by their kind."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return str(value)


def _invalid(detail: str) -> Fair4FreeError:
    return Fair4FreeError(ErrorCode.CONFIG_INVALID, detail)


def starting_budgets(rows: int) -> dict[str, int]:
    """The budgets ``policy init`` grants: ``rows`` per row method, Evaluate capped lower.

    Evaluate rows are not released data but each call probes the hold-out, so its default is
    ``DEFAULT_EVALUATE_BUDGET`` unless ``rows`` is smaller.
    """
    budgets = dict.fromkeys(sorted(ROW_METHODS), rows)
    budgets["Evaluate"] = min(rows, DEFAULT_EVALUATE_BUDGET)
    return budgets


def render_policy(grants: Mapping[str, Mapping[str, int]], *, rate_per_minute: int) -> str:
    """A policy file granting each identity the given row budgets and their methods.

    Every method that carries no rows is granted too; a row method is granted only with a budget
    in ``grants``, since a grant without one would be refused. The starting point an owner
    edits: ``fair4free-owner policy init`` writes it.
    """
    lines = ["[defaults]", f"rate_per_minute = {rate_per_minute}", ""]
    for identity, budgets in grants.items():
        methods = [m for m in METHODS if m not in ROW_METHODS or m in budgets]
        lines += [
            f"[clients.{json.dumps(identity)}]",
            "methods = " + json.dumps(methods),
            "",
            f"[clients.{json.dumps(identity)}.budgets]",
            *(f"{method} = {rows}" for method, rows in budgets.items()),
            "",
        ]
    text = "\n".join(lines)
    Policy.parse(text.encode(), source="<generated policy>")  # never hand out a file we reject
    return text

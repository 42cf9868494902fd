"""The policy file: real TOML files on disk, every validation error matched exactly."""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
from pathlib import Path

import pytest

from fair4free.common.errors import ErrorCode, Fair4FreeError
from fair4free.data_owner.policy import (
    DEFAULT_MAX_ROWS_PER_CALL,
    DEFAULT_RATE_PER_MINUTE,
    DenialReason,
    Policy,
    PolicyFile,
)

ACME = "fair4free://consumer/acme"
BETA = "fair4free://consumer/beta"
Q = '"fair4free://consumer/acme"'  # the identity as a quoted TOML key

VALID = f"""
[defaults]
max_rows_per_call = 4000
rate_per_minute = 120

[clients.{Q}]
methods = ["GetManifest", "SampleLatents", "Decode"]
max_rows_per_call = 2048
rate_per_minute = 60

[clients.{Q}.budgets]
SampleLatents = 50000
Decode = 100000

[clients."{BETA}"]
methods = ["GetManifest"]
"""


def write(tmp_path: Path, text: str | bytes, name: str = "policy.toml") -> Path:
    path = tmp_path / name
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8")
    else:
        path.write_bytes(text)
    return path


def client_toml(body: str) -> str:
    return f"[clients.{Q}]\n{body}\n"


def exactly(detail: str) -> str:
    return f"^{re.escape(detail)}$"


def test_a_valid_file_loads_into_frozen_entries(tmp_path: Path) -> None:
    path = write(tmp_path, VALID)
    policy = Policy.load(path)
    assert policy.digest == hashlib.sha256(path.read_bytes()).hexdigest()
    acme = policy.client(ACME)
    assert acme is not None
    assert acme.methods == {"GetManifest", "SampleLatents", "Decode"}
    assert (acme.max_rows_per_call, acme.rate_per_minute) == (2048, 60)
    assert dict(acme.budgets) == {"SampleLatents": 50000, "Decode": 100000}
    assert acme.budget("Decode") == 100000
    assert acme.budget("GetManifest") is None
    beta = policy.client(BETA)
    assert beta is not None
    assert (beta.max_rows_per_call, beta.rate_per_minute) == (4000, 120)  # the file's defaults
    assert dict(beta.budgets) == {}
    with pytest.raises(TypeError, match="does not support item assignment"):
        acme.budgets["Decode"] = 10**9  # type: ignore[index]


def test_built_in_defaults_apply_without_a_defaults_table(tmp_path: Path) -> None:
    policy = Policy.load(write(tmp_path, client_toml('methods = ["GetManifest"]')))
    acme = policy.client(ACME)
    assert acme is not None
    assert acme.max_rows_per_call == DEFAULT_MAX_ROWS_PER_CALL
    assert acme.rate_per_minute == DEFAULT_RATE_PER_MINUTE


def test_a_client_with_no_methods_is_named_but_refused_everything(tmp_path: Path) -> None:
    policy = Policy.load(write(tmp_path, client_toml("methods = []")))
    decision = policy.decide(ACME, "GetManifest")
    assert decision.reason is DenialReason.METHOD_NOT_ALLOWED


def test_an_empty_file_denies_everyone(tmp_path: Path) -> None:
    policy = Policy.load(write(tmp_path, ""))
    assert policy.clients == {}
    for identity in (ACME, None):
        decision = policy.decide(identity, "GetManifest")
        assert not decision.allowed
        assert decision.reason is DenialReason.UNKNOWN_IDENTITY


def test_decisions_deny_by_default(tmp_path: Path) -> None:
    policy = Policy.load(write(tmp_path, VALID))
    allowed = policy.decide(ACME, "Decode")
    assert allowed.allowed and allowed.reason is None
    assert allowed.enforce() is policy.client(ACME)
    assert allowed.detail == f"{ACME} may call Decode"

    cases = [
        (BETA, "Decode", DenialReason.METHOD_NOT_ALLOWED, f"{BETA} may not call Decode"),
        (ACME, "Evaluate", DenialReason.METHOD_NOT_ALLOWED, f"{ACME} may not call Evaluate"),
        (
            "fair4free://consumer/other",
            "GetManifest",
            DenialReason.UNKNOWN_IDENTITY,
            "fair4free://consumer/other is not a client in the owner's policy",
        ),
        (
            None,
            "GetManifest",
            DenialReason.UNKNOWN_IDENTITY,
            "the caller is not a client in the owner's policy",
        ),
    ]
    for identity, method, reason, detail in cases:
        decision = policy.decide(identity, method)
        assert not decision.allowed
        assert decision.reason is reason
        assert decision.detail == detail
        with pytest.raises(Fair4FreeError, match=exactly(detail)) as caught:
            decision.enforce()
        assert caught.value.code is ErrorCode.SERVER_REFUSED
    assert policy.decide(BETA, "Decode").client is policy.client(BETA)
    assert policy.client("fair4free://consumer/other") is None
    assert policy.client(None) is None


INVALID = [
    pytest.param(
        client_toml('methods = ["Decode"]\nbudgets = { Decode = -5 }'),
        f"clients.{Q}.budgets.Decode: must be a non-negative integer, got -5",
        id="negative-budget",
    ),
    pytest.param(
        client_toml('methods = ["Decode"]\nbudgets = { Decode = 1.5 }'),
        f"clients.{Q}.budgets.Decode: must be a non-negative integer, got 1.5",
        id="float-budget",
    ),
    pytest.param(
        client_toml('methods = ["Decode"]\nbudgets = { Decode = true }'),
        f"clients.{Q}.budgets.Decode: must be a non-negative integer, got true",
        id="bool-budget",
    ),
    pytest.param(
        client_toml('methods = ["Decode"]\nbudgets = { Decode = "10" }'),
        f'clients.{Q}.budgets.Decode: must be a non-negative integer, got "10"',
        id="string-budget",
    ),
    pytest.param(
        client_toml('methods = ["GetManifest", "SampleLatents"]'),
        f"clients.{Q}.budgets.SampleLatents: is required: a method that carries rows is "
        "allowed only with a row budget",
        id="row-method-without-budget",
    ),
    pytest.param(
        client_toml('methods = ["Decode", "SampleLatents"]\nbudgets = { Decode = 5 }'),
        f"clients.{Q}.budgets.SampleLatents: is required: a method that carries rows is "
        "allowed only with a row budget",
        id="second-row-method-without-budget",
    ),
    pytest.param(
        client_toml('methods = ["GetManifest"]\nbudgets = { GetManifest = 5 }'),
        f"clients.{Q}.budgets.GetManifest: takes no budget: the method carries no rows",
        id="budget-for-rowless-method",
    ),
    pytest.param(
        client_toml('methods = ["Decode"]\nbudgets = { Decode = 5, Decod = 5 }'),
        f"clients.{Q}.budgets.Decod: unknown key, expected one of SampleLatents, Decode, Evaluate",
        id="budget-for-unknown-method",
    ),
    pytest.param(
        client_toml('methods = ["GetManifest"]\nbudgets = { Decode = 5 }'),
        f"clients.{Q}.budgets.Decode: is a budget for a method not listed in methods",
        id="budget-for-unlisted-method",
    ),
    pytest.param(
        client_toml('methods = ["GetManifest", "Decod"]'),
        f"clients.{Q}.methods[1]: unknown method, expected one of GetManifest, SampleLatents, "
        'Decode, Evaluate, got "Decod"',
        id="unknown-method",
    ),
    pytest.param(
        client_toml('methods = ["GetManifest", "GetManifest"]'),
        f"clients.{Q}.methods[1]: GetManifest is listed twice",
        id="duplicate-method",
    ),
    pytest.param(
        client_toml("rate_per_minute = 5"),
        f"clients.{Q}.methods: is required: list the methods this client may call",
        id="methods-missing",
    ),
    pytest.param(
        client_toml('methods = "GetManifest"'),
        f'clients.{Q}.methods: must be an array of method names, got "GetManifest"',
        id="methods-not-an-array",
    ),
    pytest.param(
        client_toml("methods = [1]"),
        f"clients.{Q}.methods[0]: must be an array of method names, got 1",
        id="method-not-a-string",
    ),
    pytest.param(
        client_toml('method = ["GetManifest"]'),
        f"clients.{Q}.method: unknown key, expected one of budgets, max_rows_per_call, "
        "methods, rate_per_minute",
        id="unknown-client-key",
    ),
    pytest.param(
        f'[client.{Q}]\nmethods = ["GetManifest"]\n',
        "client: unknown key, expected one of clients, defaults",
        id="unknown-top-level-key",
    ),
    pytest.param(
        "[defaults]\nmax_rows = 5\n",
        "defaults.max_rows: unknown key, expected one of max_rows_per_call, rate_per_minute",
        id="unknown-defaults-key",
    ),
    pytest.param(
        "[defaults]\nmax_rows_per_call = 0\n",
        "defaults.max_rows_per_call: must be an integer from 1 to 1000000, got 0",
        id="zero-row-cap",
    ),
    pytest.param(
        "[defaults]\nrate_per_minute = 1000001\n",
        "defaults.rate_per_minute: must be an integer from 1 to 1000000, got 1000001",
        id="rate-too-high",
    ),
    pytest.param(
        client_toml('methods = ["GetManifest"]\nrate_per_minute = "fast"'),
        f'clients.{Q}.rate_per_minute: must be an integer from 1 to 1000000, got "fast"',
        id="client-rate-not-a-number",
    ),
    pytest.param(
        client_toml('methods = ["GetManifest"]\nmax_rows_per_call = 2.0'),
        f"clients.{Q}.max_rows_per_call: must be an integer from 1 to 1000000, got 2.0",
        id="client-row-cap-float",
    ),
    pytest.param(
        '[clients.acme]\nmethods = ["GetManifest"]\n',
        "clients.acme: is not a consumer identity, expected fair4free://consumer/<name>",
        id="identity-not-a-uri",
    ),
    pytest.param(
        '[clients."fair4free://consumer/ACME"]\nmethods = ["GetManifest"]\n',
        'clients."fair4free://consumer/ACME": is not a consumer identity, expected '
        "fair4free://consumer/<name>",
        id="identity-invalid-name",
    ),
    pytest.param(
        "defaults = 5\n",
        "defaults: must be a table, got 5",
        id="defaults-not-a-table",
    ),
    pytest.param(
        'clients = ["acme"]\n',
        "clients: must be a table, got an array",
        id="clients-not-a-table",
    ),
    pytest.param(
        f"[clients]\n{Q} = 3\n",
        f"clients.{Q}: must be a table, got 3",
        id="client-not-a-table",
    ),
    pytest.param(
        client_toml('methods = ["GetManifest"]\nbudgets = 5'),
        f"clients.{Q}.budgets: must be a table, got 5",
        id="budgets-not-a-table",
    ),
]


@pytest.mark.parametrize(("text", "detail"), INVALID)
def test_every_invalid_field_is_named_with_its_value(
    tmp_path: Path, text: str, detail: str
) -> None:
    with pytest.raises(Fair4FreeError, match=exactly(detail)) as caught:
        Policy.load(write(tmp_path, text))
    assert caught.value.code is ErrorCode.CONFIG_INVALID


def test_invalid_toml_names_the_file_and_the_syntax_error(tmp_path: Path) -> None:
    text = client_toml("methods = [")
    path = write(tmp_path, text)
    with pytest.raises(tomllib.TOMLDecodeError) as syntax:
        tomllib.loads(text)
    detail = f"policy file {path}: invalid TOML: {syntax.value}"
    with pytest.raises(Fair4FreeError, match=exactly(detail)) as caught:
        Policy.load(path)
    assert caught.value.code is ErrorCode.CONFIG_INVALID


def test_a_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, b"\xff\xfe")
    detail = f"policy file {path}: not UTF-8 text (invalid start byte)"
    with pytest.raises(Fair4FreeError, match=exactly(detail)) as caught:
        Policy.load(path)
    assert caught.value.code is ErrorCode.CONFIG_INVALID


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(Fair4FreeError, match=exactly(f"policy file {path} not found")) as caught:
        Policy.load(path)
    assert caught.value.code is ErrorCode.FILE_NOT_FOUND


def test_a_directory_is_not_a_policy_file(tmp_path: Path) -> None:
    detail = f"policy file {tmp_path}: cannot read it: Is a directory"
    with pytest.raises(Fair4FreeError, match=exactly(detail)) as caught:
        Policy.load(tmp_path)
    assert caught.value.code is ErrorCode.CONFIG_INVALID


GRANT_MANIFEST = client_toml('methods = ["GetManifest"]')
GRANT_DECODE = client_toml('methods = ["GetManifest", "Decode"]\nbudgets = { Decode = 10 }')


def test_the_policy_file_reloads_when_it_changes(tmp_path: Path) -> None:
    path = write(tmp_path, GRANT_MANIFEST)
    watched = PolicyFile(path)
    first = watched.current()
    assert watched.path == path
    assert not first.decide(ACME, "Decode").allowed
    assert watched.current() is first  # unchanged file: the same object, no reload

    write(tmp_path, GRANT_DECODE)
    second = watched.current()
    assert second is not first
    assert second.decide(ACME, "Decode").allowed
    assert watched.error is None


def test_an_edit_of_the_same_size_reloads_by_its_modification_time(tmp_path: Path) -> None:
    path = write(tmp_path, client_toml('methods = ["GetManifest"]\nrate_per_minute = 10'))
    watched = PolicyFile(path)
    before = watched.current()
    stamp = path.stat().st_mtime_ns
    write(tmp_path, client_toml('methods = ["GetManifest"]\nrate_per_minute = 20'))
    os.utime(path, ns=(stamp + 1_000_000, stamp + 1_000_000))
    after = watched.current().client(ACME)
    assert after is not None and after.rate_per_minute == 20
    assert before.digest != watched.current().digest


def test_an_invalid_edit_keeps_the_last_good_policy_until_it_is_fixed(tmp_path: Path) -> None:
    path = write(tmp_path, GRANT_DECODE)
    watched = PolicyFile(path)
    good = watched.current()

    write(tmp_path, client_toml('methods = ["Decode"]\nbudgets = { Decode = -5 }'))
    assert watched.current() is good
    error = watched.error
    assert error is not None and error.code is ErrorCode.CONFIG_INVALID
    assert error.detail == f"clients.{Q}.budgets.Decode: must be a non-negative integer, got -5"
    assert watched.current() is good  # the same bad file is not re-read into a new error

    write(tmp_path, GRANT_MANIFEST)
    fixed = watched.current()
    assert watched.error is None
    assert not fixed.decide(ACME, "Decode").allowed


def test_a_deleted_file_keeps_the_last_good_policy(tmp_path: Path) -> None:
    path = write(tmp_path, GRANT_DECODE)
    watched = PolicyFile(path)
    good = watched.current()
    path.unlink()
    assert watched.current() is good
    error = watched.error
    assert error is not None and error.code is ErrorCode.FILE_NOT_FOUND
    write(tmp_path, GRANT_MANIFEST)
    assert not watched.current().decide(ACME, "Decode").allowed
    assert watched.error is None


def test_a_file_replaced_by_rename_is_picked_up(tmp_path: Path) -> None:
    path = write(tmp_path, GRANT_MANIFEST)
    watched = PolicyFile(path)
    watched.current()
    write(tmp_path, GRANT_DECODE, name="policy.toml.new").replace(path)
    assert watched.current().decide(ACME, "Decode").allowed


def test_the_first_load_must_succeed(tmp_path: Path) -> None:
    path = write(tmp_path, "[defaults]\nmax_rows_per_call = 0\n")
    detail = "defaults.max_rows_per_call: must be an integer from 1 to 1000000, got 0"
    with pytest.raises(Fair4FreeError, match=exactly(detail)):
        PolicyFile(path)

"""``fair4free-owner ledger prune`` on a real ledger file, also beside a daemon serving it."""

from __future__ import annotations

import re
import time
from pathlib import Path

import grpc
import pytest
from test_audit_daemon import TIMEOUT
from test_cli import assert_one_line_error, run

from conftest import CLIENT_NAME, StubFactory, write_policy
from fair4free.common.errors import CATALOG, ErrorCode, ExitCode, Fair4FreeError
from fair4free.common.tls import client_identity_uri
from fair4free.data_owner.ledger import ANSWER_PRUNED, Ledger, payload_digest
from fair4free.data_owner.pki import PkiLayout
from fair4free.data_owner.registry import load_teacher
from fair4free.data_owner.server import LEDGER_FILE, ServerConfig, build_server
from fair4free.v1 import fair4free_pb2 as pb

DAY = 86400.0
ACME = client_identity_uri("acme")


def test_prune_forgets_old_answers_keeps_charges_and_says_what_went(tmp_path: Path) -> None:
    clock = [time.time() - 10 * DAY]
    with Ledger.open(tmp_path / LEDGER_FILE, clock=lambda: clock[0]) as ledger:
        for request_id, method, rows, answer in [
            ("old-decode", "Decode", 40, b"x" * 10),
            ("old-latents", "SampleLatents", 5, b"y" * 7),
        ]:
            digest = payload_digest(request_id.encode())
            ledger.reserve(ACME, method, request_id, request_hash=digest, rows=rows, limit=100)
            ledger.complete(ACME, request_id, answer)
        clock[0] = time.time()
        ledger.reserve(ACME, "Decode", "new", request_hash=payload_digest(b"n"), rows=5, limit=100)
        ledger.complete(ACME, "new", b"new")

    result = run("owner", "ledger", "prune", "--state-dir", str(tmp_path), "--older-than", "7")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == [
        f"{ACME} Decode: 1 answers, 10 bytes (40 rows, still charged)",
        f"{ACME} SampleLatents: 1 answers, 7 bytes (5 rows, still charged)",
    ]
    assert lines[2].startswith("pruned 2 stored answers completed before ")

    with Ledger.open(tmp_path / LEDGER_FILE) as ledger:
        assert (ledger.used(ACME, "Decode"), ledger.used(ACME, "SampleLatents")) == (45, 5)
        assert ledger.answer(ACME, "new") == b"new"
        with pytest.raises(Fair4FreeError, match="^the answer to request id old-decode") as caught:
            ledger.reserve(
                ACME, "Decode", "old-decode", request_hash=payload_digest(b"old-decode"),
                rows=40, limit=100,
            )  # fmt: skip
        assert caught.value.code is ErrorCode.ANSWER_PRUNED


def test_prune_gives_the_pruned_answers_space_back_to_the_disk(tmp_path: Path) -> None:
    path = tmp_path / LEDGER_FILE
    answer = bytes(range(256)) * 4096  # 1 MiB each, which SQLite keeps in its own pages
    with Ledger.open(path, clock=lambda: time.time() - 10 * DAY) as ledger:
        for n in range(4):
            request_id = f"big-{n}"
            digest = payload_digest(request_id.encode())
            ledger.reserve(ACME, "Decode", request_id, request_hash=digest, rows=1, limit=100)
            ledger.complete(ACME, request_id, answer)
    before = path.stat().st_size
    assert before > 4 * len(answer)

    result = run("owner", "ledger", "prune", "--state-dir", str(tmp_path), "--older-than", "7")
    assert result.returncode == 0, result.stderr
    found = re.search(r"; (\d+) bytes returned to the disk$", result.stdout.strip())
    assert found is not None, result.stdout
    freed = int(found.group(1))
    after = path.stat().st_size
    assert freed >= 4 * len(answer)
    assert after < before - 4 * len(answer)
    with Ledger.open(path) as ledger:
        assert ledger.used(ACME, "Decode") == 4  # charges survive the rewrite


def test_prune_needs_the_daemons_ledger_and_never_makes_one(tmp_path: Path) -> None:
    nowhere = tmp_path / "nowhere"
    result = run("owner", "ledger", "prune", "--state-dir", str(nowhere), "--older-than", "7")
    assert_one_line_error(result, ExitCode.BAD_INPUT, f"no ledger at {nowhere / LEDGER_FILE}")
    assert not nowhere.exists()


def test_prune_refuses_an_age_that_is_not_a_positive_number_of_days(tmp_path: Path) -> None:
    result = run("owner", "ledger", "prune", "--state-dir", str(tmp_path), "--older-than", "-1")
    assert result.returncode == ExitCode.USAGE
    assert "--older-than: must be a positive number of days, got '-1'" in result.stderr


def test_a_retry_after_pruning_under_a_running_daemon_is_refused_and_not_charged(
    tmp_path: Path, teacher_dir: Path, pki_dir: PkiLayout, stub_factory: StubFactory
) -> None:
    config = ServerConfig(
        policy=write_policy(tmp_path / "policy.toml", {"SampleLatents": 1000, "Decode": 1000}),
        state_dir=tmp_path, crl=pki_dir.crl, listen="127.0.0.1:0", seed=0,
    )  # fmt: skip
    daemon = build_server(load_teacher(teacher_dir), tls=pki_dir.server_files(), config=config)
    identity = client_identity_uri(CLIENT_NAME)
    try:
        stub = stub_factory(f"127.0.0.1:{daemon.port}")
        request = pb.SampleLatentsRequest(request_id="r1", rows=50)
        assert sum(b.latents.shape[0] for b in stub.SampleLatents(request, timeout=TIMEOUT)) == 50

        pruning = run("owner", "ledger", "prune", "--state-dir", str(tmp_path),
                      "--older-than", "1e-9")  # fmt: skip
        assert pruning.returncode == 0, pruning.stderr
        assert f"{identity} SampleLatents: 1 answers" in pruning.stdout

        with pytest.raises(grpc.RpcError) as caught:
            list(stub.SampleLatents(request, timeout=TIMEOUT))
        assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        detail = re.escape(ANSWER_PRUNED).replace(r"\{pruned:%Y\-%m\-%d\}", r"\d{4}-\d{2}-\d{2}")
        detail = detail.replace(r"\{request_id\}", "r1")
        hint = re.escape(CATALOG[ErrorCode.ANSWER_PRUNED].hint)
        assert re.fullmatch(f"{detail}; {hint}", caught.value.details() or "")
        assert daemon.ledger.used(identity, "SampleLatents") == 50  # never charged twice

        again = pb.SampleLatentsRequest(request_id="r2", rows=50)
        assert sum(b.latents.shape[0] for b in stub.SampleLatents(again, timeout=TIMEOUT)) == 50
        assert daemon.ledger.used(identity, "SampleLatents") == 100
    finally:
        daemon.stop(0)

"""The budget ledger on real SQLite files: charges, replays, crashes, threads and processes."""

from __future__ import annotations

import datetime
import hashlib
import itertools
import multiprocessing
import random
import re
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from fair4free.common.errors import ErrorCode, Fair4FreeError
from fair4free.data_owner.ledger import (
    ANSWER_PRUNED,
    REQUEST_ID_REUSED,
    BudgetExhaustedError,
    Ledger,
    PrunedAnswers,
    pack_messages,
    payload_digest,
    unpack_messages,
)
from fair4free.data_owner.ledger_schema import SCHEMA_VERSION

ACME = "fair4free://consumer/acme"
BETA = "fair4free://consumer/beta"


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def exactly(detail: str) -> str:
    return f"^{re.escape(detail)}$"


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger.open(tmp_path / "ledger.db")


def test_a_reservation_charges_its_rows(ledger: Ledger) -> None:
    first = ledger.reserve(ACME, "Decode", "r1", request_hash=digest("a"), rows=30, limit=100)
    assert (first.replayed, first.answer, first.used, first.remaining) == (False, None, 30, 70)
    second = ledger.reserve(ACME, "Decode", "r2", request_hash=digest("b"), rows=70, limit=100)
    assert (second.used, second.remaining) == (100, 0)
    assert ledger.used(ACME, "Decode") == 100
    assert ledger.remaining(ACME, "Decode", 100) == 0
    assert ledger.remaining(ACME, "SampleLatents", 100) == 100  # budgets are per method
    assert ledger.remaining(BETA, "Decode", 100) == 100  # and per identity
    journal = sqlite3.connect(ledger.path).execute("PRAGMA journal_mode").fetchone()[0]
    assert journal == "wal"


def test_an_exhausted_budget_says_what_is_left_and_charges_nothing(ledger: Ledger) -> None:
    ledger.reserve(ACME, "Decode", "r1", request_hash=digest("a"), rows=80, limit=100)
    detail = f"Decode budget of {ACME} exhausted: 30 rows needed, 20 of 100 remaining"
    with pytest.raises(BudgetExhaustedError, match=exactly(detail)) as caught:
        ledger.reserve(ACME, "Decode", "r2", request_hash=digest("b"), rows=30, limit=100)
    error = caught.value
    assert error.code is ErrorCode.BUDGET_EXHAUSTED
    assert error.entry.status is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (error.remaining, error.needed, error.limit, error.used) == (20, 30, 100, 80)
    assert ledger.used(ACME, "Decode") == 80
    assert ledger.answer(ACME, "r2") is None
    # Nothing was recorded: once the owner raises the budget, the same request goes through.
    again = ledger.reserve(ACME, "Decode", "r2", request_hash=digest("b"), rows=30, limit=200)
    assert (again.replayed, again.used) == (False, 110)


def test_a_spent_budget_reports_zero_remaining_after_a_lower_limit(ledger: Ledger) -> None:
    ledger.reserve(ACME, "Decode", "r1", request_hash=digest("a"), rows=80, limit=100)
    detail = f"Decode budget of {ACME} exhausted: 1 rows needed, 0 of 50 remaining"
    with pytest.raises(BudgetExhaustedError, match=exactly(detail)):
        ledger.reserve(ACME, "Decode", "r2", request_hash=digest("b"), rows=1, limit=50)
    assert ledger.remaining(ACME, "Decode", 50) == 0


def test_a_retry_is_answered_from_the_record_and_never_charged_twice(ledger: Ledger) -> None:
    reserved = ledger.reserve(ACME, "Decode", "r1", request_hash=digest("a"), rows=40, limit=100)
    assert not reserved.replayed
    retry = ledger.reserve(ACME, "Decode", "r1", request_hash=digest("a"), rows=40, limit=100)
    assert (retry.replayed, retry.answer, retry.used) == (True, None, 40)
    assert ledger.complete(ACME, "r1", b"answer") == b"answer"
    replay = ledger.reserve(ACME, "Decode", "r1", request_hash=digest("a"), rows=40, limit=100)
    assert (replay.replayed, replay.answer, replay.used) == (True, b"answer", 40)
    # A replay needs no budget left, even under a limit lowered since.
    late = ledger.reserve(ACME, "Decode", "r1", request_hash=digest("a"), rows=40, limit=10)
    assert late.answer == b"answer"
    assert ledger.answer(ACME, "r1") == b"answer"
    (usage,) = ledger.usage()
    assert (usage.identity, usage.method, usage.rows, usage.calls, usage.pending) == (
        ACME,
        "Decode",
        40,
        1,
        0,
    )


@pytest.mark.parametrize(
    ("method", "rows", "payload"),
    [("Decode", 40, "other"), ("Decode", 41, "a"), ("SampleLatents", 40, "a")],
)
def test_a_request_id_reused_for_a_different_request_is_refused(
    ledger: Ledger, method: str, rows: int, payload: str
) -> None:
    ledger.reserve(ACME, "Decode", "r1", request_hash=digest("a"), rows=40, limit=100)
    detail = "request id r1 reused for a different request"
    with pytest.raises(Fair4FreeError, match=exactly(detail)) as caught:
        ledger.reserve(ACME, method, "r1", request_hash=digest(payload), rows=rows, limit=100)
    assert caught.value.code is ErrorCode.REQUEST_INVALID
    assert ledger.used(ACME, "Decode") == 40
    assert ledger.used(ACME, "SampleLatents") == 0


def test_request_ids_are_scoped_to_their_identity(ledger: Ledger) -> None:
    ledger.reserve(ACME, "Decode", "r1", request_hash=digest("a"), rows=40, limit=100)
    ledger.complete(ACME, "r1", b"for acme")
    other = ledger.reserve(BETA, "Decode", "r1", request_hash=digest("a"), rows=40, limit=100)
    assert (other.replayed, other.answer) == (False, None)
    assert ledger.answer(BETA, "r1") is None


def test_the_first_stored_answer_wins(ledger: Ledger) -> None:
    ledger.reserve(ACME, "SampleLatents", "r1", request_hash=digest("a"), rows=5, limit=10)
    assert ledger.complete(ACME, "r1", b"first") == b"first"
    assert ledger.complete(ACME, "r1", b"second") == b"first"
    assert ledger.answer(ACME, "r1") == b"first"


def test_completing_an_unreserved_request_is_a_bug(ledger: Ledger) -> None:
    with pytest.raises(LookupError, match=exactly(f"request r9 of {ACME} was never reserved")):
        ledger.complete(ACME, "r9", b"x")


def test_arguments_are_checked(ledger: Ledger) -> None:
    with pytest.raises(Fair4FreeError, match=exactly("request_id must not be empty")):
        ledger.reserve(ACME, "Decode", "", request_hash=digest("a"), rows=1, limit=1)
    with pytest.raises(ValueError, match=exactly("request_hash must be SHA-256 hex, got 'abc'")):
        ledger.reserve(ACME, "Decode", "r1", request_hash="abc", rows=1, limit=1)
    with pytest.raises(
        ValueError, match=exactly("rows and limit must be non-negative, got -1 and 1")
    ):
        ledger.reserve(ACME, "Decode", "r1", request_hash=digest("a"), rows=-1, limit=1)
    free = ledger.reserve(ACME, "GetManifest", "r1", request_hash=digest("a"), rows=0, limit=0)
    assert (free.used, free.remaining) == (0, 0)


def test_charges_and_answers_persist_across_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with Ledger.open(path) as ledger:
        ledger.reserve(ACME, "Decode", "r1", request_hash=digest("a"), rows=40, limit=100)
        ledger.complete(ACME, "r1", b"answer")
        ledger.reserve(ACME, "Decode", "r2", request_hash=digest("b"), rows=10, limit=100)
    with pytest.raises(RuntimeError, match=exactly(f"ledger {path} is closed")):
        ledger.used(ACME, "Decode")
    with Ledger.open(path) as reopened:
        assert reopened.used(ACME, "Decode") == 50
        replay = reopened.reserve(
            ACME, "Decode", "r1", request_hash=digest("a"), rows=40, limit=100
        )
        assert (replay.replayed, replay.answer) == (True, b"answer")
        (usage,) = reopened.usage()
        assert (usage.rows, usage.calls, usage.pending) == (50, 2, 1)


def test_a_file_of_another_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    Ledger.open(path).close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 7")
    db.close()
    detail = f"ledger {path} has schema version 7, this version of fair4free reads {SCHEMA_VERSION}"
    with pytest.raises(Fair4FreeError, match=exactly(detail)) as caught:
        Ledger.open(path)
    assert caught.value.code is ErrorCode.CONFIG_INVALID


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    path.write_bytes(b"not a database, just some bytes that are long enough" * 40)
    detail = f"ledger {path} cannot be opened: file is not a database"
    with pytest.raises(Fair4FreeError, match=exactly(detail)) as caught:
        Ledger.open(path)
    assert caught.value.code is ErrorCode.CONFIG_INVALID


def test_prune_forgets_old_answers_but_keeps_charges(tmp_path: Path) -> None:
    now = [100.0]
    with Ledger.open(tmp_path / "ledger.db", clock=lambda: now[0]) as ledger:
        ledger.reserve(ACME, "Decode", "old", request_hash=digest("a"), rows=5, limit=100)
        ledger.complete(ACME, "old", b"old")
        ledger.reserve(ACME, "Decode", "open", request_hash=digest("b"), rows=5, limit=100)
        now[0] = 200.0
        ledger.reserve(ACME, "Decode", "new", request_hash=digest("c"), rows=5, limit=100)
        ledger.complete(ACME, "new", b"new")
        assert ledger.prune(completed_before=150.0) == [
            PrunedAnswers(identity=ACME, method="Decode", answers=1, rows=5, answer_bytes=3)
        ]
        assert ledger.answer(ACME, "old") is None
        assert ledger.answer(ACME, "new") == b"new"
        assert ledger.used(ACME, "Decode") == 15
        (usage,) = ledger.usage()
        assert (usage.calls, usage.pending, usage.updated_at) == (3, 1, 200.0)
        assert ledger.prune(completed_before=150.0) == []


PRUNED_AT = datetime.datetime.fromtimestamp(86400 * 3, datetime.UTC)  # 1970-01-04


def test_a_retry_of_a_pruned_request_is_refused_never_charged_or_answered(tmp_path: Path) -> None:
    now = [float(86400)]
    with Ledger.open(tmp_path / "ledger.db", clock=lambda: now[0]) as ledger:
        ledger.reserve(ACME, "Decode", "r1", request_hash=digest("a"), rows=40, limit=100)
        ledger.complete(ACME, "r1", b"answer")
        now[0] = PRUNED_AT.timestamp()
        ledger.prune(completed_before=now[0])
        detail = ANSWER_PRUNED.format(request_id="r1", pruned=PRUNED_AT)
        assert "1970-01-04" in detail
        for limit in (100, 40):  # not even a budget with room for it buys the id again
            with pytest.raises(Fair4FreeError, match=exactly(detail)) as caught:
                ledger.reserve(ACME, "Decode", "r1", request_hash=digest("a"), rows=40, limit=limit)
            assert caught.value.code is ErrorCode.ANSWER_PRUNED
        with pytest.raises(
            Fair4FreeError, match=exactly(REQUEST_ID_REUSED.format(request_id="r1"))
        ):
            ledger.reserve(ACME, "Decode", "r1", request_hash=digest("b"), rows=1, limit=100)
        assert ledger.used(ACME, "Decode") == 40
        fresh = ledger.reserve(BETA, "Decode", "r1", request_hash=digest("a"), rows=40, limit=100)
        assert not fresh.replayed  # ids are per identity, pruned ones too


def test_a_ledger_of_the_previous_version_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with Ledger.open(path) as ledger:
        ledger.reserve(ACME, "Decode", "r1", request_hash=digest("a"), rows=40, limit=100)
        ledger.complete(ACME, "r1", b"answer")
    with sqlite3.connect(path) as db:  # what version 1 wrote: no record of pruned requests
        db.execute("DROP TABLE pruned")
        db.execute("PRAGMA user_version = 1")
    db.close()
    with Ledger.open(path) as upgraded:
        replay = upgraded.reserve(
            ACME, "Decode", "r1", request_hash=digest("a"), rows=40, limit=100
        )
        assert replay.answer == b"answer"
        assert len(upgraded.prune(completed_before=float("inf"))) == 1
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db.close()


def test_stream_messages_pack_and_unpack() -> None:
    messages = [b"", b"one", bytes(range(256)) * 10]
    assert unpack_messages(pack_messages(messages)) == messages
    assert unpack_messages(b"") == []
    packed = pack_messages([b"abc"])
    with pytest.raises(ValueError, match=exactly("packed messages end inside a message")):
        unpack_messages(packed[:-1])
    with pytest.raises(ValueError, match=exactly("packed messages end inside a length prefix")):
        unpack_messages(packed[:3])
    assert payload_digest(b"x") == hashlib.sha256(b"x").hexdigest()


KILLED_WORKER = """
import os, sys
from fair4free.data_owner.ledger import Ledger
ledger = Ledger.open(sys.argv[1])
ledger.reserve(sys.argv[2], "Decode", "r1", request_hash=sys.argv[3], rows=100, limit=1000)
os._exit(9)  # killed after the charge, before the answer was stored or sent
"""


def test_a_process_killed_between_reserve_and_complete_is_charged_once(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    command = [sys.executable, "-c", textwrap.dedent(KILLED_WORKER), str(path), ACME, digest("a")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 9, result.stderr
    with Ledger.open(path) as ledger:
        (usage,) = ledger.usage()
        assert (usage.rows, usage.calls, usage.pending) == (100, 1, 1)
        retry = ledger.reserve(ACME, "Decode", "r1", request_hash=digest("a"), rows=100, limit=1000)
        assert (retry.replayed, retry.answer, retry.used) == (True, None, 100)
        assert ledger.complete(ACME, "r1", b"recomputed") == b"recomputed"
        again = ledger.reserve(ACME, "Decode", "r1", request_hash=digest("a"), rows=100, limit=1000)
        assert again.answer == b"recomputed"
        (usage,) = ledger.usage()
        assert (usage.rows, usage.calls, usage.pending) == (100, 1, 0)


def drain(ledger: Ledger, tag: str, seed: int, limit: int) -> list[int]:
    """Draw random row counts from one budget until even a single row is refused.

    Returns the rows of every successful charge. Each refusal is checked for what it reports.
    """
    rng = random.Random(seed)
    charged: list[int] = []
    single_rows = False
    for index in itertools.count():
        rows = 1 if single_rows else rng.randint(1, 97)
        request_id = f"{tag}-{index}"
        try:
            reservation = ledger.reserve(
                ACME, "Decode", request_id, request_hash=digest(request_id), rows=rows, limit=limit
            )
        except BudgetExhaustedError as exc:
            assert exc.needed == rows and exc.remaining < rows
            if single_rows:
                break
            single_rows = True
            continue
        assert not reservation.replayed and reservation.used <= limit
        charged.append(rows)
    return charged


def drain_in_process(path: str, tag: str, seed: int, limit: int) -> list[int]:
    with Ledger.open(path) as ledger:
        return drain(ledger, tag, seed, limit)


def assert_spent_exactly(path: Path, charged: list[list[int]], limit: int) -> None:
    with Ledger.open(path) as ledger:
        (usage,) = ledger.usage()
    total = sum(sum(rows) for rows in charged)
    assert total == usage.rows == limit  # never a row over, and nothing lost or double-counted
    assert usage.calls == sum(len(rows) for rows in charged)
    assert usage.pending == usage.calls


def test_eight_threads_on_one_budget_never_overspend(tmp_path: Path) -> None:
    path, limit, workers = tmp_path / "ledger.db", 4000, 8
    start = threading.Barrier(workers)

    def work(ledger: Ledger, slot: int) -> list[int]:
        start.wait()
        return drain(ledger, f"t{slot}", slot, limit)

    with Ledger.open(path) as shared, ThreadPoolExecutor(workers) as pool:
        # One Ledger shared by all threads, as in the daemon (a connection per thread).
        results = list(pool.map(work, [shared] * workers, range(workers)))
    assert_spent_exactly(path, results, limit)


def test_eight_threads_with_a_ledger_each_never_overspend(tmp_path: Path) -> None:
    path, limit, workers = tmp_path / "ledger.db", 3000, 8
    Ledger.open(path).close()
    start = threading.Barrier(workers)

    def work(slot: int) -> list[int]:
        with Ledger.open(path) as ledger:
            start.wait()
            return drain(ledger, f"t{slot}", slot, limit)

    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(work, range(workers)))
    assert_spent_exactly(path, results, limit)


def test_four_processes_on_one_budget_never_overspend(tmp_path: Path) -> None:
    path, limit, workers = tmp_path / "ledger.db", 3000, 4
    Ledger.open(path).close()  # create the file (and WAL mode) before the workers race
    jobs = [(str(path), f"p{slot}", slot, limit) for slot in range(workers)]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        results = pool.starmap(drain_in_process, jobs)
    assert_spent_exactly(path, results, limit)


class LedgerMachine(RuleBasedStateMachine):
    """Random reserve / complete / replay / reuse against a model of what must be on record."""

    def __init__(self) -> None:
        super().__init__()
        self.folder = tempfile.TemporaryDirectory()
        self.ledger = Ledger.open(Path(self.folder.name) / "ledger.db")
        self.limit = 0
        self.records: dict[str, tuple[int, str]] = {}  # request id -> (rows, hash)
        self.answers: dict[str, bytes] = {}

    @initialize(limit=st.integers(min_value=0, max_value=300))
    def set_limit(self, limit: int) -> None:
        self.limit = limit

    @rule(rows=st.integers(min_value=0, max_value=120), payload=st.binary(max_size=8))
    def reserve_new(self, rows: int, payload: bytes) -> None:
        request_id = f"r{len(self.records) + 1}"
        request_hash = payload_digest(payload)
        used = sum(rows for rows, _ in self.records.values())
        try:
            reservation = self.ledger.reserve(
                ACME,
                "Decode",
                request_id,
                request_hash=request_hash,
                rows=rows,
                limit=self.limit,
            )
        except BudgetExhaustedError as exc:
            assert used + rows > self.limit
            assert (exc.remaining, exc.needed) == (self.limit - used, rows)
            return
        assert not reservation.replayed and reservation.used == used + rows
        self.records[request_id] = (rows, request_hash)

    @precondition(lambda self: bool(self.records))
    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        request_id = data.draw(st.sampled_from(sorted(self.records)))
        rows, request_hash = self.records[request_id]
        reservation = self.ledger.reserve(
            ACME, "Decode", request_id, request_hash=request_hash, rows=rows, limit=self.limit
        )
        assert reservation.replayed
        assert reservation.answer == self.answers.get(request_id)

    @precondition(lambda self: bool(self.records))
    @rule(data=st.data(), answer=st.binary(max_size=16))
    def complete(self, data: st.DataObject, answer: bytes) -> None:
        request_id = data.draw(st.sampled_from(sorted(self.records)))
        sent = self.ledger.complete(ACME, request_id, answer)
        assert sent == self.answers.setdefault(request_id, answer)

    @precondition(lambda self: bool(self.records))
    @rule(data=st.data())
    def reuse_for_another_request(self, data: st.DataObject) -> None:
        request_id = data.draw(st.sampled_from(sorted(self.records)))
        rows, _ = self.records[request_id]
        with pytest.raises(Fair4FreeError, match="reused for a different request"):
            self.ledger.reserve(
                ACME,
                "Decode",
                request_id,
                request_hash=digest("other"),
                rows=rows,
                limit=self.limit,
            )

    @invariant()
    def used_is_the_sum_of_distinct_charged_requests(self) -> None:
        used = self.ledger.used(ACME, "Decode")
        assert used == sum(rows for rows, _ in self.records.values())
        assert used <= self.limit

    def teardown(self) -> None:
        self.ledger.close()
        self.folder.cleanup()


TestLedgerMachine = LedgerMachine.TestCase
TestLedgerMachine.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)


def test_release_refunds_an_unanswered_request_only(tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "ledger.sqlite") as ledger:
        digest = payload_digest(b"a")
        ledger.reserve("id", "Decode", "r1", request_hash=digest, rows=30, limit=100)
        assert ledger.used("id", "Decode") == 30
        assert ledger.release("id", "r1") is True
        assert ledger.used("id", "Decode") == 0
        assert ledger.answer("id", "r1") is None
        ledger.reserve("id", "Decode", "r2", request_hash=digest, rows=30, limit=100)
        ledger.complete("id", "r2", b"answer")
        assert ledger.release("id", "r2") is False
        assert ledger.used("id", "Decode") == 30

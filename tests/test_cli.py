"""The command lines as a user runs them: real processes, one-line errors, exit codes, no loss."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import CLIENT_NAME, UNLIMITED, Cohort, write_policy
from fair4free.common.artifacts import METADATA_FILE
from fair4free.common.errors import ExitCode
from fair4free.common.table_io import read_table
from fair4free.data_owner.pki import PkiLayout, init_pki, issue_client


def run(side: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    module = {"owner": "fair4free.data_owner", "consumer": "fair4free.consumer"}[side]
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout
    )


def _policy_args(directory: Path) -> list[str]:
    policy = write_policy(directory / "policy.toml", UNLIMITED)
    return ["--policy", str(policy), "--state-dir", str(directory / "state")]


def assert_one_line_error(
    result: subprocess.CompletedProcess[str], code: ExitCode, text: str
) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), result.stderr
    assert text in last, last


@pytest.fixture(scope="module")
def train_csv(tmp_path_factory: pytest.TempPathFactory, cohort: Cohort) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.csv"
    cohort.train.to_csv(path, index=False)
    return path


def test_train_on_a_missing_file(tmp_path: Path) -> None:
    result = run("owner", "train", "--data", str(tmp_path / "nope.csv"), "--target", "y",
                 "--sensitive", "s", "--out", str(tmp_path / "m"))  # fmt: skip
    assert_one_line_error(result, ExitCode.BAD_INPUT, "nope.csv")


def test_train_on_an_unreadable_csv(tmp_path: Path) -> None:
    path = tmp_path / "binary.csv"
    path.write_bytes(b"\x00\xff\x00\xfe" * 100)
    result = run("owner", "train", "--data", str(path), "--target", "y", "--sensitive", "s",
                 "--out", str(tmp_path / "m"))  # fmt: skip
    assert_one_line_error(result, ExitCode.BAD_INPUT, "binary.csv")


def test_train_with_an_unknown_sensitive_column(
    tmp_path: Path, train_csv: Path, cohort: Cohort
) -> None:
    result = run("owner", "train", "--data", str(train_csv), "--target", cohort.schema.target,
                 "--sensitive", "gender_typo", "--out", str(tmp_path / "m"))  # fmt: skip
    assert_one_line_error(result, ExitCode.BAD_INPUT, "gender_typo")
    assert not (tmp_path / "m").exists()


def test_train_with_a_constant_sensitive_column(tmp_path: Path, cohort: Cohort) -> None:
    frame = cohort.train.copy()
    frame[cohort.schema.sensitive] = "F"
    path = tmp_path / "constant.csv"
    frame.to_csv(path, index=False)
    result = run("owner", "train", "--data", str(path), "--target", cohort.schema.target,
                 "--sensitive", cohort.schema.sensitive, "--out", str(tmp_path / "m"))  # fmt: skip
    assert_one_line_error(result, ExitCode.BAD_INPUT, cohort.schema.sensitive)


def test_train_with_a_non_binary_target(tmp_path: Path, train_csv: Path, cohort: Cohort) -> None:
    numeric = next(c.name for c in cohort.schema.feature_columns if c.kind.value == "numeric")
    result = run("owner", "train", "--data", str(train_csv), "--target", numeric,
                 "--sensitive", cohort.schema.sensitive, "--out", str(tmp_path / "m"))  # fmt: skip
    assert_one_line_error(result, ExitCode.BAD_INPUT, "binary")


def test_serve_refuses_a_model_from_another_version(
    tmp_path: Path, teacher_dir: Path, pki_dir: PkiLayout
) -> None:
    model = tmp_path / "model"
    shutil.copytree(teacher_dir, model)
    document = json.loads((model / METADATA_FILE).read_text())
    document["format_version"] = 99
    (model / METADATA_FILE).write_text(json.dumps(document))
    result = run("owner", "serve", "--model", str(model), "--pki", str(pki_dir.root),
                 "--listen", "127.0.0.1:0", *_policy_args(tmp_path))  # fmt: skip
    assert_one_line_error(result, ExitCode.INCOMPATIBLE_ARTIFACT, "format 99")


def test_serve_refuses_a_tampered_model(
    tmp_path: Path, teacher_dir: Path, pki_dir: PkiLayout
) -> None:
    model = tmp_path / "model"
    shutil.copytree(teacher_dir, model)
    weights = model / "weights.pt"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    result = run("owner", "serve", "--model", str(model), "--pki", str(pki_dir.root),
                 "--listen", "127.0.0.1:0", *_policy_args(tmp_path))  # fmt: skip
    assert_one_line_error(result, ExitCode.INCOMPATIBLE_ARTIFACT, "content hash does not match")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_distill_from_an_unreachable_server(tmp_path: Path, pki_dir: PkiLayout) -> None:
    result = run("consumer", "distill", "--server", f"127.0.0.1:{_free_port()}",
                 "--pki", str(pki_dir.root), "--name", CLIENT_NAME, "--out", str(tmp_path / "s"),
                 "--timeout", "3")  # fmt: skip
    assert_one_line_error(result, ExitCode.CONNECTION, "UNAVAILABLE")
    assert not (tmp_path / "s").exists()


def test_distill_with_a_certificate_from_another_ca(tmp_path: Path, server_address: str) -> None:
    stranger = tmp_path / "stranger-pki"
    init_pki(stranger)
    issue_client(stranger, "mallory")
    result = run("consumer", "distill", "--server", server_address, "--pki", str(stranger),
                 "--name", "mallory", "--out", str(tmp_path / "s"), "--timeout", "3")  # fmt: skip
    assert_one_line_error(result, ExitCode.CONNECTION, "UNAVAILABLE")


def test_generate_from_a_missing_student(tmp_path: Path) -> None:
    result = run("consumer", "generate", "--student", str(tmp_path / "none"), "-n", "5",
                 "--out", str(tmp_path / "x.csv"))  # fmt: skip
    assert_one_line_error(result, ExitCode.BAD_INPUT, "none")


def test_generate_never_overwrites_without_force(tmp_path: Path) -> None:
    out = tmp_path / "x.csv"
    out.write_text("precious\n")
    result = run("consumer", "generate", "--student", str(tmp_path), "-n", "5", "--out", str(out))
    assert_one_line_error(result, ExitCode.BAD_INPUT, "pass --force")
    assert out.read_text() == "precious\n"


def test_evaluate_with_an_unknown_column(tmp_path: Path, train_csv: Path, cohort: Cohort) -> None:
    result = run("consumer", "evaluate", "--synthetic", str(train_csv), "--real", str(train_csv),
                 "--target", cohort.schema.target, "--sensitive", "race_typo")  # fmt: skip
    assert_one_line_error(result, ExitCode.BAD_INPUT, "race_typo")


def test_evaluate_writes_its_json_to_a_new_file_and_never_over_one(
    tmp_path: Path, train_csv: Path, cohort: Cohort
) -> None:
    args = ["consumer", "evaluate", "--synthetic", str(train_csv), "--real", str(train_csv),
            "--target", cohort.schema.target, "--sensitive", cohort.schema.sensitive]  # fmt: skip
    out = tmp_path / "scores.json"
    result = run(*args, "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text())["accuracy"] > 0.5  # a classifier scored on its own rows
    kept = tmp_path / "kept.json"
    kept.write_text("precious\n")
    result = run(*args, "--json", str(kept))
    assert_one_line_error(result, ExitCode.BAD_INPUT, "pass a new --json path")
    assert kept.read_text() == "precious\n"


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_generate_writes_the_original_schema(
    tmp_path: Path, student_dir: Path, cohort: Cohort, suffix: str
) -> None:
    out = tmp_path / f"synthetic{suffix}"
    result = run("consumer", "generate", "--student", str(student_dir), "-n", "250",
                 "--out", str(out), "--seed", "3")  # fmt: skip
    assert result.returncode == 0, result.stderr
    frame = read_table(out) if suffix == ".csv" else pd.read_parquet(out)
    assert list(frame.columns) == list(cohort.train.columns)
    assert len(frame) == 250
    for column in cohort.schema.columns:
        if column.kind.value == "categorical":
            seen = set(frame[column.name].dropna())
            assert seen <= set(cohort.train[column.name].dropna()), column.name


def test_serve_shuts_down_gracefully_on_sigterm(
    tmp_path: Path, teacher_dir: Path, pki_dir: PkiLayout
) -> None:
    ready = tmp_path / "ready"
    process = subprocess.Popen(
        [sys.executable, "-m", "fair4free.data_owner", "serve", "--model", str(teacher_dir),
         *_policy_args(tmp_path),
         "--pki", str(pki_dir.root), "--listen", "127.0.0.1:0", "--ready-file", str(ready)],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not ready.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ready.read_text().startswith("127.0.0.1:")
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert "received SIGTERM, shutting down" in stderr
    assert "Traceback" not in stderr


def test_checkpoints_prints_the_audit_tokens_a_student_received(student_dir: Path) -> None:
    result = run("consumer", "checkpoints", "--student", str(student_dir))
    assert result.returncode == 0, result.stderr
    tokens = result.stdout.split()
    assert tokens and all(token.count(".") == 1 for token in tokens)

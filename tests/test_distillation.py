"""Distillation through the live daemon, and resuming a real interrupted run."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import CLIENT_NAME, SMALL_DISTILLATION, Cohort
from fair4free.common.errors import ErrorCode, Fair4FreeError
from fair4free.consumer.client import OwnerClient
from fair4free.consumer.distillation import distill, work_directory
from fair4free.consumer.student import Student
from fair4free.data_owner.pki import PkiLayout


def test_student_generates_rows_in_the_original_schema(student_dir: Path, cohort: Cohort) -> None:
    student = Student.load(student_dir)
    rows = student.sample(3000, seed=1)
    assert list(rows.columns) == list(cohort.train.columns)
    assert dict(rows.dtypes) == dict(cohort.train.dtypes)
    sensitive = cohort.schema.sensitive
    assert set(rows[sensitive]) <= set(cohort.train[sensitive])
    real_share = cohort.train[sensitive].value_counts(normalize=True)
    synthetic_share = rows[sensitive].value_counts(normalize=True)
    for value, share in real_share.items():
        assert synthetic_share[value] == pytest.approx(share, abs=0.05)


def test_sampling_is_reproducible_for_a_seed(student_dir: Path) -> None:
    student = Student.load(student_dir)
    first, second = student.sample(200, seed=5), student.sample(200, seed=5)
    assert first.equals(second)
    assert not first.equals(student.sample(200, seed=6))


def test_fixed_sensitive_value(student_dir: Path, cohort: Cohort) -> None:
    student = Student.load(student_dir)
    value = cohort.train[cohort.schema.sensitive].iloc[0]
    rows = student.sample(100, seed=0, sensitive=value)
    assert set(rows[cohort.schema.sensitive]) == {value}
    with pytest.raises(Fair4FreeError, match="sensitive value 'nobody' is not one of") as caught:
        student.sample(10, sensitive="nobody")
    assert caught.value.code is ErrorCode.CONFIG_INVALID


def test_student_records_its_collapse_check(student_dir: Path) -> None:
    collapse = Student.load(student_dir).metadata["collapse"]
    assert set(collapse) == {"spread_ratio", "min_axis_ratio", "nn_distance_ratio"}
    assert collapse["spread_ratio"] > 0.9  # a collapsed latent model sits near 0
    assert collapse["min_axis_ratio"] > 0.8
    assert not work_directory(student_dir).exists()


def test_existing_output_is_never_overwritten(student_dir: Path, client: OwnerClient) -> None:
    before = sorted(p.name for p in student_dir.iterdir())
    with pytest.raises(Fair4FreeError, match="already exists") as caught:
        distill(client, student_dir, SMALL_DISTILLATION)
    assert caught.value.code is ErrorCode.OUTPUT_UNWRITABLE
    assert sorted(p.name for p in student_dir.iterdir()) == before


def _distill_command(server_address: str, pki_dir: PkiLayout, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "fair4free.consumer", "distill",
        "--server", server_address, "--pki", str(pki_dir.root), "--name", CLIENT_NAME,
        "--out", str(out), "--latent-rows", "512", "--decode-rows", "512",
        "--steps", "600", "--batch-size", "64", "--checkpoint-every", "20",
    ]  # fmt: skip


def test_interrupted_distillation_resumes_without_new_latent_queries(
    tmp_path: Path, server_address: str, pki_dir: PkiLayout
) -> None:
    out = tmp_path / "student"
    command = _distill_command(server_address, pki_dir, out)
    checkpoint = work_directory(out) / "checkpoint.pt"
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 7, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: distillation interrupted in the decoder phase at step")
    assert "Traceback" not in stderr
    assert not out.exists()
    assert (work_directory(out) / "latents.npy").exists()

    resumed = subprocess.run(command, stderr=subprocess.PIPE, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr
    assert "fetching" not in resumed.stderr
    assert "asking the teacher to decode" not in resumed.stderr
    assert Student.load(out).sample(10, seed=0).shape[0] == 10
    assert not work_directory(out).exists()


def test_latent_pool_matches_the_teacher_distribution(client: OwnerClient) -> None:
    first, second = client.sample_latents(1000), client.sample_latents(1000)
    assert np.abs(first.mean(0) - second.mean(0)).max() < 0.2

"""The benchmark runs end to end on tiny settings and its page is generated from its results."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.report import render_page
from fair4free.data_owner.datasets import make_cohort
from fair4free.data_owner.dp_training import DP_DEFAULTS
from fair4free.data_owner.training import TrainingConfig

ROOT = Path(__file__).parent.parent


@pytest.mark.slow
def test_fidelity_benchmark_writes_results_plot_and_page(tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "bench.fidelity", "--dataset", "cohort", "--cohort-rows", "1200",
        "--epochs", "2", "--steps", "30", "--pool-rows", "600", "--weights", "0",
        "--scoring-seeds", "2", "--out", str(tmp_path),
    ]  # fmt: skip
    default = f"weight {TrainingConfig.fairness_weight:g}"  # the sweep always includes it
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    document = json.loads((tmp_path / "fidelity-cohort.json").read_text())
    names = [row["name"] for row in document["rows"]]
    assert names == [
        "real training rows",
        "teacher samples, weight 0",
        f"teacher samples, {default}",
        f"two-party student, {default}",
    ]
    assert document["train_rows"] + document["test_rows"] == 1200
    for row in document["rows"]:  # two seeds scored: each metric has a spread
        assert row["report_sd"]["dpr"] is not None and row["report_sd"]["dpr"] >= 0
    real, teacher = document["rows"][0]["report"], document["rows"][2]["report"]
    # The training rows scored as if synthetic are the worst possible leak; the teacher's
    # samples must not look like it.
    assert real["exact_copy_share"] == 1.0 and real["dcr_ratio"] == 0.0
    assert teacher["exact_copy_share"] < 0.5 and teacher["dcr_ratio"] > 0.5
    assert document["provenance"]["commit"]
    assert (tmp_path / "frontier-cohort.png").read_bytes().startswith(b"\x89PNG")

    page = render_page(tmp_path, tmp_path / "results.md").read_text()
    student = document["rows"][-1]["report"]
    assert f"| two-party student, {default} | {student['dpr']:.3f} |" in page
    assert "frontier-cohort.png" in page
    assert f"| two-party student, {default} | {student['dcr_ratio']:.3f} |" in page


def _tiny(*args: str) -> list[str]:
    return [sys.executable, "-m", *args, "--epochs", "2", "--pool-rows", "600"]


@pytest.mark.slow
def test_fidelity_benchmark_runs_unchanged_on_a_csv_with_a_three_valued_sensitive_column(
    tmp_path: Path,
) -> None:
    table = tmp_path / "clinic.csv"
    make_cohort(1200, seed=3).frame.to_csv(table, index=False)
    command = _tiny(
        "bench.fidelity", "--dataset", "csv", "--data", str(table), "--target", "readmitted",
        "--sensitive", "referral", "--steps", "30", "--weights", "0", "--scoring-seeds", "1",
        "--out", str(tmp_path),
    )  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    document = json.loads((tmp_path / "fidelity-clinic.json").read_text())
    assert (document["target"], document["sensitive"]) == ("readmitted", "referral")
    student = document["rows"][-1]
    assert student["method"] == "student"
    assert student["report"]["dpr"] is not None  # fairness over three groups, not two


def test_csv_benchmark_without_its_columns_is_a_one_line_error(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "bench.fidelity", "--dataset", "csv", "--out", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --dataset csv needs --data, --target and --sensitive")


@pytest.mark.slow
def test_latent_model_ablation_scores_each_model_through_the_teacher(tmp_path: Path) -> None:
    command = _tiny(
        "bench.latent_models", "--dataset", "cohort", "--cohort-rows", "1200",
        "--out", str(tmp_path),
    )  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    document = json.loads((tmp_path / "latent-models-cohort.json").read_text())
    names = [row["name"] for row in document["rows"]]
    assert names[0] == "teacher posterior draws (reference)"
    assert sum("(default)" in name for name in names) == 1
    for row in document["rows"]:
        assert 0 <= row["report"]["coverage"] <= 1
    prior = next(row for row in document["rows"] if row["name"] == "prior N(0, I)")
    assert prior["collapse"]["nn_distance_ratio"] > 0  # measured, not a placeholder
    fidelity = tmp_path / "fidelity-cohort.json"
    fidelity.write_text(json.dumps({**_minimal_fidelity(), "dataset": document["dataset"]}))
    page = render_page(tmp_path, tmp_path / "results.md").read_text()
    assert "latent models behind the teacher's decoder" in page
    assert f"| {names[0]} | " in page


def _minimal_fidelity() -> dict[str, object]:
    """A results document with no rows: enough for the page to place the ablation under it."""
    return {
        "target": "readmitted", "sensitive": "sex", "positive_class": "yes", "train_rows": 0,
        "test_rows": 0, "rows": [], "student_collapse": {},
        "settings": {"seed": 0, "test_fraction": 0.2, "epochs": 2, "latent_dim": 16,
                     "hidden": 128, "distill": {"latent_rows": 600, "decode_rows": 600,
                                                "bandwidth": 0.1, "decoder_steps": 30}},
        "provenance": {"commit": "c", "utc": "t", "machine": "m", "torch": "x"},
    }  # fmt: skip


@pytest.mark.slow
def test_privacy_benchmark_scores_every_way_of_serving_and_states_each_epsilon(
    tmp_path: Path,
) -> None:
    command = [
        *_tiny("bench.privacy", "--dataset", "cohort"), "--cohort-rows", "3000",
        "--steps", "30", "--scoring-seeds", "1", "--latent-sigmas", "2", "--dp-trainings", "2",
        "--out", str(tmp_path),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    document = json.loads((tmp_path / "privacy-cohort.json").read_text())
    rows = {row["method"]: row for row in document["rows"]}
    assert list(rows) == [
        "real", "teacher", "student", "dp-teacher", "dp-teacher-prior", "dp-student-prior",
        "dp-teacher-gaussian", "dp-teacher-rerun", "dp-teacher-prior-rerun",
        "dp-student-prior-rerun",
    ]  # fmt: skip
    assert rows["dp-teacher-rerun"]["name"].startswith("DP teacher #2 (epsilon")
    # Each teacher trains at the weight `fair4free-owner train` would give it, with or without DP.
    assert rows["teacher"]["fairness_weight"] == TrainingConfig.fairness_weight
    for method in ("dp-teacher", "dp-student-prior", "dp-teacher-rerun", "dp-teacher-gaussian"):
        assert rows[method]["fairness_weight"] == DP_DEFAULTS["fairness_weight"], method
    dp = document["dp_teacher"]
    assert dp["mechanism"] == "dp-sgd, dp label massaging and dp group alignment"
    assert dp["epsilon"] <= 8.0
    for method in ("dp-teacher", "dp-teacher-prior", "dp-student-prior", "dp-teacher-gaussian"):
        assert rows[method]["epsilon"]["teacher"] == dp["epsilon"]
    assert rows["dp-student-prior"]["epsilon"]["latent_release"] == 0.0  # prior reads no record
    assert rows["dp-teacher-gaussian"]["epsilon"]["latent_release"] > 0
    assert rows["real"]["report"]["exact_copy_share"] == 1.0
    assert rows["dp-student-prior"]["report"]["exact_copy_share"] < 0.5
    page = render_page(tmp_path, tmp_path / "results.md").read_text()
    assert "## Privacy: cohort" in page and "labels massaged in private" in page
    assert f"| {rows['dp-student-prior']['name']} | {dp['epsilon']:.2f} |" in page
    reruns = rows["dp-teacher"]["report"]["dpr"], rows["dp-teacher-rerun"]["report"]["dpr"]
    assert f"posterior rows {reruns[0]:.3f}, {reruns[1]:.3f} (mean " in page
    students = (
        rows["dp-student-prior"]["report"]["dpr"],
        rows["dp-student-prior-rerun"]["report"]["dpr"],
    )
    assert f"student rows {students[0]:.3f}, {students[1]:.3f} (mean " in page

"""The benchmark runs end to end on tiny settings and its page is generated from its results."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.report import render_page

ROOT = Path(__file__).parent.parent


@pytest.mark.slow
def test_fidelity_benchmark_writes_results_plot_and_page(tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "bench.fidelity", "--dataset", "cohort", "--cohort-rows", "1200",
        "--epochs", "2", "--steps", "30", "--pool-rows", "600", "--weights", "0,10",
        "--out", str(tmp_path),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    document = json.loads((tmp_path / "fidelity-cohort.json").read_text())
    names = [row["name"] for row in document["rows"]]
    assert names == [
        "real training rows",
        "teacher samples, weight 0",
        "teacher samples, weight 10",
        "two-party student, weight 10",
    ]
    assert document["train_rows"] + document["test_rows"] == 1200
    assert document["provenance"]["commit"]
    assert (tmp_path / "frontier-cohort.png").read_bytes().startswith(b"\x89PNG")

    page = render_page(tmp_path, tmp_path / "results.md").read_text()
    student = document["rows"][-1]["report"]
    assert f"| two-party student, weight 10 | {student['dpr']:.3f} |" in page
    assert "frontier-cohort.png" in page

"""The release gate: its file format, its verdicts, the stored check, serve refusing to start."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest
from test_cli import assert_one_line_error, run
from test_holdout import train_model

from conftest import UNLIMITED, Cohort, start_daemon, write_policy
from fair4free.common.errors import ErrorCode, ExitCode, Fair4FreeError
from fair4free.data_owner.cli import main
from fair4free.data_owner.pki import PkiLayout
from fair4free.data_owner.registry import load_teacher
from fair4free.data_owner.release_check import (
    CHECK_KIND,
    PREVIOUS_CHECK_FILE,
    RELEASE_CHECK_FILE,
    enforce_release_gate,
    read_release_check,
)
from fair4free.data_owner.release_gate import ISSUE_BAR, judge, parse_gate, render_gate

FAILING_GATE = "[gate]\nmin_dcr_ratio = 50.0\nmax_mia_auc = 1.0\n"
PASSING_GATE = "[gate]\nmax_mia_auc = 1.0\nmax_exact_copy_share = 1.0\n"


def gate_file(directory: Path, text: str, name: str = "gate.toml") -> Path:
    path = directory / name
    path.write_text(text)
    return path


# The format


def test_a_gate_file_sets_bounds_and_groups() -> None:
    gate = parse_gate(b"[gate]\nmax_mia_auc = 0.55\nmin_dcr_ratio = 1\ncheck_groups = false\n")
    assert gate.limits == {"max_mia_auc": 0.55, "min_dcr_ratio": 1.0}
    assert gate.check_groups is False
    assert parse_gate(b"[gate]\nmax_mia_auc = 0.5\n").check_groups is True  # groups by default


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[gate]\nmax_mia_acu = 0.5\n", "gate.max_mia_acu: unknown key, expected one of"),
        (
            "[gate]\nmax_mia_auc = '0.5'\n",
            "gate.max_mia_auc: must be a number from 0 to 1, got '0.5'",
        ),
        ("[gate]\nmax_mia_auc = 1.5\n", "gate.max_mia_auc: must be a number from 0 to 1, got 1.5"),
        (
            "[gate]\nmax_mia_auc = true\n",
            "gate.max_mia_auc: must be a number from 0 to 1, got true",
        ),
        ("[gate]\nmin_dcr_ratio = -1\n", "gate.min_dcr_ratio: must be a number >= 0, got -1"),
        ("[gate]\nmin_dcr_ratio = inf\n", "gate.min_dcr_ratio: must be a number >= 0, got inf"),
        (
            "[gate]\nmax_mia_auc = 0.5\ncheck_groups = 1\n",
            "gate.check_groups: must be true or false",
        ),
        ("[gate]\ncheck_groups = true\n", "gate: sets no threshold"),
        ("gate = 3\n", "gate: must be a table [gate] of thresholds, got 3"),
        ("max_mia_auc = 0.5\n", "max_mia_auc: unknown key, expected the table [gate]"),
        ("[gate\n", "invalid TOML"),
    ],
)
def test_a_malformed_gate_is_refused_naming_the_key(text: str, message: str) -> None:
    with pytest.raises(Fair4FreeError) as caught:
        parse_gate(text.encode(), source="g.toml")
    assert caught.value.code is ErrorCode.CONFIG_INVALID
    assert message in caught.value.detail
    assert caught.value.detail.startswith("g.toml")


def test_the_starting_gate_is_the_issue_bar() -> None:
    gate = parse_gate(render_gate().encode())
    assert gate.limits == ISSUE_BAR and gate.check_groups


# The verdict


def scores(**values: float | None) -> dict[str, Any]:
    undefined = {name: "too few rows" for name, value in values.items() if value is None}
    return {**values, "undefined": undefined}


def metrics(overall: dict[str, Any], **groups: dict[str, Any]) -> dict[str, Any]:
    return {"sensitive": "sex", "overall": overall, "groups": groups}


def test_judge_fails_a_bound_by_its_value_and_names_the_key() -> None:
    gate = parse_gate(b"[gate]\nmax_mia_auc = 0.55\nmin_dcr_ratio = 1.0\n", source="gate.toml")
    verdict = judge(gate, metrics(scores(mia_auc=0.61, dcr_ratio=1.0)))
    assert verdict.failures == ("MIA AUC 0.610 > 0.55 (gate.toml max_mia_auc)",)
    assert verdict.passes == ("DCR ratio 1.000 >= 1 (gate.toml min_dcr_ratio)",)  # equal passes
    assert not verdict.passed


def test_judge_checks_every_group_unless_told_not_to() -> None:
    result = metrics(
        scores(exact_copy_share=0.0),
        F=scores(exact_copy_share=0.2),
        M=scores(exact_copy_share=None),  # too few rows in a group: skipped, not failed
    )
    strict = parse_gate(b"[gate]\nmax_exact_copy_share = 0.01\n", source="g")
    assert judge(strict, result).failures == (
        "exact-copy share for sex=F 0.200 > 0.01 (g max_exact_copy_share)",
    )
    lenient = parse_gate(b"[gate]\nmax_exact_copy_share = 0.01\ncheck_groups = false\n")
    assert judge(lenient, result).passed


def test_judge_fails_closed_on_an_undefined_overall_score() -> None:
    gate = parse_gate(b"[gate]\nmax_mia_tpr_at_1pct_fpr = 0.02\n", source="g")
    verdict = judge(gate, metrics(scores(mia_tpr_at_1pct_fpr=None)))
    assert verdict.failures == (
        "MIA TPR@1%FPR undefined: too few rows (g max_mia_tpr_at_1pct_fpr)",
    )


# The stored check and the command lines, on a small real model


@pytest.fixture(scope="module")
def data_csv(tmp_path_factory: pytest.TempPathFactory, cohort: Cohort) -> Path:
    path = tmp_path_factory.mktemp("gate-data") / "records.csv"
    cohort.train.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, data_csv: Path) -> dict[str, Path]:
    """A checked model, the same before its check, and one trained without a hold-out."""
    root = tmp_path_factory.mktemp("gate-models")
    assert train_model(data_csv, root / "unchecked") == 0
    assert train_model(data_csv, root / "no-holdout", "--holdout-fraction", "0") == 0
    shutil.copytree(root / "unchecked", root / "checked")
    argv = ["release-check", "--model", str(root / "checked"), "--data", str(data_csv)]
    assert main(argv) == 0
    return {name: root / name for name in ("checked", "unchecked", "no-holdout")}


def test_release_check_stores_the_result_keyed_to_the_model(models: dict[str, Path]) -> None:
    teacher = load_teacher(models["checked"])  # the extra file leaves the artifact intact
    document = read_release_check(models["checked"], teacher)
    assert document["kind"] == CHECK_KIND
    assert document["model_content_hash"] == teacher.content_hash
    assert document["latent_mode"] == "posterior"
    assert document["seed"] == 0 and document["gate"] is None
    assert document["rows"] == document["data"]["holdout_rows"] == 240  # default: hold-out size
    assert document["data"]["train_rows"] == teacher.metadata["training_rows"]
    assert "fair4free" in document["packages"]
    overall = document["metrics"]["overall"]
    for name in ("dcr_ratio", "closer_to_train_share", "exact_copy_share", "mia_auc"):
        assert 0.0 <= overall[name] < 10.0, name
    assert set(document["metrics"]["groups"]) == {"F", "M"}


def test_a_new_check_keeps_the_previous_one(
    models: dict[str, Path], data_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "model"
    shutil.copytree(models["checked"], model)
    first = (model / RELEASE_CHECK_FILE).read_text()
    argv = ["release-check", "--model", str(model), "--data", str(data_csv), "--rows", "100",
            "--seed", "5", "--gate", str(gate_file(tmp_path, PASSING_GATE))]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "release gate" in out and "passed" in out and PREVIOUS_CHECK_FILE in out
    assert (model / PREVIOUS_CHECK_FILE).read_text() == first
    document = json.loads((model / RELEASE_CHECK_FILE).read_text())
    assert (document["rows"], document["seed"]) == (100, 5)
    assert document["gate"]["passed"] is True


def test_release_check_with_a_failing_gate_exits_refused_and_stores_the_verdict(
    models: dict[str, Path], data_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "model"
    shutil.copytree(models["unchecked"], model)
    gate = gate_file(tmp_path, FAILING_GATE)
    argv = ["release-check", "--model", str(model), "--data", str(data_csv), "--gate", str(gate)]
    assert main(argv) == ExitCode.REFUSED
    err = capsys.readouterr().err
    assert "fails the release gate" in err
    assert f"< 50 ({gate} min_dcr_ratio)" in err
    document = json.loads((model / RELEASE_CHECK_FILE).read_text())
    assert document["gate"]["passed"] is False and document["gate"]["failures"]


def test_release_check_refuses_a_table_the_model_was_not_trained_on(
    models: dict[str, Path], cohort: Cohort, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "test.csv"
    cohort.test.to_csv(other, index=False)
    argv = ["release-check", "--model", str(models["unchecked"]), "--data", str(other)]
    assert main(argv) == ExitCode.BAD_INPUT
    assert f"{other} is not the table model {models['unchecked']} was trained on" in (
        capsys.readouterr().err
    )
    assert not (models["unchecked"] / RELEASE_CHECK_FILE).exists()


def test_release_check_of_a_model_without_holdout_says_so(
    models: dict[str, Path], data_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["release-check", "--model", str(models["no-holdout"]), "--data", str(data_csv)]
    assert main(argv) == ExitCode.USAGE
    assert "has no hold-out (trained with --holdout-fraction 0" in capsys.readouterr().err


# serve --release-gate


def serve(model: Path, pki_dir: PkiLayout, state: Path, gate: Path) -> int:
    """``serve`` in-process: a refusal returns before any server is built."""
    write_policy(state / "policy.toml", UNLIMITED)
    return main(["serve", "--model", str(model), "--pki", str(pki_dir.root),
                 "--policy", str(state / "policy.toml"), "--state-dir", str(state / "state"),
                 "--listen", "127.0.0.1:0", "--release-gate", str(gate)])  # fmt: skip


def test_serve_refuses_a_model_without_a_check(
    models: dict[str, Path], pki_dir: PkiLayout, tmp_path: Path
) -> None:
    gate = gate_file(tmp_path, PASSING_GATE)
    write_policy(tmp_path / "policy.toml", UNLIMITED)
    result = run("owner", "serve", "--model", str(models["unchecked"]), "--pki", str(pki_dir.root),
                 "--policy", str(tmp_path / "policy.toml"), "--state-dir", str(tmp_path / "s"),
                 "--listen", "127.0.0.1:0", "--release-gate", str(gate))  # fmt: skip
    assert_one_line_error(result, ExitCode.REFUSED, "has no release check")
    assert f"release-check --model {models['unchecked']} --data" in result.stderr
    assert not (tmp_path / "s").exists()  # refused before the daemon made any state


def test_serve_refuses_a_model_that_fails_the_gate(
    models: dict[str, Path], pki_dir: PkiLayout, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gate = gate_file(tmp_path, FAILING_GATE)
    assert serve(models["checked"], pki_dir, tmp_path, gate) == ExitCode.REFUSED
    err = capsys.readouterr().err
    assert "fails the release gate" in err and f"< 50 ({gate} min_dcr_ratio)" in err
    assert "max_mia_auc" not in err  # only the failing bound is named


def test_serve_refuses_a_check_of_another_model(
    models: dict[str, Path], pki_dir: PkiLayout, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "model"
    shutil.copytree(models["no-holdout"], model)
    shutil.copy(models["checked"] / RELEASE_CHECK_FILE, model / RELEASE_CHECK_FILE)
    gate = gate_file(tmp_path, PASSING_GATE)
    assert serve(model, pki_dir, tmp_path, gate) == ExitCode.REFUSED
    checked_hash = load_teacher(models["checked"]).content_hash
    assert f"checked the model with content hash {checked_hash[:12]}, not this model" in (
        capsys.readouterr().err
    )


def test_serve_refuses_a_malformed_gate(
    models: dict[str, Path], pki_dir: PkiLayout, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gate = gate_file(tmp_path, "[gate]\nmax_mia_auc = 2\n")
    assert serve(models["checked"], pki_dir, tmp_path, gate) == ExitCode.USAGE
    assert f"{gate}: gate.max_mia_auc: must be a number from 0 to 1, got 2" in (
        capsys.readouterr().err
    )


def test_serve_starts_with_a_passing_check_and_logs_it(
    models: dict[str, Path], pki_dir: PkiLayout, tmp_path: Path
) -> None:
    write_policy(tmp_path / "policy.toml", UNLIMITED)
    gate = gate_file(tmp_path, PASSING_GATE)
    process, _ = start_daemon(models["checked"], pki_dir, tmp_path, "--release-gate", str(gate))
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    log = (tmp_path / "daemon.log").read_text()
    assert f"release gate {gate} passed" in log and "max_exact_copy_share" in log


def test_a_check_of_prior_latents_covers_only_serving_prior_latents(
    models: dict[str, Path], data_csv: Path, tmp_path: Path, pki_dir: PkiLayout,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    model = tmp_path / "model"
    shutil.copytree(models["unchecked"], model)
    argv = ["release-check", "--model", str(model), "--data", str(data_csv),
            "--latent-release", "prior"]  # fmt: skip
    assert main(argv) == 0
    assert "(prior latents, seed 0)" in capsys.readouterr().out
    teacher = load_teacher(model)
    assert read_release_check(model, teacher)["latent_mode"] == "prior"
    gate = gate_file(tmp_path, PASSING_GATE)
    assert enforce_release_gate(gate, model, teacher, "prior").passed
    for serving in ("posterior", "gaussian"):
        with pytest.raises(Fair4FreeError) as refused:
            enforce_release_gate(gate, model, teacher, serving)
        assert refused.value.code is ErrorCode.RELEASE_GATE_FAILED
        assert f"scored prior latents, which do not cover serving {serving}" in str(refused.value)
    # The command line refuses the same way, before any server is built.
    assert serve(model, pki_dir, tmp_path, gate) == ExitCode.REFUSED
    assert "--latent-release posterior' (it covers every mode)" in capsys.readouterr().err
    assert not (tmp_path / "state").exists()  # refused before the daemon made any state

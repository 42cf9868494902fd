"""The DP-SGD teacher: its spent epsilon, its per-record loss, and refused settings.

The epsilon is recorded in the model directory and served in the manifest; bad settings fail as
one-line errors before any training starts.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant
from opacus.grad_sample import GradSampleModule

from conftest import CLIENT_NAME, UNLIMITED, Cohort, start_daemon, write_policy
from fair4free.common.encoding import TableEncoder
from fair4free.common.errors import ErrorCode, ExitCode, Fair4FreeError
from fair4free.common.fairness_loss import distance_correlation, one_hot_sensitive
from fair4free.consumer.client import ClientConfig, OwnerClient
from fair4free.data_owner.cli import main as owner_main
from fair4free.data_owner.dp_training import (
    ADJACENCY,
    DP_DEFAULTS,
    AdversarialFairVAE,
    DPConfig,
    default_delta,
    default_for,
    train_teacher_dp,
)
from fair4free.data_owner.pki import PkiLayout
from fair4free.data_owner.privacy_statement import LATENT_SENTENCES
from fair4free.data_owner.registry import load_teacher
from fair4free.data_owner.server import ServerConfig, build_server
from fair4free.data_owner.teacher import FairVAE, TeacherConfig
from fair4free.data_owner.train_pipeline import train_to_directory
from fair4free.data_owner.training import TrainingConfig, vae_terms

SMALL = TrainingConfig(epochs=2, batch_size=128, seed=0)
BatchLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (x, s, noise)


def _encoded(cohort: Cohort) -> tuple[TableEncoder, np.ndarray, np.ndarray, TeacherConfig]:
    encoder = TableEncoder.fit(cohort.train, cohort.schema)
    x, s = encoder.encode(cohort.train)
    config = TeacherConfig(
        input_dim=encoder.width,
        target_start=encoder.target_block.start,
        n_sensitive=len(encoder.sensitive_categories),
        latent_dim=4,
        hidden=32,
    )
    return encoder, x, s, config


@pytest.fixture(scope="module")
def dp_teacher_dir(tmp_path_factory: pytest.TempPathFactory, cohort: Cohort) -> Path:
    out = tmp_path_factory.mktemp("dp-models") / "teacher"
    train_to_directory(
        cohort.train,
        cohort.schema,
        out=out,
        dataset_name="cohort",
        latent_dim=4,
        hidden=32,
        training=SMALL,
        dp=DPConfig(epsilon=4.0),
    )
    return out


def test_the_spent_epsilon_is_within_target_and_recorded(
    dp_teacher_dir: Path, cohort: Cohort
) -> None:
    metadata = load_teacher(dp_teacher_dir).metadata
    teacher = metadata["privacy"]["teacher"]
    rows = len(cohort.train)
    assert 0.9 * 4.0 < teacher["epsilon"] <= 4.0  # spent, near the target the noise was set for
    assert teacher["delta"] == default_delta(rows) == 1e-5  # 1 / (10 * 1200) rounded down
    assert teacher["mechanism"] == "dp-sgd, dp label massaging and dp group alignment"
    assert teacher["adjacency"] == ADJACENCY
    assert teacher["accountant"] == "rdp" and teacher["library"] == "opacus 1.6.0"
    assert teacher["max_grad_norm"] == 1.0
    # Poisson sampling at rate 1 / ceil(rows / batch): SMALL.epochs passes of 10 expected batches.
    assert teacher["sample_rate"] == pytest.approx(1 / 10)
    assert teacher["steps"] == SMALL.epochs * 10
    # Every recorded mechanism, re-accounted from its own numbers, gives the recorded epsilon:
    # the labels were massaged in private (ranker, then histogram), DP-SGD trained, then the
    # group moments of the posterior were released (count, sum, outer products).
    ranker, histogram = teacher["label_massaging"]
    assert (ranker["sample_rate"], ranker["steps"]) == (1 / 10, 2 * 10)
    assert (histogram["sample_rate"], histogram["steps"]) == (1.0, 1)
    (moments,) = teacher["group_alignment"]
    assert (moments["sample_rate"], moments["steps"]) == (1.0, 3)
    accountant = RDPAccountant()
    accountant.history = [
        *((m["noise_multiplier"], m["sample_rate"], m["steps"])
          for m in (ranker, histogram, moments)),
        (teacher["noise_multiplier"], teacher["sample_rate"], teacher["steps"]),
    ]  # fmt: skip
    assert accountant.get_epsilon(teacher["delta"]) == pytest.approx(teacher["epsilon"])
    assert metadata["latent_alignment"] == "groups"
    assert metadata["fair_labels"] == "massage"
    assert metadata["massaging"]["method"] == "dp-massaging"


def test_a_teacher_trained_without_dp_records_no_privacy(teacher_dir: Path) -> None:
    assert "privacy" not in load_teacher(teacher_dir).metadata


@pytest.fixture
def dp_server(dp_teacher_dir: Path, pki_dir: PkiLayout, tmp_path: Path) -> Iterator[str]:
    config = ServerConfig(
        policy=write_policy(tmp_path / "policy.toml", UNLIMITED),
        state_dir=tmp_path,
        crl=pki_dir.crl,
        listen="127.0.0.1:0",
    )
    daemon = build_server(load_teacher(dp_teacher_dir), tls=pki_dir.server_files(), config=config)
    yield f"127.0.0.1:{daemon.port}"
    daemon.stop(0)


def test_the_served_manifest_states_the_dp_guarantee(
    dp_server: str, dp_teacher_dir: Path, pki_dir: PkiLayout
) -> None:
    recorded = load_teacher(dp_teacher_dir).metadata["privacy"]["teacher"]
    config = ClientConfig(server=dp_server, tls=pki_dir.client_files(CLIENT_NAME))
    with OwnerClient(config) as client:
        manifest = client.manifest()
    (guarantee,) = [g for g in manifest.privacy_guarantees if g.scope == "teacher"]
    assert guarantee.mechanism == "dp-sgd, dp label massaging and dp group alignment"
    assert guarantee.adjacency == ADJACENCY
    assert (guarantee.epsilon, guarantee.delta) == (recorded["epsilon"], recorded["delta"])
    assert "trained with dp-sgd" in manifest.privacy_statement
    assert "teacher was trained without" not in manifest.privacy_statement
    assert "encoding in this manifest" in manifest.privacy_statement  # computed without DP


@pytest.mark.parametrize(
    ("flags", "mode"), [((), "prior"), (("--latent-release", "posterior"), "posterior")]
)
def test_serve_releases_prior_latents_of_a_dp_teacher_unless_told_otherwise(
    flags: tuple[str, ...],
    mode: str,
    dp_teacher_dir: Path,
    pki_dir: PkiLayout,
    tmp_path: Path,
) -> None:
    write_policy(tmp_path / "policy.toml", UNLIMITED)
    process, address = start_daemon(dp_teacher_dir, pki_dir, tmp_path, *flags)
    try:
        config = ClientConfig(server=address, tls=pki_dir.client_files(CLIENT_NAME))
        with OwnerClient(config) as client:
            manifest = client.manifest()
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert LATENT_SENTENCES[mode] in manifest.privacy_statement
    warned = "which no guarantee covers" in (tmp_path / "daemon.log").read_text()
    assert warned == (mode == "posterior")  # told to serve what the guarantee does not cover


def _gradients(module: torch.nn.Module, loss: torch.Tensor) -> torch.Tensor:
    module.zero_grad(set_to_none=True)
    loss.backward()  # type: ignore[no-untyped-call]
    return torch.cat([p.grad.flatten() for p in module.parameters() if p.grad is not None])


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")  # Opacus' hooks, input layer
def test_the_dp_loss_is_a_mean_of_per_record_losses(cohort: Cohort) -> None:
    """Slow oracle: a batch's gradient is the mean of its rows' gradients, each computed alone.

    Those row gradients are what Opacus clips. Distance correlation fails the same check.
    """
    encoder, x, s, config = _encoded(cohort)
    torch.manual_seed(0)
    module = AdversarialFairVAE(
        FairVAE(config), blocks=encoder.blocks, kl_weight=0.1, fairness_weight=5.0
    )
    x_batch, s_batch = torch.from_numpy(x[:8]), torch.from_numpy(s[:8])
    noise = torch.randn(8, config.latent_dim)

    def row_gradients(loss_of: BatchLoss) -> tuple[torch.Tensor, torch.Tensor]:
        batch = _gradients(module, loss_of(x_batch, s_batch, noise))
        rows = torch.stack(
            [
                _gradients(
                    module, loss_of(x_batch[i : i + 1], s_batch[i : i + 1], noise[i : i + 1])
                )
                for i in range(8)
            ]
        )
        return batch, rows

    batch, rows = row_gradients(lambda xb, sb, nb: module(xb, sb, nb).total)
    assert torch.allclose(batch, rows.mean(0), atol=1e-6)

    # What Opacus clips: its per-sample gradients are the rows' own gradients.
    private = GradSampleModule(module)
    private(x_batch, s_batch, noise).total.backward()
    per_sample = torch.cat(
        [p.grad_sample.flatten(1) for p in module.parameters() if p.grad_sample is not None], 1
    )
    assert torch.allclose(per_sample, rows, atol=1e-5)
    private.to_standard_module()

    def dcor_loss(xb: torch.Tensor, sb: torch.Tensor, nb: torch.Tensor) -> torch.Tensor:
        terms = vae_terms(module.vae, xb, sb, encoder.blocks, nb)
        dcor = distance_correlation(terms.posterior, one_hot_sensitive(sb, config.n_sensitive))
        return terms.reconstruction + 5.0 * dcor

    batch, rows = row_gradients(dcor_loss)
    assert not torch.allclose(batch, rows.mean(0), atol=1e-3)


@pytest.fixture(scope="module")
def train_args(tmp_path_factory: pytest.TempPathFactory, cohort: Cohort) -> list[str]:
    path = tmp_path_factory.mktemp("dp-data") / "train.csv"
    cohort.train.to_csv(path, index=False)
    out = tmp_path_factory.mktemp("dp-out") / "never-written"
    return ["train", "--data", str(path), "--target", cohort.schema.target,
            "--sensitive", cohort.schema.sensitive, "--out", str(out), "--epochs", "2",
            "--batch-size", "128", "--latent-dim", "4", "--hidden", "32"]  # fmt: skip


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--dp-epsilon", "0"], "--dp-epsilon must be a positive finite number, got 0"),
        (["--dp-epsilon", "-2"], "--dp-epsilon must be a positive finite number"),
        (["--dp-epsilon", "nan"], "--dp-epsilon must be a positive finite number, got nan"),
        (["--dp-epsilon", "inf"], "--dp-epsilon must be a positive finite number, got inf"),
        (["--dp-epsilon", "8", "--dp-delta", "0"], "--dp-delta must lie strictly between 0"),
        # 0.002 is above 1/rows for the 1200 cohort rows, with or without a hold-out.
        (["--dp-epsilon", "8", "--dp-delta", "0.002"], "must be below 1/rows = "),
        (["--dp-epsilon", "8", "--dp-max-grad-norm", "0"], "--dp-max-grad-norm must be a positive"),
        (["--dp-delta", "1e-6"], "--dp-delta and --dp-max-grad-norm need --dp-epsilon"),
        (["--dp-epsilon", "0.01"], "too small for 2 epochs of batch 128 on "),
        (["--dp-epsilon", "8", "--batch-size", "512"], "at least 2 x batch size = 1024 training"),
    ],
)
def test_bad_dp_settings_are_one_line_errors(
    train_args: list[str], flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert owner_main([*train_args, *flags]) == ExitCode.BAD_INPUT
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, last
    assert "Traceback" not in last


def test_the_installed_command_trains_without_massaging_or_alignment_when_told(
    train_args: list[str], tmp_path: Path
) -> None:
    out = tmp_path / "plain-labels"
    args = [*train_args[: train_args.index("--out")], *train_args[train_args.index("--out") + 2 :]]
    result = subprocess.run(
        [sys.executable, "-m", "fair4free.data_owner", *args, "--out", str(out),
         "--dp-epsilon", "8", "--fair-labels", "none", "--latent-alignment", "none"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    teacher = load_teacher(out)
    metadata = teacher.metadata
    assert metadata["privacy"]["teacher"]["mechanism"] == "dp-sgd"  # DP-SGD alone spent
    assert not {"label_massaging", "group_alignment"} & set(metadata["privacy"]["teacher"])
    assert metadata["fair_labels"] == "none" and metadata["massaging"] is None
    assert metadata["latent_alignment"] == "none" and teacher.alignment is None
    # Without --learning-rate, --kl-weight and --fairness-weight, DP-SGD takes its own defaults.
    config, plain = metadata["training_config"], TrainingConfig()
    for setting in ("learning_rate", "kl_weight", "fairness_weight"):
        assert config[setting] == DP_DEFAULTS[setting] > getattr(plain, setting), setting


def test_a_setting_given_on_the_command_line_overrides_the_dp_default() -> None:
    dp = DPConfig(epsilon=8.0)
    assert default_for("fairness_weight", dp, 2.5) == 2.5
    assert default_for("fairness_weight", dp, None) == DP_DEFAULTS["fairness_weight"]
    assert default_for("fairness_weight", None, None) == TrainingConfig.fairness_weight


def test_dp_without_opacus_says_how_to_install_it(
    cohort: Cohort, monkeypatch: pytest.MonkeyPatch
) -> None:
    encoder, x, s, config = _encoded(cohort)
    monkeypatch.setitem(sys.modules, "opacus", None)  # what an install without the extra sees
    with pytest.raises(Fair4FreeError, match=r"pip install 'fair4free\[dp\]'") as caught:
        train_teacher_dp(
            x, s, blocks=encoder.blocks, teacher_config=config, config=SMALL, dp=DPConfig(epsilon=1)
        )
    assert caught.value.code is ErrorCode.CONFIG_INVALID


@pytest.mark.parametrize(("rows", "delta"), [(1, 0.1), (10, 0.01), (1000, 1e-4), (39074, 1e-6)])
def test_the_default_delta_is_a_tenth_of_one_over_rows_rounded_down(
    rows: int, delta: float
) -> None:
    assert default_delta(rows) == delta
    assert default_delta(rows) <= 1 / (10 * rows)

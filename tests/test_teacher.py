"""The fair teacher: seeded reproducibility, and the penalty doing what it is for."""

from __future__ import annotations

import pytest
import torch

from conftest import Cohort
from fair4free.common.encoding import TableEncoder
from fair4free.common.errors import ErrorCode, Fair4FreeError
from fair4free.data_owner.teacher import TeacherConfig
from fair4free.data_owner.training import TrainingConfig, TrainingSummary, train_teacher


def _train(cohort: Cohort, **settings: float) -> tuple[dict[str, torch.Tensor], TrainingSummary]:
    encoder = TableEncoder.fit(cohort.train, cohort.schema)
    x, s = encoder.encode(cohort.train)
    config = TeacherConfig(
        input_dim=encoder.width,
        target_start=encoder.target_block.start,
        n_sensitive=len(encoder.sensitive_categories),
        latent_dim=4,
        hidden=32,
    )
    training = TrainingConfig(epochs=10, batch_size=128, kl_weight=0.1, **settings)  # type: ignore[arg-type]
    model, summary = train_teacher(
        x, s, blocks=encoder.blocks, teacher_config=config, config=training
    )
    return model.state_dict(), summary


def test_training_is_reproducible_for_a_seed(cohort: Cohort) -> None:
    first, _ = _train(cohort, seed=3)
    second, _ = _train(cohort, seed=3)
    other, _ = _train(cohort, seed=4)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert not all(torch.equal(first[name], other[name]) for name in first)


def test_fairness_weight_lowers_latent_dependence_on_s(cohort: Cohort) -> None:
    _, unfair = _train(cohort, seed=0, fairness_weight=0.0)
    _, fair = _train(cohort, seed=0, fairness_weight=20.0)
    assert fair.latent_sensitive_dcor < 0.7 * unfair.latent_sensitive_dcor


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"epochs": 0}, "--epochs must be at least 1, got 0"),
        ({"batch_size": 4}, "--batch-size must be at least 8, got 4"),
        ({"learning_rate": 0.0}, "--learning-rate must be a positive number, got 0.0"),
        ({"learning_rate": float("nan")}, "--learning-rate must be a positive number, got nan"),
        ({"fairness_weight": -1.0}, "--fairness-weight must be a number of at least 0, got -1.0"),
        ({"kl_weight": float("inf")}, "--kl-weight must be a number of at least 0, got inf"),
    ],
)
def test_invalid_training_settings_are_refused_naming_the_flag(
    settings: dict[str, float], message: str
) -> None:
    with pytest.raises(Fair4FreeError) as caught:
        TrainingConfig(**settings)  # type: ignore[arg-type]
    assert caught.value.code is ErrorCode.CONFIG_INVALID
    assert caught.value.detail == message

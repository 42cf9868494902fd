"""The fair teacher: seeded reproducibility, and the penalty doing what it is for."""

from __future__ import annotations

import pytest
import torch

from conftest import Cohort
from fair4free.common.encoding import TableEncoder
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
    "settings",
    [{"epochs": 0}, {"batch_size": 4}, {"learning_rate": 0.0}, {"fairness_weight": -1.0}],
)
def test_invalid_training_settings_are_refused(settings: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="invalid training settings|must be non-negative"):
        TrainingConfig(**settings)  # type: ignore[arg-type]

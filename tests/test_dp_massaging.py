"""DP label massaging: the rule it releases equalises rates, and its cost is composed honestly."""

from __future__ import annotations

import pandas as pd
import pytest
from opacus.accountants import RDPAccountant

from conftest import Cohort
from fair4free.common.dp_accounting import gaussian_rdp, rdp_to_epsilon
from fair4free.common.encoding import TableEncoder
from fair4free.common.schema import TableSchema
from fair4free.data_owner import datasets
from fair4free.data_owner.dp_massaging import MassagingNoise, massage_privately, plan_massaging
from fair4free.data_owner.dp_training import DPConfig, noise_for_budget
from fair4free.data_owner.fair_labels import massage_labels
from fair4free.data_owner.training import TrainingConfig

SMALL = TrainingConfig(epochs=5, batch_size=128)
QUIET = MassagingNoise(ranker=0.3, histogram=0.01)  # far below any real plan: tests the rule


def _gap(frame: pd.DataFrame, schema: TableSchema) -> float:
    rates = (frame[schema.target] == schema.positive_class).groupby(frame[schema.sensitive]).mean()
    return float(rates.max() - rates.min())


def test_with_little_noise_it_equalises_rates_like_plain_massaging(cohort: Cohort) -> None:
    schema, train = cohort.schema, cohort.train
    encoder = TableEncoder.fit(train, schema)
    massaged, spent = massage_privately(
        train, schema, encoder, training=SMALL, dp=DPConfig(epsilon=8.0), noise=QUIET
    )
    assert _gap(train, schema) > 0.1  # the cohort is biased
    assert _gap(massaged, schema) < 0.03
    _, report = massage_labels(train, schema, seed=0)
    changed = int((massaged[schema.target] != train[schema.target]).sum())
    assert abs(changed - report.relabelled) <= 0.1 * report.relabelled + 5
    others = [c for c in train.columns if c != schema.target]
    assert massaged[others].equals(train[others])
    # The record holds only what the noisy histogram says, never the exact count of changes.
    assert spent.record["method"] == "dp-massaging" and "relabelled" not in str(spent.record)
    estimated = sum(abs(g["estimated_changes"]) for g in spent.record["groups"].values())
    assert estimated == pytest.approx(report.relabelled, rel=0.1, abs=10)
    # Two mechanisms read the rows: the DP-SGD ranker (2 epochs of 10 Poisson batches) and the
    # histogram, one full-batch Gaussian step.
    assert spent.mechanisms == ((0.3, 0.1, 20), (0.01, 1.0, 1))


def test_at_the_planned_noise_a_large_table_still_lands_near_one_rate() -> None:
    large = datasets.make_cohort(20_000, bias=0.8, seed=3)
    frame, schema = large.frame, large.schema()
    encoder = TableEncoder.fit(frame, schema)
    massaged, spent = massage_privately(
        frame, schema, encoder, training=TrainingConfig(), dp=DPConfig(epsilon=8.0)
    )
    assert _gap(frame, schema) > 0.1
    assert _gap(massaged, schema) < 0.03
    (ranker, _, _), (histogram, _, _) = spent.mechanisms
    assert histogram == pytest.approx(10 * ranker)


def test_the_plan_costs_the_teacher_at_most_its_allowed_noise_and_no_less_noise_would_do() -> None:
    delta, rate, steps = 1e-6, 256 / 39_074, 20 * 153
    noise = plan_massaging(8.0, delta, sample_rate=rate, teacher_steps=steps)
    alone = noise_for_budget(8.0, delta, rate, steps, ())
    assert noise is not None and alone is not None

    def teacher_noise(ranker: float) -> float:
        spent = [(ranker, rate, 2 * round(1 / rate)), (10 * ranker, 1.0, 1)]
        needed = noise_for_budget(8.0, delta, rate, steps, spent)
        assert needed is not None
        return needed

    assert teacher_noise(noise.ranker) <= 1.05 * alone
    assert teacher_noise(noise.ranker / 1.02) > 1.05 * alone
    # A budget no teacher noise meets is refused outright, massaging or not.
    assert plan_massaging(1e-4, delta, sample_rate=rate, teacher_steps=steps) is None


def test_the_teacher_noise_meets_epsilon_with_what_was_spent_before() -> None:
    """Oracle: at sampling rate 1 every mechanism is a plain Gaussian, whose RDP is closed form."""
    orders = RDPAccountant.DEFAULT_ALPHAS
    spent = [(5.0, 1.0, 1), (2.0, 1.0, 3)]
    noise = noise_for_budget(8.0, 1e-6, 1.0, 40, spent)
    assert noise is not None
    rdp = sum(
        gaussian_rdp(orders, noise_multiplier=z, compositions=steps) for z, _, steps in spent
    ) + gaussian_rdp(orders, noise_multiplier=noise, compositions=40)
    epsilon, _ = rdp_to_epsilon(orders, rdp, delta=1e-6)
    assert 8.0 * 0.99 < epsilon <= 8.0
    alone = noise_for_budget(8.0, 1e-6, 1.0, 40, [])
    assert alone is not None and alone < noise  # what was spent before costs the teacher noise
    # Nothing is left when what was spent alone exceeds the target.
    assert noise_for_budget(8.0, 1e-6, 1.0, 40, [(0.2, 1.0, 50)]) is None

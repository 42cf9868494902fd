"""Label massaging under DP: the relabelling rule is released privately, then applied per row.

Plain massaging (``fair_labels.py``) reads the whole table to relabel it, so one record can flip
other records' labels and DP-SGD's per-record bound would not cover what the teacher learns. Here
every statistic the rule reads is itself differentially private, and the rule, once fixed, labels
each row from that row alone:

1. **Ranker**: a logistic regression of the label on the row's other columns and s, fitted with
   DP-SGD (per-record clipping, Gaussian noise, Poisson sampling).
2. **Counts**: one histogram of (group, label, ranker-score bin) over all rows with Gaussian noise
   on every cell. A record sits in one cell, so the L2 sensitivity is 1; the noisy histogram gives
   each group's size and positive count and where its scores lie.
3. **Rule**: from the noisy counts, each group's shortfall (or excess) against the overall rate,
   and the score above which that many of its negatives are promoted (or below which its
   positives are demoted), interpolated inside the bin where the cumulative count reaches it.
4. Each row's new label is a function of that row and the released rule, so training the teacher
   on the new labels with DP-SGD costs only DP-SGD's own budget.

The three mechanisms compose: their RDP curves add (``dp_training.noise_for_budget``), and the
teacher's noise is chosen so that the sum meets ``--dp-epsilon``. RDP composition is cheap when
the other mechanisms take few steps next to DP-SGD's thousands: on Adult at epsilon 8, a ranker
at noise 0.59 and counts at std 5.9 raise the teacher's noise multiplier from 0.650 to 0.686.
What the model directory records is only what the private histogram says (estimated rates and
changes), never the exact count of changed labels, a statistic of the table without noise.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from fair4free.common.encoding import TableEncoder
from fair4free.common.schema import TableSchema
from fair4free.data_owner.dp_training import (
    ACCOUNTANT,
    DPConfig,
    Mechanism,
    budget_too_small,
    check_trainable,
    import_opacus,
    least_fitting,
    noise_for_budget,
    opacus_advice_off,
    poisson_schedule,
)
from fair4free.data_owner.fair_labels import with_labels
from fair4free.data_owner.training import TrainingConfig

logger = logging.getLogger(__name__)

ADJACENCY_SENSITIVITY: Final = 1.0  # one record moves one histogram cell by one
_TINY: Final = 1e-9


@dataclass(frozen=True, kw_only=True)
class DPMassagingSettings:
    """How much of the budget massaging may take, and how its two mechanisms share it.

    The noise of the ranker and of the counts is not a fixed number: it is the least noise that
    raises the teacher's own DP-SGD noise by at most ``teacher_noise_increase`` (5%) over what it
    would need alone (``plan_massaging``). A large table pays almost nothing (Adult, epsilon 8:
    ranker noise 0.59, teacher noise up 5%); a small one gets noisy counts, as it must.
    """

    teacher_noise_increase: float = 0.05
    histogram_to_ranker_noise: float = 10.0  # the counts' noise std per unit of ranker noise
    ranker_epochs: int = 2
    ranker_learning_rate: float = 0.05
    bins: int = 32


@dataclass(frozen=True, kw_only=True)
class MassagingNoise:
    """The planned noise: the ranker's DP-SGD multiplier and the counts' standard deviation."""

    ranker: float
    histogram: float


def plan_massaging(
    epsilon: float,
    delta: float,
    *,
    sample_rate: float,
    teacher_steps: int,
    settings: DPMassagingSettings = DPMassagingSettings(),
) -> MassagingNoise | None:
    """The least massaging noise that leaves the teacher within its allowed noise increase.

    None when the teacher alone cannot meet ``epsilon``, or not within the allowed increase even
    at the most massaging noise searched (the caller refuses, as without massaging). Monotone:
    more massaging noise, less spent, less noise the teacher needs.
    """
    alone = noise_for_budget(epsilon, delta, sample_rate, teacher_steps, ())
    if alone is None:
        return None
    allowed = alone * (1 + settings.teacher_noise_increase)
    ranker_steps = settings.ranker_epochs * round(1 / sample_rate)

    def mechanisms(noise: float) -> tuple[Mechanism, ...]:
        return (
            (noise, sample_rate, ranker_steps),
            (settings.histogram_to_ranker_noise * noise / ADJACENCY_SENSITIVITY, 1.0, 1),
        )

    def fits(noise: float) -> bool:
        needed = noise_for_budget(epsilon, delta, sample_rate, teacher_steps, mechanisms(noise))
        return needed is not None and needed <= allowed

    ranker = least_fitting(fits, low=0.3, high=300.0, ratio=1.01)
    if ranker is None:
        return None
    return MassagingNoise(ranker=ranker, histogram=settings.histogram_to_ranker_noise * ranker)


@dataclass(frozen=True, kw_only=True)
class DPMassaging:
    """The massaged labels, what was spent on them, and what may be recorded about them."""

    positive: npt.NDArray[np.bool_]
    mechanisms: tuple[Mechanism, ...]
    record: dict[str, Any]


def massage_privately(
    frame: pd.DataFrame,
    schema: TableSchema,
    encoder: TableEncoder,
    *,
    training: TrainingConfig,
    dp: DPConfig,
    settings: DPMassagingSettings = DPMassagingSettings(),
    noise: MassagingNoise | None = None,
) -> tuple[pd.DataFrame, DPMassaging]:
    """``frame`` with DP-massaged labels, and what was spent and may be recorded.

    ``noise`` None plans it (``plan_massaging``). Refuses, before reading a label, what DP-SGD
    training would refuse afterwards.
    """
    rows = len(frame)
    delta = check_trainable(rows, training, dp)
    sample_rate, teacher_steps = poisson_schedule(rows, training)
    if noise is None:
        noise = plan_massaging(
            dp.epsilon, delta, sample_rate=sample_rate, teacher_steps=teacher_steps,
            settings=settings,
        )  # fmt: skip
    if noise is None:
        budget_too_small(dp, delta, training, rows)
    x, s = encoder.encode(frame)
    n_groups = len(encoder.sensitive_categories)
    # The ranker reads every column but the target (the last block), and s.
    features = np.concatenate(
        [x[:, : encoder.target_block.start], np.eye(n_groups, dtype=np.float32)[s]], axis=1
    )
    positive = (frame[schema.target] == schema.positive_class).to_numpy()
    secret = torch.Generator().manual_seed(secrets.randbits(63))  # see dp_training: never --seed
    massaging = dp_massage(
        features, positive, s, n_groups=n_groups, batch_size=training.batch_size,
        max_grad_norm=dp.max_grad_norm, generator=secret, noise=noise, settings=settings,
    )  # fmt: skip
    logger.info(
        "DP massaging: target rate %.3f; estimated changes per group %s",
        massaging.record["target_rate"],
        {
            str(encoder.sensitive_categories[int(g)]): v["estimated_changes"]
            for g, v in massaging.record["groups"].items()
        },
    )
    return with_labels(frame, schema, massaging.positive), massaging


def dp_massage(
    features: npt.NDArray[np.float32],
    positive: npt.NDArray[np.bool_],
    groups: npt.NDArray[np.int64],
    *,
    n_groups: int,
    batch_size: int,
    max_grad_norm: float,
    generator: torch.Generator,
    noise: MassagingNoise,
    settings: DPMassagingSettings = DPMassagingSettings(),
) -> DPMassaging:
    """Labels with (about) one positive rate per group, from a DP ranker and DP counts.

    ``features`` are the rows' encoded columns other than the target, with s; ``generator`` is
    a secret generator, which draws the sampling and all noise.
    """
    scores, ranker = _dp_ranker_scores(
        features, positive, batch_size, max_grad_norm, generator, noise.ranker, settings
    )
    bins = np.minimum((scores * settings.bins).astype(np.int64), settings.bins - 1)
    exact = np.zeros((n_groups, 2, settings.bins))
    np.add.at(exact, (groups, positive.astype(np.int64), bins), 1.0)
    draw = torch.randn(exact.shape, generator=generator, dtype=torch.float64).numpy()
    noisy = np.clip(exact + noise.histogram * draw, 0.0, None)
    overall = noisy[:, 1].sum() / max(noisy.sum(), 1.0)
    massaged = positive.copy()
    estimated: dict[str, dict[str, float]] = {}
    for group in range(n_groups):
        size, positives = noisy[group].sum(), noisy[group, 1].sum()
        change = overall * size - positives  # > 0: promote negatives; < 0: demote positives
        members = groups == group
        if change > 0:
            cut = _cut_from_top(noisy[group, 0], change) / settings.bins
            massaged[members & ~positive & (scores >= cut)] = True
        elif change < 0:
            cut = _cut_from_bottom(noisy[group, 1], -change) / settings.bins
            massaged[members & positive & (scores < cut)] = False
        estimated[str(group)] = {
            "rate_before": round(float(positives / max(size, 1.0)), 4),
            "estimated_changes": round(float(change)),
        }
    histogram: Mechanism = (noise.histogram / ADJACENCY_SENSITIVITY, 1.0, 1)
    return DPMassaging(
        positive=massaged,
        mechanisms=(*ranker, histogram),
        record={
            "method": "dp-massaging",
            "target_rate": round(float(overall), 4),
            "groups": estimated,
            "ranker": {
                "model": "logistic regression",
                "noise_multiplier": ranker[0][0],
                "sample_rate": ranker[0][1],
                "steps": ranker[0][2],
            },
            "histogram": {"noise_std": noise.histogram, "bins": settings.bins},
        },
    )


def _dp_ranker_scores(
    features: npt.NDArray[np.float32],
    positive: npt.NDArray[np.bool_],
    batch_size: int,
    max_grad_norm: float,
    generator: torch.Generator,
    noise_multiplier: float,
    settings: DPMassagingSettings,
) -> tuple[npt.NDArray[np.float64], tuple[Mechanism, ...]]:
    """P(positive | row) from a logistic regression trained with DP-SGD, and its mechanism."""
    x, y = torch.from_numpy(features), torch.from_numpy(positive.astype(np.float32))
    model = nn.Linear(x.shape[1], 1)
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.ranker_learning_rate)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, generator=generator)
    with opacus_advice_off():
        engine = import_opacus().PrivacyEngine(accountant=ACCOUNTANT)
        private, dp_optimiser, dp_loader = engine.make_private(
            module=model,
            optimizer=optimiser,
            data_loader=loader,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            poisson_sampling=True,
            noise_generator=generator,
        )
        for _ in range(settings.ranker_epochs):
            for x_batch, y_batch in dp_loader:
                loss = _logistic_loss(private, x_batch, y_batch)
                dp_optimiser.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                dp_optimiser.step()  # an empty batch still steps: noise only, as accounted
    private.to_standard_module()
    with torch.no_grad():
        scores = torch.sigmoid(model(x).squeeze(1)).double().numpy()
    steps = sum(int(entry[2]) for entry in engine.accountant.history)
    sample_rate = float(engine.accountant.history[0][1])
    return scores, ((noise_multiplier, sample_rate, steps),)


def _logistic_loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    logits: Tensor = model(x).squeeze(1)
    return F.binary_cross_entropy_with_logits(logits, y)


def _cut_from_top(counts: npt.NDArray[np.float64], wanted: float) -> float:
    """The score (in bins) above which ``wanted`` rows of a noisy histogram lie."""
    return len(counts) - _cut_from_bottom(counts[::-1], wanted)  # the mirror image


def _cut_from_bottom(counts: npt.NDArray[np.float64], wanted: float) -> float:
    """The score (in bins) below which ``wanted`` rows of a noisy histogram lie."""
    below = 0.0
    for index, count in enumerate(counts):
        if below + count >= wanted:
            return float(index + (wanted - below) / max(count, _TINY))
        below += count
    return float(len(counts))

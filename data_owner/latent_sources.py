"""Where SampleLatents gets its rows: one object per release mode, chosen once at start.

The servicer asks a source for rows and, for the manifest, for the guarantee as of now; it never
needs to know the mode. Only the Gaussian source has state (its counter and key, in the daemon's
state folder), opened and checked here before the daemon serves.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from fair4free.common.codec import PrivacyGuarantee
from fair4free.data_owner import queries
from fair4free.data_owner.latent_release import (
    LatentReleaseSettings,
    gaussian_latents,
    plan_for,
    prior_latents,
)
from fair4free.data_owner.privacy_statement import LatentMode, teacher_guarantee
from fair4free.data_owner.registry import Teacher
from fair4free.data_owner.release_counter import ReleaseCounter, schedule_key

logger = logging.getLogger(__name__)


class LatentSource(Protocol):
    """Rows for SampleLatents, and what they have cost so far."""

    @property
    def mode(self) -> LatentMode:
        """The release mode, for the manifest's privacy statement."""
        ...

    def sample(self, rows: int, rng: np.random.Generator) -> npt.NDArray[np.float32]:
        """``rows`` latents ``[rows, latent_dim]``; may refuse when a release budget is spent."""
        ...

    def guarantee(self) -> PrivacyGuarantee | None:
        """The release's guarantee as of now; None where there is none to state."""
        ...


@dataclass(frozen=True)
class PosteriorLatents:
    """Posterior draws of training rows picked with replacement: no guarantee."""

    teacher: Teacher
    mode: LatentMode = "posterior"

    def sample(self, rows: int, rng: np.random.Generator) -> npt.NDArray[np.float32]:
        """Posterior draws (``queries.sample_latents``)."""
        return queries.sample_latents(self.teacher, rows, rng)

    def guarantee(self) -> PrivacyGuarantee | None:
        """None: nothing bounds what a posterior draw reveals."""
        return None


@dataclass(frozen=True)
class PriorLatents:
    """N(0, I) draws: no record is read, so there is nothing to account."""

    latent_dim: int
    mode: LatentMode = "prior"

    def sample(self, rows: int, rng: np.random.Generator) -> npt.NDArray[np.float32]:
        """Prior draws."""
        return prior_latents(rows, self.latent_dim, rng)

    def guarantee(self) -> PrivacyGuarantee | None:
        """None: the statement says these rows read no record."""
        return None


@dataclass(frozen=True)
class GaussianLatents:
    """The scheduled Gaussian release, metered by its durable counter."""

    means: npt.NDArray[np.float32]  # every training row's posterior mean, as served
    counter: ReleaseCounter
    key: bytes
    mode: LatentMode = "gaussian"

    def sample(self, rows: int, rng: np.random.Generator) -> npt.NDArray[np.float32]:
        """Reserve the next ``rows`` positions (or refuse), then draw them."""
        start = self.counter.reserve(rows)
        return gaussian_latents(
            self.means, self.counter.plan, key=self.key, start=start, count=rows, rng=rng
        )

    def guarantee(self) -> PrivacyGuarantee | None:
        """Epsilon after every position handed out so far, to all callers."""
        return self.counter.plan.guarantee(self.counter.released())


def open_latent_source(
    teacher: Teacher, settings: LatentReleaseSettings, state_dir: Path
) -> LatentSource:
    """The source the settings ask for, its state opened and checked against the model.

    :raises Fair4FreeError: PRIVACY_SETTINGS_INVALID for Gaussian settings the model cannot
        serve (see ``plan_release``) or that differ from its earlier releases' noise.
    """
    if settings.mode_for(teacher.metadata) == "prior":
        return PriorLatents(teacher.model.config.latent_dim)
    if settings.gaussian is None:
        if teacher_guarantee(teacher.metadata) is not None:
            logger.warning(
                "this teacher was trained with DP-SGD, but --latent-release posterior serves "
                "posterior draws of its training rows, which no guarantee covers; serve with "
                "--latent-release prior (or gaussian) to keep the whole service under one"
            )
        return PosteriorLatents(teacher)
    plan = plan_for(teacher, settings.gaussian)
    counter = ReleaseCounter.open(state_dir, model_hash=teacher.content_hash, plan=plan)
    released = counter.released()
    logger.info(
        "latent release: gaussian, noise multiplier %g, clip %.4g, delta %g; %d of %d rows "
        "released (epsilon %.4g of %g)", plan.noise_multiplier, plan.clip, plan.delta, released,
        plan.capacity, plan.epsilon(released), plan.epsilon_limit,
    )  # fmt: skip
    return GaussianLatents(teacher.served_means(), counter, schedule_key(state_dir))

"""The latent release mechanisms and their settings, as pure functions of a teacher.

``SampleLatents`` answers in one of three modes (``fair4free-owner serve --latent-release``):

- ``posterior`` (the default): posterior draws z ~ q(z | x_i, s_i) of training rows picked
  uniformly with replacement. Faithful, but each row is centred on one real record, with no bound
  on what it reveals.
- ``prior``: z ~ N(0, I). Reads no record and costs nothing; a student then learns only what the
  decoder does with the prior, not where the records lie in latent space.
- ``gaussian``: released row p is ``clip(mu_r, C) + N(0, (sigma C)^2 I)`` for record
  ``r = perm_e[p mod n]``, ``e = p // n``: every record is released once per pass over a keyed
  pseudo-random permutation of the records, with fresh noise per row. The schedule depends only on
  n and a secret key, never on the data, so after P rows no record has been released more than
  ceil(P / n) times and the loss is k-fold composition of one Gaussian mechanism of L2
  sensitivity 2C (``common/dp_accounting.py``). The posterior mean is released, not a posterior
  draw: the posterior's own spread is data-dependent and would need its own analysis.

The guarantee holds for every fixed set of teacher weights: it bounds what the released rows add
to what the weights reveal. With a DP-SGD teacher the two compose (epsilons and deltas add).

The daemon keeps the position counter and the key (``release_counter.py``); the benchmark calls
``released_latents`` here to measure what the noise costs in utility without a daemon.
"""

from __future__ import annotations

import argparse
import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from fair4free.common import dp_accounting
from fair4free.common.codec import PrivacyGuarantee
from fair4free.common.errors import ErrorCode, Fair4FreeError
from fair4free.data_owner.privacy_statement import LatentMode, teacher_guarantee
from fair4free.data_owner.registry import Teacher
from fair4free.data_owner.row_clipping import clip_rows

LATENT_MODES: Final[tuple[LatentMode, ...]] = ("posterior", "gaussian", "prior")
DEFAULT_DELTA: Final = 1e-6
"""Below 1/n for any table under a million rows; larger tables need a smaller --latent-delta."""
ADJACENCY: Final = "replacing one training record"
MECHANISM: Final = "gaussian"
KEY_BYTES: Final = 32
_SCHEDULE_DOMAIN: Final = b"fair4free latent release schedule v1"

GAUSSIAN_FLAGS_WITHOUT_GAUSSIAN: Final = (
    "{flags} only apply with --latent-release gaussian, not with {chosen}"
)
GAUSSIAN_FLAGS_MISSING: Final = (
    "--latent-release gaussian needs {flags}: choose the noise and the epsilon limit on purpose"
)
SETTING_NOT_POSITIVE: Final = "{flag} must be a finite number above 0, got {value}"
DELTA_OUT_OF_RANGE: Final = (
    "--latent-delta must lie in (0, 1/n) = (0, {bound:.3g}) for a model trained on {records} rows, "
    "got {delta:g}"
)
NO_RECORDS: Final = "the model holds no training rows' posteriors, so nothing can be released"
LIMIT_TOO_SMALL: Final = (
    "--latent-epsilon-limit {limit:g} allows no release at --latent-noise-multiplier {sigma:g} "
    "(delta {delta:g}): one pass over the records costs epsilon {smallest:.4g}; give a limit of "
    "at least that, or a larger noise multiplier"
)


@dataclass(frozen=True, kw_only=True)
class GaussianLatentSettings:
    """The owner's choices for the Gaussian release; checked here, and against the model later."""

    noise_multiplier: float
    """sigma: noise standard deviation per coordinate, in units of the clip radius."""
    epsilon_limit: float
    delta: float = DEFAULT_DELTA
    clip: float | None = None
    """C, the L2 radius posterior means are clipped to; None for sqrt(latent_dim)."""

    def __post_init__(self) -> None:
        for flag, value in (
            ("--latent-noise-multiplier", self.noise_multiplier),
            ("--latent-epsilon-limit", self.epsilon_limit),
            ("--latent-clip", self.clip),
            ("--latent-delta", self.delta),
        ):
            if value is not None and not (math.isfinite(value) and value > 0):
                raise Fair4FreeError(
                    ErrorCode.PRIVACY_SETTINGS_INVALID,
                    SETTING_NOT_POSITIVE.format(flag=flag, value=value),
                )


@dataclass(frozen=True, kw_only=True)
class LatentReleaseSettings:
    """How SampleLatents answers; ``gaussian`` is set exactly when the mode is gaussian.

    ``mode`` None is the served teacher's default (``default_latent_mode``), which ``mode_for``
    resolves once the teacher is loaded.
    """

    mode: LatentMode | None = None
    gaussian: GaussianLatentSettings | None = None

    def __post_init__(self) -> None:
        if self.mode is not None and self.mode not in LATENT_MODES:
            raise Fair4FreeError(
                ErrorCode.CONFIG_INVALID, f"--latent-release must be one of {LATENT_MODES}"
            )
        if (self.mode == "gaussian") != (self.gaussian is not None):
            raise Fair4FreeError(
                ErrorCode.CONFIG_INVALID,
                f"latent release mode {self.mode!r} with gaussian settings {self.gaussian}",
            )

    def mode_for(self, metadata: Mapping[str, Any]) -> LatentMode:
        """The mode served for the teacher with ``metadata``: its default where none is set."""
        return default_latent_mode(metadata) if self.mode is None else self.mode


@dataclass(frozen=True, kw_only=True)
class ReleasePlan:
    """Gaussian settings resolved against one model: the clip radius and the release capacity."""

    records: int
    latent_dim: int
    clip: float
    noise_multiplier: float
    delta: float
    epsilon_limit: float
    passes: int
    """The most passes over the records whose epsilon stays within the limit."""

    @property
    def capacity(self) -> int:
        """Rows that may ever be released, to all callers together."""
        return self.passes * self.records

    def epsilon(self, rows_released: int) -> float:
        """Epsilon spent after ``rows_released`` rows of the schedule."""
        return dp_accounting.latent_release_epsilon(
            records=self.records,
            rows_released=rows_released,
            noise_multiplier=self.noise_multiplier,
            delta=self.delta,
        )

    def guarantee(self, rows_released: int) -> PrivacyGuarantee:
        """The manifest's statement of the release after ``rows_released`` rows."""
        return PrivacyGuarantee(
            scope="latent_release",
            mechanism=MECHANISM,
            epsilon=self.epsilon(rows_released),
            delta=self.delta,
            epsilon_limit=self.epsilon_limit,
            adjacency=ADJACENCY,
        )


def plan_release(settings: GaussianLatentSettings, *, records: int, latent_dim: int) -> ReleasePlan:
    """Check the settings against the model and size the release; refuse a useless one.

    The default clip radius is sqrt(latent_dim): the typical norm of a N(0, I) prior draw, which
    a KL-regularised posterior mean rarely exceeds by much, and a choice that reads no data.

    :raises Fair4FreeError: PRIVACY_SETTINGS_INVALID if delta is not below 1/n, or if the limit
        does not cover one pass over the records (the message names the smallest usable limit).
    """
    if records < 1:
        raise Fair4FreeError(ErrorCode.PRIVACY_SETTINGS_INVALID, NO_RECORDS)
    if not settings.delta < 1 / records:
        raise Fair4FreeError(
            ErrorCode.PRIVACY_SETTINGS_INVALID,
            DELTA_OUT_OF_RANGE.format(bound=1 / records, records=records, delta=settings.delta),
        )
    passes = dp_accounting.latent_release_passes(
        noise_multiplier=settings.noise_multiplier,
        delta=settings.delta,
        epsilon_limit=settings.epsilon_limit,
    )
    if passes == 0:
        smallest = dp_accounting.latent_release_epsilon(
            records=1, rows_released=1, noise_multiplier=settings.noise_multiplier,
            delta=settings.delta,
        )  # fmt: skip
        raise Fair4FreeError(
            ErrorCode.PRIVACY_SETTINGS_INVALID,
            LIMIT_TOO_SMALL.format(
                limit=settings.epsilon_limit,
                sigma=settings.noise_multiplier,
                delta=settings.delta,
                smallest=smallest,
            ),
        )
    return ReleasePlan(
        records=records,
        latent_dim=latent_dim,
        clip=settings.clip if settings.clip is not None else math.sqrt(latent_dim),
        noise_multiplier=settings.noise_multiplier,
        delta=settings.delta,
        epsilon_limit=settings.epsilon_limit,
        passes=passes,
    )


@lru_cache(maxsize=4)
def _permutation(key: bytes, records: int, epoch: int) -> npt.NDArray[np.int64]:
    """Pass ``epoch``'s order of the records: sorted by a SHAKE-256 stream keyed by the secret.

    Defined by SHA-3 and a stable sort, so it stays the same across numpy versions: a changed
    order within a pass could release a record twice in it and break the accounting.
    """
    seed = _SCHEDULE_DOMAIN + key + records.to_bytes(8, "big") + epoch.to_bytes(8, "big")
    scores = np.frombuffer(hashlib.shake_256(seed).digest(8 * records), dtype="<u8")
    order: npt.NDArray[np.int64] = np.argsort(scores, kind="stable").astype(np.int64)
    order.setflags(write=False)
    return order


def scheduled_records(key: bytes, *, records: int, start: int, count: int) -> npt.NDArray[np.int64]:
    """The records released at positions ``start .. start + count - 1`` of the schedule."""
    if start < 0 or count < 0 or records < 1:
        raise ValueError(f"bad schedule range: start {start}, count {count}, records {records}")
    chosen: list[npt.NDArray[np.int64]] = []
    position, stop = int(start), int(start) + int(count)  # numpy integers have no to_bytes
    while position < stop:
        epoch, offset = divmod(position, records)
        take = min(stop - position, records - offset)
        chosen.append(_permutation(key, records, epoch)[offset : offset + take])
        position += take
    return np.concatenate(chosen) if chosen else np.empty(0, dtype=np.int64)


def gaussian_latents(
    means: npt.NDArray[np.float32],
    plan: ReleasePlan,
    *,
    key: bytes,
    start: int,
    count: int,
    rng: np.random.Generator,
) -> npt.NDArray[np.float32]:
    """Rows ``start .. start + count - 1`` of the Gaussian release, with fresh noise each."""
    index = scheduled_records(key, records=plan.records, start=start, count=count)
    centres = clip_rows(means[index], plan.clip)  # [count, latent_dim]
    noise = rng.standard_normal(centres.shape) * (plan.noise_multiplier * plan.clip)
    latents: npt.NDArray[np.float32] = (centres + noise).astype(np.float32)
    return latents


def prior_latents(rows: int, latent_dim: int, rng: np.random.Generator) -> npt.NDArray[np.float32]:
    """Draws of the N(0, I) prior: a function of the generator alone, never of a record."""
    latents: npt.NDArray[np.float32] = rng.standard_normal((rows, latent_dim)).astype(np.float32)
    return latents


def plan_for(teacher: Teacher, settings: GaussianLatentSettings) -> ReleasePlan:
    """``plan_release`` for a loaded teacher: n is its posterior bank's length."""
    return plan_release(
        settings,
        records=int(teacher.posterior_mu.shape[0]),
        latent_dim=teacher.model.config.latent_dim,
    )


def released_latents(
    teacher: Teacher,
    rows: int,
    rng: np.random.Generator,
    settings: GaussianLatentSettings,
    *,
    start: int = 0,
) -> tuple[npt.NDArray[np.float32], float]:
    """What a fresh daemon would release as rows ``start ..`` (offline, for the benchmark).

    Returns the latents and the epsilon spent once they are released. The schedule key comes
    from ``rng``, so a seeded run is reproducible. Refuses settings the daemon would refuse, and
    rows beyond the capacity the limit allows.
    """
    plan = plan_for(teacher, settings)
    if start + rows > plan.capacity:
        raise Fair4FreeError(
            ErrorCode.PRIVACY_BUDGET_EXHAUSTED,
            f"{start + rows} rows exceed the release capacity of {plan.capacity}",
        )
    latents = gaussian_latents(
        teacher.served_means(), plan, key=rng.bytes(KEY_BYTES), start=start, count=rows, rng=rng
    )
    return latents, plan.epsilon(start + rows)


def add_arguments(serve: argparse.ArgumentParser) -> None:
    """The serve flags that choose and size the latent release (docs/privacy.md)."""
    group = serve.add_argument_group("latent release (docs/privacy.md)")
    group.add_argument(
        "--latent-release",
        choices=LATENT_MODES,
        help="SampleLatents answers: posterior draws (no guarantee), Gaussian-noised clipped "
        "posterior means (differential privacy), or prior draws (read no record); default: "
        "prior for a teacher trained with --dp-epsilon, else posterior",
    )
    group.add_argument(
        "--latent-noise-multiplier",
        type=float,
        metavar="SIGMA",
        help="gaussian: noise std per coordinate over the clip radius",
    )
    group.add_argument(
        "--latent-epsilon-limit",
        type=float,
        metavar="E",
        help="gaussian: refuse rows once epsilon would pass E",
    )
    group.add_argument(
        "--latent-delta", type=float, metavar="D", help=f"gaussian: delta (default {DEFAULT_DELTA})"
    )
    group.add_argument(
        "--latent-clip",
        type=float,
        metavar="C",
        help="gaussian: L2 clip (default sqrt(latent dim))",
    )


def default_latent_mode(metadata: Mapping[str, Any]) -> LatentMode:
    """What ``serve`` releases without ``--latent-release``: prior draws for a DP teacher.

    Its DP guarantee covers prior rows whole (they read nothing but the weights) and posterior
    draws not at all; on Adult at epsilon 8 its prior rows are also the fairer (DPR 0.923 against
    0.862 over four trainings, docs/privacy.md). A teacher without DP has no guarantee to keep,
    and its posterior draws fit the data best.
    """
    return "posterior" if teacher_guarantee(metadata) is None else "prior"


def settings_from_args(args: argparse.Namespace) -> LatentReleaseSettings:
    """The settings the serve flags ask for; gaussian flags need, and only fit, gaussian mode.

    Without ``--latent-release`` the mode is left to the teacher (``mode_for``), which is
    never gaussian, so the flags are checked before any model is read.

    :raises Fair4FreeError: CONFIG_INVALID for flags that do not fit the mode;
        PRIVACY_SETTINGS_INVALID for values that are not positive and finite.
    """
    values = {
        "--latent-noise-multiplier": args.latent_noise_multiplier,
        "--latent-epsilon-limit": args.latent_epsilon_limit,
        "--latent-delta": args.latent_delta,
        "--latent-clip": args.latent_clip,
    }
    given = [flag for flag, value in values.items() if value is not None]
    mode: LatentMode | None = args.latent_release
    if mode != "gaussian":
        if given:
            chosen = "the default" if mode is None else f"--latent-release {mode}"
            raise Fair4FreeError(
                ErrorCode.CONFIG_INVALID,
                GAUSSIAN_FLAGS_WITHOUT_GAUSSIAN.format(flags=", ".join(given), chosen=chosen),
            )
        return LatentReleaseSettings(mode=mode)
    missing = [flag for flag in list(values)[:2] if values[flag] is None]
    if missing:
        raise Fair4FreeError(
            ErrorCode.CONFIG_INVALID, GAUSSIAN_FLAGS_MISSING.format(flags=" and ".join(missing))
        )
    gaussian = GaussianLatentSettings(
        noise_multiplier=args.latent_noise_multiplier,
        epsilon_limit=args.latent_epsilon_limit,
        delta=DEFAULT_DELTA if args.latent_delta is None else args.latent_delta,
        clip=args.latent_clip,
    )
    return LatentReleaseSettings(mode="gaussian", gaussian=gaussian)

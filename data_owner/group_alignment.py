"""Group alignment: the latent space served, in which every group's latents are N(0, I).

The fairness penalty pushes the teacher's posterior towards independence of s, but under DP-SGD
its adversary is noisy and a trace of s stays: on Adult at epsilon 8 a linear probe reads s off
the posterior means with AUC 0.62-0.68, and the rows decoded from such latents gave a downstream
classifier DPR anywhere from 0.72 to 0.97 across trainings with the same flags (docs/privacy.md).

Alignment removes what the first two moments show. Each group g's aggregate posterior, with mean
m_g and covariance C_g, is mapped onto N(0, I) by u = C_g^(-1/2) (z - m_g), and u is what the
daemon serves. Decoding u for a row of group g reads two latents:

- the features from z_g = m_g + C_g^(1/2) u, back where that group's records lie, so a decoded row
  of group g looks like one (its proxies of s included);
- the target from z = m + C^(1/2) u, with the moments of all rows pooled: one u gets one label
  whatever its group, so labels carry no s, and the row at some position within its group gets
  the label of that position overall.

A downstream classifier trained on such rows learns that a record's standing within its group,
not the group, predicts the label. Served prior latents, N(0, I), now match every group's
posterior: the fully DP path decodes rows where the records are.

Under DP the moments are a Gaussian mechanism. Each training row contributes one posterior draw z,
clipped to norm r; one record then moves its group's count by 1, its sum by at most r and its sum
of outer products by at most r^2 (Frobenius norm), and nothing of the other groups. Noise of
``noise_multiplier`` times each sensitivity on each of the three is three Gaussian mechanisms of
that multiplier, composed into the teacher's epsilon with the rest (``dp_training``). The
alignment is post-processing of their output, so serving it costs nothing further.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
import torch

from fair4free.data_owner.dp_training import Mechanism
from fair4free.data_owner.row_clipping import clip_rows

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
MOMENT_RELEASES: Final = 3  # count, sum and sum of outer products: three Gaussian mechanisms


@dataclass(frozen=True, kw_only=True)
class PrivateAlignmentSettings:
    """How the group moments are released under DP.

    Noise multiplier 4: on Adult at epsilon 8 it raises the teacher's DP-SGD noise by 2.6%
    (0.685 to 0.703), and leaves about 0.01 of noise on each entry of a group's covariance
    (4 x 36 / 13,000 rows). Radius 1.5 sqrt(latent_dim): a DP teacher's posterior draws have norm
    about sqrt(latent_dim) (KL to N(0, I)); on Adult 1-6% of them lie beyond it.
    """

    noise_multiplier: float = 4.0
    radius_per_sqrt_dim: float = 1.5
    max_entry_noise: float = 0.1  # above this noise std on a covariance entry, no alignment

    def radius(self, latent_dim: int) -> float:
        """The clip r on a posterior draw's norm: larger spaces have longer draws."""
        return self.radius_per_sqrt_dim * math.sqrt(latent_dim)

    def mechanism(self) -> Mechanism:
        """What the release spends, as a DP accountant's history entry."""
        return (self.noise_multiplier, 1.0, MOMENT_RELEASES)


@dataclass(frozen=True, kw_only=True)
class GroupMoments:
    """Per group: row count [G], sum of latents [G, d], sum of outer products [G, d, d]."""

    counts: FloatArray
    sums: FloatArray
    outers: FloatArray


def group_moments(
    z: npt.NDArray[np.floating], s: npt.NDArray[np.integer], n_groups: int
) -> GroupMoments:
    """The exact moment sums of latents z [n, d] grouped by s [n]."""
    z = np.asarray(z, dtype=np.float64)
    d = z.shape[1]
    counts, sums, outers = np.zeros(n_groups), np.zeros((n_groups, d)), np.zeros((n_groups, d, d))
    for group in range(n_groups):
        rows = z[s == group]
        counts[group], sums[group], outers[group] = len(rows), rows.sum(0), rows.T @ rows
    return GroupMoments(counts=counts, sums=sums, outers=outers)


def private_moments(
    z: npt.NDArray[np.floating],
    s: npt.NDArray[np.integer],
    n_groups: int,
    settings: PrivateAlignmentSettings,
    rng: np.random.Generator,
) -> GroupMoments:
    """The moment sums with every row clipped to the radius and Gaussian noise on every sum."""
    radius = settings.radius(z.shape[1])
    exact = group_moments(clip_rows(z, radius), s, n_groups)
    sigma = settings.noise_multiplier
    noise = rng.normal(0.0, sigma * radius**2, exact.outers.shape)
    # One symmetric noise matrix per group: (E + E^T) / sqrt(2) keeps each off-diagonal entry's
    # std at sigma r^2 (and doubles the diagonal's variance, which only errs towards noise).
    symmetric = (noise + np.swapaxes(noise, 1, 2)) / math.sqrt(2.0)
    return GroupMoments(
        counts=exact.counts + rng.normal(0.0, sigma, exact.counts.shape),
        sums=exact.sums + rng.normal(0.0, sigma * radius, exact.sums.shape),
        outers=exact.outers + symmetric,
    )


@dataclass(frozen=True, kw_only=True)
class GroupAlignment:
    """The maps between the teacher's latents and the served, group-aligned ones."""

    means: FloatArray  # [G, d]: each group's posterior mean m_g
    roots: FloatArray  # [G, d, d]: C_g^(1/2)
    inverse_roots: FloatArray  # [G, d, d]: C_g^(-1/2)
    pooled_mean: FloatArray  # [d]
    pooled_root: FloatArray  # [d, d]

    def to_shared(
        self, z: npt.NDArray[np.floating], s: npt.NDArray[np.integer]
    ) -> npt.NDArray[np.float32]:
        """Served latents u [n, d] for teacher latents z [n, d] of rows in groups s [n]."""
        u = np.empty(z.shape, dtype=np.float32)
        self._check_groups(s)
        for group, (mean, inverse_root) in enumerate(
            zip(self.means, self.inverse_roots, strict=True)
        ):
            rows = s == group
            u[rows] = (z[rows] - mean) @ inverse_root.T
        return u

    def feature_latents(
        self, u: npt.NDArray[np.floating], s: npt.NDArray[np.integer]
    ) -> npt.NDArray[np.float32]:
        """Where u lies among the latents of group s: what the feature decoder reads."""
        z = np.empty(u.shape, dtype=np.float32)
        self._check_groups(s)
        for group, (mean, root) in enumerate(zip(self.means, self.roots, strict=True)):
            rows = s == group
            z[rows] = mean + u[rows] @ root.T
        return z

    def target_latents(self, u: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        """Where u lies among all latents, whatever its group: what the target decoder reads."""
        z: npt.NDArray[np.float32] = (self.pooled_mean + u @ self.pooled_root.T).astype(np.float32)
        return z

    def _check_groups(self, s: npt.NDArray[np.integer]) -> None:
        """Every row must belong to a group, or it would keep an uninitialised latent."""
        if len(s) and not (int(s.min()) >= 0 and int(s.max()) < len(self.means)):
            raise ValueError(f"group indices must lie in [0, {len(self.means)})")

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """What a model directory stores: plain tensors, never a pickled object."""
        return {name: torch.from_numpy(getattr(self, name).copy()) for name in _FIELDS}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> GroupAlignment:
        """The alignment a model directory holds; shapes are checked, values are not trusted."""
        arrays = {name: tensors[name].numpy().astype(np.float64) for name in _FIELDS}
        groups, d = arrays["means"].shape
        expected = {"roots": (groups, d, d), "inverse_roots": (groups, d, d),
                    "pooled_mean": (d,), "pooled_root": (d, d)}  # fmt: skip
        for name, shape in expected.items():
            if arrays[name].shape != shape:
                raise ValueError(f"alignment {name} has shape {arrays[name].shape}, not {shape}")
        if not all(np.isfinite(array).all() for array in arrays.values()):
            raise ValueError("alignment holds a value that is not finite")
        return cls(**arrays)


_FIELDS: Final = ("means", "roots", "inverse_roots", "pooled_mean", "pooled_root")


def alignment_from_moments(
    moments: GroupMoments, *, min_eigenvalue: float = 1e-2
) -> GroupAlignment:
    """Means and covariance roots from (possibly noisy) moment sums.

    Eigenvalues are floored at ``min_eigenvalue``: noise can leave a covariance estimate with a
    tiny or negative one, whose inverse root would blow the served latents up.
    """
    counts = np.maximum(moments.counts, 1.0)
    means = moments.sums / counts[:, None]
    covariances = moments.outers / counts[:, None, None] - np.einsum("gi,gj->gij", means, means)
    total = max(float(moments.counts.sum()), 1.0)
    pooled_mean = moments.sums.sum(0) / total
    pooled = moments.outers.sum(0) / total - np.outer(pooled_mean, pooled_mean)
    roots, inverse_roots = zip(*(_roots(c, min_eigenvalue) for c in covariances), strict=True)
    return GroupAlignment(
        means=means,
        roots=np.stack(roots),
        inverse_roots=np.stack(inverse_roots),
        pooled_mean=pooled_mean,
        pooled_root=_roots(pooled, min_eigenvalue)[0],
    )


def fit_alignment(
    z: npt.NDArray[np.floating],
    s: npt.NDArray[np.integer],
    n_groups: int,
    *,
    private: PrivateAlignmentSettings | None,
    rng: np.random.Generator,
) -> GroupAlignment | None:
    """The alignment of posterior draws z [n, d] of groups s [n]; private when told.

    None, with a warning, when a group is too small for its private moments to be more signal
    than noise (noise std on a covariance entry above ``max_entry_noise``, judged from the noisy
    count, itself released): a wrong alignment would move that group's rows, not align them.
    """
    if private is None:
        return alignment_from_moments(group_moments(z, s, n_groups))
    moments = private_moments(z, s, n_groups, private, rng)
    radius = private.radius(z.shape[1])
    entry_noise = private.noise_multiplier * radius**2 / np.maximum(moments.counts, 1.0)
    if float(entry_noise.max()) > private.max_entry_noise:
        logger.warning(
            "latent alignment skipped: a group of about %.0f rows is too small for private "
            "moments (noise std %.2f on a covariance entry, above %g); latents are served as is",
            float(moments.counts.min()),
            float(entry_noise.max()),
            private.max_entry_noise,
        )
        return None
    return alignment_from_moments(moments)


def _roots(covariance: FloatArray, floor: float) -> tuple[FloatArray, FloatArray]:
    """(C^(1/2), C^(-1/2)) of a symmetric matrix, eigenvalues floored."""
    values, vectors = np.linalg.eigh((covariance + covariance.T) / 2)
    values = np.maximum(values, floor)
    return (vectors * np.sqrt(values)) @ vectors.T, (vectors / np.sqrt(values)) @ vectors.T

"""Group alignment: each group's latents become N(0, I) in moments, privately when asked."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import Cohort
from fair4free.common.artifacts import read_artifact, write_artifact
from fair4free.data_owner import queries
from fair4free.data_owner.group_alignment import (
    GroupAlignment,
    PrivateAlignmentSettings,
    alignment_from_moments,
    fit_alignment,
    group_moments,
    private_moments,
)
from fair4free.data_owner.registry import TEACHER_FORMAT_VERSION, TEACHER_KIND, load_teacher
from fair4free.data_owner.train_pipeline import train_to_directory
from fair4free.data_owner.training import TrainingConfig


def _two_groups(rows: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Latents whose mean and covariance both depend on the group, as a leaky posterior's do."""
    rng = np.random.default_rng(seed)
    s = rng.integers(0, 2, rows)
    z = rng.standard_normal((rows, 3))
    z[s == 1] = z[s == 1] @ np.array([[2.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]) + 1.5
    return z, s


def _mean_and_covariance(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = rows.mean(0)
    return mean, (rows - mean).T @ (rows - mean) / len(rows)


def test_exact_alignment_maps_every_group_to_zero_mean_and_identity_covariance() -> None:
    z, s = _two_groups()
    alignment = fit_alignment(z, s, 2, private=None, rng=np.random.default_rng(0))
    assert alignment is not None
    u = alignment.to_shared(z, s)
    for group in (0, 1):
        mean, covariance = _mean_and_covariance(u[s == group].astype(np.float64))
        np.testing.assert_allclose(mean, 0.0, atol=1e-5)
        np.testing.assert_allclose(covariance, np.eye(3), atol=1e-4)
    # Before: the groups sat apart, which is what a label decoder would have read s from.
    assert np.linalg.norm(z[s == 1].mean(0) - z[s == 0].mean(0)) > 2.0


def test_features_decode_where_the_group_lies_and_labels_where_all_rows_lie() -> None:
    z, s = _two_groups()
    alignment = fit_alignment(z, s, 2, private=None, rng=np.random.default_rng(0))
    assert alignment is not None
    u = alignment.to_shared(z, s)
    # The feature decoder reads each row back where it came from...
    np.testing.assert_allclose(alignment.feature_latents(u, s), z, atol=1e-4)
    # ... and the target decoder reads one point per u, spread as all rows are, whatever the group.
    target = alignment.target_latents(u).astype(np.float64)
    pooled_mean, pooled_covariance = _mean_and_covariance(z)
    mean, covariance = _mean_and_covariance(target)
    np.testing.assert_allclose(mean, pooled_mean, atol=1e-4)
    np.testing.assert_allclose(covariance, pooled_covariance, atol=1e-3)
    for group in (0, 1):  # each group's label latents are spread as all rows are, too
        np.testing.assert_allclose(target[s == group].mean(0), pooled_mean, atol=1e-4)


def test_one_record_moves_the_clipped_moments_by_at_most_their_sensitivity() -> None:
    """The bound the private release's noise is calibrated to, checked on neighbouring tables."""
    z, s = _two_groups(rows=500)
    z[0] = [40.0, -30.0, 10.0]  # far outside the radius: clipping must bound it
    silent = PrivateAlignmentSettings(noise_multiplier=0.0)
    radius = silent.radius(3)
    rng = np.random.default_rng(0)
    full = private_moments(z, s, 2, silent, rng)
    for removed in (0, 1, 2, 250):
        keep = np.arange(len(z)) != removed
        neighbour = private_moments(z[keep], s[keep], 2, silent, rng)
        count_change = np.abs(full.counts - neighbour.counts).sum()
        sum_change = np.linalg.norm(full.sums - neighbour.sums)
        outer_change = np.linalg.norm(full.outers - neighbour.outers)
        assert count_change == 1.0
        assert sum_change <= radius + 1e-9
        assert outer_change <= radius**2 + 1e-9
    assert np.linalg.norm(z[0]) > radius  # the extreme row was indeed clipped to the bound
    assert sum_change == pytest.approx(min(np.linalg.norm(z[250]), radius))


def test_the_release_noise_has_the_calibrated_scale() -> None:
    z, s = _two_groups(rows=200)
    settings = PrivateAlignmentSettings(noise_multiplier=2.0)
    radius = settings.radius(3)
    exact = private_moments(z, s, 2, PrivateAlignmentSettings(noise_multiplier=0.0),
                            np.random.default_rng(0))  # fmt: skip
    draws = [private_moments(z, s, 2, settings, np.random.default_rng(seed)) for seed in range(400)]
    count_noise = np.array([d.counts - exact.counts for d in draws])
    sum_noise = np.array([d.sums - exact.sums for d in draws])
    off_diagonal = np.array([d.outers[:, 0, 1] - exact.outers[:, 0, 1] for d in draws])
    assert count_noise.std() == pytest.approx(2.0, rel=0.1)
    assert sum_noise.std() == pytest.approx(2.0 * radius, rel=0.1)
    assert off_diagonal.std() == pytest.approx(2.0 * radius**2, rel=0.1)
    assert all(np.allclose(d.outers, np.swapaxes(d.outers, 1, 2)) for d in draws)
    assert settings.mechanism() == (2.0, 1.0, 3)  # three Gaussian releases, whole table each


def test_a_group_too_small_for_private_moments_gets_no_alignment(
    caplog: pytest.LogCaptureFixture,
) -> None:
    z, s = _two_groups(rows=120)
    with caplog.at_level(logging.WARNING):
        alignment = fit_alignment(
            z, s, 2, private=PrivateAlignmentSettings(), rng=np.random.default_rng(0)
        )
    assert alignment is None
    assert "latent alignment skipped" in caplog.text and "too small" in caplog.text


def test_noisy_moments_still_give_invertible_roots() -> None:
    """Noise can leave a covariance estimate indefinite; its floored roots stay finite."""
    z, s = _two_groups(rows=50)
    moments = group_moments(z, s, 2)
    wrecked = type(moments)(
        counts=moments.counts, sums=moments.sums, outers=moments.outers - 100.0 * np.eye(3)
    )
    alignment = alignment_from_moments(wrecked)
    for root, inverse in zip(alignment.roots, alignment.inverse_roots, strict=True):
        assert np.isfinite(inverse).all()
        np.testing.assert_allclose(root @ inverse, np.eye(3), atol=1e-8)


def test_a_stored_alignment_with_bad_shapes_or_values_is_refused() -> None:
    z, s = _two_groups()
    alignment = alignment_from_moments(group_moments(z, s, 2))
    tensors = alignment.to_tensors()
    restored = GroupAlignment.from_tensors(tensors)
    np.testing.assert_array_equal(restored.roots, alignment.roots)
    with pytest.raises(ValueError, match="pooled_root has shape"):
        GroupAlignment.from_tensors({**tensors, "pooled_root": torch.zeros(2, 2)})
    with pytest.raises(ValueError, match="not finite"):
        GroupAlignment.from_tensors({**tensors, "means": torch.full((2, 3), float("nan"))})
    with pytest.raises(ValueError, match="group indices"):
        alignment.to_shared(z[:3], np.array([0, 1, 2]))


@pytest.fixture(scope="module")
def aligned_dir(tmp_path_factory: pytest.TempPathFactory, cohort: Cohort) -> Path:
    out = tmp_path_factory.mktemp("aligned") / "teacher"
    train_to_directory(
        cohort.train, cohort.schema, out=out, dataset_name="cohort", latent_dim=4, hidden=32,
        training=TrainingConfig(epochs=4, batch_size=128, seed=0), latent_alignment="groups",
    )  # fmt: skip
    return out


def test_an_aligned_teacher_serves_latents_aligned_by_group(aligned_dir: Path) -> None:
    teacher = load_teacher(aligned_dir)
    assert teacher.alignment is not None and teacher.metadata["latent_alignment"] == "groups"
    rng = np.random.default_rng(0)
    index = rng.integers(0, teacher.posterior_mu.shape[0], 20_000)
    z = teacher.posterior_mu[index] + np.exp(
        0.5 * teacher.posterior_logvar[index]
    ) * rng.standard_normal(teacher.posterior_mu[index].shape)
    u = teacher.served_latents(z, index)
    groups = teacher.posterior_sensitive[index]
    for group in (0, 1):  # a fresh draw per row, so within sampling error of N(0, I) moments
        mean, covariance = _mean_and_covariance(u[groups == group].astype(np.float64))
        np.testing.assert_allclose(mean, 0.0, atol=0.1)
        np.testing.assert_allclose(covariance, np.eye(4), atol=0.15)
    rows = queries.sample_rows(teacher, 200, np.random.default_rng(1))
    assert len(rows) == 200 and not rows.isna().all(axis=None)
    means = teacher.served_means()
    np.testing.assert_allclose(
        means, teacher.served_latents(teacher.posterior_mu, np.arange(len(means)))
    )


def test_a_directory_from_before_the_bank_held_groups_still_loads(
    teacher_dir: Path, tmp_path: Path
) -> None:
    artifact = read_artifact(teacher_dir, kind=TEACHER_KIND, format_version=TEACHER_FORMAT_VERSION)
    posterior = {k: v for k, v in artifact.weights["posterior"].items() if k != "sensitive"}
    weights = {k: v for k, v in artifact.weights.items() if k != "alignment"}  # none back then
    older = tmp_path / "older"
    write_artifact(
        older, kind=TEACHER_KIND, format_version=TEACHER_FORMAT_VERSION,
        metadata={**artifact.metadata, "latent_alignment": "none"},
        weights={**weights, "posterior": posterior},
    )  # fmt: skip
    teacher = load_teacher(older)
    assert teacher.alignment is None
    assert len(queries.sample_rows(teacher, 50, np.random.default_rng(0))) == 50

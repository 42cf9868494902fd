"""The latent release modes: the pure mechanism, its durable counter, and the daemon serving it.

Daemons run in-process on loopback with the project's own PKI and real mTLS; the command line
runs as a real process for its exit codes.
"""

from __future__ import annotations

import dataclasses
import re
import stat
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np
import pytest

from conftest import MAX_ROWS_PER_CALL, UNLIMITED, StubFactory, write_policy
from fair4free.common import dp_accounting
from fair4free.common.codec import ModelManifest, manifest_from_proto, tensor_from_proto
from fair4free.common.errors import ErrorCode, ExitCode, Fair4FreeError
from fair4free.data_owner import latent_release as lr
from fair4free.data_owner import queries
from fair4free.data_owner.cli import build_parser
from fair4free.data_owner.pki import PkiLayout
from fair4free.data_owner.privacy_statement import LATENT_SENTENCES
from fair4free.data_owner.registry import Teacher, load_teacher
from fair4free.data_owner.release_counter import (
    KEY_FILE,
    RELEASE_EXHAUSTED,
    SETTINGS_CHANGED,
    PrivacyBudgetExhaustedError,
    ReleaseCounter,
    schedule_key,
)
from fair4free.data_owner.row_clipping import clip_rows
from fair4free.data_owner.server import ServerConfig, build_server
from fair4free.v1 import fair4free_pb2 as pb
from fair4free.v1 import fair4free_pb2_grpc as pb_grpc

TIMEOUT = 20
SIGMA = 3.0
DELTA = 1e-5
KEY = bytes(range(32))


@pytest.fixture(scope="module")
def teacher(teacher_dir: Path) -> Teacher:
    return load_teacher(teacher_dir)


def gaussian(
    limit: float = 1e3, *, sigma: float = SIGMA, clip: float | None = None
) -> lr.LatentReleaseSettings:
    return lr.LatentReleaseSettings(
        mode="gaussian",
        gaussian=lr.GaussianLatentSettings(
            noise_multiplier=sigma, epsilon_limit=limit, delta=DELTA, clip=clip
        ),
    )


def plan(teacher: Teacher, limit: float = 1e3) -> lr.ReleasePlan:
    settings = gaussian(limit).gaussian
    assert settings is not None
    return lr.plan_for(teacher, settings)


def limit_for_passes(passes: int) -> float:
    """An epsilon limit that allows exactly ``passes`` passes at SIGMA and DELTA."""

    def epsilon(k: int) -> float:
        return dp_accounting.gaussian_epsilon(
            noise_multiplier=SIGMA / 2, compositions=k, delta=DELTA
        )

    return (epsilon(passes) + epsilon(passes + 1)) / 2


# --- the pure mechanism ------------------------------------------------------------------------


@pytest.mark.parametrize("records", [1, 7, 1000])
def test_every_pass_releases_each_record_once_however_calls_split_it(records: int) -> None:
    whole = lr.scheduled_records(KEY, records=records, start=0, count=3 * records + 2)
    for epoch in range(3):
        one_pass = whole[epoch * records : (epoch + 1) * records]
        np.testing.assert_array_equal(np.sort(one_pass), np.arange(records))
    cuts = np.sort(np.random.default_rng(records).integers(0, whole.size, size=5))
    pieces = [
        lr.scheduled_records(KEY, records=records, start=a, count=b - a)
        for a, b in zip([0, *cuts], [*cuts, whole.size], strict=True)
    ]
    np.testing.assert_array_equal(np.concatenate(pieces), whole)


def test_the_order_is_secret_keyed_and_changes_every_pass() -> None:
    first = lr.scheduled_records(KEY, records=1000, start=0, count=1000)
    assert not np.array_equal(first, np.arange(1000))
    assert not np.array_equal(
        first, lr.scheduled_records(KEY, records=1000, start=1000, count=1000)
    )
    other = lr.scheduled_records(bytes(32), records=1000, start=0, count=1000)
    assert not np.array_equal(first, other)


def test_clipping_bounds_norms_and_keeps_small_rows_and_directions() -> None:
    rows = np.random.default_rng(0).standard_normal((500, 6)).astype(np.float32) * 2
    clipped = clip_rows(rows, 2.5)
    norms = np.linalg.norm(rows, axis=1)
    assert np.linalg.norm(clipped, axis=1).max() <= 2.5 + 1e-9
    inside = norms <= 2.5
    np.testing.assert_allclose(clipped[inside], rows[inside], rtol=1e-6)
    cosine = (clipped * rows).sum(axis=1) / (np.linalg.norm(clipped, axis=1) * norms)
    np.testing.assert_allclose(cosine, 1.0, rtol=1e-6)


def test_released_rows_are_clipped_means_plus_noise_of_sigma_times_clip(teacher: Teacher) -> None:
    settings = gaussian(clip=0.5).gaussian
    assert settings is not None
    release = lr.plan_for(teacher, settings)
    rows = 3 * release.records
    latents = lr.gaussian_latents(
        teacher.posterior_mu, release, key=KEY, start=0, count=rows,
        rng=np.random.default_rng(0),
    )  # fmt: skip
    assert latents.shape == (rows, teacher.model.config.latent_dim)
    assert latents.dtype == np.float32
    centres = clip_rows(teacher.posterior_mu, 0.5)[
        lr.scheduled_records(KEY, records=release.records, start=0, count=rows)
    ]
    noise = latents - centres
    assert noise.mean() == pytest.approx(0.0, abs=0.05)
    np.testing.assert_allclose(noise.std(axis=0), SIGMA * 0.5, rtol=0.05)


def test_the_default_clip_is_the_root_of_the_latent_dimension(teacher: Teacher) -> None:
    assert plan(teacher).clip == pytest.approx(np.sqrt(teacher.model.config.latent_dim))


def test_offline_release_reports_its_epsilon_and_is_reproducible(teacher: Teacher) -> None:
    settings = gaussian().gaussian
    assert settings is not None
    first, epsilon = lr.released_latents(teacher, 900, np.random.default_rng(3), settings)
    again, _ = lr.released_latents(teacher, 900, np.random.default_rng(3), settings)
    np.testing.assert_array_equal(first, again)
    assert epsilon == plan(teacher).epsilon(900) > 0


def test_settings_the_model_cannot_serve_are_refused_with_the_smallest_usable_limit(
    teacher: Teacher,
) -> None:
    records = teacher.posterior_mu.shape[0]
    one_pass = dp_accounting.latent_release_epsilon(
        records=records, rows_released=1, noise_multiplier=SIGMA, delta=DELTA
    )
    with pytest.raises(Fair4FreeError, match=f"costs epsilon {one_pass:.4g}") as caught:
        plan(teacher, limit=one_pass * 0.99)
    assert caught.value.code is ErrorCode.PRIVACY_SETTINGS_INVALID
    too_large = lr.GaussianLatentSettings(noise_multiplier=1, epsilon_limit=9, delta=1 / records)
    with pytest.raises(Fair4FreeError, match=r"--latent-delta must lie in \(0, 1/n\)") as caught:
        lr.plan_for(teacher, too_large)
    assert caught.value.code is ErrorCode.PRIVACY_SETTINGS_INVALID


def serve_args(*flags: str) -> list[str]:
    return ["serve", "--model", "m", "--pki", "p", "--policy", "x", "--state-dir", "s", *flags]


@pytest.mark.parametrize(
    ("flags", "code", "message"),
    [
        (["--latent-clip", "2"], ErrorCode.CONFIG_INVALID,
         "--latent-clip only apply with --latent-release gaussian, not with the default"),
        (["--latent-release", "prior", "--latent-delta", "1e-7", "--latent-epsilon-limit", "1"],
         ErrorCode.CONFIG_INVALID, "--latent-epsilon-limit, --latent-delta only apply"),
        (["--latent-release", "gaussian", "--latent-epsilon-limit", "1"],
         ErrorCode.CONFIG_INVALID, "needs --latent-noise-multiplier: choose"),
        (["--latent-release", "gaussian", "--latent-noise-multiplier", "0",
          "--latent-epsilon-limit", "1"],
         ErrorCode.PRIVACY_SETTINGS_INVALID,
         "--latent-noise-multiplier must be a finite number above 0, got 0.0"),
        (["--latent-release", "gaussian", "--latent-noise-multiplier", "2",
          "--latent-epsilon-limit", "1", "--latent-clip", "nan"],
         ErrorCode.PRIVACY_SETTINGS_INVALID, "--latent-clip must be a finite number above 0"),
    ],
)  # fmt: skip
def test_flags_that_do_not_fit_are_refused(flags: list[str], code: ErrorCode, message: str) -> None:
    args = build_parser().parse_args(serve_args(*flags))
    with pytest.raises(Fair4FreeError, match=message) as caught:
        lr.settings_from_args(args)
    assert caught.value.code is code


def test_flags_make_the_settings(teacher: Teacher) -> None:
    args = build_parser().parse_args(serve_args(
        "--latent-release", "gaussian", "--latent-noise-multiplier", "4",
        "--latent-epsilon-limit", "2",
    ))  # fmt: skip
    assert lr.settings_from_args(args) == lr.LatentReleaseSettings(
        mode="gaussian",
        gaussian=lr.GaussianLatentSettings(
            noise_multiplier=4, epsilon_limit=2, delta=lr.DEFAULT_DELTA
        ),
    )
    # Without --latent-release the teacher decides; one trained without DP has no guarantee
    # to keep, so it serves posterior draws.
    default = lr.settings_from_args(build_parser().parse_args(serve_args()))
    assert default.mode is None and default.mode_for(teacher.metadata) == "posterior"


def test_a_mode_without_its_settings_is_refused() -> None:
    with pytest.raises(Fair4FreeError, match="latent release mode 'gaussian' with") as caught:
        lr.LatentReleaseSettings(mode="gaussian")
    assert caught.value.code is ErrorCode.CONFIG_INVALID


# --- the durable counter and key -----------------------------------------------------------------


def test_concurrent_reservations_are_disjoint_and_never_pass_the_capacity(
    tmp_path: Path, teacher: Teacher
) -> None:
    release = plan(teacher, limit_for_passes(1))
    counter = ReleaseCounter.open(tmp_path, model_hash="m" * 64, plan=release)
    starts: list[int] = []
    refused: list[PrivacyBudgetExhaustedError] = []

    def reserve_until_refused() -> None:
        while True:
            try:
                starts.append(counter.reserve(37))
            except PrivacyBudgetExhaustedError as exc:
                refused.append(exc)
                return

    threads = [threading.Thread(target=reserve_until_refused) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(starts) == list(range(0, 37 * len(starts), 37))
    assert 37 * len(starts) <= release.capacity < 37 * (len(starts) + 1)
    assert counter.released() == 37 * len(starts)
    assert {exc.remaining for exc in refused} == {release.capacity - 37 * len(starts)}


def test_the_key_is_private_made_once_and_kept(tmp_path: Path) -> None:
    key = schedule_key(tmp_path)
    assert len(key) == 32
    assert stat.S_IMODE((tmp_path / KEY_FILE).stat().st_mode) == 0o600
    assert schedule_key(tmp_path) == key
    assert [p.name for p in tmp_path.iterdir()] == [KEY_FILE]  # no staging file left behind


# --- the daemon ----------------------------------------------------------------------------------


@contextmanager
def daemon(
    teacher: Teacher,
    pki_dir: PkiLayout,
    state: Path,
    settings: lr.LatentReleaseSettings,
    budgets: dict[str, int] = UNLIMITED,
) -> Iterator[str]:
    config = ServerConfig(
        policy=write_policy(state / "policy.toml", budgets),
        state_dir=state,
        crl=pki_dir.crl,
        listen="127.0.0.1:0",
        max_rows_per_call=MAX_ROWS_PER_CALL,
        seed=0,
        latent_release=settings,
    )
    running = build_server(teacher, tls=pki_dir.server_files(), config=config)
    try:
        yield f"127.0.0.1:{running.port}"
    finally:
        running.stop(0)


def sample(
    stub: pb_grpc.OwnerServiceStub, rows: int, request_id: str | None = None
) -> list[pb.LatentBatch]:
    request = pb.SampleLatentsRequest(request_id=request_id or uuid.uuid4().hex, rows=rows)
    return list(stub.SampleLatents(request, timeout=TIMEOUT))


def latents_of(batches: list[pb.LatentBatch], latent_dim: int) -> np.ndarray:
    return np.concatenate([
        tensor_from_proto(b.latents, field="latents", dtype="float32", shape=(None, latent_dim))
        for b in batches
    ])  # fmt: skip


def release_rows(stub: pb_grpc.OwnerServiceStub, rows: int) -> None:
    while rows > 0:
        sample(stub, min(rows, MAX_ROWS_PER_CALL))
        rows -= MAX_ROWS_PER_CALL


def manifest(stub: pb_grpc.OwnerServiceStub) -> ModelManifest:
    request = pb.GetManifestRequest(request_id=uuid.uuid4().hex)
    return manifest_from_proto(stub.GetManifest(request, timeout=TIMEOUT))


def release_epsilon(stub: pb_grpc.OwnerServiceStub) -> float:
    (release,) = [g for g in manifest(stub).privacy_guarantees if g.scope == "latent_release"]
    return release.epsilon


def latent_budget(stub: pb_grpc.OwnerServiceStub) -> int:
    (budget,) = [b for b in manifest(stub).budgets if b.method == "SampleLatents"]
    return budget.remaining


def test_gaussian_mode_streams_latents_and_the_manifest_counts_every_row(
    tmp_path: Path, teacher: Teacher, pki_dir: PkiLayout, stub_factory: StubFactory
) -> None:
    release = plan(teacher)
    dim = teacher.model.config.latent_dim
    with daemon(teacher, pki_dir, tmp_path, gaussian()) as address:
        stub = stub_factory(address)
        before = manifest(stub)
        (guarantee,) = [g for g in before.privacy_guarantees if g.scope == "latent_release"]
        assert (guarantee.epsilon, guarantee.delta, guarantee.epsilon_limit) == (0.0, DELTA, 1e3)
        assert (guarantee.mechanism, guarantee.adjacency) == ("gaussian", lr.ADJACENCY)
        assert LATENT_SENTENCES["gaussian"] in before.privacy_statement
        assert "Latent release so far: (epsilon=0, delta=1e-05)" in before.privacy_statement
        latents = latents_of(sample(stub, 300), dim)
        assert latents.shape == (300, dim) and np.isfinite(latents).all()
        # The noise (sigma C per axis) dominates the spread of the released rows.
        assert latents.std(axis=0).min() > 0.8 * SIGMA * release.clip
        first = release_epsilon(stub)
        assert (
            first
            == release.epsilon(300)
            == dp_accounting.latent_release_epsilon(
                records=release.records, rows_released=300, noise_multiplier=SIGMA, delta=DELTA
            )
        )
        release_rows(stub, release.records - 300)  # the end of the first pass costs nothing more
        assert release_epsilon(stub) == first
        release_rows(stub, 1)
        assert release_epsilon(stub) == release.epsilon(release.records + 1) > first


def test_an_exhausted_release_is_refused_uncharged_and_a_retry_is_not_a_new_release(
    tmp_path: Path, teacher: Teacher, pki_dir: PkiLayout, stub_factory: StubFactory
) -> None:
    release = plan(teacher, limit_for_passes(1))
    assert release.capacity == release.records
    with daemon(teacher, pki_dir, tmp_path, gaussian(limit_for_passes(1))) as address:
        stub = stub_factory(address)
        release_rows(stub, release.capacity - 10)
        kept = sample(stub, 4, request_id="last-rows")
        charged = latent_budget(stub)
        with pytest.raises(grpc.RpcError) as caught:
            sample(stub, 20)
        assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        detail = RELEASE_EXHAUSTED.format(
            asked=20, remaining=6, capacity=release.capacity, limit=release.epsilon_limit,
            delta=DELTA,
        )  # fmt: skip
        assert (caught.value.details() or "").startswith(detail)
        assert latent_budget(stub) == charged  # the refusal was refunded
        counter = ReleaseCounter.open(tmp_path, model_hash=teacher.content_hash, plan=release)
        assert counter.released() == release.capacity - 6
        again = sample(stub, 4, request_id="last-rows")  # answered from the ledger
        assert [m.SerializeToString() for m in again] == [m.SerializeToString() for m in kept]
        assert counter.released() == release.capacity - 6
        assert latent_budget(stub) == charged
        sample(stub, 6)
        with pytest.raises(grpc.RpcError) as caught:
            sample(stub, 1)
        assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "1 rows asked, 0 of" in (caught.value.details() or "")
        assert release_epsilon(stub) == release.epsilon(release.capacity) <= release.epsilon_limit


def test_the_counter_survives_a_restart_and_refuses_another_noise(
    tmp_path: Path, teacher: Teacher, pki_dir: PkiLayout, stub_factory: StubFactory
) -> None:
    release = plan(teacher)
    with daemon(teacher, pki_dir, tmp_path, gaussian()) as address:
        release_rows(stub_factory(address), release.records + 5)
    key = (tmp_path / KEY_FILE).read_bytes()
    with daemon(teacher, pki_dir, tmp_path, gaussian()) as address:
        stub = stub_factory(address)
        assert release_epsilon(stub) == release.epsilon(release.records + 5)
        sample(stub, 7)
    counter = ReleaseCounter.open(tmp_path, model_hash=teacher.content_hash, plan=release)
    assert counter.released() == release.records + 12
    assert (tmp_path / KEY_FILE).read_bytes() == key
    detail = SETTINGS_CHANGED.format(
        model=teacher.content_hash[:12], released=release.records + 12,
        path=tmp_path / "latent-release.sqlite", stored=SIGMA, stored_records=release.records,
        sigma=SIGMA + 1, records=release.records,
    )  # fmt: skip
    with (
        pytest.raises(Fair4FreeError, match=re.escape(detail)) as err,
        daemon(teacher, pki_dir, tmp_path, gaussian(sigma=SIGMA + 1)),
    ):
        pass
    assert err.value.code is ErrorCode.PRIVACY_SETTINGS_INVALID


def test_prior_mode_reads_no_record(
    tmp_path: Path, teacher: Teacher, pki_dir: PkiLayout, stub_factory: StubFactory
) -> None:
    poisoned = dataclasses.replace(
        teacher,
        posterior_mu=np.full_like(teacher.posterior_mu, np.nan),
        posterior_logvar=np.full_like(teacher.posterior_logvar, np.nan),
    )
    dim = teacher.model.config.latent_dim
    with daemon(poisoned, pki_dir, tmp_path, lr.LatentReleaseSettings(mode="prior")) as address:
        stub = stub_factory(address)
        latents = np.concatenate(
            [latents_of(sample(stub, MAX_ROWS_PER_CALL), dim) for _ in range(2)]
        )
        described = manifest(stub)
    assert np.isfinite(latents).all()
    np.testing.assert_allclose(latents.mean(axis=0), 0.0, atol=0.15)
    np.testing.assert_allclose(latents.std(axis=0), 1.0, atol=0.1)
    assert not [g for g in described.privacy_guarantees if g.scope == "latent_release"]
    assert LATENT_SENTENCES["prior"] in described.privacy_statement
    assert not (tmp_path / KEY_FILE).exists()


def owner_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fair4free.data_owner", *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_bad_flags_through_the_cli_get_the_catalog_exit_codes(
    tmp_path: Path, teacher_dir: Path, teacher: Teacher, pki_dir: PkiLayout
) -> None:
    policy = write_policy(tmp_path / "policy.toml", UNLIMITED)
    base = ["serve", "--model", str(teacher_dir), "--pki", str(pki_dir.root), "--policy",
            str(policy), "--state-dir", str(tmp_path / "state")]  # fmt: skip
    mixed = owner_cli(*base, "--latent-release", "prior", "--latent-noise-multiplier", "2")
    assert mixed.returncode == ExitCode.USAGE, mixed.stderr
    assert "--latent-noise-multiplier only apply" in mixed.stderr
    one_pass = dp_accounting.latent_release_epsilon(
        records=1, rows_released=1, noise_multiplier=2.0, delta=lr.DEFAULT_DELTA
    )
    small = owner_cli(*base, "--latent-release", "gaussian", "--latent-noise-multiplier", "2",
                      "--latent-epsilon-limit", "0.5")  # fmt: skip
    assert small.returncode == ExitCode.BAD_INPUT, small.stderr
    line = small.stderr.strip().splitlines()[-1]
    assert line.startswith("error: --latent-epsilon-limit 0.5 allows no release")
    assert f"one pass over the records costs epsilon {one_pass:.4g}" in line


def test_posterior_draws_are_widened_by_isotropic_noise(teacher: Teacher) -> None:
    """Each served posterior draw is N(mu_i, var_i + w^2): the row's posterior, widened by w."""
    rows = 200_000
    latents = queries.sample_latents(teacher, rows, np.random.default_rng(5))
    index = np.random.default_rng(5).integers(0, teacher.posterior_mu.shape[0], size=rows)
    if teacher.alignment is not None:  # served in the aligned space: back to the teacher's z
        latents = teacher.alignment.feature_latents(latents, teacher.posterior_sensitive[index])
    residual = latents - teacher.posterior_mu[index]
    variance = np.exp(teacher.posterior_logvar[index].astype(np.float64))
    widened = residual / np.sqrt(variance + queries.POSTERIOR_WIDENING**2)
    assert widened.mean() == pytest.approx(0.0, abs=0.01)
    assert widened.std() == pytest.approx(1.0, abs=0.01)
    # The posterior's own spread alone does not account for the draws: the widening is there.
    assert (residual / np.sqrt(variance)).std() > 1.0 + 0.5 * queries.POSTERIOR_WIDENING**2

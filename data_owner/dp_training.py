"""Training the teacher with DP-SGD (Opacus), and the loss that makes its guarantee true.

DP-SGD (Abadi et al. 2016) samples each batch by Poisson sampling, clips every record's gradient to
norm C, adds Gaussian noise to the sum and steps; an RDP accountant turns the noise, the sampling
rate and the number of steps into (epsilon, delta) for adding or removing one training record. The
clipping bounds one record's influence only if the loss is a mean of per-record terms, each
computed from its own record alone. Reconstruction and KL are (``training.vae_terms``).

The default fairness penalty is not: distance correlation is a function of all pairs of rows in the
batch, so one record moves every other record's gradient, clipping per record bounds nothing, and
the epsilon Opacus reports would be false. Under DP the penalty is an adversary instead: a small
head learns to predict s from each row's posterior parameters (mu, logvar), and the encoder learns
to make the adversary's guess uniform (domain confusion, Tzeng et al. 2015), at
``fairness_weight``. Each row's terms read only that row, so the whole loss is a mean of
per-record terms (``tests/test_dp_training.py`` checks it against a row-by-row oracle). The
adversary lives in the same module as the VAE: one loss, one optimiser, one engine, so its weights
are clipped and noised too; only the VAE is saved. A gradient-reversal layer (the encoder
maximising the adversary's cross-entropy, Ganin et al. 2016) was tried first: it oscillated,
encoding s inverted rather than dropping it, and on Adult at epsilon 8 left dcor(posterior, s) at
0.32 against 0.13 with confusion (docs/privacy.md has the numbers).

Label massaging (``fair_labels.py``) relabels rows from statistics of the whole table, so one
record can change other records' labels, which no per-record clipping accounts for. Under DP it
runs in its private form (``dp_massaging.py``). Its mechanisms, and those of the group alignment
released after training (``group_alignment.py``), are passed in as ``others``, and the teacher's
noise is chosen so that all of them together meet the target (``noise_for_budget``).

Randomness: Poisson sampling and the noise come from a generator seeded from the operating system
afresh for every run, never from ``--seed``: noise drawn from a known seed is no noise to whoever
knows the seed. ``--seed`` still fixes the initial weights, which DP-SGD treats as public. Opacus'
``secure_mode`` (a cryptographic generator, needing torchcsprng) is not used; docs/privacy.md says
what that leaves open. Opacus is imported only here and only when DP training runs, so the rest
of the package works without the ``dp`` extra.
"""

from __future__ import annotations

import importlib
import logging
import math
import secrets
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final, NamedTuple, NoReturn

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from fair4free.common.encoding import Block
from fair4free.common.errors import ErrorCode, Fair4FreeError
from fair4free.common.nn_blocks import mlp
from fair4free.data_owner.teacher import FairVAE, TeacherConfig
from fair4free.data_owner.training import (
    TrainingConfig,
    TrainingSummary,
    log_epoch,
    summarise,
    vae_terms,
)

logger = logging.getLogger(__name__)

ADJACENCY: Final = "adding or removing one training record"
ACCOUNTANT: Final = "rdp"
MIN_BATCHES_PER_EPOCH: Final = 2
"""Poisson sampling needs a sampling rate well below 1: at least this many expected batches per
epoch (rows >= 2 x batch size), or privacy amplification by sampling is mostly lost."""
Mechanism = tuple[float, float, int]
"""(noise multiplier, sample rate, steps): one entry of an Opacus RDP accountant's history."""
NamedMechanisms = tuple[str, tuple[Mechanism, ...]]
"""Other mechanisms that read the training rows, under their ``OTHER_MECHANISMS`` key."""
OTHER_MECHANISMS: Final = {
    "label_massaging": "dp label massaging",  # dp_massaging.py
    "group_alignment": "dp group alignment",  # group_alignment.py
}
_OPACUS_BUDGET_TOO_LOW: Final = "privacy budget is too low"  # opacus 1.6's noise-search failure


DP_DEFAULTS: Final[dict[str, float]] = {
    "learning_rate": 3e-3,
    "kl_weight": 0.4,
    "fairness_weight": 10.0,
}
"""Training settings that differ under DP-SGD when the command line does not set them.

Measured on Adult at epsilon 8 with DP massaging (docs/privacy.md). Learning rate three times the
plain 1e-3: clipping and noise shrink and blur each step, and at 1e-3 the teacher learned the
labels loosely (F1 of its rows about 0.3 against 0.5, real-test DPR 0.51-0.70 against
0.87-0.97). KL weight four times the plain 0.1: the fully DP path decodes N(0, I) latents, which
the posteriors drift away from at 0.1 (coverage of prior rows 0.55 against 0.70 at 0.4; DPR
0.87-0.88 against 0.89-0.96); one DP training each. Fairness weight twice the plain 5 (the
adversary standing in for distance correlation, above, learns from noisy gradients; our reading of
why it needs more): at 5 prior rows scored DPR 0.825 on average over eight trainings, at 10 0.921
over ten (7.5: 0.855 and 15: 0.846, over three each), for about 0.01 accuracy."""


def default_for(setting: str, dp: DPConfig | None, requested: float | None) -> float:
    """``requested`` if given, else the plain default, or under DP its DP default."""
    if requested is not None:
        return requested
    plain: float = getattr(TrainingConfig, setting)
    return plain if dp is None else DP_DEFAULTS.get(setting, plain)


def default_delta(rows: int) -> float:
    """1 / (10 rows) rounded down to a power of ten (1e-6 for 39,074 rows).

    delta bounds the probability that the guarantee fails outright; at delta = 1/rows a mechanism
    may publish one whole random record and still qualify, so delta must sit well below 1/rows.
    A tenth of that, rounded down to a power of ten, is a common convention and easy to state.
    """
    # 10**k >= 10 * rows for the smallest k: the digit count of 10 * rows - 1 (exact, no log10).
    return 10.0 ** -len(str(10 * rows - 1))


@dataclass(frozen=True, kw_only=True)
class DPConfig:
    """The privacy target of DP-SGD training; the training settings stay in ``TrainingConfig``.

    ``delta`` None means ``default_delta`` of the training rows. ``max_grad_norm`` is the
    per-record clip C; 1.0 is Opacus' customary default, and the loss terms are O(1) to O(10).
    """

    epsilon: float
    delta: float | None = None
    max_grad_norm: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.epsilon) and self.epsilon > 0):
            _invalid(f"--dp-epsilon must be a positive finite number, got {self.epsilon}")
        if self.delta is not None and not (math.isfinite(self.delta) and 0 < self.delta < 1):
            _invalid(f"--dp-delta must lie strictly between 0 and 1, got {self.delta}")
        if not (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0):
            _invalid(
                f"--dp-max-grad-norm must be a positive finite number, got {self.max_grad_norm}"
            )

    def delta_for(self, rows: int) -> float:
        """The delta to train for on ``rows`` records; refuses one at or above 1 / rows."""
        delta = default_delta(rows) if self.delta is None else self.delta
        if delta >= 1.0 / rows:
            _invalid(
                f"--dp-delta {delta:g} must be below 1/rows = {1.0 / rows:.3g} for {rows} training "
                f"rows (default: {default_delta(rows):g})"
            )
        return delta


def dp_config(
    epsilon: float | None, *, delta: float | None, max_grad_norm: float | None
) -> DPConfig | None:
    """The command line's DP settings: None without ``--dp-epsilon``, whose companions need it."""
    if epsilon is None:
        if delta is not None or max_grad_norm is not None:
            _invalid("--dp-delta and --dp-max-grad-norm need --dp-epsilon")
        return None
    if max_grad_norm is None:
        return DPConfig(epsilon=epsilon, delta=delta)
    return DPConfig(epsilon=epsilon, delta=delta, max_grad_norm=max_grad_norm)


@dataclass(frozen=True, kw_only=True)
class DPReport:
    """What DP-SGD training spent; ``metadata()`` is what the model directory records."""

    epsilon: float
    delta: float
    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    steps: int
    library: str
    others: tuple[NamedMechanisms, ...] = ()  # what else read the rows, composed into epsilon

    def metadata(self) -> dict[str, Any]:
        """The ``privacy`` entry of the model metadata (read by ``privacy_statement``)."""
        others = {
            name: [
                {"noise_multiplier": noise, "sample_rate": rate, "steps": steps}
                for noise, rate, steps in mechanisms
            ]
            for name, mechanisms in self.others
        }
        names = ["dp-sgd", *(OTHER_MECHANISMS[name] for name, _ in self.others)]
        mechanism = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
        return {
            "teacher": {
                "mechanism": mechanism,
                "epsilon": self.epsilon,
                "delta": self.delta,
                "adjacency": ADJACENCY,
                "noise_multiplier": self.noise_multiplier,
                "max_grad_norm": self.max_grad_norm,
                "sample_rate": self.sample_rate,
                "steps": self.steps,
                "accountant": ACCOUNTANT,
                "library": self.library,
                **others,
            }
        }


class DPLosses(NamedTuple):
    """One batch's DP loss (``total``, what is differentiated) and its parts, for the log."""

    total: Tensor
    reconstruction: Tensor
    kl: Tensor
    adversary: Tensor  # cross-entropy of the adversary's guess of s


class AdversarialFairVAE(nn.Module):
    """The FairVAE and its adversary as one module, so one engine clips and noises both.

    ``forward`` returns the DP loss, a mean over rows of three terms, each training its own part:
    reconstruction + kl_weight * KL (the VAE); the adversary's cross-entropy in predicting s from
    the detached posterior (the adversary only); and fairness_weight times the confusion of the
    adversary, frozen, on the live posterior: the cross-entropy of its guess against the uniform
    distribution (the encoder only). The encoder thus learns to make the adversary's best guess
    uninformative, which it can only do by dropping s from (mu, logvar).
    """

    def __init__(
        self,
        vae: FairVAE,
        *,
        blocks: Sequence[Block],
        kl_weight: float,
        fairness_weight: float,
    ) -> None:
        super().__init__()
        self.vae = vae
        config = vae.config
        # One hidden layer: enough to read s off a posterior, and few weights to noise.
        self.adversary = mlp(2 * config.latent_dim, config.hidden, 1, config.n_sensitive)
        self.blocks = tuple(blocks)
        self.kl_weight = kl_weight
        self.fairness_weight = fairness_weight

    def forward(self, x: Tensor, s: Tensor, noise: Tensor | None = None) -> DPLosses:
        """The loss of a batch (x [n, width], s [n]); ``noise`` as in ``FairVAE.forward``."""
        terms = vae_terms(self.vae, x, s, self.blocks, noise)
        adversary = F.cross_entropy(self.adversary(terms.posterior.detach()), s)
        confusion = -F.log_softmax(self._frozen_adversary(terms.posterior), dim=1).mean()
        total = terms.reconstruction + self.kl_weight * terms.kl + adversary
        return DPLosses(
            total + self.fairness_weight * confusion, terms.reconstruction, terms.kl, adversary
        )

    def _frozen_adversary(self, posterior: Tensor) -> Tensor:
        """The adversary's logits with its weights detached, so only the posterior learns.

        Written with ``F.linear`` rather than by calling the layers: a layer call would fire
        Opacus' hooks and add this path to the adversary's per-sample gradients.
        """
        hidden = posterior
        for layer in self.adversary:
            if isinstance(layer, nn.Linear):
                bias = None if layer.bias is None else layer.bias.detach()
                hidden = F.linear(hidden, layer.weight.detach(), bias)
            else:
                hidden = layer(hidden)
        return hidden


def train_teacher_dp(
    x: npt.NDArray[np.float32],
    s: npt.NDArray[np.int64],
    *,
    blocks: Sequence[Block],
    teacher_config: TeacherConfig,
    config: TrainingConfig,
    dp: DPConfig,
    others: Sequence[NamedMechanisms] = (),
) -> tuple[FairVAE, TrainingSummary, DPReport]:
    """Fit a FairVAE with DP-SGD to ``dp.epsilon``; the report holds the epsilon actually spent.

    ``others`` are the other mechanisms that read the same rows, before training (DP label
    massaging) or after it (DP group alignment): the epsilon reached covers them all together.
    """
    spent = flat(others)
    opacus = import_opacus()
    rows = int(x.shape[0])
    delta = check_trainable(rows, config, dp)
    torch.manual_seed(config.seed)  # initial weights and reparameterisation noise only
    module = AdversarialFairVAE(
        FairVAE(teacher_config),
        blocks=blocks,
        kl_weight=config.kl_weight,
        fairness_weight=config.fairness_weight,
    )
    optimiser = torch.optim.Adam(module.parameters(), lr=config.learning_rate)
    secret = torch.Generator().manual_seed(secrets.randbits(63))
    x_all, s_all = torch.from_numpy(x), torch.from_numpy(s)
    loader = DataLoader(TensorDataset(x_all, s_all), batch_size=config.batch_size, generator=secret)
    with opacus_advice_off():
        engine = opacus.PrivacyEngine(accountant=ACCOUNTANT)
        try:
            if spent:
                noise = noise_for_budget(dp.epsilon, delta, *poisson_schedule(rows, config), spent)
                if noise is None:
                    budget_too_small(dp, delta, config, rows)
                private, dp_optimiser, dp_loader = engine.make_private(
                    module=module, optimizer=optimiser, data_loader=loader,
                    noise_multiplier=noise, max_grad_norm=dp.max_grad_norm,
                    poisson_sampling=True, noise_generator=secret,
                )  # fmt: skip
            else:
                private, dp_optimiser, dp_loader = engine.make_private_with_epsilon(
                    module=module, optimizer=optimiser, data_loader=loader,
                    target_epsilon=dp.epsilon, target_delta=delta, epochs=config.epochs,
                    max_grad_norm=dp.max_grad_norm, poisson_sampling=True, noise_generator=secret,
                )  # fmt: skip
        except ValueError as exc:
            if _OPACUS_BUDGET_TOO_LOW not in str(exc):
                raise
            budget_too_small(dp, delta, config, rows)
    logger.info(
        "DP-SGD to epsilon %g at delta %g: noise multiplier %.3f, clip %g, sample rate %.4f",
        dp.epsilon,
        delta,
        dp_optimiser.noise_multiplier,
        dp.max_grad_norm,
        1.0 / len(dp_loader),
    )
    started = time.monotonic()
    _run_epochs(private, dp_optimiser, dp_loader, config.epochs, started)
    private.to_standard_module()  # drop Opacus' hooks and per-sample gradients
    report = _report(engine, dp_optimiser.noise_multiplier, dp, delta, others)
    logger.info(
        "DP-SGD spent epsilon %.3f (target %g) at delta %g over %d steps",
        report.epsilon,
        dp.epsilon,
        delta,
        report.steps,
    )
    model = module.vae
    model.eval()
    return model, summarise(model, x_all, s_all, blocks, teacher_config, started), report


def _run_epochs(
    private: nn.Module,
    optimiser: torch.optim.Optimizer,
    loader: DataLoader[tuple[Tensor, ...]],
    epochs: int,
    started: float,
) -> None:
    """The DP-SGD loop: one optimiser step per Poisson batch, each epoch logged."""
    with opacus_advice_off():
        for epoch in range(1, epochs + 1):
            totals, seen = np.zeros(3), 0
            for x_batch, s_batch in loader:
                losses = private(x_batch, s_batch)
                optimiser.zero_grad(set_to_none=True)
                losses.total.backward()
                optimiser.step()  # an empty Poisson batch still steps: noise only, as accounted
                if len(x_batch):
                    parts = (losses.reconstruction, losses.kl, losses.adversary)
                    totals += len(x_batch) * np.array([part.item() for part in parts])
                    seen += len(x_batch)
            log_epoch(epoch, epochs, totals / max(seen, 1), "adversary CE", started)


def _report(
    engine: Any,
    noise_multiplier: float,
    dp: DPConfig,
    delta: float,
    others: Sequence[NamedMechanisms],
) -> DPReport:
    """The accountant's history, with the ``others`` that read the rows, as a report."""
    training = list(engine.accountant.history)
    engine.accountant.history = [*flat(others), *training]  # all that read the rows
    with opacus_advice_off():
        epsilon = float(engine.get_epsilon(delta))
    return DPReport(
        epsilon=epsilon,
        delta=delta,
        noise_multiplier=float(noise_multiplier),
        max_grad_norm=dp.max_grad_norm,
        sample_rate=float(training[0][1]),
        steps=int(sum(entry[2] for entry in training)),
        library=f"opacus {importlib.import_module('opacus').__version__}",
        others=tuple((name, tuple(mechanisms)) for name, mechanisms in others),
    )


def flat(others: Sequence[NamedMechanisms]) -> list[Mechanism]:
    """The mechanisms of ``others`` as one accountant history (RDP composition ignores order)."""
    return [mechanism for _, mechanisms in others for mechanism in mechanisms]


def check_trainable(rows: int, config: TrainingConfig, dp: DPConfig) -> float:
    """The delta to train for; refuses too few rows for Poisson sampling at this batch size."""
    delta = dp.delta_for(rows)
    if rows < MIN_BATCHES_PER_EPOCH * config.batch_size:
        _invalid(
            f"DP-SGD needs at least {MIN_BATCHES_PER_EPOCH} x batch size = "
            f"{MIN_BATCHES_PER_EPOCH * config.batch_size} training rows, got {rows}; "
            "lower --batch-size or train on more rows"
        )
    return delta


def poisson_schedule(rows: int, config: TrainingConfig) -> tuple[float, int]:
    """(sample rate, steps) of DP-SGD as Opacus runs it: rate 1 / batches, epochs x batches."""
    batches = math.ceil(rows / config.batch_size)
    return 1 / batches, config.epochs * batches


def budget_too_small(dp: DPConfig, delta: float, config: TrainingConfig, rows: int) -> NoReturn:
    """Refuse a target no noise level reaches."""
    _invalid(
        f"--dp-epsilon {dp.epsilon:g} at delta {delta:g} is too small for {config.epochs} "
        f"epochs of batch {config.batch_size} on {rows} rows (no noise level reaches it); "
        "raise --dp-epsilon or lower --epochs"
    )


def noise_for_budget(
    epsilon: float, delta: float, sample_rate: float, steps: int, spent: Sequence[Mechanism]
) -> float | None:
    """The least noise multiplier (to 0.1%) for which ``spent`` plus this DP-SGD meet epsilon.

    RDP curves of composed mechanisms add, so the search runs over the whole history, as the
    accountant will at the end. None when even enormous noise cannot meet it (``spent`` alone
    exceeds epsilon).
    """
    accountant = import_opacus().accountants.RDPAccountant()

    def meets(noise: float) -> bool:
        accountant.history = [*spent, (noise, sample_rate, steps)]
        return float(accountant.get_epsilon(delta)) <= epsilon

    with opacus_advice_off():
        return least_fitting(meets, low=0.1, high=100.0, ratio=1.001)


def least_fitting(
    fits: Callable[[float], bool], *, low: float, high: float, ratio: float
) -> float | None:
    """The least value in [low, high] for which ``fits`` holds, to within a factor ``ratio``.

    ``fits`` must be monotone (false below some value, true above it), as "this much noise meets
    the budget" is. A geometric search: noise levels span orders of magnitude. None when even
    ``high`` does not fit.
    """
    if not fits(high):
        return None
    if fits(low):
        return low
    while high / low > ratio:
        middle = math.sqrt(low * high)
        low, high = (low, middle) if fits(middle) else (middle, high)
    return high


@contextmanager
def opacus_advice_off() -> Iterator[None]:
    """Silence three Opacus warnings that are advice, not faults.

    One asks for ``secure_mode`` (see the module docstring); one says the best RDP order lay at
    the end of Opacus' grid, so the bound is looser than it could be (never too small), which is
    routine while the noise search tries extreme noise levels; one comes from Opacus' backward
    hooks on the first layer, whose input (the data) needs no gradient.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        warnings.filterwarnings("ignore", message="Optimal order is the")
        yield


def import_opacus() -> Any:
    """Opacus, imported on first use: it is the optional ``dp`` extra."""
    try:
        return importlib.import_module("opacus")
    except ImportError:
        raise Fair4FreeError(
            ErrorCode.CONFIG_INVALID,
            "--dp-epsilon needs opacus, which is not installed: install it with "
            "pip install 'fair4free[dp]'",
        ) from None


def _invalid(detail: str) -> NoReturn:
    raise Fair4FreeError(ErrorCode.PRIVACY_SETTINGS_INVALID, detail)

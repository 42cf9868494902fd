"""From a table to a saved teacher: encode, train, write the model directory."""

from __future__ import annotations

import dataclasses
import logging
import secrets
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd
import torch

from fair4free.common.encoding import TableEncoder
from fair4free.common.schema import TableSchema
from fair4free.data_owner.dp_massaging import massage_privately
from fair4free.data_owner.dp_training import DPConfig, NamedMechanisms, train_teacher_dp
from fair4free.data_owner.fair_labels import FairLabels, massage_labels
from fair4free.data_owner.group_alignment import (
    GroupAlignment,
    PrivateAlignmentSettings,
    fit_alignment,
)
from fair4free.data_owner.holdout import SPLIT_KEY, HoldoutSplit
from fair4free.data_owner.registry import posterior_bank, save_teacher
from fair4free.data_owner.teacher import TeacherConfig
from fair4free.data_owner.training import TrainingConfig, train_teacher

logger = logging.getLogger(__name__)

LatentAlignment = Literal["groups", "none"]
LATENT_ALIGNMENTS: tuple[LatentAlignment, ...] = ("groups", "none")


def train_to_directory(
    frame: pd.DataFrame,
    schema: TableSchema,
    *,
    out: Path,
    dataset_name: str,
    latent_dim: int,
    hidden: int,
    training: TrainingConfig,
    fair_labels: FairLabels | None = None,
    split: HoldoutSplit | None = None,
    dp: DPConfig | None = None,
    latent_alignment: LatentAlignment = "groups",
) -> str:
    """Train a teacher on ``frame`` and save it to ``out``; returns the content hash.

    ``split`` records which rows of the source file were held out of ``frame`` (see
    ``holdout.py``); the release check and the Evaluate RPC find the hold-out through it.
    ``dp`` trains with DP-SGD (``dp_training.py``) and records the spent budget under
    ``privacy``; ``fair_labels`` None means massaging, in its private form under DP
    (``dp_massaging.py``), whose cost is part of the epsilon. ``latent_alignment`` "groups"
    serves group-aligned latents (``group_alignment.py``), in its private form under DP.
    """
    fair_labels = "massage" if fair_labels is None else fair_labels
    massaging: dict[str, Any] | None = None
    others: list[NamedMechanisms] = []
    if fair_labels == "massage" and dp is None:
        frame, report = massage_labels(frame, schema, seed=training.seed)
        logger.info("%s", report.summary())
        massaging = dataclasses.asdict(report)
    encoder = TableEncoder.fit(frame, schema)
    if fair_labels == "massage" and dp is not None:
        frame, private = massage_privately(frame, schema, encoder, training=training, dp=dp)
        massaging = private.record
        others.append(("label_massaging", private.mechanisms))
    private_alignment = None
    if latent_alignment == "groups" and dp is not None:
        private_alignment = PrivateAlignmentSettings()
        others.append(("group_alignment", (private_alignment.mechanism(),)))
    x, s = encoder.encode(frame)
    teacher_config = TeacherConfig(
        input_dim=encoder.width,
        target_start=encoder.target_block.start,
        n_sensitive=len(encoder.sensitive_categories),
        latent_dim=latent_dim,
        hidden=hidden,
    )
    logger.info(
        "training on %d rows, %d model columns, sensitive %r with %d values",
        x.shape[0],
        encoder.width,
        schema.sensitive,
        teacher_config.n_sensitive,
    )
    privacy: dict[str, Any] = {}
    if dp is None:
        model, summary = train_teacher(
            x, s, blocks=encoder.blocks, teacher_config=teacher_config, config=training
        )
    else:
        model, summary, dp_report = train_teacher_dp(
            x, s, blocks=encoder.blocks, teacher_config=teacher_config, config=training, dp=dp,
            others=others,
        )  # fmt: skip
        privacy = {"privacy": dp_report.metadata()}
    logger.info(
        "trained in %.0f s: reconstruction %.3f, dcor(posterior, s) %.3f",
        summary.seconds,
        summary.reconstruction,
        summary.latent_sensitive_dcor,
    )
    posterior = posterior_bank(model, x, s)
    alignment = None
    if latent_alignment == "groups":
        alignment = align_groups(
            posterior, s, teacher_config.n_sensitive, private=private_alignment, seed=training.seed
        )
    return save_teacher(
        out,
        model=model,
        encoder=encoder,
        posterior=posterior,
        s_train=s,
        training_config=training,
        summary=summary,
        dataset_name=dataset_name,
        alignment=alignment,
        extra={
            "fair_labels": fair_labels,
            "massaging": massaging,
            **({} if split is None else {SPLIT_KEY: split.to_metadata()}),
            **privacy,
        },
    )


def align_groups(
    posterior: tuple[torch.Tensor, torch.Tensor],
    s: npt.NDArray[np.int64],
    n_groups: int,
    *,
    private: PrivateAlignmentSettings | None,
    seed: int,
) -> GroupAlignment | None:
    """The group alignment of the trained teacher's posterior bank: one draw per training row.

    Private settings draw from the operating system's randomness, as DP-SGD does (dp_training's
    docstring says why); an exact alignment is seeded, so a plain run stays reproducible.
    """
    mu, logvar = (part.numpy() for part in posterior)
    rng = np.random.default_rng(secrets.randbits(63) if private else seed)
    z = mu + np.exp(0.5 * logvar) * rng.standard_normal(mu.shape)
    alignment = fit_alignment(z, s, n_groups, private=private, rng=rng)
    if alignment is not None:
        how = "exact" if private is None else f"private, noise {private.noise_multiplier:g}"
        logger.info("latent aligned across %d groups (%s)", n_groups, how)
    return alignment

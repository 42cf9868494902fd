"""The model registry: a trained teacher as a versioned, hashed directory on the owner's disk.

Besides the network, the directory holds the posterior bank: (mu, logvar) of every training row.
The daemon samples latents from it, so serving needs no access to the raw records at all. The bank
is derived from patient records and never leaves the owner; only samples drawn from it do.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from fair4free.common.artifacts import read_artifact, write_artifact
from fair4free.common.encoding import TableEncoder
from fair4free.common.errors import ErrorCode, Fair4FreeError
from fair4free.data_owner.teacher import FairVAE, TeacherConfig
from fair4free.data_owner.training import TrainingConfig, TrainingSummary

TEACHER_KIND = "fair4free-teacher"
TEACHER_FORMAT_VERSION = 2  # 2: the encoder sees s


@dataclass(frozen=True, kw_only=True)
class Teacher:
    """A loaded teacher with everything the daemon needs to answer queries."""

    model: FairVAE
    encoder: TableEncoder
    posterior_mu: npt.NDArray[np.float32]  # [n_train, latent_dim]
    posterior_logvar: npt.NDArray[np.float32]  # [n_train, latent_dim]
    model_id: str
    content_hash: str
    metadata: dict[str, Any]


def posterior_bank(
    model: FairVAE, x: npt.NDArray[np.float32], s: npt.NDArray[np.int64]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior parameters of every training row, computed once at save time."""
    with torch.no_grad():
        mu, logvar = model.encode(torch.from_numpy(x), torch.from_numpy(s))
    return mu.contiguous(), logvar.contiguous()


def save_teacher(
    directory: Path,
    *,
    model: FairVAE,
    encoder: TableEncoder,
    x_train: npt.NDArray[np.float32],
    s_train: npt.NDArray[np.int64],
    training_config: TrainingConfig,
    summary: TrainingSummary,
    dataset_name: str,
    extra: dict[str, Any] | None = None,
) -> str:
    """Write a teacher directory; returns its content hash. Refuses to overwrite."""
    mu, logvar = posterior_bank(model, x_train, s_train)
    metadata = {
        "dataset": dataset_name,
        "training_rows": int(x_train.shape[0]),
        "teacher_config": dataclasses.asdict(model.config),
        "training_config": dataclasses.asdict(training_config),
        "training_summary": dataclasses.asdict(summary),
        "encoding": encoder.to_dict(),
        **(extra or {}),
    }
    weights = {"model": model.state_dict(), "posterior": {"mu": mu, "logvar": logvar}}
    return write_artifact(
        directory,
        kind=TEACHER_KIND,
        format_version=TEACHER_FORMAT_VERSION,
        metadata=metadata,
        weights=weights,
    )


def load_teacher(directory: Path) -> Teacher:
    """Load and verify a teacher directory written by ``save_teacher``."""
    artifact = read_artifact(directory, kind=TEACHER_KIND, format_version=TEACHER_FORMAT_VERSION)
    metadata = dict(artifact.metadata)
    try:
        config = TeacherConfig(**metadata["teacher_config"])
        encoder = TableEncoder.from_dict(metadata["encoding"])
        model = FairVAE(config)
        model.load_state_dict(artifact.weights["model"])
        mu = artifact.weights["posterior"]["mu"].numpy()
        logvar = artifact.weights["posterior"]["logvar"].numpy()
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise Fair4FreeError(
            ErrorCode.ARTIFACT_CORRUPT, f"{directory}: teacher does not load: {exc}"
        ) from None
    model.eval()
    return Teacher(
        model=model,
        encoder=encoder,
        posterior_mu=mu,
        posterior_logvar=logvar,
        model_id=f"{metadata['dataset']}-{artifact.content_hash[:12]}",
        content_hash=artifact.content_hash,
        metadata=metadata,
    )

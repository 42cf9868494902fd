"""The model registry: a trained teacher as a versioned, hashed directory on the owner's disk.

Besides the network, the directory holds the posterior bank: (mu, logvar) and the sensitive group
of every training row. The daemon samples latents from it, so serving needs no access to the raw
records at all. The bank is derived from patient records and never leaves the owner; only samples
drawn from it do. A group-aligned teacher (``group_alignment.py``) also holds its alignment, and
serves latents in the aligned space; a directory without one serves the teacher's own latents.
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
from fair4free.data_owner.group_alignment import GroupAlignment
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
    posterior_sensitive: npt.NDArray[np.int64]  # [n_train]
    alignment: GroupAlignment | None
    model_id: str
    content_hash: str
    metadata: dict[str, Any]

    def served_latents(
        self, z: npt.NDArray[np.floating], rows: npt.NDArray[np.integer]
    ) -> npt.NDArray[np.float32]:
        """Latents z [n, latent_dim] of training rows ``rows`` [n], as the daemon serves them."""
        if self.alignment is None:
            return np.asarray(z, dtype=np.float32)
        return self.alignment.to_shared(z, self.posterior_sensitive[rows])

    def served_means(self) -> npt.NDArray[np.float32]:
        """Each training row's posterior mean [n_train, latent_dim] as served (Gaussian release)."""
        return self.served_latents(self.posterior_mu, np.arange(self.posterior_mu.shape[0]))

    def decode_raw(self, latents: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """Raw decoder outputs for served latents [n, latent_dim] and s indices [n]."""
        if self.alignment is None:
            return self.model.decode_raw(latents, s)
        u, groups = latents.numpy(), s.numpy()
        features = torch.from_numpy(self.alignment.feature_latents(u, groups))
        target = torch.from_numpy(self.alignment.target_latents(u))
        return self.model.decode_raw(features, s, target)


def posterior_bank(
    model: FairVAE, x: npt.NDArray[np.float32], s: npt.NDArray[np.int64]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior parameters (mu, logvar) of every training row, computed once after training."""
    with torch.no_grad():
        mu, logvar = model.encode(torch.from_numpy(x), torch.from_numpy(s))
    return mu.contiguous(), logvar.contiguous()


def save_teacher(
    directory: Path,
    *,
    model: FairVAE,
    encoder: TableEncoder,
    posterior: tuple[torch.Tensor, torch.Tensor],
    s_train: npt.NDArray[np.int64],
    training_config: TrainingConfig,
    summary: TrainingSummary,
    dataset_name: str,
    alignment: GroupAlignment | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    """Write a teacher directory; returns its content hash. Refuses to overwrite.

    ``posterior`` is the bank (``posterior_bank``) of the training rows; ``s_train`` their groups.
    """
    mu, logvar = posterior
    metadata = {
        "dataset": dataset_name,
        "training_rows": int(mu.shape[0]),
        "teacher_config": dataclasses.asdict(model.config),
        "training_config": dataclasses.asdict(training_config),
        "training_summary": dataclasses.asdict(summary),
        "encoding": encoder.to_dict(),
        "latent_alignment": "none" if alignment is None else "groups",
        **(extra or {}),
    }
    bank = {"mu": mu, "logvar": logvar, "sensitive": torch.from_numpy(s_train)}
    weights = {"model": model.state_dict(), "posterior": bank}
    if alignment is not None:
        weights["alignment"] = alignment.to_tensors()
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
        posterior = artifact.weights["posterior"]
        mu, logvar = posterior["mu"].numpy(), posterior["logvar"].numpy()
        # Directories written before the bank held groups: only an unaligned teacher reads them.
        sensitive = posterior["sensitive"].numpy() if "sensitive" in posterior else None
        alignment = None
        if "alignment" in artifact.weights:
            alignment = GroupAlignment.from_tensors(artifact.weights["alignment"])
            if sensitive is None or sensitive.shape != (mu.shape[0],):
                raise ValueError("an aligned teacher needs the group of every bank row")
            if alignment.means.shape != (config.n_sensitive, config.latent_dim):
                raise ValueError(f"alignment does not fit the teacher {config}")
            if sensitive.min() < 0 or sensitive.max() >= config.n_sensitive:
                raise ValueError("a bank row's group lies outside the sensitive categories")
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
        posterior_sensitive=np.zeros(0, np.int64) if sensitive is None else sensitive,
        alignment=alignment,
        model_id=f"{metadata['dataset']}-{artifact.content_hash[:12]}",
        content_hash=artifact.content_hash,
        metadata=metadata,
    )

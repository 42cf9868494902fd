"""The daemon's answers as pure functions of a loaded teacher: no gRPC, no I/O.

The servicer decodes a request, calls one of these, and encodes the result; unit tests call them
directly. Inputs arrive here already validated by the wire codec.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch

from fair4free.common.codec import MANIFEST_FORMAT_VERSION, ModelManifest, PrivacyGuarantee
from fair4free.common.tabular_heads import block_activations
from fair4free.data_owner.privacy_statement import LatentMode, privacy_statement, teacher_guarantee
from fair4free.data_owner.registry import Teacher


def build_manifest(
    teacher: Teacher,
    *,
    max_rows_per_call: int,
    latent_mode: LatentMode = "posterior",
    release: PrivacyGuarantee | None = None,
    evaluation_available: bool = False,
) -> ModelManifest:
    """Everything a consumer needs to distill the teacher and decode its outputs.

    ``release`` is the latent release mechanism's guarantee as of now (it grows with every row
    released), so the servicer rebuilds the manifest per call when one is configured.
    """
    guarantees = tuple(g for g in (teacher_guarantee(teacher.metadata), release) if g is not None)
    return ModelManifest(
        format_version=MANIFEST_FORMAT_VERSION,
        model_id=teacher.model_id,
        content_hash=teacher.content_hash,
        encoding=teacher.encoder.to_dict(),
        latent_dim=teacher.model.config.latent_dim,
        output_dim=teacher.model.config.input_dim,
        sensitive_marginal=tuple(teacher.encoder.sensitive_marginal),
        privacy_statement=privacy_statement(guarantees, latent_mode),
        max_rows_per_call=max_rows_per_call,
        privacy_guarantees=guarantees,
        evaluation_available=evaluation_available,
    )


def sample_latents(
    teacher: Teacher, rows: int, rng: np.random.Generator
) -> npt.NDArray[np.float32]:
    """Posterior draws z ~ q(z | x_i) for ``rows`` training rows drawn with replacement."""
    index = rng.integers(0, teacher.posterior_mu.shape[0], size=rows)
    mu = teacher.posterior_mu[index]  # [rows, latent_dim]
    std = np.exp(0.5 * teacher.posterior_logvar[index])
    noise = rng.standard_normal(mu.shape).astype(np.float32)
    latents: npt.NDArray[np.float32] = (mu + noise * std).astype(np.float32)
    return latents


def decode(
    teacher: Teacher, latents: npt.NDArray[np.float32], sensitive: npt.NDArray[np.int64]
) -> npt.NDArray[np.float32]:
    """Decoder outputs in model space: numeric values and per-block category probabilities."""
    with torch.no_grad():
        raw = teacher.model.decode_raw(torch.from_numpy(latents), torch.from_numpy(sensitive))
        outputs: npt.NDArray[np.float32] = block_activations(raw, teacher.encoder.blocks).numpy()
    return outputs

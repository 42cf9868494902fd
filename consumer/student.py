"""The distilled student as a self-contained local generator: sample, save, load.

A student directory holds its latent model, its decoder, the owner's table encoding (from the
manifest) and p(s). Generating rows needs nothing else: no server, no further queries.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from fair4free.common.artifacts import read_artifact, write_artifact
from fair4free.common.encoding import TableEncoder
from fair4free.common.errors import ErrorCode, Fair4FreeError
from fair4free.common.tabular_heads import block_activations
from fair4free.consumer.student_models import LatentKernelDensity, StudentConfig, StudentDecoder

STUDENT_KIND = "fair4free-student"
STUDENT_FORMAT_VERSION = 2  # 2: kernel-density latent model
SAMPLE_CHUNK_ROWS = 50_000


@dataclass(frozen=True, kw_only=True)
class Student:
    """A distilled generator of fair synthetic rows in the owner's original schema."""

    config: StudentConfig
    latent_model: LatentKernelDensity
    decoder: StudentDecoder
    encoder: TableEncoder
    sensitive_marginal: tuple[float, ...]
    metadata: Mapping[str, Any]

    def sample(self, rows: int, *, seed: int | None = None, sensitive: Any = None) -> pd.DataFrame:
        """``rows`` synthetic rows.

        The sensitive value of each row is drawn from p(s) independently of its latent, or fixed
        to ``sensitive`` (a value of the sensitive column) when given; categories are sampled
        from the decoder's probabilities, so rare categories keep their share.
        """
        if rows < 1:
            raise Fair4FreeError(ErrorCode.CONFIG_INVALID, f"rows must be at least 1, got {rows}")
        rng = np.random.default_rng(seed)
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        fixed = self._sensitive_index(sensitive)
        frames = []
        for start in range(0, rows, SAMPLE_CHUNK_ROWS):
            count = min(SAMPLE_CHUNK_ROWS, rows - start)
            if fixed is None:
                s = rng.choice(len(self.sensitive_marginal), size=count, p=self.sensitive_marginal)
            else:
                s = np.full(count, fixed)
            s = s.astype(np.int64)
            with torch.no_grad():
                z = self.latent_model.sample(count, generator)
                raw = self.decoder(z, torch.from_numpy(s))
                x = block_activations(raw, self.encoder.blocks).numpy()
            frames.append(self.encoder.decode(x, s, rng=rng))
        return pd.concat(frames, ignore_index=True)

    def _sensitive_index(self, value: Any) -> int | None:
        if value is None:
            return None
        categories = [str(c) for c in self.encoder.sensitive_categories]
        if str(value) not in categories:
            raise Fair4FreeError(
                ErrorCode.CONFIG_INVALID,
                f"sensitive value {value!r} is not one of {', '.join(categories)}",
            )
        return categories.index(str(value))

    def save(self, directory: Path) -> str:
        """Write the student directory atomically; returns its content hash."""
        metadata = {
            **self.metadata,
            "student_config": dataclasses.asdict(self.config),
            "encoding": self.encoder.to_dict(),
            "sensitive_marginal": list(self.sensitive_marginal),
        }
        weights = {
            "latent_model": self.latent_model.state_dict(),
            "decoder": self.decoder.state_dict(),
        }
        return write_artifact(
            directory,
            kind=STUDENT_KIND,
            format_version=STUDENT_FORMAT_VERSION,
            metadata=metadata,
            weights=weights,
        )

    @classmethod
    def load(cls, directory: Path) -> Student:
        """Load and verify a student directory written by ``save``."""
        artifact = read_artifact(
            directory, kind=STUDENT_KIND, format_version=STUDENT_FORMAT_VERSION
        )
        metadata = dict(artifact.metadata)
        try:
            config = StudentConfig(**metadata.pop("student_config"))
            encoder = TableEncoder.from_dict(metadata.pop("encoding"))
            marginal = tuple(float(p) for p in metadata.pop("sensitive_marginal"))
            latent_model = LatentKernelDensity(config)
            latent_model.load_state_dict(artifact.weights["latent_model"])
            decoder = StudentDecoder(config)
            decoder.load_state_dict(artifact.weights["decoder"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise Fair4FreeError(
                ErrorCode.ARTIFACT_CORRUPT, f"{directory}: student does not load: {exc}"
            ) from None
        latent_model.eval()
        decoder.eval()
        return cls(
            config=config,
            latent_model=latent_model,
            decoder=decoder,
            encoder=encoder,
            sensitive_marginal=marginal,
            metadata=metadata,
        )

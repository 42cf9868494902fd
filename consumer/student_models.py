"""The student networks: a latent generator (noise -> z) and a decoder (z, s -> model vector).

Both are trained without a single raw record: the generator against batches of teacher latents,
the decoder against the teacher's decoder answers for latents the consumer chose.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fair4free.common.nn_blocks import mlp


@dataclass(frozen=True, kw_only=True)
class StudentConfig:
    """Shapes of both student networks; saved with the student so it can be rebuilt."""

    latent_dim: int
    output_dim: int
    n_sensitive: int
    noise_dim: int = 16
    generator_hidden: int = 128
    generator_depth: int = 3
    decoder_hidden: int = 96
    decoder_depth: int = 2

    def __post_init__(self) -> None:
        sizes = (self.latent_dim, self.output_dim, self.noise_dim, self.generator_hidden)
        if min(sizes) < 1 or self.n_sensitive < 2:
            raise ValueError(f"invalid student shape: {self}")


class LatentGenerator(nn.Module):
    """Maps standard normal noise to the teacher's latent distribution."""

    def __init__(self, config: StudentConfig) -> None:
        super().__init__()
        self.config = config
        self.net = mlp(
            config.noise_dim, config.generator_hidden, config.generator_depth, config.latent_dim
        )

    def forward(self, noise: Tensor) -> Tensor:
        """Latents [n, latent_dim] for noise [n, noise_dim]."""
        return self.net(noise)  # type: ignore[no-any-return]

    def sample(self, rows: int, generator: torch.Generator | None = None) -> Tensor:
        """Fresh latents from fresh noise."""
        noise = torch.randn(rows, self.config.noise_dim, generator=generator)
        return self(noise)  # type: ignore[no-any-return]


class StudentDecoder(nn.Module):
    """A smaller copy of the teacher's decoder behaviour: raw outputs for (z, s)."""

    def __init__(self, config: StudentConfig) -> None:
        super().__init__()
        self.config = config
        self.net = mlp(
            config.latent_dim + config.n_sensitive,
            config.decoder_hidden,
            config.decoder_depth,
            config.output_dim,
        )

    def forward(self, z: Tensor, s: Tensor) -> Tensor:
        """Raw outputs [n, output_dim] for latents z [n, latent_dim] and s indices [n]."""
        s_onehot = F.one_hot(s, self.config.n_sensitive).to(z.dtype)  # [n, n_sensitive]
        return self.net(torch.cat([z, s_onehot], dim=1))  # type: ignore[no-any-return]

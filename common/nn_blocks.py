"""Small network building blocks that both the owner's teacher and the consumer's student use."""

from __future__ import annotations

from torch import nn


def mlp(in_dim: int, hidden: int, depth: int, out_dim: int) -> nn.Sequential:
    """A plain multilayer perceptron with SiLU activations and no normalisation layers.

    No BatchNorm on purpose: it mixes rows within a batch, which DP-SGD's per-sample gradients
    cannot allow, and it makes a decoder's answer for one row depend on the other rows sent with it.
    """
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.SiLU()]
        width = hidden
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)

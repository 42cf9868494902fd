"""How a network's raw output vector becomes a table row, and how far it is from a target row.

The model vector is a concatenation of blocks (see ``encoding.Block``): one value per numeric
column, one slot per category for categorical columns and missing-value indicators. Teacher and
student decoders share these two functions, so the student learns exactly what the teacher emits.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from fair4free.common.encoding import Block


def block_activations(raw: Tensor, blocks: Sequence[Block]) -> Tensor:
    """Raw outputs [n, width] -> model-space rows: numeric as is, each one-hot block a softmax."""
    parts = []
    for block in blocks:
        piece = raw[:, block.start : block.stop]
        parts.append(piece if block.kind == "numeric" else F.softmax(piece, dim=1))
    return torch.cat(parts, dim=1)


def reconstruction_loss(raw: Tensor, target: Tensor, blocks: Sequence[Block]) -> Tensor:
    """Per-row loss summed over blocks: squared error on numerics, soft cross-entropy on blocks.

    ``target`` holds one-hot rows (real data) or probabilities (teacher answers); soft
    cross-entropy covers both, so the student distils the teacher's full categorical distribution.
    """
    total = raw.new_zeros(())
    for block in blocks:
        piece = raw[:, block.start : block.stop]
        wanted = target[:, block.start : block.stop]
        if block.kind == "numeric":
            total = total + (piece - wanted).pow(2).sum(1).mean()
        else:
            total = total - (wanted * F.log_softmax(piece, dim=1)).sum(1).mean()
    return total

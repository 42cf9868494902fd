"""Per-row L2 clipping: what bounds one record's influence in every Gaussian mechanism here.

The latent release (``latent_release.py``) clips each released posterior mean, the group
alignment (``group_alignment.py``) each posterior draw that enters its moments; the noise of both
is calibrated to the radius, so both must clip the same way.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def clip_rows(rows: npt.NDArray[np.floating], radius: float) -> npt.NDArray[np.float64]:
    """Each row scaled down to L2 norm at most ``radius`` (rows inside it are unchanged)."""
    values = rows.astype(np.float64)
    norms = np.linalg.norm(values, axis=1, keepdims=True)  # [rows, 1]
    scale = np.minimum(1.0, radius / np.maximum(norms, np.finfo(np.float64).tiny))
    clipped: npt.NDArray[np.float64] = values * scale
    return clipped

"""The quantile transform of one numeric column onto normal scores, and its faithful inverse."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from statistics import NormalDist

import numpy as np
import numpy.typing as npt

from fair4free.common.stored_state import corrupt, fields, float_list

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, kw_only=True)
class QuantileNormal:
    """A monotone map of one numeric column onto normal scores, and its inverse.

    Models learn a bounded, bell-shaped value more easily than a skewed raw one. Each knot holds
    the share of rows equal to it, the interval [``below``, ``upto``] of the column's CDF, which
    maps to an interval of normal scores; a knot's value maps to the score of its interval's
    middle (``scores``). Decoding inverts the CDF: every score within a knot's interval decodes
    to that knot, and only scores between two knots' intervals (where values lie that are not
    knots) interpolate linearly. So a value many rows share decodes wherever the model puts it in
    that value's range: a model's blurred output for capital-gain, 0 for 92% of Adult, decodes to
    0, where interpolating between knots' middles gave values no row has (most synthetic rows got
    a capital gain, and a classifier trained on them missed real positives without one).

    ``below`` and ``upto`` are empty for an encoding written before they existed (version 1):
    each knot then holds no interval and decoding interpolates between the middles, as it did.
    """

    knots: tuple[float, ...]
    scores: tuple[float, ...]
    fill: float
    below: tuple[float, ...] = ()  # share of rows less than each knot
    upto: tuple[float, ...] = ()  # share of rows at most each knot

    @classmethod
    def fit(cls, values: FloatArray, n_quantiles: int) -> QuantileNormal:
        """Fit on one column's observed values (missing ones are imputed, never fitted)."""
        ordered = np.sort(values)
        distinct = _choose_knots(ordered, n_quantiles)
        below = np.searchsorted(ordered, distinct, side="left") / len(ordered)
        upto = np.searchsorted(ordered, distinct, side="right") / len(ordered)
        normal = NormalDist()
        scores = np.array([normal.inv_cdf(p) for p in (below + upto) / 2.0], dtype=np.float32)
        for i in range(1, len(scores)):  # float32 rounding may tie neighbours in far tails
            if scores[i] <= scores[i - 1]:
                scores[i] = np.nextafter(scores[i - 1], np.float32(np.inf))
        return cls(
            knots=tuple(float(k) for k in distinct),
            scores=tuple(float(z) for z in scores),
            fill=float(np.median(ordered)),
            below=tuple(float(p) for p in below),
            upto=tuple(float(p) for p in upto),
        )

    @cached_property
    def _edges(self) -> tuple[FloatArray, FloatArray]:
        """Each knot's interval of scores (lower, upper), holding its middle score.

        The first knot's extends to -inf, the last's to +inf; a boundary between two knots is
        clipped to lie between their middles, which float32 rounding of the middles could
        otherwise cross in the far tails.
        """
        middles = np.asarray(self.scores)
        if not self.below:
            return middles, middles
        normal = NormalDist()
        lower, upper = np.empty_like(middles), np.empty_like(middles)
        lower[0], upper[-1] = -np.inf, np.inf
        for k in range(len(middles) - 1):
            upper[k] = min(max(normal.inv_cdf(self.upto[k]), middles[k]), middles[k + 1])
            lower[k + 1] = min(max(normal.inv_cdf(self.below[k + 1]), upper[k]), middles[k + 1])
        return lower, upper

    def forward(self, values: FloatArray) -> FloatArray:
        """Map values to normal scores; values beyond the knots get the end scores."""
        knots, middles = np.asarray(self.knots), np.asarray(self.scores)
        lower, upper = self._edges
        k = (np.searchsorted(knots, values, side="right") - 1).clip(0, len(knots) - 1)
        inner = (k < len(knots) - 1) & (values > knots[k])  # strictly between knots k and k + 1
        nxt = np.where(inner, k + 1, k)
        t = np.where(inner, (values - knots[k]) / np.where(inner, knots[nxt] - knots[k], 1.0), 0.0)
        start, stop = np.where(inner, upper[k], 0.0), np.where(inner, lower[nxt], 0.0)
        mapped: FloatArray = np.where(inner, start + t.clip(0.0, 1.0) * (stop - start), middles[k])
        return mapped

    def inverse(self, scores: FloatArray) -> FloatArray:
        """Map normal scores back to values: a knot's interval to the knot, gaps linearly."""
        knots = np.asarray(self.knots)
        lower, upper = self._edges
        k = (np.searchsorted(lower, scores, side="right") - 1).clip(0, len(knots) - 1)
        inner = (k < len(knots) - 1) & (scores > upper[k])  # in the gap after knot k
        nxt = np.where(inner, k + 1, k)
        start, stop = np.where(inner, upper[k], 0.0), np.where(inner, lower[nxt], 1.0)
        t = np.where(
            inner & (stop > start),
            (scores - start) / np.where(stop > start, stop - start, 1.0),
            0.0,
        )
        decoded: FloatArray = knots[k] + t.clip(0.0, 1.0) * (knots[nxt] - knots[k])
        return decoded

    def to_dict(self) -> dict[str, object]:
        """JSON-safe state: the knots, their scores and (from version 2) their CDF shares."""
        state: dict[str, object] = {
            "knots": list(self.knots), "scores": list(self.scores), "fill": self.fill
        }  # fmt: skip
        if self.below:
            state.update(below=list(self.below), upto=list(self.upto))
        return state

    @classmethod
    def from_dict(cls, data: object, where: str, *, with_shares: bool = True) -> QuantileNormal:
        """Rebuild from ``to_dict`` output, naming the damaged field on failure.

        ``with_shares`` False reads a state written before the CDF shares existed.
        """
        shares = ("below", "upto") if with_shares else ()
        obj = fields(data, where, ("knots", "scores", "fill", *shares))
        knots = float_list(obj["knots"], f"{where}.knots")
        scores = float_list(obj["scores"], f"{where}.scores")
        fill = float_list([obj["fill"]], f"{where}.fill")[0]
        if not knots or len(knots) != len(scores):
            raise corrupt(f"{where}.scores", "must match the knots one to one")
        for name, seq in (("knots", knots), ("scores", scores)):
            if any(b <= a for a, b in zip(seq, seq[1:], strict=False)):
                raise corrupt(f"{where}.{name}", "must be strictly increasing")
        below, upto = (
            (float_list(obj[name], f"{where}.{name}") for name in shares) if shares else ([], [])
        )
        if shares and not _cdf_intervals(below, upto, len(knots)):
            raise corrupt(
                f"{where}.upto", "must give each knot a share interval within [0, 1], in order"
            )
        return cls(
            knots=tuple(knots),
            scores=tuple(scores),
            fill=fill,
            below=tuple(below),
            upto=tuple(upto),
        )


def _choose_knots(ordered: FloatArray, n_knots: int) -> FloatArray:
    """Up to ``n_knots`` observed values of a sorted column to place the knots at.

    Every distinct value if there are at most ``n_knots``. Otherwise a value holding a share of
    the rows that would take up a quantile level of its own (a spike: capital-gain is 0 in 92% of
    Adult) becomes a knot, and the knots left are evenly spaced quantiles of the other rows,
    their minimum and maximum included; repeated until no value that remains is a spike.
    Quantiles of all rows collapse on a spike: capital-gain got 7 distinct knots, 6 for its
    nonzero tenth, which then decoded coarsely; now it gets 64.
    """
    spikes: FloatArray = np.empty(0)
    while True:
        rest = ordered[~np.isin(ordered, spikes)]
        distinct, counts = np.unique(rest, return_counts=True)
        budget = n_knots - len(spikes)
        if len(distinct) <= budget:
            return np.union1d(spikes, distinct)
        heavy = distinct[counts * budget >= len(rest)]
        if len(heavy) == 0 or budget - len(heavy) < 2:
            levels = np.linspace(0.0, 1.0, budget)
            return np.union1d(spikes, np.quantile(rest, levels, method="inverted_cdf"))
        spikes = np.union1d(spikes, heavy)


def _cdf_intervals(below: list[float], upto: list[float], n: int) -> bool:
    """Whether ``below``/``upto`` are n ordered, non-overlapping intervals of [0, 1]."""
    if len(below) != n or len(upto) != n:
        return False
    bounds = [p for pair in zip(below, upto, strict=True) for p in pair]
    ordered = all(b >= a for a, b in zip(bounds, bounds[1:], strict=False))
    return (
        ordered
        and bounds[0] >= 0.0
        and bounds[-1] <= 1.0
        and all(u > b for b, u in zip(below, upto, strict=True))
    )

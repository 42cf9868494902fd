"""Fair training labels by massaging (Kamiran and Calders, KAIS 33, 2012).

Kamiran and Calders, "Data preprocessing techniques for classification without discrimination".
Why: the fairness that matters is that of a model trained on the synthetic rows and used on real
people. Making the latent independent of s is not enough on its own: on Adult, proxies of sex
(relationship, marital status) still carry the historical bias into the labels a classifier
learns (measured: real-test DPR 0.41-0.61 from a teacher with an independent latent). Massaging
changes the fewest labels that make the positive rate equal in every sensitive group: a ranker
scores each training row, and within each group the highest-scored negatives are promoted (or the
lowest-scored positives demoted) until the group's rate equals the overall rate. The teacher then
learns these labels, so every synthetic row carries them. This happens on premises, before
training; the number of changed labels is recorded with the model. Under DP-SGD the ranker and
the rates must themselves be private: ``dp_massaging.py``.

Massaging the generated rows instead, after a DP teacher, was measured and does not work: on
Adult at epsilon 8 it moved the real-test DPR of prior rows from 0.50-0.55 to 0.61-0.69 (our
reading, not measured: the DP decoder barely reproduces the link between s and its proxies, so
relabelled synthetic rows teach a classifier little about the real proxies it will meet).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier

from fair4free.common.schema import ColumnKind, TableSchema

FairLabels = Literal["massage", "none"]
_MAX_BOOSTER_CATEGORIES = 250


@dataclass(frozen=True, kw_only=True)
class MassagingReport:
    """How many labels changed, and each group's positive rate before and after."""

    relabelled: int
    rows: int
    rates_before: dict[str, float]
    rates_after: dict[str, float]

    def summary(self, what: str = "labels") -> str:
        """One log line: how many changed and the group rates before and after."""
        return (
            f"massaged {self.relabelled} of {self.rows} {what}: "
            f"positive rates {self.rates_before} -> {self.rates_after}"
        )


def massage_labels(
    frame: pd.DataFrame, schema: TableSchema, *, seed: int
) -> tuple[pd.DataFrame, MassagingReport]:
    """A copy of ``frame`` whose target has the same positive rate in every sensitive group."""
    positive = (frame[schema.target] == schema.positive_class).to_numpy()
    groups = frame[schema.sensitive].astype(str).to_numpy()
    if positive.all() or not positive.any() or len(np.unique(groups)) < 2:
        # Every group already has the same rate (one label, or one group): nothing to rank.
        return frame.copy(), MassagingReport(
            relabelled=0,
            rows=len(frame),
            rates_before=_rates(positive, groups),
            rates_after=_rates(positive, groups),
        )
    scores = _ranker_scores(frame, schema, positive, seed)
    overall = positive.mean()
    massaged = positive.copy()
    for group in np.unique(groups):
        members = np.flatnonzero(groups == group)
        wanted = int(round(overall * len(members)))
        have = int(massaged[members].sum())
        if wanted > have:  # promote the most promising negatives
            negatives = members[~massaged[members]]
            order = np.argsort(-scores[negatives], kind="stable")
            massaged[negatives[order[: wanted - have]]] = True
        elif wanted < have:  # demote the least certain positives
            positives = members[massaged[members]]
            order = np.argsort(scores[positives], kind="stable")
            massaged[positives[order[: have - wanted]]] = False
    return with_labels(frame, schema, massaged), MassagingReport(
        relabelled=int((massaged != positive).sum()),
        rows=len(frame),
        rates_before=_rates(positive, groups),
        rates_after=_rates(massaged, groups),
    )


def with_labels(frame: pd.DataFrame, schema: TableSchema, positive: np.ndarray) -> pd.DataFrame:
    """A copy of ``frame`` whose binary target is the positive class exactly where ``positive``."""
    negative_class = next(
        value for value in schema.target_column.categories if value != schema.positive_class
    )
    out = frame.copy()
    labels = np.where(positive, schema.positive_class, negative_class)
    out[schema.target] = pd.Series(labels, index=frame.index).astype(frame[schema.target].dtype)
    return out


def _ranker_scores(
    frame: pd.DataFrame, schema: TableSchema, positive: np.ndarray, seed: int
) -> np.ndarray:
    """P(positive | features, s) from a gradient-boosted ranker fitted on the table itself."""
    features = frame.drop(columns=[schema.target])
    for column in schema.columns:
        if column.name in features and column.kind is ColumnKind.CATEGORICAL:
            values = features[column.name].astype(str).astype("category")
            # The booster bins a categorical feature into at most 255 codes; wider ones go in
            # as ordinal codes, which still let it split them.
            wide = len(values.cat.categories) > _MAX_BOOSTER_CATEGORIES
            features[column.name] = values.cat.codes if wide else values
    ranker = HistGradientBoostingClassifier(random_state=seed, categorical_features="from_dtype")
    ranker.fit(features, positive)
    scores: np.ndarray = ranker.predict_proba(features)[:, 1]
    return scores


def _rates(positive: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    return {str(g): round(float(positive[groups == g].mean()), 4) for g in np.unique(groups)}

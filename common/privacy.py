"""How much synthetic rows give away about the records their generator was trained on.

Every score compares the training rows with a hold-out of real rows the generator never saw,
because a synthetic row close to a real record is no leak when unseen records are as close: the
question is whether training left a mark. The distance to closest record (DCR) ratio asks it
directly: are synthetic rows closer to the training rows than hold-out rows are? Both sets are
measured against the same reference, every training row (up to ``max_reference_rows``), so the
ratio does not depend on how many training and hold-out rows there are: a generator that copies
its training rows scores 0 however few of them the hold-out matches in number. The comparisons
that set synthetic rows between training and hold-out rows (``closer_to_train_share``) and the
attack need as many rows on both sides, so for them the training rows are sampled down to the
hold-out's size (seeded); that dilutes them when the training rows far outnumber the hold-out
(a copy of every Adult training row: closer-to-train share 0.565, attack AUC 0.532). The
hold-out is split in two for the attack (a reference half for the population's density, a
non-member half to attack). Distances live in the one-hot + scaled feature space of
``metrics.feature_space``, fitted on the sampled training and hold-out rows together; exact copies
compare the original values. Every score is also given per sensitive group, where a rare group's
records are the likeliest to be memorised. ``PrivacyConfig.max_rows`` bounds the quadratic cost.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from fair4free.common.errors import ErrorCode, Fair4FreeError
from fair4free.common.metrics import category_labels, conform_frame, feature_space
from fair4free.common.privacy_attack import (
    DEFAULT_PROJECTION_DIMS,
    MIN_NON_MEMBERS_FOR_TPR,
    attack_auc,
    density_ratio_scores,
    tpr_at_fpr,
)
from fair4free.common.privacy_distances import (
    closer_share,
    distance_ratio,
    exact_copies,
    nearest_distances,
)

DEFAULT_MAX_ROWS = 5000
DEFAULT_MAX_REFERENCE_ROWS = 100_000
DEFAULT_MIN_GROUP_ROWS = 20
MISSING_GROUP = "(missing)"
"""The group of rows whose sensitive value is missing; they still count in the overall scores."""

_SYNTHETIC_SCORES = (
    "dcr_train_median",
    "dcr_holdout_median",
    "holdout_dcr_train_median",
    "dcr_ratio",
    "closer_to_train_share",
    "nndr_synthetic_median",
    "exact_copy_share",
)
_HOLDOUT_SCORES = ("nndr_holdout_median", "holdout_copy_share", "holdout_dcr_train_median")
_ATTACK_SCORES = ("mia_auc", "mia_tpr_at_1pct_fpr")


@dataclass(frozen=True, kw_only=True)
class PrivacyConfig:
    """Settings of one privacy evaluation, checked once when made."""

    seed: int = 0
    max_rows: int = DEFAULT_MAX_ROWS
    """At most this many synthetic, training and hold-out rows: distances cost their product."""
    max_reference_rows: int = DEFAULT_MAX_REFERENCE_ROWS
    """At most this many training rows as the reference of the DCR ratio (all of them, usually)."""
    projection_dims: int = DEFAULT_PROJECTION_DIMS
    min_group_rows: int = DEFAULT_MIN_GROUP_ROWS
    """A group with fewer rows of a kind gets no score from them: one row would be an anecdote."""

    def __post_init__(self) -> None:
        for name in ("max_rows", "max_reference_rows", "projection_dims", "min_group_rows"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                detail = f"{name} must be a positive integer, got {value!r}"
                raise Fair4FreeError(ErrorCode.CONFIG_INVALID, detail)
        if self.max_rows < 2 * self.min_group_rows:
            detail = (
                f"max_rows ({self.max_rows}) must be at least twice min_group_rows "
                f"({self.min_group_rows}), to split the hold-out for the attack"
            )
            raise Fair4FreeError(ErrorCode.CONFIG_INVALID, detail)


@dataclass(frozen=True, kw_only=True)
class PrivacyScores:
    """The privacy scores of one set of rows (all of them, or one sensitive group's).

    A score is NaN when it cannot be computed here, and ``undefined`` says why.
    """

    dcr_train_median: float
    """Median distance from a synthetic row to its closest training row."""
    dcr_holdout_median: float
    """Median distance from a synthetic row to its closest (sampled) hold-out row."""
    holdout_dcr_train_median: float
    """Median distance from a hold-out row to its closest training row: the baseline."""
    dcr_ratio: float
    """dcr_train_median / holdout_dcr_train_median; below 1, synthetic rows hug the training
    rows more closely than unseen real records do."""
    closer_to_train_share: float
    """Share of synthetic rows nearer a training row than any hold-out row; 0.5 is no leak."""
    nndr_synthetic_median: float
    """Median nearest / second-nearest training-row distance of the synthetic rows."""
    nndr_holdout_median: float
    """The same for hold-out rows: what unseen real records score."""
    exact_copy_share: float
    """Share of synthetic rows equal, in every original value, to a training row."""
    holdout_copy_share: float
    """Share of hold-out rows equal to a training row: how often records coincide by chance."""
    mia_auc: float
    mia_tpr_at_1pct_fpr: float
    n_synthetic: int
    n_holdout: int
    n_members: int
    n_non_members: int
    undefined: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A plain mapping for JSON; an undefined score (NaN) is None, as strict JSON needs."""
        return {name: _plain(value) for name, value in asdict(self).items()}


@dataclass(frozen=True, kw_only=True)
class PrivacyReport:
    """The scores of all rows and of each sensitive group, with what was sampled to get them."""

    overall: PrivacyScores
    groups: Mapping[str, PrivacyScores]
    sensitive: str
    target: str | None
    config: PrivacyConfig
    rows_given: Mapping[str, int]
    rows_used: Mapping[str, int]

    @property
    def subsampled(self) -> bool:
        """Whether a table lost rows to ``max_rows``, or training rows to the hold-out's size."""
        used = dict(self.rows_used, train=self.rows_used["train_for_distances"])
        return any(used[name] < given for name, given in self.rows_given.items())

    def to_dict(self) -> dict[str, Any]:
        """A plain mapping for JSON: settings, row counts, and the scores overall and per group."""
        return {
            "sensitive": self.sensitive,
            "target": self.target,
            "config": asdict(self.config),
            "rows_given": dict(self.rows_given),
            "rows_used": dict(self.rows_used),
            "subsampled": self.subsampled,
            "overall": self.overall.to_dict(),
            "groups": {name: scores.to_dict() for name, scores in self.groups.items()},
        }


@dataclass(frozen=True)
class _RowScores:
    """Every per-row quantity, with each row's group, so any set of groups is a mask away."""

    to_train: NDArray[np.float64]
    to_sampled_train: NDArray[np.float64]
    to_holdout: NDArray[np.float64]
    holdout_to_train: NDArray[np.float64]
    synthetic_nndr: NDArray[np.float64]
    synthetic_copy: NDArray[np.bool_]
    synthetic_group: NDArray[np.object_]
    holdout_nndr: NDArray[np.float64]
    holdout_copy: NDArray[np.bool_]
    holdout_group: NDArray[np.object_]
    attack_score: NDArray[np.float64]
    is_member: NDArray[np.bool_]
    candidate_group: NDArray[np.object_]


def evaluate_privacy(
    synthetic: pd.DataFrame,
    train: pd.DataFrame,
    holdout: pd.DataFrame,
    *,
    sensitive: str,
    target: str | None = None,
    config: PrivacyConfig | None = None,
) -> PrivacyReport:
    """Score what ``synthetic`` reveals about ``train``, against ``holdout`` as the baseline.

    ``holdout`` must be real rows from the same population that the generator never saw, such
    as the test split. ``target`` is only checked to be there: it enters the distances like any
    other column. Rows are drawn with ``config.seed``: at most ``max_rows`` synthetic rows; the
    hold-out and the training rows for distances and the attack are the same number n =
    min(|train|, |holdout|, max_rows); the hold-out splits into n // 2 reference rows and the rest
    as non-members, against as many members from the sampled training rows. The DCR ratio and the
    distance ratios measure synthetic and hold-out rows alike against every training row (at most
    ``max_reference_rows``). Exact copies are
    looked up among all training rows, for the synthetic and hold-out rows alike: by hashing,
    which costs time linear in the rows, not quadratic like the distances.
    """
    config = config or PrivacyConfig()
    tables = {"synthetic": synthetic, "train": train, "holdout": holdout}
    _check_tables(tables, sensitive=sensitive, target=target, min_rows=config.min_group_rows)
    columns = list(train.columns)
    rng = np.random.default_rng(config.seed)
    synthetic = _shuffled(synthetic[columns], config.max_rows, rng)
    n = min(len(train), len(holdout), config.max_rows)
    train_rows, holdout_rows = _shuffled(train, n, rng), _shuffled(holdout[columns], n, rng)
    reference = _shuffled(train, config.max_reference_rows, rng)

    space = feature_space(pd.concat([train_rows, holdout_rows]), columns=columns)
    s_x = space.transform(synthetic, table="the synthetic table")
    t_x = space.transform(train_rows, table="the train table")
    h_x = space.transform(holdout_rows, table="the holdout table")
    r_x = space.transform(reference, table="the train table")
    conformed = {
        name: conform_frame(frame, space.kinds, table=f"the {name} table")
        for name, frame in (("synthetic", synthetic), ("train", train), ("holdout", holdout_rows))
    }

    n_reference = n // 2
    non_members = h_x[n_reference:]
    members = t_x[: len(non_members)]
    candidates = np.vstack([members, non_members])
    synthetic_to_train = nearest_distances(s_x, r_x, k=2)
    holdout_to_train = nearest_distances(h_x, r_x, k=2)
    holdout_groups = _groups(holdout_rows, sensitive)
    rows = _RowScores(
        to_train=synthetic_to_train[:, 0],
        to_sampled_train=nearest_distances(s_x, t_x, k=1)[:, 0],
        to_holdout=nearest_distances(s_x, h_x, k=1)[:, 0],
        holdout_to_train=holdout_to_train[:, 0],
        synthetic_nndr=distance_ratio(synthetic_to_train),
        synthetic_copy=exact_copies(conformed["synthetic"], conformed["train"]),
        synthetic_group=_groups(synthetic, sensitive),
        holdout_nndr=distance_ratio(holdout_to_train),
        holdout_copy=exact_copies(conformed["holdout"], conformed["train"]),
        holdout_group=holdout_groups,
        attack_score=density_ratio_scores(
            s_x, h_x[:n_reference], candidates, dims=config.projection_dims
        ),
        is_member=np.arange(len(candidates)) < len(members),
        candidate_group=np.concatenate(
            [_groups(train_rows.iloc[: len(members)], sensitive), holdout_groups[n_reference:]]
        ),
    )
    names = {*rows.synthetic_group, *rows.holdout_group, *rows.candidate_group}
    return PrivacyReport(
        overall=_summarise(rows, None, config.min_group_rows),
        groups={name: _summarise(rows, name, config.min_group_rows) for name in sorted(names)},
        sensitive=sensitive,
        target=target,
        config=config,
        rows_given={name: len(frame) for name, frame in tables.items()},
        rows_used={
            "synthetic": len(synthetic),
            "train": len(train),
            "holdout": n,
            "train_for_distances": n,
            "train_for_dcr": len(reference),
            "attack_reference": n_reference,
            "attack_members": len(members),
            "attack_non_members": len(non_members),
        },
    )


def _summarise(rows: _RowScores, group: str | None, min_rows: int) -> PrivacyScores:
    """Aggregate the per-row quantities of one group (``None``: all rows) into its scores."""
    synthetic = _members_of(rows.synthetic_group, group)
    holdout = _members_of(rows.holdout_group, group)
    candidates = _members_of(rows.candidate_group, group)
    is_member = rows.is_member[candidates]
    n_members, n_non_members = int(is_member.sum()), int((~is_member).sum())
    scores = dict.fromkeys((*_SYNTHETIC_SCORES, *_HOLDOUT_SCORES, *_ATTACK_SCORES), math.nan)
    undefined: dict[str, str] = {}

    def enough(count: int, rows: str, names: tuple[str, ...]) -> bool:
        if count >= min_rows:
            return True
        undefined.update(dict.fromkeys(names, f"{rows}; the least is {min_rows}"))
        return False

    n_synthetic, n_holdout = int(synthetic.sum()), int(holdout.sum())
    if enough(n_synthetic, f"{n_synthetic} synthetic rows", _SYNTHETIC_SCORES):
        to_train, to_holdout = rows.to_train[synthetic], rows.to_holdout[synthetic]
        scores["dcr_train_median"] = float(np.median(to_train))
        scores["dcr_holdout_median"] = float(np.median(to_holdout))
        scores["closer_to_train_share"] = closer_share(rows.to_sampled_train[synthetic], to_holdout)
        scores["nndr_synthetic_median"] = float(np.median(rows.synthetic_nndr[synthetic]))
        scores["exact_copy_share"] = float(np.mean(rows.synthetic_copy[synthetic]))
    if enough(n_holdout, f"{n_holdout} hold-out rows", _HOLDOUT_SCORES):
        scores["nndr_holdout_median"] = float(np.median(rows.holdout_nndr[holdout]))
        scores["holdout_copy_share"] = float(np.mean(rows.holdout_copy[holdout]))
        scores["holdout_dcr_train_median"] = float(np.median(rows.holdout_to_train[holdout]))
    baseline = scores["holdout_dcr_train_median"]
    if baseline > 0.0 and not math.isnan(scores["dcr_train_median"]):
        scores["dcr_ratio"] = scores["dcr_train_median"] / baseline
    elif baseline == 0.0:
        undefined["dcr_ratio"] = (
            "the median hold-out row equals a training row (records repeat in this table); "
            "read closer_to_train_share and exact_copy_share instead"
        )
    elif math.isnan(baseline) and "dcr_ratio" not in undefined:
        undefined["dcr_ratio"] = undefined["holdout_dcr_train_median"]
    attacked = rows.attack_score[candidates]
    attack_rows = f"{n_members} members and {n_non_members} non-members"
    if enough(min(n_members, n_non_members), attack_rows, _ATTACK_SCORES):
        scores["mia_auc"] = attack_auc(attacked, is_member)
        if n_non_members >= MIN_NON_MEMBERS_FOR_TPR:
            scores["mia_tpr_at_1pct_fpr"] = tpr_at_fpr(attacked, is_member)
        else:
            undefined["mia_tpr_at_1pct_fpr"] = (
                f"{n_non_members} non-members cannot resolve a 1% false-positive rate; "
                f"it takes {MIN_NON_MEMBERS_FOR_TPR}"
            )
    return PrivacyScores(
        **scores,
        n_synthetic=n_synthetic,
        n_holdout=n_holdout,
        n_members=n_members,
        n_non_members=n_non_members,
        undefined=undefined,
    )


def _check_tables(
    tables: Mapping[str, pd.DataFrame], *, sensitive: str, target: str | None, min_rows: int
) -> None:
    """Refuse tables that cannot be compared, naming the table and the column or count at fault."""
    if target is not None and target == sensitive:
        detail = f"the target and the sensitive column must differ, both are {target!r}"
        raise Fair4FreeError(ErrorCode.CONFIG_INVALID, detail)
    for name, frame in tables.items():
        repeated = sorted({str(column) for column in frame.columns[frame.columns.duplicated()]})
        if repeated:
            detail = f"the {name} table repeats the column names {_quoted(repeated)}"
            raise Fair4FreeError(ErrorCode.SCHEMA_MISMATCH, detail)
        for role, column in (("sensitive", sensitive), ("target", target)):
            if column is not None and column not in frame.columns:
                detail = f"the {name} table has no {role} column {column!r}"
                raise Fair4FreeError(ErrorCode.COLUMN_UNKNOWN, detail)
    reference = tables["train"].columns
    for name, frame in tables.items():
        missing = [column for column in reference if column not in frame.columns]
        extra = [column for column in frame.columns if column not in reference]
        problems = [f"lacks the train columns {_quoted(missing)}"] if missing else []
        problems += [f"has columns the train table lacks: {_quoted(extra)}"] if extra else []
        if problems:
            detail = f"the {name} table " + " and ".join(problems)
            raise Fair4FreeError(ErrorCode.SCHEMA_MISMATCH, detail)
    # The attack splits n = min(|train|, |holdout|) rows in halves, each needing min_rows.
    split = " (half for the attack's reference, half to attack)"
    for name, needed, why in (
        ("synthetic", min_rows, ""),
        ("train", 2 * min_rows, split),
        ("holdout", 2 * min_rows, split),
    ):
        if len(tables[name]) < needed:
            detail = f"the {name} table has {len(tables[name])} rows; privacy needs {needed}{why}"
            raise Fair4FreeError(ErrorCode.CONFIG_INVALID, detail)


def _shuffled(frame: pd.DataFrame, limit: int, rng: np.random.Generator) -> pd.DataFrame:
    """Up to ``limit`` rows in a random order, so that any prefix is a random sample too."""
    return frame.iloc[rng.permutation(len(frame))[:limit]]


def _groups(frame: pd.DataFrame, sensitive: str) -> NDArray[np.object_]:
    labels = category_labels(frame[sensitive]).fillna(MISSING_GROUP)
    return np.asarray(labels.to_numpy(dtype=object), dtype=object)


def _members_of(groups: NDArray[np.object_], group: str | None) -> NDArray[np.bool_]:
    if group is None:
        return np.ones(len(groups), dtype=np.bool_)
    return np.asarray(groups == group, dtype=np.bool_)


def _plain(value: object) -> object:
    if isinstance(value, float) and math.isnan(value):
        return None
    return dict(value) if isinstance(value, Mapping) else value


def _quoted(names: list[object] | list[str] | pd.Index) -> str:
    return ", ".join(repr(str(name)) for name in names)

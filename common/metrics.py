"""Scores that say how fair, useful and faithful synthetic rows are when measured on real rows.

The consumer only ever holds synthetic rows, so the question it must answer is whether a model
trained on them behaves well in the real world: train on synthetic, test on real (utility), group
the real rows by their real sensitive value (fairness), and check that the synthetic rows sit where
the real ones do and cover all of them (``fidelity``). Fairness through unawareness asks whether
that classifier's predictions move when only a row's sensitive value does. The plain functions
follow the style of fairlearn's metric functions; ``evaluate_synthetic`` combines them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any, Literal, TypeAlias

import numpy as np
import pandas as pd
from fairlearn.metrics import demographic_parity_ratio, equalized_odds_ratio
from numpy.typing import ArrayLike, NDArray
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.metrics import accuracy_score, f1_score, recall_score, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

from fair4free.common.errors import ErrorCode, Fair4FreeError
from fair4free.common.fidelity import (
    DEFAULT_K,
    alpha_precision_beta_recall_authenticity,
    density_coverage,
)

ClassLabel: TypeAlias = str | int | float | bool
"""A value of the target column; compared by its text, so ``1``, ``1.0`` and ``"1"`` agree."""

FairnessMethod: TypeAlias = Literal["between_groups", "to_overall"]
"""How fairlearn forms its ratios: smallest over largest group, or each group against all rows."""

# Histogram gradient boosting bins each categorical feature into at most 255 codes.
_MAX_NATIVE_CATEGORIES = 255


class ColumnKind(Enum):
    """How a column enters a model: as a number or as one of a set of labels."""

    NUMERIC = "numeric"
    CATEGORICAL = "categorical"


@dataclass(frozen=True, kw_only=True)
class FairnessScores:
    """Group fairness of binary predictions; 1.0 is perfectly fair, 0.0 maximally unfair.

    A ratio is NaN when it is 0/0, for example demographic parity of a predictor that never says
    positive, because fairlearn leaves it undefined; callers decide how to show that.
    """

    dpr: float
    eor: float


@dataclass(frozen=True, kw_only=True)
class UtilityScores:
    """How well a classifier trained on one table predicts another; 0/1 labels kept for fairness."""

    accuracy: float
    f1: float
    recall: float
    auroc: float
    ftu: float
    """Share of rows whose prediction moves with their sensitive value alone; NaN if none named."""
    y_true: NDArray[np.int64] = field(repr=False, compare=False)
    y_pred: NDArray[np.int64] = field(repr=False, compare=False)


@dataclass(frozen=True, kw_only=True)
class EvaluationReport:
    """Everything one synthetic table scores against a real one, in one flat record."""

    dpr: float
    eor: float
    ftu: float
    accuracy: float
    f1: float
    recall: float
    auroc: float
    density: float
    coverage: float
    alpha_precision: float
    beta_recall: float
    authenticity: float
    n_synthetic: int
    n_real: int

    def to_dict(self) -> dict[str, float | int | None]:
        """A plain mapping for JSON; an undefined score (NaN, e.g. 0/0 in a ratio) becomes None.

        Strict JSON has no NaN, and a reader should see "undefined", not a number.
        """
        return {
            name: None if isinstance(value, float) and math.isnan(value) else value
            for name, value in asdict(self).items()
        }


@dataclass(frozen=True, eq=False)
class FeatureSpace:
    """Rows as vectors, fitted on reference rows, so that Euclidean distances mean something.

    Categorical columns become one-hot blocks (missing is a category of its own, unseen labels
    become all zeros) and numeric columns are median-imputed and standardized, so no single wide
    column dominates the distances.
    """

    kinds: Mapping[str, ColumnKind]
    transformer: Any = field(repr=False)

    def transform(self, frame: pd.DataFrame, *, table: str = "the table") -> NDArray[np.float64]:
        """Map rows into the space; ``table`` names the frame in error messages."""
        missing = [column for column in self.kinds if column not in frame.columns]
        if missing:
            detail = f"{table} lacks the columns {_quoted(missing)} of the feature space"
            raise Fair4FreeError(ErrorCode.SCHEMA_MISMATCH, detail)
        conformed = conform_frame(frame, self.kinds, table=table)
        return np.asarray(self.transformer.transform(conformed), dtype=np.float64)


def fairness_scores(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    *,
    sensitive_features: ArrayLike,
    method: FairnessMethod = "between_groups",
) -> FairnessScores:
    """Score demographic parity and equalized odds of binary predictions as fairlearn ratios.

    Ratios rather than differences, so a score reads the same for rare and common outcomes; the
    sensitive column may have any number of groups. Labels are 0/1 with 1 the positive class.
    """
    lengths = {len(np.asarray(values)) for values in (y_true, y_pred, sensitive_features)}
    if len(lengths) != 1:
        detail = f"y_true, y_pred and sensitive_features differ in length ({sorted(lengths)})"
        raise Fair4FreeError(ErrorCode.TENSOR_INVALID, detail)
    groups = sensitive_features
    dpr = demographic_parity_ratio(y_true, y_pred, sensitive_features=groups, method=method)
    eor = equalized_odds_ratio(y_true, y_pred, sensitive_features=groups, method=method)
    return FairnessScores(dpr=float(dpr), eor=float(eor))


def feature_space(reference: pd.DataFrame, *, columns: Sequence[str]) -> FeatureSpace:
    """Fit the distance space for density and coverage on the real rows, over ``columns``.

    Fitting on the real rows only makes the space, and so the scores of different synthetic
    tables, comparable: a synthetic table cannot stretch the scale it is judged on.
    """
    if not columns:
        raise Fair4FreeError(ErrorCode.CONFIG_INVALID, "a feature space needs at least one column")
    unknown = [column for column in columns if column not in reference.columns]
    if unknown:
        detail = f"the reference table has no columns {_quoted(unknown)}"
        raise Fair4FreeError(ErrorCode.COLUMN_UNKNOWN, detail)
    kinds = _column_kinds(reference, columns=columns)
    categorical = [column for column, kind in kinds.items() if kind is ColumnKind.CATEGORICAL]
    numeric = [column for column, kind in kinds.items() if kind is ColumnKind.NUMERIC]
    parts: list[tuple[str, Any, list[str]]] = []
    if categorical:
        one_hot = OneHotEncoder(handle_unknown="ignore", sparse_output=False)
        parts.append(("categorical", one_hot, categorical))
    if numeric:
        imputer = SimpleImputer(strategy="median", keep_empty_features=True)
        parts.append(("numeric", make_pipeline(imputer, StandardScaler()), numeric))
    conformed = conform_frame(reference, kinds, table="the reference table")
    transformer = ColumnTransformer(parts, sparse_threshold=0.0).fit(conformed)
    return FeatureSpace(kinds=kinds, transformer=transformer)


def utility_scores(
    train: pd.DataFrame,
    test: pd.DataFrame,
    *,
    target: str,
    positive_class: ClassLabel,
    seed: int,
    sensitive: str | None = None,
) -> UtilityScores:
    """Train on ``train`` (synthetic) and score on ``test`` (real): the usefulness of the rows.

    Every other column is a feature, the sensitive one included, because a consumer's model would
    see it too. Column kinds follow ``test``, the real table. The trees split natively on
    categories; labels the training rows never had count as missing. Naming the ``sensitive``
    column adds fairness through unawareness (``ftu``) of the same fitted classifier: the share
    of test rows whose predicted class changes when only their sensitive value is replaced, by
    each other value the test rows hold (a flip, for two values). 0 means the predictions ignore
    it; lower is fairer.
    """
    for name, frame in (("train", train), ("test", test)):
        if target not in frame.columns:
            detail = f"the {name} table has no target column {target!r}"
            raise Fair4FreeError(ErrorCode.COLUMN_UNKNOWN, detail)
    if sensitive is not None and sensitive not in test.columns:
        detail = f"the test table has no sensitive column {sensitive!r}"
        raise Fair4FreeError(ErrorCode.COLUMN_UNKNOWN, detail)
    if sensitive == target:
        detail = f"the target and the sensitive column must differ, both are {target!r}"
        raise Fair4FreeError(ErrorCode.CONFIG_INVALID, detail)
    features = [column for column in test.columns if column != target]
    missing = [column for column in features if column not in train.columns]
    if missing:
        detail = f"the train table lacks the columns {_quoted(missing)}"
        raise Fair4FreeError(ErrorCode.SCHEMA_MISMATCH, detail)
    y_test, y_train = _binary_targets(test, train, target, positive_class, ("test", "train"))
    kinds = _column_kinds(test, columns=features)
    categorical = [column for column, kind in kinds.items() if kind is ColumnKind.CATEGORICAL]
    numeric = [column for column, kind in kinds.items() if kind is ColumnKind.NUMERIC]
    ordinal = OrdinalEncoder(
        handle_unknown="use_encoded_value",
        unknown_value=np.nan,
        max_categories=_MAX_NATIVE_CATEGORIES,
    )
    encoder = ColumnTransformer(
        [("categorical", ordinal, categorical), ("numeric", "passthrough", numeric)],
        sparse_threshold=0.0,
    )
    x_train = encoder.fit_transform(conform_frame(train, kinds, table="the train table"))
    test_rows = conform_frame(test, kinds, table="the test table")
    x_test = encoder.transform(test_rows)
    is_categorical = np.array([True] * len(categorical) + [False] * len(numeric))
    model = HistGradientBoostingClassifier(categorical_features=is_categorical, random_state=seed)
    classifier = model.fit(x_train, y_train)
    positive_column = list(classifier.classes_).index(1)
    scores = np.asarray(classifier.predict_proba(x_test), dtype=np.float64)[:, positive_column]
    y_pred = np.asarray(classifier.predict(x_test), dtype=np.int64)
    changed = np.zeros(len(test_rows), dtype=bool)
    values = [] if sensitive is None else test_rows[sensitive].dropna().unique()
    for value in values:  # a row given its own value is unchanged, so try every value on all
        counterfactual = test_rows.copy()
        counterfactual[sensitive] = pd.Series(value, test_rows.index, test_rows[sensitive].dtype)
        changed |= classifier.predict(encoder.transform(counterfactual)) != y_pred
    return UtilityScores(
        accuracy=float(accuracy_score(y_test, y_pred)),
        f1=float(f1_score(y_test, y_pred, zero_division=0.0)),
        recall=float(recall_score(y_test, y_pred, zero_division=0.0)),
        auroc=float(roc_auc_score(y_test, scores)),
        ftu=math.nan if sensitive is None else float(np.mean(changed)),
        y_true=y_test,
        y_pred=y_pred,
    )


def evaluate_synthetic(
    synthetic: pd.DataFrame,
    real: pd.DataFrame,
    *,
    target: str,
    sensitive: str,
    positive_class: ClassLabel,
    seed: int = 0,
    max_quality_rows: int = 5000,
) -> EvaluationReport:
    """Score synthetic rows against real test rows for fairness, utility and fidelity at once.

    Fairness is that of the classifier trained on the synthetic rows, measured on the real rows
    grouped by their real sensitive value: what a consumer would ship, judged on the people it
    would affect; fairness through unawareness is that classifier's too. Density, coverage,
    alpha-precision, beta-recall and authenticity use at most ``max_quality_rows`` rows drawn
    (seeded) from each side, the same for all five, since they cost time quadratic in the rows.
    """
    k = DEFAULT_K
    if max_quality_rows < k + 1:
        detail = f"max_quality_rows must be at least k + 1 = {k + 1}, got {max_quality_rows}"
        raise Fair4FreeError(ErrorCode.CONFIG_INVALID, detail)
    for role, column in (("target", target), ("sensitive", sensitive)):
        if column not in real.columns:
            detail = f"the real table has no {role} column {column!r}"
            raise Fair4FreeError(ErrorCode.COLUMN_UNKNOWN, detail)
    if target == sensitive:
        detail = f"the target and the sensitive column must differ, both are {target!r}"
        raise Fair4FreeError(ErrorCode.CONFIG_INVALID, detail)
    _check_same_columns(synthetic, real)
    synthetic = synthetic[list(real.columns)]
    for name, frame in (("real", real), ("synthetic", synthetic)):
        if len(frame) < k + 1:
            detail = f"the {name} table has {len(frame)} rows; density and coverage need {k + 1}"
            raise Fair4FreeError(ErrorCode.CONFIG_INVALID, detail)
    _binary_targets(real, synthetic, target, positive_class, ("real", "synthetic"))
    groups = category_labels(real[sensitive])
    if groups.isna().any():  # fairlearn refuses them, and no group is the honest answer
        detail = (
            f"the real sensitive column {sensitive!r} has {groups.isna().sum()} missing value(s)"
        )
        raise Fair4FreeError(ErrorCode.COLUMN_UNSUPPORTED, detail)
    if groups.nunique() < 2:
        detail = f"the real sensitive column {sensitive!r} has the single value {groups.iloc[0]!r}"
        raise Fair4FreeError(ErrorCode.SENSITIVE_CONSTANT, detail)

    # Conform once here, so a bad synthetic value is reported as being in the synthetic table.
    kinds = _column_kinds(real, columns=list(real.columns))
    real = conform_frame(real, kinds, table="the real table")
    synthetic = conform_frame(synthetic, kinds, table="the synthetic table")
    utility = utility_scores(
        synthetic,
        real,
        target=target,
        positive_class=positive_class,
        seed=seed,
        sensitive=sensitive,
    )
    fairness = fairness_scores(
        utility.y_true, utility.y_pred, sensitive_features=groups.to_numpy(dtype=object)
    )
    space = feature_space(real, columns=list(real.columns))
    rng = np.random.default_rng(seed)
    real_rows = space.transform(_sample(real, max_quality_rows, rng), table="the real table")
    synthetic_sample = _sample(synthetic, max_quality_rows, rng)
    synthetic_rows = space.transform(synthetic_sample, table="the synthetic table")
    density, coverage = density_coverage(real_rows, synthetic_rows, k=k)
    faithfulness = alpha_precision_beta_recall_authenticity(real_rows, synthetic_rows)
    return EvaluationReport(
        dpr=fairness.dpr,
        eor=fairness.eor,
        ftu=utility.ftu,
        accuracy=utility.accuracy,
        f1=utility.f1,
        recall=utility.recall,
        auroc=utility.auroc,
        density=density,
        coverage=coverage,
        alpha_precision=faithfulness.alpha_precision,
        beta_recall=faithfulness.beta_recall,
        authenticity=faithfulness.authenticity,
        n_synthetic=len(synthetic),
        n_real=len(real),
    )


def _binary_targets(
    reference: pd.DataFrame,
    other: pd.DataFrame,
    target: str,
    positive_class: ClassLabel,
    names: tuple[str, str],
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Map both targets to 1 (positive class) and 0, after checking the classes make sense.

    The reference (real) table must have exactly two classes, one of them the positive class;
    the other (synthetic) table must use only those and, to train a classifier, both of them.
    """
    reference_name, other_name = names
    labels: dict[str, pd.Series[Any]] = {}
    for name, frame in ((reference_name, reference), (other_name, other)):
        labels[name] = category_labels(frame[target])
        missing = int(labels[name].isna().sum())
        if missing:
            detail = f"the {name} target {target!r} has {missing} missing value(s)"
            raise Fair4FreeError(ErrorCode.COLUMN_UNSUPPORTED, detail)
    classes = sorted(labels[reference_name].unique())
    if len(classes) != 2:
        detail = f"the {reference_name} target {target!r} has {len(classes)} classes, not 2"
        raise Fair4FreeError(ErrorCode.TARGET_NOT_BINARY, detail)
    positive = _label(positive_class)
    if positive not in classes:
        detail = f"the positive class {positive_class!r} is none of {_quoted(classes)}"
        raise Fair4FreeError(ErrorCode.CONFIG_INVALID, detail)
    other_classes = sorted(labels[other_name].unique())
    strangers = [label for label in other_classes if label not in classes]
    if strangers:
        detail = f"the {other_name} target holds {_quoted(strangers)}, not a {reference_name} class"
        raise Fair4FreeError(ErrorCode.TARGET_NOT_BINARY, detail)
    if len(other_classes) < 2:
        only = other_classes[0]
        detail = f"the {other_name} target has only class {only!r}; a classifier cannot be trained"
        raise Fair4FreeError(ErrorCode.TARGET_NOT_BINARY, detail)
    return (
        (labels[reference_name] == positive).to_numpy(dtype=np.int64),
        (labels[other_name] == positive).to_numpy(dtype=np.int64),
    )


def _column_kinds(reference: pd.DataFrame, *, columns: Sequence[str]) -> dict[str, ColumnKind]:
    """Let the reference (real) table decide whether each column is numeric or categorical.

    The real table decides because a synthetic column may lose the evidence: a categorical
    column that came out all missing reads back from CSV as floats.
    """
    kinds: dict[str, ColumnKind] = {}
    for column in columns:
        dtype = reference[column].dtype
        if pd.api.types.is_complex_dtype(dtype):
            detail = f"column {column!r} holds complex numbers"
            raise Fair4FreeError(ErrorCode.COLUMN_UNSUPPORTED, detail)
        # Booleans are two labels, not a quantity to standardize.
        numeric = pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)
        kinds[column] = ColumnKind.NUMERIC if numeric else ColumnKind.CATEGORICAL
    return kinds


def conform_frame(
    frame: pd.DataFrame, kinds: Mapping[str, ColumnKind], *, table: str
) -> pd.DataFrame:
    """Give every column the representation its kind needs, whatever dtype a reader chose.

    Numbers become float64 (int and float columns of the two tables then agree) and labels
    become text in an object column, so a CSV round trip of either table changes nothing.
    """
    columns: dict[str, pd.Series[Any]] = {}
    for column, kind in kinds.items():
        if kind is ColumnKind.NUMERIC:
            values = _numeric_values(frame[column], column=column, table=table)
            columns[column] = pd.Series(values, index=frame.index, dtype=np.float64)
        else:
            columns[column] = category_labels(frame[column])
    return pd.DataFrame(columns, index=frame.index)


def _numeric_values(series: pd.Series[Any], *, column: str, table: str) -> NDArray[np.float64]:
    coerced = pd.to_numeric(series.astype(object), errors="coerce")
    bad = coerced.isna() & series.notna()
    if bad.any():
        first = series[bad].iloc[0]
        detail = f"column {column!r} of {table} holds {first!r}, not a number as in the real table"
        raise Fair4FreeError(ErrorCode.SCHEMA_MISMATCH, detail)
    values = np.asarray(coerced.to_numpy(dtype=np.float64, na_value=np.nan), dtype=np.float64)
    if np.isinf(values).any():
        detail = f"column {column!r} of {table} holds an infinite value"
        raise Fair4FreeError(ErrorCode.COLUMN_UNSUPPORTED, detail)
    return values


def category_labels(series: pd.Series[Any]) -> pd.Series[Any]:
    """Turn any column into text labels (object dtype, missing stays NaN) that compare by value."""
    missing = series.isna().to_numpy()
    values = series.to_numpy(dtype=object)
    labels: list[object] = [
        np.nan if gone else _label(value) for value, gone in zip(values, missing, strict=True)
    ]
    return pd.Series(labels, index=series.index, dtype=object)


def _label(value: object) -> str:
    """Write a value the way a CSV reader would read it back, so 1, 1.0 and "1" are one label."""
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _sample(frame: pd.DataFrame, limit: int, rng: np.random.Generator) -> pd.DataFrame:
    if len(frame) <= limit:
        return frame
    return frame.iloc[np.sort(rng.choice(len(frame), size=limit, replace=False))]


def _check_same_columns(synthetic: pd.DataFrame, real: pd.DataFrame) -> None:
    problems = []
    for name, frame in (("real", real), ("synthetic", synthetic)):
        repeated = sorted({str(column) for column in frame.columns[frame.columns.duplicated()]})
        if repeated:
            problems.append(f"the {name} table repeats the column names {_quoted(repeated)}")
    missing = [column for column in real.columns if column not in synthetic.columns]
    if missing:
        problems.append(f"the synthetic table lacks the real columns {_quoted(missing)}")
    extra = [column for column in synthetic.columns if column not in real.columns]
    if extra:
        problems.append(f"the synthetic table has columns the real table lacks: {_quoted(extra)}")
    if problems:
        raise Fair4FreeError(ErrorCode.SCHEMA_MISMATCH, "; ".join(problems))


def _quoted(names: Sequence[object]) -> str:
    return ", ".join(repr(str(name)) for name in names)

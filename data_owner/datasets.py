"""Where the owner's tables come from: benchmark files, a user's CSV, or a synthetic cohort.

Benchmark files (Adult, COMPAS) are read from a data home folder and checked against known
sha256 sums first, so results are never silently computed on a different file.

The synthetic cohort (``make_cohort``) stands in for a hospital's private table. Each row is a
patient; the columns are drawn in this order:

- ``age`` ~ round(Normal(58, 15)) clipped to [18, 95]; ``sex`` is "F" or "M" with equal odds.
- ``bmi`` ~ Normal(27.5, 5) clipped to [15, 55], one decimal; ``smoker`` "yes" with p = 0.22.
- ``diabetic`` (bool) with logit -2.2 + 0.12 (bmi - 27.5) + 0.04 (age - 58).
- ``systolic_bp`` (int) = 125 + 0.45 (age - 58) + 0.9 (bmi - 27.5) + 8 diabetic + Normal(0, 14),
  rounded and clipped to [80, 230].
- ``prior_admissions`` ~ Poisson(exp(-0.6 + 0.02 (age - 58) + 0.5 smoker + 0.5 diabetic)).
- ``hba1c`` ~ Normal(5.6 + 1.6 diabetic, 0.5), one decimal; missing (not measured) for 12%.
- ``insurance`` "public"/"private"/"none" with p = 0.85/0.12/0.03 from age 65, else
  0.30/0.60/0.10; missing (not recorded) for 4%.
- ``referral`` "cardiology"/"gp"/"community": a proxy of sex. Men are referred through
  cardiology with p = 0.65 and community with p = 0.10, women the other way round.
- ``length_of_stay`` (int days) = 1 + Poisson(max(0.1, 2 + 0.03 (age - 58) + diabetic)).
- ``readmitted`` "yes"/"no" (the target, positive "yes") ~ Bernoulli(sigmoid(logit)) with
  logit = -1.6 + 0.03 (age - 58) + 0.5 smoker + 0.7 diabetic + 0.3 prior_admissions
  + 0.02 (systolic_bp - 125) + 0.08 (length_of_stay - 3) + 0.9 bias (+1 for "M", -1 for "F").

Every clinical feature is drawn independently of sex, so with ``bias = 0`` the label rate is the
same for both sexes (demographic parity ratio near 1) and the only unfairness is the direct
term; at the default ``bias = 0.8`` the ratio of women's to men's "yes" rates is about 0.42. The
``referral`` proxy carries sex information but has no effect on the label: a fair generator
should keep the clinical relations and break the link from sex (and from ``referral``) to
``readmitted``.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

from fair4free.common.errors import ErrorCode, Fair4FreeError
from fair4free.common.schema import Category, TableSchema, infer_schema
from fair4free.common.table_io import detect_missing_token, read_table, write_table

DATA_HOME_ENV = "FAIR4FREE_DATA_HOME"

ADULT_COLUMNS: tuple[str, ...] = (
    "age",
    "workclass",
    "fnlwgt",
    "education",
    "education-num",
    "marital-status",
    "occupation",
    "relationship",
    "race",
    "sex",
    "capital-gain",
    "capital-loss",
    "hours-per-week",
    "native-country",
    "income",
)
COMPAS_COLUMNS: tuple[str, ...] = (
    "sex",
    "age",
    "age_cat",
    "race",
    "juv_fel_count",
    "juv_misd_count",
    "juv_other_count",
    "priors_count",
    "c_charge_degree",
    "two_year_recid",
)
SHA256: dict[str, str] = {
    "adult/adult.data": "5b00264637dbfec36bdeaab5676b0b309ff9eb788d63554ca0a249491c86603d",
    "adult/adult.test": "a2a9044bc167a35b2361efbabec64e89d69ce82d9790d2980119aac5fd7e9c05",
    "compas/compas-scores-two-years.csv": (
        "c451db85908b2f7fef1d83203bedf6b71ecda0d5af468d82ae62178f91d0cc7d"
    ),
}


@dataclass(frozen=True, kw_only=True, eq=False)
class TabularDataset:
    """A table together with the roles fairness needs, ready to split, export or train on."""

    name: str
    frame: pd.DataFrame
    target: str
    sensitive: str
    positive_class: Category | None
    missing_token: str = ""

    def schema(self) -> TableSchema:
        """Infer the table's schema with this dataset's roles, positive class and NA token."""
        return infer_schema(
            self.frame,
            target=self.target,
            sensitive=self.sensitive,
            positive_class=self.positive_class,
            missing_token=self.missing_token,
        )


def resolve_data_home(flag: Path | None) -> Path:
    """Find the benchmark data folder: the flag when given, else the environment variable."""
    if flag is not None:
        source, home = "--data-home", Path(flag)
    else:
        value = os.environ.get(DATA_HOME_ENV, "")
        if not value:
            raise Fair4FreeError(
                ErrorCode.DATA_HOME_MISSING,
                f"no data home: --data-home not given and {DATA_HOME_ENV} is unset",
            )
        source, home = DATA_HOME_ENV, Path(value)
    if not home.is_dir():
        raise Fair4FreeError(
            ErrorCode.DATA_HOME_MISSING, f"data home '{home}' (from {source}) is not a folder"
        )
    return home


def _verified(data_home: Path, relative: str) -> Path:
    path = Path(data_home) / relative
    if not path.is_file():
        raise Fair4FreeError(ErrorCode.DATA_HOME_MISSING, f"expected dataset file '{path}'")
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != SHA256[relative]:
        raise Fair4FreeError(
            ErrorCode.DATASET_CORRUPT,
            f"'{path}' has sha256 {digest.hexdigest()}, expected {SHA256[relative]}",
        )
    return path


def load_adult(data_home: Path) -> TabularDataset:
    """Load UCI Adult (train and test together) with income '>50K' as the favourable outcome."""
    train = read_table(
        _verified(data_home, "adult/adult.data"), names=ADULT_COLUMNS, missing_tokens=("?",)
    )
    test = read_table(
        _verified(data_home, "adult/adult.test"),
        names=ADULT_COLUMNS,
        missing_tokens=("?",),
        skip_rows=1,
    )
    test["income"] = test["income"].str.rstrip(".")
    frame = pd.concat([train, test], ignore_index=True)
    return TabularDataset(
        name="adult",
        frame=frame,
        target="income",
        sensitive="sex",
        positive_class=">50K",
        missing_token="?",
    )


def load_compas(data_home: Path) -> TabularDataset:
    """Load ProPublica COMPAS with the usual filter and race as African-American vs Other."""
    path = _verified(data_home, "compas/compas-scores-two-years.csv")
    filters = ["days_b_screening_arrest", "is_recid", "score_text"]
    raw = pd.read_csv(
        path, usecols=[*COMPAS_COLUMNS, *filters], keep_default_na=False, na_values=[""]
    )
    days = raw["days_b_screening_arrest"]
    keep = (
        days.between(-30, 30)
        & (raw["is_recid"] != -1)
        & (raw["c_charge_degree"] != "O")
        & (raw["score_text"] != "N/A")
    )
    frame = raw.loc[keep, list(COMPAS_COLUMNS)].reset_index(drop=True)
    black = frame["race"] == "African-American"
    frame["race"] = pd.Series(np.where(black, "African-American", "Other"), dtype="str")
    return TabularDataset(
        name="compas",
        frame=frame,
        target="two_year_recid",
        sensitive="race",
        positive_class=1,
    )


def load_csv_dataset(path: Path, *, target: str, sensitive: str) -> TabularDataset:
    """Load the owner's own CSV, remembering how it spells missing values for output files."""
    path = Path(path)
    frame = read_table(path)
    for name in (target, sensitive):
        if name not in frame.columns:
            shown = ", ".join(list(frame.columns)[:8])
            raise Fair4FreeError(
                ErrorCode.COLUMN_UNKNOWN, f"column '{name}' is not in '{path}'; available: {shown}"
            )
    return TabularDataset(
        name=path.stem,
        frame=frame,
        target=target,
        sensitive=sensitive,
        positive_class=None,
        missing_token=detect_missing_token(path),
    )


def split_table(
    df: pd.DataFrame, *, target: str, test_fraction: float = 0.2, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split rows into train and test with each target class in the same proportion in both.

    The same seed always gives the same split; rows keep their original order within each part.
    """
    in_test = split_mask(df, target=target, test_fraction=test_fraction, seed=seed)
    return df[~in_test].reset_index(drop=True), df[in_test].reset_index(drop=True)


def split_mask(
    df: pd.DataFrame,
    *,
    target: str,
    test_fraction: float = 0.2,
    seed: int = 0,
    also_by: Sequence[str] = (),
) -> npt.NDArray[np.bool_]:
    """Which rows go to the test part: seeded, stratified by the target (and ``also_by``).

    Each stratum sends ``round(size * test_fraction)`` rows to the test part, so proportions hold
    in both parts. Every target class must land in both. With ``also_by`` (the owner's hold-out
    is stratified by sensitive group too) a stratum may be too small to split and stays whole in
    one part, and a missing value is a stratum value of its own. Without ``also_by`` the draws
    are those ``split_table`` has always made, so existing splits stay reproducible.
    """
    if target not in df.columns:
        raise Fair4FreeError(
            ErrorCode.COLUMN_UNKNOWN, f"target column '{target}' is not in the table"
        )
    absent = [name for name in also_by if name not in df.columns]
    if absent:
        raise Fair4FreeError(ErrorCode.COLUMN_UNKNOWN, f"column '{absent[0]}' is not in the table")
    if not 0.0 < test_fraction < 1.0:
        raise Fair4FreeError(
            ErrorCode.CONFIG_INVALID, f"test_fraction must lie in (0, 1), not {test_fraction}"
        )
    labels = df[target]
    if labels.isna().any():
        raise Fair4FreeError(
            ErrorCode.COLUMN_UNSUPPORTED, f"target column '{target}' has missing values"
        )
    codes, classes = pd.factorize(labels, sort=True)
    if len(classes) < 2:
        raise Fair4FreeError(
            ErrorCode.CONFIG_INVALID, f"target '{target}' has one class; a split cannot hold two"
        )
    rng = np.random.default_rng(seed)
    in_test = np.zeros(len(df), dtype=bool)
    if also_by:
        grouped = df.groupby([target, *also_by], dropna=False, sort=True)
        strata = grouped.ngroup().to_numpy()
        for stratum in range(int(strata.max()) + 1):
            rows = np.flatnonzero(strata == stratum)
            n_test = math.floor(len(rows) * test_fraction + 0.5)
            in_test[rng.choice(rows, size=n_test, replace=False)] = True
    for code, value in enumerate(classes):
        rows = np.flatnonzero(codes == code)
        if also_by:
            n_test = int(in_test[rows].sum())
        else:
            n_test = math.floor(len(rows) * test_fraction + 0.5)
        if n_test in (0, len(rows)):
            part = "train" if n_test == 0 else "test"
            raise Fair4FreeError(
                ErrorCode.CONFIG_INVALID,
                f"class {value!r} of '{target}' ({len(rows)} rows) would land only in {part}",
            )
        if not also_by:
            in_test[rng.choice(rows, size=n_test, replace=False)] = True
    return in_test


def export_split(
    train: pd.DataFrame, test: pd.DataFrame, out_dir: Path, schema: TableSchema
) -> tuple[Path, Path]:
    """Write train.csv and test.csv in the original schema, for training and for evaluation."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise Fair4FreeError(
            ErrorCode.OUTPUT_UNWRITABLE, f"cannot create '{out_dir}': {error.strerror or error}"
        ) from None
    paths = (out_dir / "train.csv", out_dir / "test.csv")
    for frame, path in zip((train, test), paths, strict=True):
        write_table(frame, path, schema)
    return paths


def make_cohort(n_rows: int, *, bias: float = 0.8, seed: int = 0) -> TabularDataset:
    """Generate a biased clinical cohort whose unfairness is known (see the module docstring).

    It lets tests, demos and benchmarks measure how much bias a fair generator removes without
    real patient data.
    """
    if isinstance(n_rows, bool) or not isinstance(n_rows, int) or n_rows < 100:
        raise Fair4FreeError(
            ErrorCode.CONFIG_INVALID, f"n_rows must be an integer >= 100, not {n_rows!r}"
        )
    if not 0.0 <= bias <= 1.0:
        raise Fair4FreeError(ErrorCode.CONFIG_INVALID, f"bias must lie in [0, 1], not {bias}")
    rng = np.random.default_rng(seed)
    n = n_rows
    age = np.clip(np.rint(rng.normal(58, 15, n)), 18, 95).astype(np.int64)
    male = rng.random(n) < 0.5
    bmi = np.round(np.clip(rng.normal(27.5, 5, n), 15, 55), 1)
    smoker = rng.random(n) < 0.22
    diabetic = rng.random(n) < _sigmoid(-2.2 + 0.12 * (bmi - 27.5) + 0.04 * (age - 58))
    noise = rng.normal(0, 14, n)
    sbp = 125 + 0.45 * (age - 58) + 0.9 * (bmi - 27.5) + 8 * diabetic + noise
    systolic_bp = np.clip(np.rint(sbp), 80, 230).astype(np.int64)
    rate = np.exp(-0.6 + 0.02 * (age - 58) + 0.5 * smoker + 0.5 * diabetic)
    prior_admissions = rng.poisson(rate).astype(np.int64)
    hba1c = np.round(np.clip(rng.normal(5.6 + 1.6 * diabetic, 0.5), 4.0, 14.0), 1)
    hba1c[rng.random(n) < 0.12] = np.nan
    senior = age >= 65
    insurance = _pick(rng, np.where(senior[:, None], [0.85, 0.12, 0.03], [0.3, 0.6, 0.1]))
    insurance_text = np.array(["public", "private", "none"], dtype=object)[insurance]
    insurance_text[rng.random(n) < 0.04] = None
    referral = _pick(rng, np.where(male[:, None], [0.65, 0.25, 0.10], [0.10, 0.25, 0.65]))
    stay_rate = np.clip(2 + 0.03 * (age - 58) + diabetic, 0.1, None)
    length_of_stay = (1 + rng.poisson(stay_rate)).astype(np.int64)
    logit = (
        -1.6
        + 0.03 * (age - 58)
        + 0.5 * smoker
        + 0.7 * diabetic
        + 0.3 * prior_admissions
        + 0.02 * (systolic_bp - 125)
        + 0.08 * (length_of_stay - 3)
        + 0.9 * bias * np.where(male, 1.0, -1.0)
    )
    readmitted = rng.random(n) < _sigmoid(logit)
    frame = pd.DataFrame(
        {
            "age": age,
            "sex": _text(np.where(male, "M", "F")),
            "bmi": bmi,
            "systolic_bp": systolic_bp,
            "smoker": _text(np.where(smoker, "yes", "no")),
            "diabetic": diabetic,
            "insurance": _text(insurance_text),
            "referral": _text(np.array(["cardiology", "gp", "community"])[referral]),
            "prior_admissions": prior_admissions,
            "hba1c": hba1c,
            "length_of_stay": length_of_stay,
            "readmitted": _text(np.where(readmitted, "yes", "no")),
        }
    )
    return TabularDataset(
        name="cohort",
        frame=frame,
        target="readmitted",
        sensitive="sex",
        positive_class="yes",
    )


def _sigmoid(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return 1.0 / (1.0 + np.exp(-x))


def _pick(rng: np.random.Generator, probs: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """Draw one index per row from each row's probabilities."""
    draws = rng.random(len(probs))[:, None]
    return np.asarray((np.cumsum(probs, axis=1) < draws).sum(axis=1), dtype=np.int64)


def _text(values: Sequence[object] | npt.NDArray[np.object_ | np.str_]) -> pd.Series:
    return pd.Series(values, dtype="str")

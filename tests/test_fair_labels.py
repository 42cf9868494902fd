"""Label massaging: equal positive rates per group, with the fewest changes, on real tables."""

from __future__ import annotations

from conftest import Cohort
from fair4free.data_owner import datasets
from fair4free.data_owner.fair_labels import massage_labels


def test_massaging_equalises_positive_rates_and_keeps_the_overall_rate(cohort: Cohort) -> None:
    massaged, report = massage_labels(cohort.train, cohort.schema, seed=0)
    schema = cohort.schema
    before = (
        (cohort.train[schema.target] == schema.positive_class)
        .groupby(cohort.train[schema.sensitive])
        .mean()
    )
    after = (
        (massaged[schema.target] == schema.positive_class)
        .groupby(massaged[schema.sensitive])
        .mean()
    )
    assert before.max() - before.min() > 0.1  # the cohort is biased
    assert after.max() - after.min() < 0.01
    overall_before = (cohort.train[schema.target] == schema.positive_class).sum()
    overall_after = (massaged[schema.target] == schema.positive_class).sum()
    assert abs(int(overall_after) - int(overall_before)) <= 2  # rounding per group only
    changed = (massaged[schema.target] != cohort.train[schema.target]).sum()
    assert report.relabelled == changed
    # The fewest changes: each group moves only by the gap between its count and its share.
    positive = cohort.train[schema.target] == schema.positive_class
    rate = positive.mean()
    gaps = sum(
        abs(round(rate * len(group)) - int(group.sum()))
        for _, group in positive.groupby(cohort.train[schema.sensitive])
    )
    assert changed == gaps


def test_only_the_target_changes_and_dtypes_are_kept(cohort: Cohort) -> None:
    massaged, _ = massage_labels(cohort.train, cohort.schema, seed=0)
    others = [c for c in cohort.train.columns if c != cohort.schema.target]
    assert massaged[others].equals(cohort.train[others])
    assert dict(massaged.dtypes) == dict(cohort.train.dtypes)


def test_an_unbiased_table_is_left_almost_alone() -> None:
    fair = datasets.make_cohort(2000, bias=0.0, seed=1)
    _, report = massage_labels(fair.frame, fair.schema(), seed=0)
    assert report.relabelled < 0.03 * report.rows

"""The fidelity benchmark: fairness, utility, quality and cost of each way to make the table.

    python -m bench.fidelity --dataset adult --data-home ../shared/datasets
    python -m bench.fidelity --dataset compas --data-home ../shared/datasets
    python -m bench.fidelity --dataset csv --data my.csv --target outcome --sensitive group
    python -m bench.report            # regenerate docs/results.md from every results file

For one dataset and one seeded split, in one run: the real training rows; the teacher's own
decoded samples at each fairness weight of the sweep (weight 0 is the unfair VAE); and the
two-party student distilled over a real mTLS daemon from the teacher at the default weight. Every
row is scored by the same evaluation on the same untouched test split. Results are written as
JSON beside a frontier plot; ``bench.report`` renders them. Nothing here is typed in by hand.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import resource
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from bench.provenance import provenance, timed
from fair4free.common.cli_support import configure_logging, run_cli
from fair4free.common.errors import ErrorCode, Fair4FreeError
from fair4free.common.metrics import EvaluationReport, evaluate_synthetic
from fair4free.common.privacy import PrivacyConfig, evaluate_privacy
from fair4free.common.schema import TableSchema
from fair4free.common.tls import client_identity_uri
from fair4free.consumer.client import ClientConfig, OwnerClient
from fair4free.consumer.distillation import DistillConfig, distill
from fair4free.consumer.student import Student
from fair4free.data_owner import datasets, queries
from fair4free.data_owner.dp_training import DPConfig, default_for
from fair4free.data_owner.latent_release import LatentReleaseSettings
from fair4free.data_owner.pki import init_pki, issue_client
from fair4free.data_owner.policy import render_policy
from fair4free.data_owner.privacy_statement import LatentMode
from fair4free.data_owner.registry import Teacher, load_teacher
from fair4free.data_owner.server import ServerConfig, build_server
from fair4free.data_owner.train_pipeline import train_to_directory
from fair4free.data_owner.training import TrainingConfig

logger = logging.getLogger("bench.fidelity")

RESULTS_DIR = Path(__file__).parent / "results"
DEFAULT_WEIGHTS = (0.0, 2.0, 5.0, 10.0, 20.0)


@dataclass(frozen=True, kw_only=True)
class BenchSettings:
    """Everything that shapes the numbers; written into the results file."""

    dataset: str
    seed: int = 0
    test_fraction: float = 0.2
    weights: tuple[float, ...] = DEFAULT_WEIGHTS
    default_weight: float = TrainingConfig.fairness_weight
    epochs: int = TrainingConfig.epochs
    latent_dim: int = 16
    hidden: int = 128
    distill: DistillConfig = DistillConfig()
    max_quality_rows: int = 5000
    # Each table is sampled and scored with this many seeds (seed, seed + 1, ...) and the mean is
    # reported: one table's DPR moves by a few hundredths with its sampling seed alone.
    scoring_seeds: int = 3

    def __post_init__(self) -> None:
        if self.scoring_seeds < 1:
            raise Fair4FreeError(
                ErrorCode.CONFIG_INVALID,
                f"scoring seeds must be at least 1, got {self.scoring_seeds}",
            )


@dataclass(frozen=True, kw_only=True)
class CsvSource:
    """The user's own table: the same benchmark, unchanged, on any binary-target CSV."""

    path: Path
    target: str
    sensitive: str


@dataclass(frozen=True, kw_only=True)
class Row:
    """One line of the results table: how the rows were made, their scores, what it cost."""

    name: str
    method: str
    fairness_weight: float | None
    report: dict[str, float | int | None]  # mean over the scoring seeds
    report_sd: dict[str, float | None]  # standard deviation over the scoring seeds
    seconds: dict[str, float]
    rows_per_second: float | None
    peak_rss_mb: float


def _peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_dataset(
    name: str, data_home: Path | None, rows: int, csv: CsvSource | None = None
) -> datasets.TabularDataset:
    """The benchmark datasets by name; the cohort is the built-in generated one."""
    if name == "csv":
        if csv is None:
            raise Fair4FreeError(
                ErrorCode.CONFIG_INVALID, "--dataset csv needs --data, --target and --sensitive"
            )
        return datasets.load_csv_dataset(csv.path, target=csv.target, sensitive=csv.sensitive)
    if name == "cohort":
        return datasets.make_cohort(rows, seed=0)
    home = datasets.resolve_data_home(data_home)
    return datasets.load_adult(home) if name == "adult" else datasets.load_compas(home)


def split_and_schema(
    dataset: datasets.TabularDataset, settings: BenchSettings
) -> tuple[TableSchema, pd.DataFrame, pd.DataFrame]:
    """The table's schema and the benchmark's seeded, stratified train and test split."""
    schema = dataset.schema()
    train, test = datasets.split_table(
        dataset.frame, target=schema.target, test_fraction=settings.test_fraction,
        seed=settings.seed,
    )  # fmt: skip
    return schema, train, test


def train_teacher(
    train: pd.DataFrame,
    schema: TableSchema,
    dataset_name: str,
    settings: BenchSettings,
    *,
    weight: float,
    out: Path,
    dp: DPConfig | None = None,
) -> None:
    """Train the teacher the benchmark scores, at one fairness weight, into ``out``.

    With ``dp`` it is the DP-SGD teacher of ``fair4free-owner train --dp-epsilon``.
    """
    training = TrainingConfig(
        epochs=settings.epochs,
        learning_rate=default_for("learning_rate", dp, None),
        kl_weight=default_for("kl_weight", dp, None),
        fairness_weight=weight,
        seed=settings.seed,
    )
    train_to_directory(
        train, schema, out=out, dataset_name=dataset_name, latent_dim=settings.latent_dim,
        hidden=settings.hidden, training=training, dp=dp,
    )  # fmt: skip


def teacher_samples(
    teacher: Teacher, rows: int, seed: int, latent_mode: LatentMode = "posterior"
) -> pd.DataFrame:
    """The teacher's own decoded samples, as the owner could make them (no distillation)."""
    return queries.sample_rows(teacher, rows, np.random.default_rng(seed), latent_mode)


PRIVACY_KEYS = (
    "dcr_ratio",
    "closer_to_train_share",
    "exact_copy_share",
    "holdout_copy_share",  # the baseline of exact copies: hold-out rows that repeat a training row
    "mia_auc",
    "mia_tpr_at_1pct_fpr",
)


def evaluate_rows(
    frame: pd.DataFrame,
    train: pd.DataFrame,
    test: pd.DataFrame,
    schema: TableSchema,
    settings: BenchSettings,
) -> dict[str, float | int | None]:
    """Score one table the one way every row of every benchmark table is scored.

    Fairness, utility and quality against the test split; privacy against the training rows with
    the test split as the hold-out (it is real, from the same population, and unseen by every
    generator here). ``mia_auc_worst_group`` is the highest attack AUC of any sensitive group.
    """
    privacy = evaluate_privacy(
        frame, train, test, sensitive=schema.sensitive, target=schema.target,
        config=PrivacyConfig(seed=settings.seed, max_rows=settings.max_quality_rows),
    ).to_dict()  # fmt: skip
    overall = privacy["overall"]
    group_aucs = [g["mia_auc"] for g in privacy["groups"].values() if g["mia_auc"] is not None]
    scores: dict[str, float | int | None] = {key: overall[key] for key in PRIVACY_KEYS}
    scores["mia_auc_worst_group"] = max(group_aucs) if group_aucs else None
    report: EvaluationReport = evaluate_synthetic(
        frame,
        test,
        target=schema.target,
        sensitive=schema.sensitive,
        positive_class=schema.positive_class,
        seed=settings.seed,
        max_quality_rows=settings.max_quality_rows,
    )
    return {**report.to_dict(), **scores}


def two_party_student(
    teacher_dir: Path,
    work: Path,
    settings: BenchSettings,
    latent_release: LatentReleaseSettings | None = None,
) -> tuple[Student, float]:
    """Distil over a real daemon on loopback with mutual TLS, as the two organisations would.

    ``latent_release`` is how the daemon answers SampleLatents (``serve --latent-release``;
    None: posterior samples, the default).
    """
    layout = init_pki(work / "pki")
    issue_client(layout.root, "bench")
    policy = work / "policy.toml"
    policy.write_text(render_policy({client_identity_uri("bench"): {
        "SampleLatents": settings.distill.latent_rows, "Decode": settings.distill.decode_rows,
    }}, rate_per_minute=10_000))  # fmt: skip
    server_config = ServerConfig(
        policy=policy, state_dir=work / "state", listen="127.0.0.1:0", seed=settings.seed,
        latent_release=latent_release or LatentReleaseSettings(),
    )  # fmt: skip
    daemon = build_server(
        load_teacher(teacher_dir), tls=layout.server_files(), config=server_config
    )
    port = daemon.port
    try:
        client_config = ClientConfig(server=f"127.0.0.1:{port}", tls=layout.client_files("bench"))
        with OwnerClient(client_config) as client:
            student, seconds = timed(lambda: distill(client, work / "student", settings.distill))
    finally:
        daemon.stop(0)
    return student, seconds


def run(
    settings: BenchSettings,
    data_home: Path | None,
    cohort_rows: int,
    csv: CsvSource | None = None,
) -> dict[str, Any]:
    """The whole benchmark for one dataset; returns the results document."""
    torch.manual_seed(settings.seed)
    dataset = load_dataset(settings.dataset, data_home, cohort_rows, csv)
    schema, train, test = split_and_schema(dataset, settings)
    logger.info("%s: %d training rows, %d test rows", dataset.name, len(train), len(test))
    rows: list[Row] = []

    def score(
        name: str,
        method: str,
        weight: float | None,
        make: Callable[[int], pd.DataFrame] | None,
        seconds: dict[str, float],
    ) -> None:
        rows.append(score_table(name, method, weight, make, seconds, train, test, schema, settings))

    score("real training rows", "real", None, None, {})
    weights = sorted(set(settings.weights) | {settings.default_weight})
    collapse: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="fair4free-bench-") as scratch:
        work = Path(scratch)
        for weight in weights:
            model_dir = work / f"teacher-w{weight:g}"
            _, train_seconds = timed(
                functools.partial(
                    train_teacher, train, schema, dataset.name, settings, weight=weight,
                    out=model_dir,
                )
            )  # fmt: skip
            teacher = load_teacher(model_dir)
            score(f"teacher samples, weight {weight:g}",
                  "teacher" if weight > 0 else "unfair VAE", weight,
                  functools.partial(teacher_samples, teacher, len(train)),
                  {"train": train_seconds})  # fmt: skip
            if weight != settings.default_weight:
                continue
            student, distill_seconds = two_party_student(model_dir, work, settings)
            score(f"two-party student, weight {weight:g}", "student", weight,
                  functools.partial(student_samples, student, len(train)),
                  {"train": train_seconds, "distill": distill_seconds})  # fmt: skip
            collapse = dict(student.metadata["collapse"])
            logger.info("student latent collapse check: %s", collapse)

    return {
        "benchmark": "fidelity",
        "dataset": dataset.name,
        "target": schema.target,
        "sensitive": schema.sensitive,
        "positive_class": schema.positive_class,
        "train_rows": len(train),
        "test_rows": len(test),
        "settings": _jsonable(dataclasses.asdict(settings)),
        "student_collapse": collapse,
        "rows": [dataclasses.asdict(row) for row in rows],
        "provenance": torch_provenance(),
    }


def score_table(
    name: str,
    method: str,
    weight: float | None,
    make: Callable[[int], pd.DataFrame] | None,
    seconds: dict[str, float],
    train: pd.DataFrame,
    test: pd.DataFrame,
    schema: TableSchema,
    settings: BenchSettings,
) -> Row:
    """Sample (unless ``make`` is None: the real rows) and score once per scoring seed."""
    reports, generate, evaluate = [], [], []
    for seed in range(settings.seed, settings.seed + settings.scoring_seeds):
        frame, made = (train, None) if make is None else timed(functools.partial(make, seed))
        scoring = dataclasses.replace(settings, seed=seed)
        report, scored = timed(
            functools.partial(evaluate_rows, frame, train, test, schema, scoring)
        )
        reports.append(report)
        evaluate.append(scored)
        if made is not None:
            generate.append(made)
    if generate:
        seconds["generate"] = round(float(np.mean(generate)), 4)
    seconds["evaluate"] = round(float(np.mean(evaluate)), 4)
    rate = round(len(train) / max(seconds["generate"], 1e-9)) if generate else None
    mean, sd = _mean_and_sd(reports)
    logger.info("%s: %s", name, _brief(mean))
    return Row(
        name=name,
        method=method,
        fairness_weight=weight,
        report=mean,
        report_sd=sd,
        seconds=seconds,
        rows_per_second=rate,
        peak_rss_mb=_peak_rss_mb(),
    )


def student_samples(student: Student, rows: int, seed: int) -> pd.DataFrame:
    """The student's own rows, as the consumer makes them after distillation."""
    return student.sample(rows, seed=seed)


def _mean_and_sd(
    reports: list[dict[str, float | int | None]],
) -> tuple[dict[str, float | int | None], dict[str, float | None]]:
    """Per metric: mean and standard deviation over the seeds (None where a seed had none)."""
    mean: dict[str, float | int | None] = {}
    sd: dict[str, float | None] = {}
    for key in reports[0]:
        values = [report[key] for report in reports]
        if any(value is None for value in values):
            mean[key], sd[key] = None, None
            continue
        numbers = np.asarray(values, dtype=float)
        mean[key], sd[key] = float(numbers.mean()), float(numbers.std())
    return mean, sd


def _brief(report: dict[str, float | int | None]) -> str:
    keys = ("dpr", "eor", "accuracy", "auroc", "density", "coverage")
    return ", ".join(f"{key} {report[key]:.3f}" for key in keys if report[key] is not None)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def torch_provenance() -> dict[str, str]:
    """Which code and machine produced the numbers, and the torch that ran them."""
    return {
        **provenance(),
        "torch": torch.__version__,
        "torch_threads": str(torch.get_num_threads()),
    }


def build_parser() -> argparse.ArgumentParser:
    """Command line of the benchmark."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.fidelity",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dataset", choices=["adult", "compas", "cohort", "csv"], required=True)
    parser.add_argument("--data", type=Path, help="with --dataset csv: your own CSV")
    parser.add_argument("--target", help="with --dataset csv: the binary target column")
    parser.add_argument("--sensitive", help="with --dataset csv: the sensitive column")
    parser.add_argument("--data-home", type=Path, help=f"or ${datasets.DATA_HOME_ENV}")
    parser.add_argument("--weights", default=",".join(f"{w:g}" for w in DEFAULT_WEIGHTS),
                        help="fairness weights of the sweep, comma-separated")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=TrainingConfig.epochs)
    parser.add_argument("--steps", type=int, default=DistillConfig.decoder_steps)
    parser.add_argument("--bandwidth", type=float, default=DistillConfig.bandwidth)
    parser.add_argument("--pool-rows", type=int, default=DistillConfig.latent_rows)
    parser.add_argument("--cohort-rows", type=int, default=6000)
    parser.add_argument("--scoring-seeds", type=int, default=BenchSettings.scoring_seeds,
                        help="score each table over this many seeds; report the mean")  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark for one dataset and write its results file and plot."""
    args = build_parser().parse_args(argv)
    configure_logging()

    def body() -> int:
        settings = BenchSettings(
            dataset=args.dataset,
            seed=args.seed,
            weights=tuple(float(w) for w in args.weights.split(",") if w.strip()),
            epochs=args.epochs,
            scoring_seeds=args.scoring_seeds,
            distill=DistillConfig(
                latent_rows=args.pool_rows, decode_rows=args.pool_rows,
                decoder_steps=args.steps, bandwidth=args.bandwidth, seed=args.seed,
            ),
        )  # fmt: skip
        csv = None
        if None not in (args.data, args.target, args.sensitive):
            csv = CsvSource(path=args.data, target=args.target, sensitive=args.sensitive)
        document = run(settings, args.data_home, args.cohort_rows, csv)
        name = document["dataset"].lower()
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"fidelity-{name}.json"
        path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
        from bench.report import render_frontier

        render_frontier(document, args.out / f"frontier-{name}.png")
        print(f"wrote {path}")
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())

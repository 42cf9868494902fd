"""The privacy benchmark: what each way of serving the teacher costs in privacy and in quality.

    python -m bench.privacy --dataset adult --data-home ../shared/datasets
    python -m bench.report            # regenerate docs/results.md from every results file

For one dataset and one seeded split (the fidelity benchmark's), in one run: the real training
rows (the sanity check: they are the worst possible leak); the default teacher's samples and the
two-party student distilled from it; a DP-SGD teacher (``--dp-epsilon``) with its posterior
latents, with latents from the prior (the fully DP path: nothing but DP weights is read), the
two-party student distilled from it served with ``--latent-release prior`` (that path as a
consumer gets it), and with Gaussian-released latents at each noise multiplier of
``--latent-sigmas``. ``--dp-trainings N`` trains N-1 more DP teachers with the same settings and
scores their posterior and prior rows: DP noise is drawn afresh for every training, and one
training can differ from the next by more than the sampling seed moves a score. Every table is
scored by ``bench.fidelity.score_table``: fairness, utility and quality against the test split,
privacy against the training rows with the test split as the hold-out. Each row states the
epsilon that holds for it (teacher weights; latent release after as many rows as the table has).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.fidelity import (
    RESULTS_DIR,
    BenchSettings,
    Row,
    load_dataset,
    score_table,
    split_and_schema,
    student_samples,
    teacher_samples,
    torch_provenance,
    train_teacher,
    two_party_student,
)
from bench.provenance import timed
from fair4free.common.cli_support import configure_logging, run_cli
from fair4free.consumer.distillation import DistillConfig
from fair4free.data_owner import datasets, queries
from fair4free.data_owner.dp_training import DPConfig, default_for
from fair4free.data_owner.latent_release import (
    DEFAULT_DELTA,
    GaussianLatentSettings,
    LatentReleaseSettings,
    released_latents,
)
from fair4free.data_owner.privacy_statement import teacher_guarantee
from fair4free.data_owner.registry import Teacher, load_teacher
from fair4free.data_owner.training import TrainingConfig

logger = logging.getLogger("bench.privacy")

DEFAULT_SIGMAS = (1.0, 4.0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PrivacyBenchSettings:
    """What the privacy benchmark adds to the fidelity benchmark's settings."""

    dp_epsilon: float = 8.0
    latent_sigmas: tuple[float, ...] = DEFAULT_SIGMAS
    latent_epsilon_limit: float = 1000.0
    latent_delta: float = DEFAULT_DELTA
    dp_trainings: int = 1  # DP teachers trained (fresh noise each); extra ones score two rows


def _gaussian_rows(
    teacher: Teacher, settings: GaussianLatentSettings, rows: int, seed: int
) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    latents, _ = released_latents(teacher, rows, rng, settings)
    return queries.decode_rows(teacher, latents, rng)


def run(
    settings: BenchSettings, extra: PrivacyBenchSettings, data_home: Path | None, cohort_rows: int
) -> dict[str, Any]:
    """The whole privacy benchmark for one dataset; returns the results document."""
    dataset = load_dataset(settings.dataset, data_home, cohort_rows)
    schema, train, test = split_and_schema(dataset, settings)
    logger.info("%s: %d training rows, %d test rows", dataset.name, len(train), len(test))
    rows: list[dict[str, Any]] = []
    weight = settings.default_weight

    def score(
        name: str,
        method: str,
        make: Any,
        seconds: dict[str, float],
        fairness_weight: float = weight,
        **epsilon: float,
    ) -> None:
        row: Row = score_table(
            name, method, fairness_weight, make, seconds, train, test, schema, settings
        )
        rows.append({**dataclasses.asdict(row), "epsilon": epsilon})

    score("real training rows", "real", None, {})
    with tempfile.TemporaryDirectory(prefix="fair4free-privacy-") as scratch:
        work = Path(scratch)
        plain_dir = work / "teacher"
        _, plain_seconds = timed(functools.partial(
            train_teacher, train, schema, dataset.name, settings, weight=weight, out=plain_dir
        ))  # fmt: skip
        plain = load_teacher(plain_dir)
        score(f"teacher samples, weight {weight:g}", "teacher",
              functools.partial(teacher_samples, plain, len(train)),
              {"train": plain_seconds})  # fmt: skip
        student, distill_seconds = two_party_student(plain_dir, work, settings)
        score(f"two-party student, weight {weight:g}", "student",
              functools.partial(student_samples, student, len(train)),
              {"train": plain_seconds, "distill": distill_seconds})  # fmt: skip

        dp = DPConfig(epsilon=extra.dp_epsilon)
        dp_weight = default_for("fairness_weight", dp, None)  # what `train --dp-epsilon` uses
        dp_score = functools.partial(score, fairness_weight=dp_weight)

        def dp_teacher(run: int) -> tuple[Teacher, float, str, dict[str, float]]:
            """Train DP teacher ``run`` (fresh noise) and score its rows and its student's.

            Its posterior and prior rows, and those of a student distilled from it over prior
            latents (the fully DP path), so each training's spread shows in all three.
            """
            out = work / f"teacher-dp-{run}"
            _, seconds = timed(functools.partial(
                train_teacher, train, schema, dataset.name, settings, weight=dp_weight, out=out,
                dp=dp,
            ))  # fmt: skip
            teacher = load_teacher(out)
            guarantee = teacher_guarantee(teacher.metadata)
            assert guarantee is not None  # the DP teacher records what it spent
            which = "" if run == 1 else f" #{run}"
            label = f"DP teacher{which} (epsilon {guarantee.epsilon:.2f}, weight {dp_weight:g})"
            suffix = "" if run == 1 else "-rerun"
            spent = {"teacher": guarantee.epsilon}
            dp_score(f"{label}, posterior latents", f"dp-teacher{suffix}",
                     functools.partial(teacher_samples, teacher, len(train)),
                     {"train": seconds}, **spent)  # fmt: skip
            dp_score(f"{label}, prior latents", f"dp-teacher-prior{suffix}",
                     functools.partial(teacher_samples, teacher, len(train), latent_mode="prior"),
                     {"train": seconds}, **spent, latent_release=0.0)  # fmt: skip
            (work / f"dp-student-{run}").mkdir()
            student, distill_seconds = two_party_student(
                out, work / f"dp-student-{run}", settings, LatentReleaseSettings(mode="prior")
            )
            dp_score(f"two-party student of the {label}, prior latents",
                     f"dp-student-prior{suffix}",
                     functools.partial(student_samples, student, len(train)),
                     {"train": seconds, "distill": distill_seconds},
                     **spent, latent_release=0.0)  # fmt: skip
            return teacher, seconds, label, spent

        private, dp_seconds, label, spent = dp_teacher(1)
        for sigma in extra.latent_sigmas:
            gaussian = GaussianLatentSettings(
                noise_multiplier=sigma,
                epsilon_limit=extra.latent_epsilon_limit,
                delta=extra.latent_delta,
            )
            _, release_epsilon = released_latents(
                private, len(train), np.random.default_rng(0), gaussian
            )
            dp_score(f"{label}, Gaussian latents sigma {sigma:g}", "dp-teacher-gaussian",
                     functools.partial(_gaussian_rows, private, gaussian, len(train)),
                     {"train": dp_seconds}, **spent, latent_release=release_epsilon)  # fmt: skip
        dp_metadata = private.metadata["privacy"]["teacher"]
        for run in range(2, extra.dp_trainings + 1):  # how much one DP training differs
            dp_teacher(run)

    return {
        "benchmark": "privacy",
        "dataset": dataset.name,
        "target": schema.target,
        "sensitive": schema.sensitive,
        "positive_class": schema.positive_class,
        "train_rows": len(train),
        "test_rows": len(test),
        "settings": json.loads(json.dumps(dataclasses.asdict(settings), default=str)),
        "privacy_settings": dataclasses.asdict(extra),
        "dp_teacher": dp_metadata,
        "rows": rows,
        "provenance": torch_provenance(),
    }


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Command line of the privacy benchmark."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.privacy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dataset", choices=["adult", "compas", "cohort"], required=True)
    parser.add_argument("--data-home", type=Path, help=f"or ${datasets.DATA_HOME_ENV}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=TrainingConfig.epochs)
    parser.add_argument("--steps", type=int, default=DistillConfig.decoder_steps)
    parser.add_argument("--pool-rows", type=int, default=DistillConfig.latent_rows)
    parser.add_argument("--cohort-rows", type=int, default=6000)
    parser.add_argument("--scoring-seeds", type=int, default=BenchSettings.scoring_seeds)
    parser.add_argument("--dp-epsilon", type=float, default=PrivacyBenchSettings.dp_epsilon)
    parser.add_argument("--dp-trainings", type=_positive_int, default=1,
                        help="DP teachers to train, to show how much one training differs from "
                             "the next (each extra one adds posterior and prior rows)")  # fmt: skip
    parser.add_argument(
        "--latent-sigmas",
        default=",".join(f"{s:g}" for s in DEFAULT_SIGMAS),
        help="noise multipliers of the Gaussian latent release, comma-separated",
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the privacy benchmark for one dataset and write its results file."""
    args = build_parser().parse_args(argv)
    configure_logging()

    def body() -> int:
        settings = BenchSettings(
            dataset=args.dataset, seed=args.seed, weights=(), epochs=args.epochs,
            scoring_seeds=args.scoring_seeds,
            distill=DistillConfig(latent_rows=args.pool_rows, decode_rows=args.pool_rows,
                                  decoder_steps=args.steps, seed=args.seed),
        )  # fmt: skip
        extra = PrivacyBenchSettings(
            dp_epsilon=args.dp_epsilon,
            latent_sigmas=tuple(float(s) for s in args.latent_sigmas.split(",") if s.strip()),
            dp_trainings=args.dp_trainings,
        )
        document = run(settings, extra, args.data_home, args.cohort_rows)
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"privacy-{document['dataset'].lower()}.json"
        path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
        print(f"wrote {path}")
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())

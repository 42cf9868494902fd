"""Which latent model should the student use? The teacher's decoder, fed by each candidate.

    python -m bench.latent_models --dataset adult --data-home ../shared/datasets

The decoder is held fixed (the teacher's own), so the table isolates the latent model: the
teacher's posterior draws (the reference), the N(0, I) prior, a Gaussian mixture fitted to the
pool a consumer receives, and the student's kernel density over that pool at several bandwidths.
Results go to ``bench/results/latent-models-NAME.json``; ``bench.report`` renders them.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from bench.fidelity import (
    RESULTS_DIR,
    BenchSettings,
    evaluate_rows,
    load_dataset,
    split_and_schema,
    torch_provenance,
    train_teacher,
)
from bench.provenance import timed
from fair4free.common.cli_support import configure_logging, run_cli
from fair4free.common.latent_collapse import collapse_report
from fair4free.consumer.distillation import DistillConfig
from fair4free.consumer.student_models import LatentKernelDensity, StudentConfig
from fair4free.data_owner import datasets, queries
from fair4free.data_owner.registry import Teacher, load_teacher
from fair4free.data_owner.training import TrainingConfig

BANDWIDTHS = (0.02, 0.05, 0.1, 0.2, 0.3)
MIXTURE_COMPONENTS = 64
Latents = npt.NDArray[np.float32]


def candidates(teacher: Teacher, pool: Latents, seed: int) -> dict[str, Callable[[int], Latents]]:
    """Each latent model by name, as a function of how many latents to draw."""
    from sklearn.mixture import GaussianMixture

    def posterior(rows: int) -> Latents:
        return queries.sample_latents(teacher, rows, np.random.default_rng(seed + 1))

    def prior(rows: int) -> Latents:
        draws = np.random.default_rng(seed + 2).standard_normal((rows, pool.shape[1]))
        return draws.astype(np.float32)

    def mixture(rows: int) -> Latents:
        fitted = GaussianMixture(
            MIXTURE_COMPONENTS, covariance_type="full", reg_covar=1e-4, random_state=seed
        ).fit(pool)
        draws, _ = fitted.sample(rows)  # grouped by component: shuffle
        shuffled: Latents = draws[np.random.default_rng(seed + 3).permutation(rows)]
        return shuffled.astype(np.float32)

    def kernel(bandwidth: float) -> Callable[[int], Latents]:
        def draw(rows: int) -> Latents:
            config = StudentConfig(
                latent_dim=pool.shape[1], output_dim=1, n_sensitive=2,
                pool_rows=pool.shape[0], bandwidth=bandwidth,
            )  # fmt: skip
            model = LatentKernelDensity.from_pool(config, torch.from_numpy(pool))
            return model.sample(rows, torch.Generator().manual_seed(seed + 4)).numpy()

        return draw

    models: dict[str, Callable[[int], Latents]] = {
        "teacher posterior draws (reference)": posterior,
        "prior N(0, I)": prior,
        f"Gaussian mixture, {MIXTURE_COMPONENTS} components": mixture,
    }
    for bandwidth in BANDWIDTHS:
        default = " (default)" if bandwidth == DistillConfig.bandwidth else ""
        models[f"kernel density, bandwidth {bandwidth:g}{default}"] = kernel(bandwidth)
    return models


def run(settings: BenchSettings, data_home: Path | None, cohort_rows: int) -> dict[str, Any]:
    """Train the default teacher once, then score every latent model through its decoder."""
    torch.manual_seed(settings.seed)
    dataset = load_dataset(settings.dataset, data_home, cohort_rows)
    schema, train, test = split_and_schema(dataset, settings)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fair4free-latents-") as scratch:
        model_dir = Path(scratch) / "teacher"
        train_teacher(
            train, schema, dataset.name, settings, weight=settings.default_weight, out=model_dir
        )
        teacher = load_teacher(model_dir)
        rng = np.random.default_rng(settings.seed)
        pool = queries.sample_latents(teacher, settings.distill.latent_rows, rng)
        for name, draw in candidates(teacher, pool, settings.seed).items():
            latents, seconds = timed(functools.partial(draw, len(train)))
            frame = queries.decode_rows(teacher, latents, np.random.default_rng(settings.seed))
            report = evaluate_rows(frame, train, test, schema, settings)
            check = collapse_report(torch.from_numpy(latents[:5000]), torch.from_numpy(pool[:5000]))
            rows.append({"name": name, "report": report, "collapse": dataclasses.asdict(check),
                         "fit_and_draw_seconds": seconds})  # fmt: skip
            print(f"{name}: density {report['density']:.3f}, coverage {report['coverage']:.3f}")
    return {
        "benchmark": "latent-models",
        "dataset": dataset.name,
        "train_rows": len(train),
        "test_rows": len(test),
        "pool_rows": settings.distill.latent_rows,
        "settings": json.loads(json.dumps(dataclasses.asdict(settings), default=str)),
        "rows": rows,
        "provenance": torch_provenance(),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the ablation for one dataset and write its results file."""
    parser = argparse.ArgumentParser(prog="python -m bench.latent_models", description=__doc__)
    parser.add_argument("--dataset", choices=["adult", "compas", "cohort"], required=True)
    parser.add_argument("--data-home", type=Path, help=f"or ${datasets.DATA_HOME_ENV}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=TrainingConfig.epochs)
    parser.add_argument("--cohort-rows", type=int, default=6000)
    parser.add_argument("--pool-rows", type=int, default=DistillConfig.latent_rows)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    configure_logging()

    def body() -> int:
        settings = BenchSettings(
            dataset=args.dataset, seed=args.seed, epochs=args.epochs,
            distill=DistillConfig(latent_rows=args.pool_rows, decode_rows=args.pool_rows),
        )  # fmt: skip
        document = run(settings, args.data_home, args.cohort_rows)
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"latent-models-{document['dataset'].lower()}.json"
        path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
        print(f"wrote {path}")
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())

"""The packaged recipes trained with PIB's entropy estimator `exact` and `fast` (pib.estimator):
test accuracy (the run's final readout) per seed, mean and spread, and wall time, on the twins.

The fast estimator (labpnn.lowrank, docs/information.md) is meant to leave accuracy where the
exact one puts it; this prints whether it does, within the seeds' own spread.
Run: python benchmarks/estimator_recipes.py [--quick] [--seeds 0 1 2 3 4]
     [--recipes mnist1d-memristor opu-mnist1d] [--threads 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from labpnn.bench import Bench
from labpnn.engine import Run
from labpnn.recipe import load_recipe, parse_recipe
from labpnn.runlog import RunReader
from labpnn.threads import limited


def accuracy(name: str, seed: int, estimator: str, out: Path) -> tuple[float, float]:
    """(test accuracy, wall s) of recipe `name` with this seed and estimator."""
    data = load_recipe(name).model_dump(mode="json", exclude_unset=True)
    data = {**data, "seed": seed, "pib": {**data.get("pib", {}), "estimator": estimator}}
    bench, path = Bench.load(None), out / f"{name}-{seed}-{estimator}.h5"
    started = time.perf_counter()
    try:
        Run(parse_recipe(data), bench, path).execute()
    finally:
        bench.close()
    with RunReader(path) as reader:
        return reader.test_accuracy, time.perf_counter() - started


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2 seeds, mnist1d-memristor only")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--recipes", nargs="+", default=["mnist1d-memristor", "opu-mnist1d"])
    p.add_argument("--threads", type=int, default=1, help="torch and BLAS threads (labpnn run's default: 1)")
    args = p.parse_args()
    seeds, recipes = (args.seeds[:2], args.recipes[:1]) if args.quick else (args.seeds, args.recipes)
    print(f"{'recipe':<20} {'estimator':<9} {'test accuracy per seed (%)':<40} {'mean':>6} {'std':>5} {'wall s':>7}")
    with tempfile.TemporaryDirectory() as tmp, limited(args.threads):
        for name in recipes:
            for estimator in ("exact", "fast"):
                rows = [accuracy(name, s, estimator, Path(tmp)) for s in seeds]
                acc = 100 * np.array([a for a, _ in rows])
                per_seed = " ".join(f"{a:.1f}" for a in acc)
                print(f"{name:<20} {estimator:<9} {per_seed:<40} {acc.mean():>6.1f} "
                      f"{acc.std(ddof=1) if len(acc) > 1 else 0:>5.1f} {np.mean([w for _, w in rows]):>7.1f}",
                      flush=True)
    print(f"seeds {seeds}; std with ddof 1; wall s: mean per run; {args.threads} thread(s)")


if __name__ == "__main__":
    main()

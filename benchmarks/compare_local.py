"""The hardware-in-the-loop schemes (pat, dfa, phyll) against the cascade (PIB) on one recipe's
architecture and twin, with an equal tuning budget: each scheme's lr picked on a validation
split of the training set (`--validation`, default 25 %: the recipe's `dataset.validation`,
stratified, the dataset's seed), then run on the full
training set and scored on the test set with the common refitted readout. Prints a Markdown
table (docs/methods.md quotes it): accuracy (mean ± std over the seeds) and what the crossbar
twin was asked to do in the first seed's run (counted at the instrument, the same way for every
scheme). Wall times are the machine's at the time (shared cores).

    python benchmarks/compare_local.py                      # mnist1d-memristor, 4000/1000
    python benchmarks/compare_local.py --seeds 0 1 2 --lrs 0.001 0.003 0.01 0.03 --epochs 20
    python benchmarks/compare_local.py --recipe mnist-memristor --epochs 10 \
        --fixed-lr pat=0.01 dfa=0.01 phyll=0.01             # lr as tuned on MNIST-1D
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from labpnn import data, readout
from labpnn.bench import Bench
from labpnn.engine import Run
from labpnn.recipe import load_recipe, parse_recipe
from labpnn.runlog import RunReader

ROOT = Path(__file__).resolve().parents[1]
LOCAL = ("pat", "dfa", "phyll")


class InstrumentCount:
    """Counts what the crossbar itself was asked to do, whoever asked: programmings
    (program_weights), matrix-vector batches (matmul calls) and rows measured."""

    def __init__(self, device):
        self.programs = self.calls = self.rows = 0
        program, matmul = device.program_weights, device.matmul

        def counted_program(weights):
            self.programs += 1
            return program(weights)

        def counted_matmul(x, format="float32"):
            self.calls += 1
            self.rows += len(x)
            return matmul(x, format=format)

        device.program_weights, device.matmul = counted_program, counted_matmul


def run(recipe: str, scheme, seed: int, *, validation: float, workdir: Path) -> dict:
    """One run of the recipe with `scheme` and `seed`; validation > 0: that share of the training
    split held out and scored instead of the test set (the recipe's dataset.validation)."""
    data = load_recipe(recipe).model_dump()
    data["seed"], data["scheme"] = seed, scheme
    data["dataset"]["validation"] = validation
    path = workdir / f"run-{time.monotonic_ns()}.h5"
    bench = Bench.load(ROOT / "instruments.yaml")
    count = InstrumentCount(bench["crossbar"])
    r = Run(parse_recipe(data), bench, path)
    start = time.perf_counter()
    r.execute()
    wall = time.perf_counter() - start
    with RunReader(path) as reader:
        accuracy = reader.test_accuracy
    path.unlink()
    return {"accuracy": accuracy, "wall": wall, "count": count}


def raw_inputs_accuracy(recipe: str) -> float:
    """The common readout (the recipe's readout:) fitted on the dataset's inputs: a linear floor."""
    r = load_recipe(recipe)
    ds = data.load(r.dataset.name, n_train=r.dataset.n_train, n_test=r.dataset.n_test, seed=r.dataset.seed,
                   path=r.dataset.path)
    params = readout.fit_readout(ds.x_train, ds.y_train, ds.n_classes, steps=r.readout.steps,
                                 weight_decay=r.readout.weight_decay)
    return readout.accuracy(params, ds.x_test, ds.y_test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="mnist1d-memristor")
    parser.add_argument("--methods", nargs="+", default=list(LOCAL), choices=LOCAL)
    parser.add_argument("--lrs", nargs="+", type=float, default=[0.001, 0.003, 0.01, 0.03])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--validation", type=float, default=0.25,
                        help="share of the training split held out for tuning (dataset.validation)")
    parser.add_argument("--no-cascade", action="store_true", help="skip the PIB (cascade) reference row")
    parser.add_argument("--fixed-lr", nargs="*", default=[], metavar="METHOD=LR",
                        help="no tuning for these methods: use this lr (e.g. lr tuned on another recipe)")
    parser.add_argument("--deploy-every", type=int, nargs="*", default=[],
                        help="extra rows: pat and dfa at their tuned lr, deployed every K steps")
    args = parser.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    fixed = {m: float(lr) for m, lr in (item.split("=") for item in args.fixed_lr)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for method in args.methods:
            base = {"name": method, "epochs": args.epochs, "batch_size": args.batch_size}
            if method in fixed:
                tuning, best = {}, fixed[method]
            else:
                tuning = {lr: run(args.recipe, base | {"lr": lr}, args.seeds[0], validation=args.validation,
                                  workdir=workdir) for lr in args.lrs}
                best = max(tuning, key=lambda lr: tuning[lr]["accuracy"])
            final = [run(args.recipe, base | {"lr": best}, s, validation=0.0, workdir=workdir) for s in args.seeds]
            rows.append((method, tuning, best, final))
            for k in args.deploy_every if method != "phyll" else []:
                final = [run(args.recipe, base | {"lr": best, "deploy_every": k}, s, validation=0.0,
                             workdir=workdir) for s in args.seeds]
                rows.append((f"{method}, deploy_every {k}", {}, best, final))
        if not args.no_cascade:
            final = [run(args.recipe, "cascade", s, validation=0.0, workdir=workdir) for s in args.seeds]
            rows.append(("cascade (PIB)", {}, None, final))
    tuned = [m for m in args.methods if m not in fixed]
    print(f"recipe {args.recipe}, {args.epochs} epochs, batch {args.batch_size}, seeds {args.seeds}; "
          + (f"lr of {', '.join(tuned)} tuned on a {args.validation:.0%} validation share of the training "
             f"split (seed {args.seeds[0]})"
             if tuned else "")
          + ("; " if tuned and fixed else "") + (f"lr fixed: {args.fixed_lr}" if fixed else "") + "\n")
    print("| method | validation accuracy per lr (%) | lr chosen | test accuracy (%) | crossbar programmings | "
          "matmul calls | rows measured | wall time per run (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for method, tuning, best, final in rows:
        acc = np.array([100 * f["accuracy"] for f in final])
        spread = f" ± {acc.std(ddof=1):.1f}" if len(acc) > 1 else ""
        per_lr = ", ".join(f"{lr:g}: {100 * t['accuracy']:.1f}" for lr, t in tuning.items()) or "-"
        c = final[0]["count"]
        print(f"| {method} | {per_lr} | {best if best is not None else '(recipe pib:)'} | {acc.mean():.1f}{spread} | "
              f"{c.programs} | {c.calls} | {c.rows} | {np.mean([f['wall'] for f in final]):.0f} |")
    print(f"\nThe common readout on the network's inputs themselves (no units, no hardware): "
          f"{100 * raw_inputs_accuracy(args.recipe):.1f} % test")

if __name__ == "__main__":
    main()

"""What limits unsupervised PIB's linear probe on MNIST (issue 13): recipe variants ranked on a subset.

    python benchmarks/ablation_unsup.py [VARIANT ...] [--seed 0] [--mnist DIR] [--out DIR] [--workers 2]

Each variant is recipe unsup-mnist-memristor with a few keys changed (VARIANTS, relative to the
recipe as it was before issue 13's tuning: lr 0.0003, median widths, keep 0, 1 read, relu last
unit), on a stratified subset of MNIST (2,000 training, 1,000 test images; --full: the
8,000 / 2,000 split, as the fifth round's rows were run), one seed, through
benchmarks/bench_unsup.job (the real engine on the crossbar twin). Prints the last unit's linear probe (test %) per variant.
No arguments: every variant.
"""

from __future__ import annotations

import argparse
import functools
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_unsup import DEFAULT_MNIST, job, merged  # noqa: E402

SUBSET = {"dataset": {"n_train": 2000, "n_test": 1000}}
AUGMENT = [{"name": "crop", "min_scale": 0.7}, {"name": "rotate", "degrees": 15}, {"name": "pixel_noise", "std": 0.2}]


def units(last_activation: str = "relu", last_pib: dict | None = None, first: int = 64) -> dict:
    """The recipe's two units, the first one's width, the last one's activation and per-unit pib
    overrides changed."""
    return {"units": [{"kind": "crossbar", "instrument": "crossbar", "out": first, "activation": "relu", "clip": 2},
                      {"kind": "crossbar", "instrument": "crossbar", "out": 32, "activation": last_activation,
                       "clip": 2, "pib": last_pib or {}}]}


LINEAR_LAST = units("none")
BEFORE = {"pib": {"lr": 0.0003, "width_z": "median", "width_scale_z": 1}, "objective": {"name": "pib-2view", "keep": 0},
          "augment": AUGMENT, "measure": {"repeats": 1}, **units()}
WEAK_AUGMENT = {"augment": [{"name": "shift", "pixels": 2}, {"name": "pixel_noise", "std": 0.05}]}
STRONG_AUGMENT = {"augment": [{"name": "crop", "min_scale": 0.6}, {"name": "rotate", "degrees": 20},
                              {"name": "pixel_noise", "std": 0.3}]}
MILD_AUGMENT = {"augment": [{"name": "crop", "min_scale": 0.85}, {"name": "rotate", "degrees": 8},
                            {"name": "pixel_noise", "std": 0.1}]}
TUNED = {"pib": {"lr": 0.01, "width_z": "knn"}}  # the recipe's defaults after the first tuning below
ROUND4 = {"pib": {"lr": 0.003}, "objective": {"name": "pib-2view", "keep": 1}}  # the recipe of the fourth round
READS4 = {"measure": {"repeats": 4}}
IDEAL_TWIN = {"prog_noise": 0, "read_noise_rel": 0, "read_noise_abs": 0, "d2d": 0}


def round4(*changes: dict) -> dict:
    """The fourth round's recipe with `changes` merged in, in order."""
    return functools.reduce(merged, changes, ROUND4)


# name: (PIB iterations per unit, changes to the recipe as it was before)
VARIANTS: dict[str, tuple[int, dict]] = {
    "random units": (0, {}),
    "random units, linear last unit": (0, LINEAR_LAST),
    "before (lr 0.0003)": (300, {}),
    "lr 0.003": (300, {"pib": {"lr": 0.003}}),
    "lr 0.01": (300, {"pib": {"lr": 0.01}}),
    "lr 0.01, 1000 steps": (1000, {"pib": {"lr": 0.01}}),
    "lr 0.03": (300, {"pib": {"lr": 0.03}}),
    "lr 0.003, beta 0": (300, {"pib": {"lr": 0.003, "beta": 0}}),
    "lr 0.003, shift 2 + noise 0.05": (300, {"pib": {"lr": 0.003}, **WEAK_AUGMENT}),
    "lr 0.01, batch 512": (300, {"pib": {"lr": 0.01, "batch_size": 512}}),
    "lr 0.003, knn Z": (300, {"pib": {"lr": 0.003, "width_z": "knn"}}),
    "lr 0.01, knn Z": (300, {"pib": {"lr": 0.01, "width_z": "knn"}}),
    "lr 0.01, knn Z, 1000 steps": (1000, {"pib": {"lr": 0.01, "width_z": "knn"}}),
    "lr 0.003, knn Z, 1000 steps": (1000, {"pib": {"lr": 0.003, "width_z": "knn"}}),
    "lr 0.03, knn Z": (300, {"pib": {"lr": 0.03, "width_z": "knn"}}),
    "lr 0.01, knn X and Z": (300, {"pib": {"lr": 0.01, "width_z": "knn", "width_x": "knn"}}),
    "lr 0.01, knn Z, k 3, linear last unit": (300, {"pib": {"lr": 0.01, "width_z": "knn", "width_k": 3},
                                                  **LINEAR_LAST}),
    "lr 0.01, knn Z, k 30": (300, {"pib": {"lr": 0.01, "width_z": "knn", "width_k": 30}}),
    "lr 0.01, median Z x 0.5, linear last unit": (300, {"pib": {"lr": 0.01, "width_scale_z": 0.5}, **LINEAR_LAST}),
    "lr 0.01, knn Z, alpha 2": (300, {"pib": {"lr": 0.01, "width_z": "knn", "alpha": 2.0}}),
    "lr 0.01, knn Z, beta 0.1": (300, {"pib": {"lr": 0.01, "width_z": "knn", "beta": 0.1}}),
    "lr 0.01, knn Z, batch 64": (300, {"pib": {"lr": 0.01, "width_z": "knn", "batch_size": 64}}),
    "lr 0.01, knn Z, weight decay 0.001": (300, {"pib": {"lr": 0.01, "width_z": "knn", "weight_decay": 0.001}}),
    "lr 0.01, knn Z, clip 3": (300, {"pib": {"lr": 0.01, "width_z": "knn"}, "units": [
        {"kind": "crossbar", "instrument": "crossbar", "out": w, "activation": "relu", "clip": 3} for w in (64, 32)]}),
    "lr 0.01, knn Z, shift 2 before the others": (300, {"pib": {"lr": 0.01, "width_z": "knn"}, "augment": [
        {"name": "shift", "pixels": 2}, {"name": "crop", "min_scale": 0.7}, {"name": "rotate", "degrees": 15},
        {"name": "pixel_noise", "std": 0.2}]}),
    "lr 0.01, knn Z, strong augmentations": (300, {"pib": {"lr": 0.01, "width_z": "knn"}, **STRONG_AUGMENT}),
    "lr 0.01, linear last unit": (300, {"pib": {"lr": 0.01}, **LINEAR_LAST}),
    "lr 0.01, knn Z, linear last unit": (300, {"pib": {"lr": 0.01, "width_z": "knn"}, **LINEAR_LAST}),
    "lr 0.01, knn Z, linear last unit, 1000 steps": (1000, {"pib": {"lr": 0.01, "width_z": "knn"}, **LINEAR_LAST}),
    "lr 0.03, knn Z, linear last unit": (300, {"pib": {"lr": 0.03, "width_z": "knn"}, **LINEAR_LAST}),
    "lr 0.01, knn Z, 50 steps": (50, TUNED),
    "lr 0.01, knn Z, 200 steps": (200, TUNED),
    "lr 0.01, knn Z, unit 1 lr 0.001": (200, {**TUNED, **units(last_pib={"lr": 0.001})}),
    "lr 0.01, knn Z, unit 1 lr 0.001, 1000 steps": (1000, {**TUNED, **units(last_pib={"lr": 0.001})}),
    "lr 0.01, knn Z, unit 1 linear, lr 0.001": (200, {**TUNED, **units("none", {"lr": 0.001})}),
    "lr 0.01, knn Z, first unit 128 wide": (200, {**TUNED, **units(first=128)}),
    "lr 0.01, knn Z, beta 0.05": (200, {"pib": {**TUNED["pib"], "beta": 0.05}}),
    "lr 0.01, knn Z, beta 0.05, 1000 steps": (1000, {"pib": {**TUNED["pib"], "beta": 0.05}}),
    **{f"lr 0.01, knn Z, {v} views, {n} steps": (n, {**TUNED, "augment_views": v})
       for v in (4, 8, 16) for n in (50, 200, 1000)},
    **{f"lr 0.01, knn Z, stroke {a}, {n} steps": (n, {**TUNED, "augment": [*AUGMENT, {"name": "stroke", "amount": a}]})
       for a in (0.5, 1.0) for n in (50, 200, 1000)},
    **{f"lr 0.01, knn Z, elastic {a}, {n} steps": (n, {**TUNED, "augment": [{"name": "elastic", "alpha": a}, *AUGMENT]})
       for a in (8, 16, 34) for n in (50, 200, 1000)},
    **{f"lr {lr}, median Z, keep {k}, {n} steps": (n, {"pib": {"lr": lr, "width_z": "median"},
                                                     "objective": {"name": "pib-2view", "keep": k}})
       for lr in (0.01, 0.003) for k in (1, 3) for n in (10, 50, 200, 1000)},
    "lr 0.003, median Z, keep 1, linear last unit, 1000 steps": (1000, {
        "pib": {"lr": 0.003, "width_z": "median"}, "objective": {"name": "pib-2view", "keep": 1}, **LINEAR_LAST}),
    # the fifth round (run with --full): from the fourth round's recipe, 1000 steps
    "round 4": (1000, round4()),
    "round 4, 4 reads": (1000, round4(READS4)),
    "round 4, linear last unit": (1000, round4(LINEAR_LAST)),
    "round 4, 3000 steps": (3000, round4()),
    "round 4, batch 256": (1000, round4({"pib": {"batch_size": 256}})),
    "round 4, keep 3": (1000, round4({"objective": {"keep": 3}})),
    "round 4, milder augmentations": (1000, round4(MILD_AUGMENT)),
    "round 4, lr 0.01": (1000, round4({"pib": {"lr": 0.01}})),
    "round 4, beta 0": (1000, round4({"pib": {"beta": 0}})),
    "round 4, clip 3": (1000, round4({"units": [{**u, "clip": 3} for u in BEFORE["units"]]})),
    **{f"round 4, X width x {k}": (1000, round4({"pib": {"width_scale_x": k}})) for k in (0.3, 0.5, 2, 4)},
    "round 4, X and Z width x 0.5": (1000, round4({"pib": {"width_scale_x": 0.5, "width_scale_z": 0.5}})),
    "round 4, Z width x 2": (1000, round4({"pib": {"width_scale_z": 2}})),
    "round 4, ideal twin": (1000, round4({"board": IDEAL_TWIN})),
    "round 4, no programming noise": (1000, round4({"board": {"prog_noise": 0}})),
    "round 4, no read noise": (1000, round4({"board": {"read_noise_rel": 0, "read_noise_abs": 0}})),
    "linear last unit, milder augmentations, 4 reads": (1000, round4(LINEAR_LAST, MILD_AUGMENT, READS4)),
    "... and X width x 2": (1000, round4(LINEAR_LAST, MILD_AUGMENT, READS4, {"pib": {"width_scale_x": 2}})),
    "... and Z width x 2 (packaged)": (1000, round4(LINEAR_LAST, MILD_AUGMENT, READS4, {"pib": {"width_scale_z": 2}})),
    "... and Z width x 3": (1000, round4(LINEAR_LAST, MILD_AUGMENT, READS4, {"pib": {"width_scale_z": 3}})),
    "packaged, 1 read": (1000, round4(LINEAR_LAST, MILD_AUGMENT, {"pib": {"width_scale_z": 2}})),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("variants", nargs="*", help=f"of: {'; '.join(VARIANTS)}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mnist", type=Path, default=DEFAULT_MNIST)
    p.add_argument("--out", type=Path, default=Path("/tmp/labpnn-ablation-unsup"))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--full", action="store_true", help="the full 8,000 / 2,000 split instead of the subset")
    args = p.parse_args(argv)
    names = args.variants or list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        p.error(f"unknown variant {unknown[0]!r}; one of: {'; '.join(VARIANTS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = [(f"ablation{i}", "unsup-mnist-memristor", args.seed, VARIANTS[n][0], args.mnist, args.out,
             merged_changes(VARIANTS[n][1], args.full)) for i, n in enumerate(names)]
    split = "8,000 / 2,000" if args.full else "2,000 / 1,000"
    print(f"| variant (MNIST {split}, seed {args.seed}) | PIB iterations per unit | linear probe, last unit (%) |\n"
          "|---|---|---|", flush=True)
    with ProcessPoolExecutor(args.workers) as pool:
        for n, r in zip(names, pool.map(job, jobs)):
            print(f"| {n} | {r['steps']} | {100 * r['probe']:.1f} |", flush=True)
    return 0


def merged_changes(changes: dict, full: bool = False) -> dict:
    """The variant's changes over the recipe as it was before, on the subset unless full."""
    return merged(BEFORE if full else merged(BEFORE, SUBSET), changes)


if __name__ == "__main__":
    sys.exit(main())

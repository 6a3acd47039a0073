"""The paper's generalisation tests for PIB on the twins: input noise, data efficiency, OOD detection.

    python benchmarks/generalise.py [--quick] [--seeds 3] [--recipes opu-mnist mnist1d-memristor]
                                    [--mnist DIR]
                                    [--out DIR] [--report docs/generalisation.md]

For every recipe (default: the OPU twin on MNIST, opu-mnist, from --mnist DIR, default
/work/shared/datasets/mnist; and the memristor crossbar twin on MNIST-1D, mnist1d-memristor)
and seed s = 0..seeds-1, runs of the real engine (labpnn.engine.Run, one HDF5 file each, one after another):

- the recipe as it is: the noise curve (labpnn.generalise.evaluate: test accuracy with Gaussian
  noise of std 0, 1, 2, 5, 10, 20 % of the clean test inputs' RMS, and 50, 100 % to show where it
  breaks, measured through the deployed network) and the 100 % data-efficiency point (the run's recorded test accuracy);
- train_fraction 0.1, 0.2, 0.5: the run's recorded test accuracy (same test set);
- train_classes 0-7: OOD AUROC of the classes 8 and 9 from the readout's maximum softmax, and the
  8-class test accuracy.

Seed s: recipe and dataset seed s, every twin of instruments.yaml seeded with its seed + 100 s.
--quick: 50 PIB steps per unit and 100 readout steps instead of the recipe's (a smoke test of
the same tables). Prints the three tables (mean +- std over seeds), adds every run's records to
its run file (OUT/*.h5, analyses/: `labpnn inspect --json`) and keeps them all in OUT/results.json; with --report, replaces the tables section of that markdown file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import yaml  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
START, END = "<!-- generalise: start -->", "<!-- generalise: end -->"
RECIPES = ("opu-mnist", "mnist1d-memristor")
LEVELS = (0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)  # generalise.NOISE_LEVELS, and beyond
DEFAULT_MNIST = (REPO / ".." / "shared" / "datasets" / "mnist").resolve()


def _bench(out: Path, seed: int):
    from labpnn.bench import Bench

    config = yaml.safe_load((REPO / "instruments.yaml").read_text())
    for entry in config["instruments"].values():
        options = entry.setdefault("options", {})
        if "seed" in options:
            options["seed"] += 100 * seed
    path = out / f"bench-seed{seed}.yaml"
    path.write_text(yaml.safe_dump(config))
    return Bench.load(path)


def _recipe(name: str, quick: bool, mnist: Path):
    from labpnn.recipe import load_recipe, parse_recipe

    recipe = load_recipe(name)
    data = recipe.model_dump()
    if data["dataset"]["name"] == "mnist" and data["dataset"]["path"] is None:
        data["dataset"]["path"] = str(mnist)
    if quick:
        data["pib"]["steps"], data["readout"]["steps"] = 50, 100
    return parse_recipe(data, recipe.source + (" (--quick)" if quick else ""))


def _run(recipe, seed: int, out: Path, label: str, **options) -> list[dict]:
    """One run of a variant of `recipe`; its generalisation records, labelled."""
    import torch

    from labpnn import generalise
    from labpnn.engine import Run

    torch.set_num_threads(1)
    variant = generalise.variant(recipe, seed=seed, **options)
    bench = _bench(out, seed)
    path = out / f"{recipe.name}-{label}-seed{seed}.h5"
    path.unlink(missing_ok=True)
    t0 = time.perf_counter()
    try:
        run = Run(variant, bench, path)
        run.execute()
        if label == "full":
            records = generalise.evaluate(run, levels=LEVELS, save=True)
        elif label == "ood":
            records = [r for r in generalise.evaluate(run, levels=(0.0,), save=True) if r["test"] != "data"]
            for r in records:
                if r["test"] == "noise":
                    r["test"] = "ood-id-accuracy"   # the 8-class accuracy, re-measured
        else:
            records = [generalise.data_record(run)]
            generalise.record(path, records)
    finally:
        bench.close()
    seconds = time.perf_counter() - t0
    print(f"  {recipe.name} seed {seed} {label}: " + ", ".join(
        f"{r['test']} {r['setting']}: {r['value']:.3g} {r['unit']}" for r in records) + f" ({seconds:.0f} s)",
        flush=True)
    return [{**r, "recipe": recipe.name, "seed": seed, "run": label} for r in records]


def _cell(values: list[float], digits: int) -> str:
    if not values:
        return "–"
    std = np.std(values, ddof=1) if len(values) > 1 else 0.0
    return f"{np.mean(values):.{digits}f} ± {std:.{digits}f}"


def _values(records, recipe, test, setting=None):
    return [r["value"] for r in records if r["recipe"] == recipe and r["test"] == test
            and (setting is None or r["setting"] == setting)]


def tables(records: list[dict]) -> str:
    from labpnn.generalise import FRACTIONS

    recipes = list(dict.fromkeys(r["recipe"] for r in records))
    seeds = sorted({r["seed"] for r in records})
    lines = [f"Mean ± std (ddof 1) over {len(seeds)} seeds ({', '.join(map(str, seeds))}).", "",
             "**Input noise** — test accuracy (%) against the std of Gaussian noise added to every "
             "input value (% of the clean test inputs' RMS), measured through the deployed network; "
             "*recorded*: the run's own test accuracy (its training-time measurement).", "",
             "| recipe | recorded | " + " | ".join(f"{v:g} %" for v in LEVELS) + " |",
             "|---|---|" + "---|" * len(LEVELS)]
    for name in recipes:
        recorded = [r["value"] for r in records if r["recipe"] == name and r["test"] == "data"
                    and r["run"] == "full"]
        lines.append(f"| {name} | {_cell(recorded, 1)} | "
                     + " | ".join(_cell(_values(records, name, "noise", v), 1) for v in LEVELS) + " |")
    lines += ["", "**Data efficiency** — test accuracy (%) against the share of the training split "
              "trained on (stratified, seeded; same test set).", "",
              "| recipe | " + " | ".join(f"{100 * f:g} %" for f in FRACTIONS) + " |",
              "|---|" + "---|" * len(FRACTIONS)]
    for name in recipes:
        lines.append(f"| {name} | " + " | ".join(_cell(_values(records, name, "data", 100 * f), 1)
                                                  for f in FRACTIONS) + " |")
    lines += ["", "**OOD detection** — trained on digits 0-7; AUROC of the readout's maximum softmax "
              "probability telling the 0-7 test samples from the 8 and 9 ones (0.5: chance), and the "
              "8-class test accuracy (%, re-measured).", "",
              "| recipe | AUROC | 8-class accuracy (%) |", "|---|---|---|"]
    for name in recipes:
        lines.append(f"| {name} | {_cell(_values(records, name, 'ood'), 3)} | "
                     f"{_cell(_values(records, name, 'ood-id-accuracy'), 1)} |")
    return "\n".join(lines)


def report(path: Path, body: str, command: str) -> None:
    text = path.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{path}: no {START} ... {END} section to replace")
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    path.write_text(f"{head}{START}\n\n`{command}`\n\n{body}\n\n{END}{tail}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="50 PIB steps per unit, 100 readout steps")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES))
    parser.add_argument("--mnist", type=Path, default=DEFAULT_MNIST, help="MNIST IDX folder (opu-mnist)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "generalise")
    parser.add_argument("--report", type=Path, help="markdown file whose tables section to replace")
    parser.add_argument("--report-only", action="store_true", help="redraw from OUT/results.json")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.json"
    if args.report_only:
        records = json.loads(results.read_text())["records"]
    else:
        from labpnn.generalise import FRACTIONS, OOD_TRAIN_CLASSES

        records, t0 = [], time.perf_counter()
        for name in args.recipes:
            recipe = _recipe(name, args.quick, args.mnist)
            for seed in range(args.seeds):
                records += _run(recipe, seed, args.out, "full")
                for fraction in FRACTIONS[:-1]:
                    records += _run(recipe, seed, args.out, f"fraction{fraction:g}", train_fraction=fraction)
                records += _run(recipe, seed, args.out, "ood", train_classes=OOD_TRAIN_CLASSES)
        command = "python benchmarks/generalise.py" + (" --quick" if args.quick else "") + \
                  f" --seeds {args.seeds} --recipes {' '.join(args.recipes)}"
        results.write_text(json.dumps({"command": command, "wall_s": time.perf_counter() - t0,
                                       "records": records}, indent=1))
    command = json.loads(results.read_text())["command"]
    body = tables(records)
    print(body)
    if args.report:
        report(args.report, body, command)


if __name__ == "__main__":
    sys.exit(main())

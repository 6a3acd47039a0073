"""Ablation of the PIB changes of docs/pib-tuning.md: each on and off, MNIST-1D and MNIST, on the
crossbar twin and in simulation (the noise-free twin, weights unclipped), against backprop in
silico of the same architecture (labpnn.backprop); and a beta scan with its information plane.

    python benchmarks/ablation_pib.py --quick --seeds 0 1          # MNIST-1D only, 2 seeds
    python benchmarks/ablation_pib.py --seeds 0 1 2 3 4 5 --datasets mnist1d mnist
    python benchmarks/ablation_pib.py --beta-scan --seeds 0 1      # I(X;Z), I(Y;Z) against beta

Runs go through the engine (labpnn.engine.Run) exactly as labpnn compare and benchmarks/reproduce
do (labpnn.compare.jobs: its job runner, --workers processes, and benches); one result JSON per
job in OUT/results, so a rerun skips finished jobs.
Prints markdown tables; --report FILE puts them into FILE between the ablation markers.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from labpnn.compare import jobs  # noqa: E402
from reproduce import config  # noqa: E402
from reproduce.report import fit_then_compress  # noqa: E402

# Each change against the old defaults (BASE): pib overrides ("measure_repeats": the recipe's
# measure.repeats, reads averaged per input), and unit overrides for "wide".
BASE = {"width_x": "median", "width_z": "median", "copies": 1, "cycles": 0, "cycle_steps": 50}
VARIANTS = {
    "base": {},
    "width class": {"width_z": "class"},
    "width class x2": {"width_z": "class", "width_scale_z": 2.0},
    "width knn": {"width_z": "knn", "width_x": "knn"},
    "copies 4": {"copies": 4},
    "cycles 1": {"cycles": 1},
    "cycles 2": {"cycles": 2},
    "all": {"width_z": "class", "copies": 4, "cycles": 2},
    "cycles 2, repeats 4": {"cycles": 2, "measure_repeats": 4},
}
PACKAGED = {"mnist": "mnist-memristor", "mnist1d": "mnist1d-memristor"}
DATA = {"mnist": {"name": "mnist", "path": str(config.DEFAULT_MNIST), "n_train": 8000, "n_test": 2000},
        "mnist1d": {"name": "mnist1d", "n_train": 4000, "n_test": 1000}}
BP_EPOCHS = {"mnist": 30, "mnist1d": 100}
WIDE = [256, 128]          # "wide": 40 -> 256 -> 128 on a 512-column array (standing in for tiles)
MARK = ("<!-- ablation: start -->", "<!-- ablation: end -->")


def recipe(dataset: str, seed: int, pib: dict, sim: bool, steps: int | None, wide: bool = False) -> dict:
    r = config.recipe_dict(PACKAGED[dataset], seed=seed, dataset=DATA[dataset], steps=steps)
    pib = dict(pib)
    r["measure"]["repeats"] = pib.pop("measure_repeats", r["measure"]["repeats"])
    r["pib"].update(BASE | pib)
    if wide:
        for u, out in zip(r["units"], WIDE):
            u["out"] = out
    if sim:
        for u in r["units"]:
            u["clip"] = None
    return r


def bench(seed: int, sim: bool, wide: bool) -> dict:
    over = {"cols": 2 * max(WIDE)} if wide else None
    return config.bench_dict(seed, "ideal" if sim else "twin", overrides=over)


def pib_spec(ds: str, seed: int, pib: dict, where: str, steps: int | None, wide: bool = False) -> dict:
    sim = where == "sim"
    return {"kind": "run", "recipe": recipe(ds, seed, pib, sim, steps, wide), "bench": bench(seed, sim, wide)}


def bp_spec(ds: str, seed: int, steps: int | None, wide: bool) -> dict:
    return {"kind": "bp", "recipe": recipe(ds, seed, {}, True, steps, wide), "epochs": BP_EPOCHS[ds], "seed": seed,
            "benches": {}}


def mean_std(v: list[float]) -> str:
    a = 100 * np.array(v)
    return f"{a.mean():.1f} ± {a.std(ddof=1):.1f}" if len(a) > 1 else f"{a.mean():.1f}"


def ablation_specs(args) -> dict[tuple, dict]:
    """(dataset, variant, bench, seed) -> the PIB job; (dataset, "bp", wide, seed) -> backprop's."""
    specs = {}
    for ds in args.datasets:
        steps = args.steps.get(ds)
        for name in args.variants:
            wide = name == "wide"
            pib = VARIANTS[args.wide_variant] if wide else VARIANTS[name]
            for where in args.benches:
                for s in args.seeds:
                    specs[(ds, name, where, s)] = pib_spec(ds, s, pib, where, steps, wide)
        for wide in sorted({v == "wide" for v in args.variants}):
            for s in args.seeds:
                specs[(ds, "bp", wide, s)] = bp_spec(ds, s, steps, wide)
    return specs


def ablation(args, results: dict[tuple, dict]) -> list[str]:
    lines = []
    for ds in args.datasets:
        steps = args.steps.get(ds)

        def accs(*key) -> list[float]:
            return [results[(ds, *key, s)].get("test_accuracy", results[(ds, *key, s)].get("ideal_test"))
                    for s in args.seeds]

        lines += [f"**{ds}** ({DATA[ds]['n_train']}/{DATA[ds]['n_test']}, recipe `{PACKAGED[ds]}`"
                  f"{f', {steps} PIB steps per unit' if steps else ''}; test accuracy %, mean ± std over "
                  f"seeds {', '.join(map(str, args.seeds))})", "",
                  "| variant | " + " | ".join({"twin": "PIB on the twin", "sim": "PIB in simulation"}[b]
                                             for b in args.benches) + " | backprop in silico |",
                  "|---" * (len(args.benches) + 2) + "|"]
        for name in args.variants:
            label = name if name != "wide" else f"wide {WIDE} ({args.wide_variant})"
            lines.append(f"| {label} | " + " | ".join(mean_std(accs(name, b)) for b in args.benches)
                         + f" | {mean_std(accs('bp', name == 'wide'))} |")
        lines.append("")
    return lines


def beta_specs(args) -> dict[tuple, dict]:
    """(beta, seed) -> the PIB job in simulation."""
    ds = args.datasets[0]
    return {(beta, s): pib_spec(ds, s, VARIANTS[args.scan_variant] | {"beta": beta}, "sim", args.steps.get(ds))
            for beta in args.betas for s in args.seeds}


def beta_scan(args, results: dict[tuple, dict]) -> list[str]:
    lines = [f"**beta scan, {args.datasets[0]}** (PIB in simulation, `{args.scan_variant}`; information plane of "
             f"unit 0 and 1 per minibatch, smoothed, mean over seeds {', '.join(map(str, args.seeds))})", "",
             "| beta | test % | unit | I(Y;Z) first → last | I(X;Z) first → peak (step) → last | "
             "fit 90 % by step | compression ½ by step | fit then compress? |", "|---" * 8 + "|"]
    for beta in args.betas:
        rs = [results[(beta, s)] for s in args.seeds]
        accs = [r["test_accuracy"] for r in rs]
        planes = [[fit_then_compress(u["I_XZ"], u["I_YZ"]) for u in r["units"]] for r in rs]
        for u in range(len(planes[0])):
            f = {k: float(np.mean([p[u][k] for p in planes])) for k in planes[0][u]}
            # compression acts: I(X;Z) falls by > 0.05 bits after a peak that is not the first tenth
            compress = f["ixz_fall"] > 0.05 and f["t_xz_peak"] > 0.1 * f["steps"] and f["t_fit90"] <= f["t_cmp50"]
            lines.append(f"| {beta:g} | {mean_std(accs) if u == 0 else ''} | {u} | {f['iyz_first']:.2f} → "
                         f"{f['iyz_last']:.2f} | {f['ixz_first']:.2f} → {f['ixz_peak']:.2f} ({f['t_xz_peak']:.0f}) → "
                         f"{f['ixz_last']:.2f} | {f['t_fit90']:.0f} | {f['t_cmp50']:.0f} | "
                         f"{'yes' if compress else 'no'} |")
    return lines + [""]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="MNIST-1D only, fewer PIB steps on MNIST")
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--datasets", nargs="+", choices=sorted(PACKAGED), default=None)
    p.add_argument("--variants", nargs="+", choices=[*VARIANTS, "wide"], default=None)
    p.add_argument("--wide-variant", choices=sorted(VARIANTS), default="all", help="the settings of 'wide'")
    p.add_argument("--benches", nargs="+", choices=["twin", "sim"], default=["twin", "sim"])
    p.add_argument("--beta-scan", action="store_true", help="the beta scan instead of the ablation")
    p.add_argument("--betas", type=float, nargs="+", default=[0.0, 0.01, 0.1, 0.3, 1.0])
    p.add_argument("--scan-variant", choices=sorted(VARIANTS), default="base")
    p.add_argument("--out", type=Path, default=Path("/tmp/labpnn-ablation-pib"))
    p.add_argument("--workers", type=int, default=2, help="worker processes (0: in this process)")
    p.add_argument("--report", type=Path, help="markdown file to put the tables in (between the markers)")
    args = p.parse_args(argv)
    args.seeds = args.seeds or ([0, 1] if args.quick else [0, 1, 2, 3, 4, 5])
    args.datasets = args.datasets or (["mnist1d"] if args.quick else ["mnist1d", "mnist"])
    args.variants = args.variants or [*VARIANTS]
    args.steps = {"mnist": 150} if args.quick else {}
    t0 = time.perf_counter()
    specs = beta_specs(args) if args.beta_scan else ablation_specs(args)
    done = jobs.run_jobs(list(specs.values()), args.out, args.workers, log=lambda m: print(m, file=sys.stderr))
    failed = {k: r["error"] for k, spec in specs.items() if not (r := done[jobs.job_id(spec)])["ok"]}
    if failed:
        for k, e in failed.items():
            print(f"job {k} failed: {e}", file=sys.stderr)
        return 1
    results = {k: done[jobs.job_id(spec)] for k, spec in specs.items()}
    lines = beta_scan(args, results) if args.beta_scan else ablation(args, results)
    cmd = shlex.join(["python", "benchmarks/ablation_pib.py", *(sys.argv[1:] if argv is None else argv)])
    text = "\n".join([f"`{cmd}` ({time.perf_counter() - t0:.0f} s wall on a shared machine)", "", *lines])
    print(text)
    if args.report:
        doc = args.report.read_text() if args.report.exists() else ""
        key = "beta" if args.beta_scan else "ablation"
        start, end = (m.replace("ablation", key) for m in MARK)
        if start in doc:
            head, rest = doc.split(start, 1)
            doc = head + start + "\n" + text + "\n" + end + rest.split(end, 1)[1]
        else:
            doc += f"\n{start}\n{text}\n{end}\n"
        args.report.write_text(doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())

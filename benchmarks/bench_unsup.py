"""Unsupervised PIB (issue 13): the linear probe against PIB iterations per unit, and baselines.

    python benchmarks/bench_unsup.py [--quick] [--seeds 0 1 2] [--mnist DIR] [--fashion DIR] [--out DIR]
                                     [--report docs/results.md]

Full: recipe unsup-mnist-memristor (MNIST 8,000/2,000, 784 -> 64 -> 32 on the crossbar twin),
0, 10, 50, 200 and 1000 PIB iterations per unit, each a run of the real engine
(labpnn.engine.Run, one HDF5 file each) for every seed. 0 iterations: the units as initialised,
deployed and measured, never optimised ("random deployed units"). The probe: labpnn.linear_eval
(scikit-learn logistic regression) on the last unit's measured features. Baselines of the same
width (32): raw inputs (784 wide), PCA to 32 and supervised PIB (recipe mnist-memristor, 300
steps per unit, on the same twin). Seed s: recipe seed s, crossbar twin seed 100 + s.
--quick: unsup-digits, iterations 0, 10, 50, one seed, no report (a smoke test).
--fashion DIR: also the same recipe on Fashion-MNIST (IDX files in DIR, as for MNIST) at 0 and
the last iteration count, every seed, with the 10-class probe and the paper's three-group probe
(labpnn.linear_eval.FASHION_GROUPS: upper-body clothes, lower-body clothes, footwear; dress and
bag in no group), against raw inputs and PCA of the same width.

Prints the table and keeps every job's result in OUT/results.json; with --report, replaces
its section of that markdown file (between the markers) and writes the plots
docs/img/results-unsup-probe.png and -map.png beside it. --report-only redraws the report from
OUT/results.json without running anything.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import yaml  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MNIST = (REPO / ".." / "shared" / "datasets" / "mnist").resolve()
START, END = "<!-- bench_unsup: start -->", "<!-- bench_unsup: end -->"
WIDTH_NOTE = "same width as the last unit"
IDX_DATASETS = ("mnist", "fashion-mnist")
DATASET_OF = {"fashion": "fashion-mnist"}  # a job's `what` -> the dataset it runs on (else the recipe's)


def _bench(out: Path, seed: int, board: dict | None = None) -> Path:
    """The bench file: the crossbar twin, seed 100 + seed, its options changed by `board`."""
    path = out / f"bench-seed{seed}.yaml"
    options = {"seed": 100 + seed, **(board or {})}
    path.write_text(yaml.safe_dump({"instruments": {"crossbar": {"driver": "sim-crossbar", "options": options}}}))
    return path


def merged(base: dict, changes: dict) -> dict:
    """base with changes merged in, mappings key by key (a copy)."""
    out = dict(base)
    for k, v in changes.items():
        out[k] = merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _recipe(name: str, seed: int, steps: int, folder: Path | None, dataset: str | None = None,
            changes: dict | None = None) -> dict:
    """Recipe `name` with seed and steps, on `dataset` (default: its own) read from `folder`,
    and `changes` merged in."""
    from labpnn.recipe import load_recipe

    data = merged(load_recipe(name).model_dump(mode="json", exclude_none=True), changes or {})
    data["seed"] = seed
    data["pib"]["steps"] = max(steps, 1)
    if dataset is not None:
        data["dataset"]["name"] = dataset
    if folder is not None and data["dataset"]["name"] in IDX_DATASETS:
        data["dataset"]["path"] = str(folder)
    return data


def unit_features(args: tuple) -> tuple:
    """One engine run (or, at 0 iterations, the units deployed untrained): (recipe, dataset,
    [(train, test) measured features of every unit], run file or None, readout or None, seconds).
    args: (what, recipe name, seed, steps, data folder, out folder[, recipe changes]); the changes'
    "board" key, if any, changes the crossbar twin's options instead."""
    import torch

    torch.set_num_threads(1)
    from labpnn import data
    from labpnn.bench import Bench
    from labpnn.engine import Run
    from labpnn.recipe import parse_recipe
    from labpnn.runlog import RunReader
    from labpnn.units import build_units

    what, name, seed, steps, folder, out, *changes = args
    changes = dict(changes[0]) if changes else {}
    board = changes.pop("board", None)
    recipe = parse_recipe(_recipe(name, seed, steps, folder, DATASET_OF.get(what), changes))
    ds = data.load(recipe.dataset.name, n_train=recipe.dataset.n_train, n_test=recipe.dataset.n_test,
                   seed=recipe.dataset.seed, path=recipe.dataset.path)
    bench = Bench.load(_bench(out, seed, board))
    t0 = time.time()
    path = readout = None
    try:
        if steps == 0:  # untrained: as the engine initialises them, deployed and measured
            bench["crossbar"].connect()
            h_train, h_test, feats = ds.x_train, ds.x_test, []
            for unit in build_units(recipe, bench, ds.x_train.shape[1]):
                unit.deploy()
                h_train, h_test = unit.measure(h_train), unit.measure(h_test)
                feats.append((h_train, h_test))
        else:
            path = out / f"{what}-{name}-steps{steps}-seed{seed}.h5"
            if path.exists():
                path.unlink()
            Run(recipe, bench, path).execute()
            with RunReader(path) as reader:
                feats = [(u.features("train"), u.features("test")) for u in reader.units]
                readout = reader.test_accuracy
    finally:
        bench.close()
    return recipe, ds, feats, path, readout, time.time() - t0


def job(args: tuple) -> dict:
    """unit_features' run; the last unit's probe accuracy (args as there)."""
    from labpnn.linear_eval import group_probe, linear_probe

    what, name, seed, steps = args[:4]
    _, ds, feats, path, readout, seconds = unit_features(args)
    f_train, f_test = feats[-1]
    result = {"what": what, "recipe": name, "seed": seed, "steps": steps,
              "probe": linear_probe(f_train, ds.y_train, f_test, ds.y_test), "seconds": seconds}
    if steps:
        result |= {"file": str(path), "readout": readout}
    if what == "fashion":
        result["groups"] = group_probe(f_train, ds.y_train, f_test, ds.y_test)
    return result


def baselines(name: str, folder: Path | None, dataset: str | None = None) -> dict:
    """Probe accuracy of the raw inputs and of PCA to the last unit's width (fitted on the
    training set); on Fashion-MNIST also their three-group probe ("raw_groups", "pca_groups")."""
    from sklearn.decomposition import PCA

    from labpnn import data
    from labpnn.linear_eval import group_probe, linear_probe
    from labpnn.recipe import parse_recipe

    recipe = parse_recipe(_recipe(name, 0, 1, folder, dataset))
    ds = data.load(recipe.dataset.name, path=recipe.dataset.path, seed=recipe.dataset.seed)
    width = recipe.units[-1].out
    pca = PCA(width, random_state=0).fit(ds.x_train)
    features = {"raw": (ds.x_train, ds.x_test), "pca": (pca.transform(ds.x_train), pca.transform(ds.x_test))}
    out = {"width": width, "in": ds.x_train.shape[1], "dataset": ds.meta}
    for key, (f_train, f_test) in features.items():
        out[key] = linear_probe(f_train, ds.y_train, f_test, ds.y_test)
        if recipe.dataset.name == "fashion-mnist":
            out[f"{key}_groups"] = group_probe(f_train, ds.y_train, f_test, ds.y_test)
    return out


def stats(values: list[float]) -> tuple[float, float]:
    v = np.asarray(values, float) * 100
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def fmt(values: list[float]) -> str:
    m, s = stats(values)
    return f"{m:.1f} ± {s:.1f}" if len(values) > 1 else f"{m:.1f}"


def plot_curve(iterations, curve, base, supervised, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    xs = [max(i, 1) for i in iterations]  # 0 iterations drawn at 1 on the log axis
    m, s = zip(*(stats(curve[i]) for i in iterations))
    ax.errorbar(xs, m, yerr=s, marker="o", capsize=4, label="unsupervised PIB (pib-2view), mean ± std")
    for value, label, style in ((base["pca"], f"PCA to {base['width']}", "--"), (base["raw"], "raw inputs", ":")):
        ax.axhline(100 * value, color="grey", ls=style, label=label)
    if supervised:
        ax.axhline(stats(supervised)[0], color="tab:green", ls="-.", label="supervised PIB (300 steps)")
    ax.set_xscale("log")
    ax.set_xticks(xs, [str(i) for i in iterations])
    ax.set_xlabel("PIB iterations per unit (0: random deployed units)")
    ax.set_ylabel("linear probe, test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def versions() -> str:
    from labpnn.provenance import versions as v

    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    return ", ".join(f"{k} {x}" for k, x in v().items()) + f"; labpnn commit {commit}"


def times(k: float) -> str:
    """' × k' for a width scale other than 1."""
    return f" × {k:g}" if k != 1 else ""


def markdown(args, iterations, curve, base, supervised, readouts, wall: float, load, made_by: str,
             map_png: str, fashion: list[str]) -> str:
    from labpnn.recipe import load_recipe

    recipe = load_recipe("unsup-mnist-memristor")
    pib = recipe.pib
    options = recipe.objective if isinstance(recipe.objective, dict) else {}
    keep = f" with keep = {options['keep']} (the input terms' reward)" if options.get("keep") else ""
    last = iterations[-1]
    rows = ["| PIB iterations per unit | linear probe, test (%) |", "|---|---|"]
    rows += [f"| {i}{' (random deployed units)' if i == 0 else ''} | {fmt(curve[i])} |" for i in iterations]
    gain = stats(curve[last])[0] - stats(curve[0])[0]
    vs_pca = stats(curve[last])[0] - 100 * base["pca"]
    rising = all(stats(curve[a])[0] <= stats(curve[b])[0] for a, b in zip(iterations, iterations[1:]))
    lines = [
        START,
        "## Unsupervised PIB: linear probe against PIB iterations (MNIST)",
        "",
        f"Recipe `unsup-mnist-memristor` ({base['in']} → 64 → {base['width']} on the crossbar twin, objective "
        f"`pib-2view`{keep}, β = {pib.beta}, α = {pib.alpha}, Adam lr {pib.lr}, batch {pib.batch_size}, kernel widths: "
        f"X {pib.width_x}{times(pib.width_scale_x)}, Z {pib.width_z}{times(pib.width_scale_z)}"
        + (f" (k = {pib.width_k})" if "knn" in (pib.width_x, pib.width_z) else "")
        + f"; last unit's activation {recipe.units[-1].activation}; {recipe.measure.repeats} measurement(s) "
        f"averaged per input; augmentations {recipe.augmentations().describe()}; both views of every sample measured through the "
        "twin; no label reaches training). Probe: scikit-learn logistic regression on the "
        "last unit's measured features (standardised), trained on the 8,000 training images, scored on the "
        f"2,000 test images; {len(args.seeds)} seeds (mean ± std, ddof 1).",
        "",
        "```",
        f"python benchmarks/bench_unsup.py --seeds {' '.join(map(str, args.seeds))} --report docs/results.md"
        + (f" --map-method {args.map_method}" if args.map_method != "auto" else ""),
        "```",
        "",
        *rows,
        "",
        f"| baseline ({base['width']} features unless said) | linear probe, test (%) |",
        "|---|---|",
        f"| raw inputs ({base['in']} pixels) | {100 * base['raw']:.1f} |",
        f"| PCA to {base['width']} (fitted on the training images) | {100 * base['pca']:.1f} |",
        f"| random (untrained) deployed units | {fmt(curve[0])} |",
        f"| supervised PIB (`mnist-memristor`, 300 steps per unit, same twin) | {fmt(supervised)} |",
        "",
        f"Targets: the curve rises with iterations: **{'yes' if rising else 'no'}** (means "
        f"{' → '.join(f'{stats(curve[i])[0]:.1f}' for i in iterations)} %); the final probe beats random deployed "
        f"units by ≥ 15 points: **{'yes' if gain >= 15 else 'no'}** ({gain:+.1f} points); it at least matches PCA "
        f"of the same width: **{'yes' if vs_pca >= 0 else 'no'}** ({vs_pca:+.1f} points). The engine's digital "
        f"readout on the same features (softmax regression, L-BFGS) after {last} iterations: {fmt(readouts)} %.",
        "",
        f"- wall time {wall / 60:.1f} min on {args.workers} worker process(es), one thread each (load average at "
        f"the start {' / '.join(f'{x:.1f}' for x in load)}: the machine was shared; the lead re-measures on a quiet "
        "machine)",
        f"- data: {base['dataset'].get('folder', base['dataset'].get('source'))} ({base['dataset'].get('split')})",
        f"- versions: {made_by} (jobs; report code as of this file's commit)",
        "",
        "![probe against iterations](img/results-unsup-probe.png)",
        "",
        f"![2-D map of the test features]({map_png})",
        "",
        f"The map: the last unit's measured test features after {last} iterations (seed {args.seeds[0]}), "
        f"embedded in 2-D (labpnn.embedding, method {args.map_method}: UMAP when umap-learn is installed, else "
        "t-SNE), coloured by the label that training never saw.",
        "",
        *fashion,
        END,
    ]
    return "\n".join(lines) + "\n"


def fashion_lines(results: list[dict], fbase: dict | None, last: int) -> list[str]:
    """The Fashion-MNIST table: 10-class and three-group probe of random and trained units and
    of the baselines; without Fashion-MNIST files, how to get it."""
    from labpnn.linear_eval import FASHION_GROUPS

    groups = "; ".join(f"{k}: {', '.join(map(str, v))}" for k, v in FASHION_GROUPS.items())
    head = (f"Three-group probe (the paper's \"upper-body clothes, lower-body clothes, footwear\"; classes {groups}; "
            "dress (3) and bag (8) belong to none and are left out of it): the same logistic regression on the group "
            "labels.")
    if fbase is None:
        return ["Fashion-MNIST: not run (no Fashion-MNIST files on this machine); `--fashion DIR` runs the same recipe "
                "on the IDX files in DIR. " + head]
    rows = {i: [r for r in results if r["what"] == "fashion" and r["steps"] == i] for i in (0, last)}
    return [f"### Fashion-MNIST ({fbase['dataset'].get('folder')}, {fbase['dataset'].get('split')})", "", head, "",
            "| features | 10 classes (%) | 3 groups (%) |", "|---|---|---|",
            *(f"| {'random deployed units' if i == 0 else f'unsupervised PIB, {i} iterations'} | "
              f"{fmt([r['probe'] for r in rs])} | {fmt([r['groups'] for r in rs])} |" for i, rs in rows.items()),
            f"| raw inputs ({fbase['in']} pixels) | {100 * fbase['raw']:.1f} | {100 * fbase['raw_groups']:.1f} |",
            f"| PCA to {fbase['width']} | {100 * fbase['pca']:.1f} | {100 * fbase['pca_groups']:.1f} |"]


def write_section(report: Path, section: str) -> None:
    text = report.read_text() if report.exists() else ""
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + section.rstrip("\n") + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    report.write_text(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="digits, 0/10/50 iterations, one seed")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--iterations", type=int, nargs="+", default=[0, 10, 50, 200, 1000])
    p.add_argument("--mnist", type=Path, default=DEFAULT_MNIST, help="folder of the MNIST IDX files")
    p.add_argument("--fashion", type=Path, help="folder of the Fashion-MNIST IDX files: also run it (three-group probe)")
    p.add_argument("--out", type=Path, default=Path("/tmp/labpnn-bench-unsup"), help="run files go here")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--report", type=Path, help="markdown file whose section to (re)write, e.g. docs/results.md")
    p.add_argument("--report-only", action="store_true", help="redraw the report from OUT/results.json")
    p.add_argument("--map-method", default="auto", choices=["auto", "umap", "tsne", "pca"],
                   help="the 2-D map's method (labpnn.embedding; auto: UMAP when installed, else t-SNE)")
    args = p.parse_args(argv)
    name, supervised_name = "unsup-mnist-memristor", "mnist-memristor"
    if args.quick:
        name, supervised_name, args.seeds, args.iterations = "unsup-digits", None, args.seeds[:1], [0, 10, 50]
    args.out.mkdir(parents=True, exist_ok=True)
    iterations = sorted(set(args.iterations) | {0})
    jobs = [("unsup", name, s, i, args.mnist, args.out) for i in sorted(iterations, reverse=True) for s in args.seeds]
    if supervised_name:
        jobs += [("supervised", supervised_name, s, 300, args.mnist, args.out) for s in args.seeds]
    if args.fashion and not args.quick:
        jobs += [("fashion", name, s, i, args.fashion, args.out) for i in (iterations[-1], 0) for s in args.seeds]
    saved = args.out / "results.json"
    if args.report_only:
        done = json.loads(saved.read_text())
        base, results, wall, load, made_by = (done[k] for k in ("baselines", "jobs", "wall_s", "load", "versions"))
        fbase = done.get("fashion_baselines")
        args.workers = done["workers"]
    else:
        t0 = time.time()
        load, made_by = os.getloadavg(), versions()  # before the jobs: the code that runs them
        base = baselines(name, args.mnist)
        fbase = baselines(name, args.fashion, "fashion-mnist") if any(j[0] == "fashion" for j in jobs) else None
        results = []

        def save(wall: float | None) -> None:  # after every job: a crash loses nothing finished
            saved.write_text(json.dumps({"baselines": base, "fashion_baselines": fbase, "jobs": results,
                                         "wall_s": wall, "load": load, "versions": made_by,
                                         "workers": args.workers}, indent=1))

        with ProcessPoolExecutor(args.workers) as pool:
            for r in pool.map(job, jobs):
                print(f"{r['what']:>10} {r['recipe']} seed {r['seed']} {r['steps']:>4} steps: linear probe "
                      f"{100 * r['probe']:.1f} %" + (f", 3 groups {100 * r['groups']:.1f} %" if "groups" in r else "")
                      + f" ({r['seconds']:.0f} s)", flush=True)
                results.append(r)
                save(None)
        wall = time.time() - t0
        save(wall)
    curve: dict[int, list[float]] = {i: [] for i in iterations}
    supervised, readouts, files = [], [], {}
    for r in results:
        if r["what"] == "supervised":
            supervised.append(r["probe"])
        elif r["what"] == "unsup":
            curve[r["steps"]].append(r["probe"])
            files[(r["steps"], r["seed"])] = r.get("file")
            if r["steps"] == iterations[-1]:
                readouts.append(r["readout"])
    print(f"\nlinear probe, test accuracy (%), {name}, seeds {args.seeds}:")
    for i in iterations:
        print(f"  {i:>5} PIB iterations per unit: {fmt(curve[i])}")
    print(f"  raw inputs: {100 * base['raw']:.1f}; PCA to {base['width']}: {100 * base['pca']:.1f}"
          + (f"; supervised PIB: {fmt(supervised)}" if supervised else "") + f"  (wall {wall / 60:.1f} min, "
          f"load average {load[0]:.1f})")
    fashion = fashion_lines(results, fbase, iterations[-1])
    if fbase is not None:
        print("\n".join(fashion[2:]))
    if args.report:
        from labpnn.embedding import run_map, save_png

        img = args.report.parent / "img"
        plot_curve(iterations, curve, base, supervised, img / "results-unsup-probe.png")
        coords, labels, title = run_map(files[(iterations[-1], args.seeds[0])], method=args.map_method)
        save_png(coords, labels, img / "results-unsup-map.png", title)
        write_section(args.report, markdown(args, iterations, curve, base, supervised, readouts, wall, load,
                                            made_by, "img/results-unsup-map.png", fashion))
        print(f"wrote {args.report} and {img}/results-unsup-*.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Engine overhead and memory: a run through labpnn.engine.Run against the same computation
done directly, and PIB (unit by unit) against end-to-end backprop of the same network.

    python benchmarks/bench_engine.py                       # both parts, table at the end
    python benchmarks/bench_engine.py --part overhead --recipe mnist-memristor --repeats 3
    python benchmarks/bench_engine.py --part memory --profile

Every case runs in a fresh subprocess (one BLAS/torch thread unless --threads), so peak RSS
is its own: the kernel's high-water mark (VmHWM) is reset with /proc/self/clear_refs once
the imports and the data are loaded, and "peak" is VmHWM at the end minus the RSS at that
point (psutil), i.e. what the computation itself added.

Overhead: "engine" is Run(recipe, bench, path).execute() on the in-process twins (no simulated
latency: the twins compute at NumPy speed and sleep nowhere). "direct" is the same computation
without the engine: the same units on the same bench, the same PIB steps through
UnitOptimiser (same seeds), the same deploy and measure calls in the same batches, the same
readout — no events, no HDF5, no checkpoints, no channel health checks, no linear probes.
Both reach the same accuracy (checked). Cases alternate (engine, direct, engine, ...) to spread
the noise of a shared machine; the table gives the median and the best of each.

Memory: the PIB network trained unit by unit with UnitOptimiser in silico (each unit on the
previous unit's outputs) against labpnn.backprop.train of the same architecture, at the same
batch size: MNIST 784 -> 256 -> 128 (-> 10) with batch 1024 and with batch 256, and a wide network
where parameters and optimiser state dominate (784 -> 4096 x 4, batch 256). Both are warmed up on
a few samples first, so that library code paged in on first use is not counted.

Measured on the 2-core development machine, shared (load average 2.5-6), one thread per process
(wall and CPU time of a whole run, median of 3 (MNIST-1D) / 2 (MNIST) alternating runs):

| recipe | engine wall / CPU (s) | direct wall / CPU (s) | engine / direct, wall / CPU | peak RSS engine / direct (MB) |
|---|---|---|---|---|
| mnist1d-memristor (2 x 200 PIB steps) | 17.2 / 16.8 | 16.9 / 16.2 | 1.02 / 1.03 | 137 / 126 |
| mnist-memristor (2 x 300 PIB steps) | 26.7 / 25.5 | 24.0 / 23.4 | 1.11 / 1.09 | 162 / 144 |

Both reach the same test accuracy to the last digit (58.30 %, 93.40 %). What the engine adds is
mostly per PIB step: the optimiser checkpoint (UnitOptimiser.state_bytes, a torch.save of the
model and the Adam moments: 34 KB / 0.6 ms for a 40 -> 64 unit, 592 KB / 1.6 ms for 784 -> 64,
1.5 MB / 2.3 ms for an OPU unit's 2000 -> 64) plus its HDF5 write in RunLog.step (~1.6 s over
the 600 steps of the MNIST run). Health checks, probes, events and the run file's other
writes are below 0.5 s per run. In both runs the time goes to PIB itself (torch.linalg.eigh
of the 256 x 256 kernels: ~45 % of a step) and, on MNIST-1D, to generating the dataset (~3 s
per run, mnist1d.make_dataset, repeated by every run).

| network | batch | parameters | PIB peak (MB) | backprop peak (MB) | PIB / backprop |
|---|---|---|---|---|---|
| 784 -> 256 -> 128 (-> 10) | 1024 | 235,146 | 127.7 | 16.3 | 7.85 |
| 784 -> 256 -> 128 (-> 10) | 256 | 235,146 | 24.8 | 8.3 | 2.98 |
| 784 -> 4096 x 4 (-> 10) | 256 | 53,600,266 | 756.3 | 1057.6 | 0.72 |

PIB needs less only when parameters and optimiser state dominate: backprop holds every layer's
weights, gradients and Adam moments at once (16 bytes per parameter: 858 MB of the 1058 MB
for the wide network), PIB one unit's (268 MB) plus the previous unit's outputs over the
whole training set (8,000 x 4096 float32 = 131 MB, held as the unit's inputs). For the small
MNIST network the minibatch's n x n kernel matrices and their float64 eigendecompositions
dominate PIB (n = 1024: 8 MB each, ~14 of them alive at the peak; 4x fewer samples, ~14x less
memory), while backprop's activations are n x 1168 floats (5 MB).
"""

from __future__ import annotations

import os
import sys

if "--threads" in sys.argv:
    _t = sys.argv[sys.argv.index("--threads") + 1]
else:
    _t = "1"
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = _t

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MNIST = (REPO / ".." / "shared" / "datasets" / "mnist").resolve()
BENCH = {"instruments": {"crossbar": {"driver": "sim-crossbar", "options": {"seed": 1}},
                         "opu": {"driver": "sim-opu", "options": {"n_components": 2000, "max_n_features": 1024,
                                                                  "seed": 2}}}}
MEMORY_NETS = {"mnist-256-128": ([256, 128], 1024), "mnist-256-128-b256": ([256, 128], 256),
               "wide-4096x4": ([4096, 4096, 4096, 4096], 256)}


# ----------------------------------------------------------------------------- measuring

def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


class Meter:
    """Wall, CPU (all threads) and peak RSS above the RSS at start()."""

    def start(self) -> None:
        import gc

        import psutil

        gc.collect()
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            self.resettable = True
        except OSError:
            self.resettable = False
        self.rss0 = psutil.Process().memory_info().rss
        self.t0, self.c0 = time.perf_counter(), time.process_time()

    def stop(self) -> dict:
        return {"wall_s": time.perf_counter() - self.t0, "cpu_s": time.process_time() - self.c0,
                "rss0_mb": self.rss0 / 2**20, "peak_mb": (_status("VmHWM") - self.rss0) / 2**20,
                "hwm_mb": _status("VmHWM") / 2**20, "peak_reset": self.resettable}


def _set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


# ----------------------------------------------------------------------------- cases

def case_engine(recipe_dict: dict, bench_path: str, out: str) -> dict:
    from labpnn import data
    from labpnn.bench import Bench
    from labpnn.engine import Run
    from labpnn.recipe import parse_recipe
    from labpnn.runlog import RunReader

    recipe = parse_recipe(recipe_dict)
    d = recipe.dataset
    data.load(d.name, **d.load_options())  # warm (import, cache)
    bench = Bench.load(bench_path)
    m = Meter()
    m.start()
    Run(recipe, bench, out).execute()
    res = m.stop()
    bench.close()
    res["accuracy"] = RunReader(out).test_accuracy
    res["file_mb"] = Path(out).stat().st_size / 2**20
    return res


def case_direct(recipe_dict: dict, bench_path: str, out: str) -> dict:
    import numpy as np

    from labpnn import data, readout
    from labpnn.bench import Bench
    from labpnn.objectives.pib import pib_optimiser
    from labpnn.recipe import parse_recipe
    from labpnn.units import build_units

    recipe = parse_recipe(recipe_dict)
    d = recipe.dataset
    data.load(d.name, **d.load_options())
    bench = Bench.load(bench_path)
    m = Meter()
    m.start()
    ds = data.load(d.name, **d.load_options())
    names = recipe.instruments()
    for name in names:
        bench[name].connect()
    units = build_units(recipe, bench, ds.x_train.shape[1])
    size, repeats = recipe.measure.batch_size, recipe.measure.repeats

    def batched(fn, h):
        return np.concatenate([np.asarray(fn(h[i:i + size]), np.float32) for i in range(0, len(h), size)])

    def measure(unit, h):
        return batched(lambda c: np.mean([unit.measure(c) for _ in range(repeats)], axis=0, dtype=np.float32), h)

    h_train, h_test = ds.x_train, ds.x_test
    for index, unit in enumerate(units):
        settings = recipe.unit_pib(index)
        seed = int(np.random.SeedSequence([recipe.seed, index, 0]).generate_state(1)[0])
        opt = pib_optimiser(unit.model(), batched(unit.prepare, h_train), ds.x_train, ds.y_train, settings, seed)
        for step in range(settings.steps):
            opt.step(step)
        unit.deploy()
        h_train, h_test = measure(unit, h_train), measure(unit, h_test)
    params = readout.fit_readout(h_train, ds.y_train, ds.n_classes, steps=recipe.readout.steps,
                                 weight_decay=recipe.readout.weight_decay)
    acc = readout.accuracy(params, h_test, ds.y_test)
    bench.safe_state(names)
    res = m.stop()
    bench.close()
    res["accuracy"] = acc
    return res


def _mnist(n_train: int | None, mnist: str):
    from labpnn import data

    return data.load("mnist", n_train=n_train, path=mnist)


def data_subset(ds, n: int):
    import dataclasses

    return dataclasses.replace(ds, x_train=ds.x_train[:n], y_train=ds.y_train[:n])


def case_mem_pib(widths: list[int], batch: int, steps: int, mnist: str) -> dict:
    import torch

    from labpnn.objectives.pib import pib_optimiser
    from labpnn.pib import PIBSettings
    from labpnn.units.base import Activation

    ds = _mnist(None, mnist)
    # warm-up: the same operations on a few samples, so that library code paged in on first use
    # (BLAS, LAPACK, autograd) is not counted as the computation's memory
    warm = torch.nn.Sequential(torch.nn.Linear(784, 8), Activation("relu"))
    pib_optimiser(warm, ds.x_train[:64], ds.x_train[:64], ds.y_train[:64], PIBSettings(steps=1, batch_size=64),
                  seed=0).step(0)
    del warm
    m = Meter()
    m.start()
    h = torch.as_tensor(ds.x_train)
    sizes = [h.shape[1], *widths]
    settings = PIBSettings(steps=steps, batch_size=batch)
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        model = torch.nn.Sequential(torch.nn.Linear(a, b), Activation("relu"))
        opt = pib_optimiser(model, h, ds.x_train, ds.y_train, settings, seed=i)
        for s in range(steps):
            opt.step(s)
        with torch.no_grad():
            h = model(h)  # the next unit trains on this unit's outputs (in silico: no twin)
        del opt
    res = m.stop()
    res["params"] = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    return res


def case_mem_bp(widths: list[int], batch: int, epochs: int, mnist: str) -> dict:
    from labpnn import backprop
    from labpnn.recipe import parse_recipe

    ds = _mnist(None, mnist)
    recipe = parse_recipe({"name": "mem", "dataset": {"name": "mnist"},
                           "units": [{"kind": "crossbar", "instrument": "crossbar", "out": w} for w in widths]})
    small = data_subset(ds, 64)
    backprop.train(parse_recipe({**recipe.model_dump(), "units": [{"kind": "crossbar", "instrument": "crossbar",
                                                                   "out": 8}]}), small,
                   backprop.BackpropSettings(epochs=1, batch_size=64))  # warm-up, as for PIB
    m = Meter()
    m.start()
    backprop.train(recipe, ds, backprop.BackpropSettings(epochs=epochs, batch_size=batch))
    res = m.stop()
    sizes = [784, *widths, 10]
    res["params"] = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    return res


def subprocess_case(args: list[str], threads: int, profile: str | None = None) -> dict:
    cmd = [sys.executable, __file__, "--threads", str(threads), *args]
    if profile:
        cmd = [sys.executable, "-m", "cProfile", "-o", profile, __file__, "--threads", str(threads), *args]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"case {args} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- main

def overhead(args) -> list[dict]:
    import yaml

    from labpnn.recipe import load_recipe

    recipe = load_recipe(args.recipe).model_dump()
    if recipe["dataset"]["name"] in ("mnist", "fashion-mnist") and not recipe["dataset"].get("path"):
        recipe["dataset"]["path"] = str(args.mnist)
    if args.steps:
        recipe["pib"]["steps"] = args.steps
    tmp = Path(tempfile.mkdtemp(prefix="bench_engine-"))
    bench_path = tmp / "instruments.yaml"
    bench_path.write_text(yaml.safe_dump(BENCH))
    spec = json.dumps(recipe)
    rows = {"engine": [], "direct": []}
    for r in range(args.repeats):
        for case in ("engine", "direct"):
            out = tmp / f"{case}-{r}.h5"
            res = subprocess_case(["--case", case, "--spec", spec, "--bench", str(bench_path), "--out", str(out)],
                                  args.threads)
            rows[case].append(res)
            print(f"  {case:<7} run {r + 1}: {res['wall_s']:6.1f} s wall, {res['cpu_s']:6.1f} s CPU, peak "
                  f"+{res['peak_mb']:.0f} MB, test accuracy {100 * res['accuracy']:.2f} %", flush=True)
    if args.profile:
        prof = tmp / "engine.prof"
        subprocess_case(["--case", "engine", "--spec", spec, "--bench", str(bench_path), "--out",
                         str(tmp / "profiled.h5")], args.threads, profile=str(prof))
        print_profile(prof)
    return [{"case": c, "recipe": args.recipe, **agg(v)} for c, v in rows.items()]


def agg(v: list[dict]) -> dict:
    return {"wall_med": statistics.median(r["wall_s"] for r in v), "wall_min": min(r["wall_s"] for r in v),
            "cpu_med": statistics.median(r["cpu_s"] for r in v), "cpu_min": min(r["cpu_s"] for r in v),
            "peak_mb": max(r["peak_mb"] for r in v), "hwm_mb": max(r["hwm_mb"] for r in v),
            "accuracy": v[0]["accuracy"], "n": len(v), "file_mb": v[0].get("file_mb")}


def print_profile(path: Path, n: int = 25) -> None:
    import pstats

    print(f"\ncProfile of one engine run ({path}), by cumulative time:")
    pstats.Stats(str(path)).sort_stats("cumulative").print_stats(n)


def memory(args) -> list[dict]:
    rows = []
    for name, (widths, batch) in MEMORY_NETS.items():
        for case, extra in (("mem_pib", ["--steps", str(args.mem_steps)]), ("mem_bp", ["--epochs", "1"])):
            res = subprocess_case(["--case", case, "--widths", ",".join(map(str, widths)), "--batch", str(batch),
                                   "--mnist", str(args.mnist), *extra], args.threads)
            rows.append({"net": name, "case": case, "widths": widths, "batch": batch, **res})
            print(f"  {name:<14} {case:<8} peak +{res['peak_mb']:7.1f} MB ({res['wall_s']:.1f} s)", flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["overhead", "memory", "all"], default="all")
    ap.add_argument("--recipe", default="mnist1d-memristor")
    ap.add_argument("--steps", type=int, help="PIB steps per unit (default: the recipe's)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--mnist", type=Path, default=DEFAULT_MNIST)
    ap.add_argument("--mem-steps", type=int, default=10)
    ap.add_argument("--profile", action="store_true", help="cProfile one more engine run")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    # internal: one case in this process
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--bench", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--widths", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--epochs", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        _set_threads(args.threads)
        import logging

        logging.getLogger("labpnn").addHandler(logging.NullHandler())
        logging.getLogger("labpnn").propagate = False
        if args.case in ("engine", "direct"):
            fn = case_engine if args.case == "engine" else case_direct
            res = fn(json.loads(args.spec), args.bench, args.out)
        elif args.case == "mem_pib":
            res = case_mem_pib([int(w) for w in args.widths.split(",")], args.batch, args.mem_steps, str(args.mnist))
        else:
            res = case_mem_bp([int(w) for w in args.widths.split(",")], args.batch, args.epochs, str(args.mnist))
        print(json.dumps(res))
        return 0

    print(f"bench_engine: {args.threads} thread(s) per process, load average "
          f"{' / '.join(f'{v:.1f}' for v in os.getloadavg())} on {os.cpu_count()} cores", flush=True)
    over, mem = [], []
    if args.part in ("overhead", "all"):
        print(f"overhead, recipe {args.recipe}:")
        over = overhead(args)
    if args.part in ("memory", "all"):
        print("memory, PIB unit by unit against end-to-end backprop:")
        mem = memory(args)
    print()
    if over:
        e, d = over
        print(f"| recipe {args.recipe} | wall median (s) | wall best (s) | CPU median (s) | CPU best (s) "
              f"| peak RSS above start (MB) | test accuracy (%) |")
        print("|---|---|---|---|---|---|---|")
        for r in over:
            print(f"| {r['case']} | {r['wall_med']:.1f} | {r['wall_min']:.1f} | {r['cpu_med']:.1f} | {r['cpu_min']:.1f} "
                  f"| {r['peak_mb']:.0f} | {100 * r['accuracy']:.2f} |")
        print(f"| **engine / direct** | **{e['wall_med'] / d['wall_med']:.2f}** | {e['wall_min'] / d['wall_min']:.2f} "
              f"| **{e['cpu_med'] / d['cpu_med']:.2f}** | {e['cpu_min'] / d['cpu_min']:.2f} "
              f"| {e['peak_mb'] / max(d['peak_mb'], 1e-9):.2f} | |")
        print(f"(run file: {e['file_mb']:.1f} MB; target: engine / direct <= 1.2)\n")
    if mem:
        print("| network | batch | parameters | PIB peak (MB) | backprop peak (MB) | PIB / backprop |")
        print("|---|---|---|---|---|---|")
        for name in MEMORY_NETS:
            p = next(r for r in mem if r["net"] == name and r["case"] == "mem_pib")
            b = next(r for r in mem if r["net"] == name and r["case"] == "mem_bp")
            print(f"| 784 → {' → '.join(map(str, p['widths']))} (→ 10) | {p['batch']} | {b['params']:,} "
                  f"| {p['peak_mb']:.1f} | {b['peak_mb']:.1f} | {p['peak_mb'] / max(b['peak_mb'], 1e-9):.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"overhead": over, "memory": mem}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

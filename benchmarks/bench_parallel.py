"""Parallel against cascade: the same hybrid network (an OPU unit, then a crossbar unit), trained
unit after unit on one machine (scheme cascade, both twins in this process) and with both units
at once on two sites (scheme parallel, the embedded cluster: a dask scheduler here and one worker
process per site, on 127.0.0.1).

    python benchmarks/bench_parallel.py --repeat 2      # hybrid-parallel: MNIST (LABPNN_DATA or --data)
    python benchmarks/bench_parallel.py --quick         # hybrid-parallel-digits, fewer steps
    python benchmarks/bench_parallel.py --rounds 1 2    # also the parallel scheme with a second round
    python benchmarks/bench_parallel.py --profile       # also each site's CPU seconds per task

One table: wall clock of the training run (Run.execute: the same phases for both, readout
included), medians over --repeat runs that alternate cascade and parallel so both see the same
load, the speed-up of the medians and of each repeat; the cluster's start-up (scheduler, two
worker processes importing torch, instruments constructed), timed apart, once per parallel
case, and reused by its repeats. Init pass: the initialisation pass's wall clock (the last
unit's revision 0, which waits for the others); final pass: the units' last measurements, summed
(they run one after another); both from the run file's site records. Busy per site: seconds its
tasks ran. Bytes: the array and parameter payloads between the coordinator and the sites
(labpnn.sites.payload_bytes: data rows, measured features, parameters, optimiser states), not
dask's framing. Accuracy: the digital readout's test accuracy on the last unit's features.

The network is balanced (--unit-steps, default 245 + 355 PIB steps: the OPU site also runs the
optical passes); both schemes train the same one. CPU: seconds of the cascade's process, and of
the coordinator and both site processes for the parallel run. Every run checks that each site is
its own process with one torch thread and glibc's default malloc (no MALLOC_TRIM_THRESHOLD_).
The cascade runs with one torch thread (--cascade-threads): a second spin-waits for a core on
this shared machine and made 256 x 256 eigendecompositions 18-75x slower.

Measured (shared machine, 1-minute load average 4.7-5.2, one repeat): cascade 45.2 s, parallel
32.5 s, 1.39x; CPU 29.5 s against 30.7 s; init pass 3.7 s, final pass 5.1 s; paris busy 27.0 s,
beijing 23.9 s; test accuracy 92.70 % (cascade) and 93.80 % (parallel); 93.1 MB to the sites and
29.8 MB back. docs/parallel.md ("Speed") has what changed, and why wall clocks under load say little.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

BALANCED = [245, 355]  # OPU unit, crossbar unit: the OPU site also runs the optical passes
DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mnist"


def run_cascade(recipe, out: Path, threads: int) -> dict:
    import torch

    from labpnn.bench import Bench
    from labpnn.engine import Run
    from labpnn.runlog import RunReader
    from labpnn.sites.site import warm_up

    warm_up()
    bench = Bench.load()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    start, cpu = time.perf_counter(), time.process_time()
    try:
        Run(recipe.model_copy(update={"scheme": None}), bench, out).execute()
    finally:
        torch.set_num_threads(before)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    bench.close()
    return {"wall_s": wall, "cpu_s": cpu, "accuracy": RunReader(out).test_accuracy, "sites": {}, "init_s": None,
            "final_s": None}


def run_parallel(recipe, sites, out: Path) -> dict:
    from labpnn.engine import Run
    from labpnn.runlog import RunReader
    from labpnn.sites import ClusterBench

    before = {name: t.as_dict() for name, t in sites.traffic.items()}
    bench = ClusterBench(sites)
    site_cpu = at_sites(sites, _cpu)
    start, cpu = time.perf_counter(), time.process_time()
    Run(recipe, bench, out).execute()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    site_cpu = {name: t - site_cpu[name] for name, t in at_sites(sites, _cpu).items()}
    reader = RunReader(out)
    records = [r for r in reader.site_records if r.get("revision") is not None]
    last = max(r["revision"] for r in records)
    busy = {name: {k: t.as_dict()[k] - before.get(name, {}).get(k, 0) for k in ("busy_s", "bytes_sent", "bytes_received")}
            for name, t in sites.traffic.items()}
    return {"wall_s": wall, "cpu_s": cpu + sum(site_cpu.values()), "accuracy": reader.test_accuracy, "sites": busy,
            # unit l's revision 0 waits for unit l-1's: the last unit's rev-0 wall is the whole pass
            "init_s": max(r["wall_s"] for r in records if r["revision"] == 0),
            # the trained network measured unit after unit: the sum of the units' last measurements
            "final_s": sum(r.get("measure_s", float("nan")) for r in records if r["revision"] == last)}


def _cpu() -> float:
    """At a site: its process's CPU seconds so far (every thread: its work and dask's)."""
    return time.process_time()


def _threads() -> dict:
    """At a site: its process, torch's thread count and glibc's trim threshold (what check_sites checks)."""
    import torch

    return {"pid": os.getpid(), "torch_threads": torch.get_num_threads(),
            "malloc_trim": os.environ.get("MALLOC_TRIM_THRESHOLD_")}


def check_sites(sites) -> str:
    """Each site its own process (not a thread of this one, sharing its GIL) with one torch thread, and
    glibc's default malloc (dask's nanny sets MALLOC_TRIM_THRESHOLD_; labpnn's embedded cluster unsets it)."""
    found = at_sites(sites, _threads)
    pids = [f["pid"] for f in found.values()]
    if os.getpid() in pids or len(set(pids)) != len(pids):
        raise SystemExit(f"the sites are not separate processes: {found} (this process {os.getpid()})")
    if any(f["torch_threads"] != 1 for f in found.values()):
        raise SystemExit(f"a site runs more than one torch thread: {found}")
    if any(f["malloc_trim"] for f in found.values()):  # labpnn.sites.cluster.start_cluster unsets it
        raise SystemExit(f"a site runs with MALLOC_TRIM_THRESHOLD_ (every large buffer mapped anew): {found}")
    return ", ".join(f"{name} pid {f['pid']}, {f['torch_threads']} torch thread" for name, f in found.items())


def _profile_start() -> None:
    """At a site: profile its one executor thread (where its tasks run), in thread CPU seconds."""
    import cProfile

    from distributed import get_worker

    profile = get_worker().labpnn_profile = cProfile.Profile(time.thread_time)  # the worker outlives this task
    profile.enable()


def _profile_stop() -> dict[str, float]:
    """At a site: CPU seconds in its task functions (train, measure, load_inputs, ...) since start."""
    import pstats

    from distributed import get_worker

    profile = get_worker().labpnn_profile
    profile.disable()
    stats = pstats.Stats(profile).stats
    return {fn: row[3] for (file, _, fn), row in stats.items() if file.endswith("sites/site.py") and fn in TASKS}


TASKS = ("train", "measure", "load_inputs", "unit_call", "device_call", "open_unit")


def at_sites(sites, fn) -> dict:
    """fn() at every site, in its executor thread (pinned to its instruments as labpnn's calls are)."""
    from labpnn.sites.site import resource

    return {s.name: sites.client.submit(fn, workers=[s.address], pure=False,
                                        resources={resource(n): 1 for n in s.instruments}).result()
            for s in sites.sites.values()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="hybrid-parallel-digits with 60 PIB steps per unit")
    parser.add_argument("--data", default=os.environ.get("LABPNN_DATA", str(DATA)), help="MNIST IDX folder")
    parser.add_argument("--steps", type=int, help="PIB steps per unit (default: the recipe's)")
    parser.add_argument("--unit-steps", type=int, nargs=2, metavar=("OPU", "CROSSBAR"), default=BALANCED,
                        help="PIB steps of each unit: the balanced network (default %(default)s: both sites as "
                             "busy, 600 steps in all as the recipe's 300 + 300); 0 0: the recipe's (or --steps)")
    parser.add_argument("--cascade-threads", type=int, default=1,
                        help="torch threads of the cascade (default 1: measured fastest, see the docstring)")
    parser.add_argument("--rounds", type=int, nargs="+", default=[1], help="parallel rounds to compare")
    parser.add_argument("--profile", action="store_true",
                        help="also print each site's CPU seconds per task (cProfile in its compute thread; it slows "
                             "the parallel runs: take wall clocks without it)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run cascade and parallel alternately this many times (medians; each repeat's ratio)")
    args = parser.parse_args()

    from labpnn.recipe import load_recipe, parse_recipe
    from labpnn.schemes.parallel import parallel_options
    from labpnn.sites import open_sites

    recipe = load_recipe("hybrid-parallel-digits" if args.quick else "hybrid-parallel")
    data = recipe.model_dump()
    if not args.quick:
        data["dataset"]["path"] = args.data
    if args.steps or args.quick:
        data["pib"]["steps"] = args.steps or 60
    if any(args.unit_steps) and not (args.quick or args.steps):
        for unit, steps in zip(data["units"], args.unit_steps):
            unit["pib"] = {**unit.get("pib", {}), "steps": steps}
    base = parse_recipe(data)
    loads = [os.getloadavg()]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for rounds in args.rounds:
            spec = parse_recipe({**data, "scheme": {**data["scheme"], "rounds": rounds}})
            start = time.perf_counter()
            with open_sites(spec, layout=parallel_options(spec).sites) as sites:
                startup = time.perf_counter() - start
                processes = check_sites(sites)
                cascades, parallels = [], []
                for i in range(args.repeat):  # interleaved: both see the same load
                    if rounds == args.rounds[0] or not rows:
                        cascades.append(run_cascade(base, Path(tmp) / f"cascade-{rounds}-{i}.h5", args.cascade_threads))
                    if args.profile:
                        at_sites(sites, _profile_start)
                    parallels.append(run_parallel(spec, sites, Path(tmp) / f"parallel-{rounds}-{i}.h5"))
                    if args.profile:
                        parallels[-1]["profile"] = at_sites(sites, _profile_stop)
                    loads.append(os.getloadavg())
            if cascades:
                rows.append(("cascade", None, 0.0, cascades))
            rows.append(("parallel", rounds, startup, parallels))
    cascade = statistics.median(r["wall_s"] for r in rows[0][3])
    lo, hi = min(x[0] for x in loads), max(x[0] for x in loads)
    steps = " + ".join(str(base.unit_pib(i).steps) for i in range(len(base.units)))
    print(f"\n{base.name}: {base.dataset.name}, {steps} PIB steps (per unit and round), measure batch "
          f"{base.measure.batch_size}, {os.cpu_count()} cores, 1-min load average {lo:.1f}-{hi:.1f} during the runs; "
          f"medians of {args.repeat} interleaved repeat(s); cascade: {args.cascade_threads} torch thread(s) in this "
          f"process (pid {os.getpid()}); sites: {processes}\n")
    print("| scheme | rounds | wall clock (s) | speed-up over cascade | per-repeat speed-ups | CPU (s) "
          "| cluster start-up (s) | init pass (s) | final pass (s) | busy per site (s) | test accuracy (%) "
          "| bytes to sites (MB) | bytes from sites (MB) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for scheme, rounds, startup, runs in rows:
        med = lambda key: statistics.median(r[key] for r in runs)  # noqa: E731
        wall = med("wall_s")
        ratios = ", ".join(f"{c['wall_s'] / r['wall_s']:.2f}" for c, r in zip(rows[0][3], runs))
        sites = runs[-1]["sites"]
        busy = ", ".join(f"{name} {statistics.median(r['sites'][name]['busy_s'] for r in runs):.1f}"
                         for name in sites) or "-"
        sent = sum(s["bytes_sent"] for s in sites.values()) / 1e6
        received = sum(s["bytes_received"] for s in sites.values()) / 1e6
        passes = "- | -" if scheme == "cascade" else f"{med('init_s'):.1f} | {med('final_s'):.1f}"
        print(f"| {scheme} | {rounds or '-'} | {wall:.1f} | {cascade / wall:.2f}x | {ratios} | {med('cpu_s'):.1f} "
              f"| {startup:.1f} | {passes} "
              f"| {busy} | {100 * med('accuracy'):.2f} | {sent:.1f} | {received:.1f} |")

    for scheme, rounds, _, runs in rows:
        for i, r in enumerate(runs):
            for site, cpu in r.get("profile", {}).items():
                print(f"CPU s at site {site} ({scheme}, rounds {rounds}, repeat {i + 1}): {sum(cpu.values()):.1f} = "
                      + ", ".join(f"{fn} {cpu[fn]:.2f}" for fn in TASKS if fn in cpu))


if __name__ == "__main__":
    main()

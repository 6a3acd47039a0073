"""The main job (`labpnn run`, recipe mnist1d-memristor on the twins) on 1 and 2 torch/BLAS
threads (`--threads`), on an otherwise idle machine and beside 1 or 2 other busy processes
(each a CPU-bound loop, standing in for another job): wall and CPU seconds, peak memory and
test accuracy per row. On 2 cores a second thread helps an idle machine a little and, beside
another job, costs several times the wall time: torch's pool busy-waits for the cores it
shares. That is why `labpnn run` computes on one thread unless told otherwise.
Run: python benchmarks/bench_threads.py [--quick] [--recipe NAME]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUSY = "while True: pass"


def run(recipe: str, threads: int, out: Path) -> tuple[float, float, float, float]:
    """(wall s, CPU s, peak MB, test accuracy %) of one `labpnn run`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "labpnn", "run", "--recipe", recipe, "--threads", str(threads),
                    "--out", str(out), "--quiet"], check=True, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    summary = json.loads(subprocess.run([sys.executable, "-m", "labpnn", "inspect", str(out), "--json"],
                                        check=True, capture_output=True, text=True).stdout)
    return wall, cpu, after.ru_maxrss / 1024, 100 * summary["test_accuracy"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="idle and one busy process only")
    p.add_argument("--recipe", default="mnist1d-memristor")
    args = p.parse_args()
    loads = (0, 1) if args.quick else (0, 1, 2)
    print(f"{'other busy processes':>20} {'threads':>7} {'wall s':>7} {'CPU s':>6} {'peak MB':>8} {'test %':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for load in loads:
            busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(load)]
            try:
                for threads in (1, 2):
                    wall, cpu, peak, acc = run(args.recipe, threads, Path(tmp) / f"{load}-{threads}.h5")
                    print(f"{load:>20} {threads:>7} {wall:>7.1f} {cpu:>6.1f} {peak:>8.0f} {acc:>6.1f}", flush=True)
            finally:
                for b in busy:
                    b.kill()
                    b.wait()
    print(f"recipe {args.recipe}; CPU s: the run's own (user + system); peak MB: the largest child so far")


if __name__ == "__main__":
    main()

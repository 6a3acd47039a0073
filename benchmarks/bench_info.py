"""Speed and memory of the matrix-based entropy estimator, forward + backward.

    python benchmarks/bench_info.py [--quick] [--threads N]

Times are the best of several runs after a warm-up (interference only adds time), as
wall clock and as the process's CPU time; with --threads 1 the CPU time is the work
itself, whatever else the machine runs (the load average is printed).

Memory is the peak resident set (RSS) during one call above the RSS just before it:
the kernel's high-water mark (VmHWM, reset through /proc/self/clear_refs), exact rather
than sampled. torch's CPU allocator is invisible to tracemalloc, and glibc keeps freed
blocks, so memory is measured in a child process run with MALLOC_MMAP_THRESHOLD_=65536:
there every tensor over 64 KiB is mapped on allocation and returned on free, and RSS
follows the live tensors (that setting slows allocation, hence the separate process
for timing). Linux only.

Target: alpha = 2 at least 10x faster than the eigenvalue path at n = 1024.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

from labpnn import info
from labpnn.pib import pib_terms

ALPHAS = (1.01, 2.0)
D = 128
WHATS = ("entropy", "MI")


def entropy_step(x: torch.Tensor, alpha: float):
    def run():
        xg = x.clone().requires_grad_()
        info.entropy(info.normalize(info.gram(xg)), alpha).backward()
    return run


def mi_step(x: torch.Tensor, z: torch.Tensor, alpha: float):
    def run():
        zg = z.clone().requires_grad_()
        info.mutual_information(x, zg, alpha).backward()
    return run


def pib_step(alpha: float, n: int = 1024):
    """PIB loss + gradient: a 128 -> 64 linear + relu unit, X of dimension 784."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 784, generator=g)
    h = torch.randn(n, 128, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    unit = torch.nn.Linear(128, 64)

    def run():
        unit.zero_grad()
        pib_terms(x, y, torch.relu(unit(h)), beta=0.01, alpha=alpha).loss.backward()
    return run


def cases(sizes: list[int]):
    """(key, function) of every measurement: 'n alpha what'."""
    for n in sizes:
        g = torch.Generator().manual_seed(n)
        x, z = torch.randn(n, D, generator=g), torch.randn(n, D, generator=g)
        for alpha in ALPHAS:
            yield f"{n} {alpha} entropy", entropy_step(x, alpha)
            yield f"{n} {alpha} MI", mi_step(x, z, alpha)
    for alpha in ALPHAS:
        yield f"pib {alpha}", pib_step(alpha)


def timed(fn, repeats: int) -> tuple[float, float]:
    """Best wall and CPU time of fn() in ms, after one warm-up call."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return 1e3 * min(wall), 1e3 * min(cpu)


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key))


def peak_rss_growth(fn) -> float:
    """Peak RSS during fn() above the RSS before it, in MiB, after one warm-up call."""
    fn()
    base = _status_kib("VmRSS:")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark to the current RSS
    fn()
    return (_status_kib("VmHWM:") - base) / 1024


def memory_in_child(args: argparse.Namespace) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--memory-only"] + ["--quick"] * args.quick
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n up to 1024, fewer repeats")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--memory-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [256, 512, 1024] if args.quick else [256, 512, 1024, 2048]
    if args.memory_only:
        print(json.dumps({key: peak_rss_growth(fn) for key, fn in cases(sizes)}))
        return
    mib = memory_in_child(args)
    times = {}
    for key, fn in cases(sizes):
        big = key.startswith("2048") or key.startswith("pib")
        times[key] = timed(fn, 2 if (args.quick or big) else 5)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.1f}, d = {D}")
    head = " | ".join(f"{w + ' ms':>10} {w + ' CPU ms':>14} {w + ' MiB':>11}" for w in WHATS)
    print(f"{'n':>5} {'alpha':>5} | {head}")
    for n in sizes:
        for alpha in ALPHAS:
            keys = [f"{n} {alpha} {w}" for w in WHATS]
            print(f"{n:>5} {alpha:>5} | " + " | ".join(
                f"{times[k][0]:>10.1f} {times[k][1]:>14.1f} {mib[k]:>11.1f}" for k in keys))
    ratios = [(w, [times[f"1024 1.01 {w}"][i] / times[f"1024 2.0 {w}"][i] for i in (0, 1)])
              for w in WHATS]
    print("speed-up of alpha=2 over the eigenvalue path at n=1024 (wall / CPU): "
          + ", ".join(f"{w} {r[0]:.0f}x / {r[1]:.0f}x" for w, r in ratios) + " (target >= 10x)")
    for alpha in ALPHAS:
        wall, cpu = times[f"pib {alpha}"]
        print(f"PIB loss + gradient, batch 1024, 128->64 linear+relu unit, X dim 784, "
              f"alpha {alpha}: {wall:.0f} ms ({cpu:.0f} ms CPU), {mib[f'pib {alpha}']:.0f} MiB")


if __name__ == "__main__":
    main()

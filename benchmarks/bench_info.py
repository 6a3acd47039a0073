"""Speed and memory of the matrix-based entropy estimator, forward + backward.

    python benchmarks/bench_info.py [--quick] [--threads N] [--large] [--landmarks]

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

Targets: alpha = 2 at least 10x faster than the eigenvalue path at n = 1024; the fast
estimator (estimator="fast", labpnn.lowrank) at alpha = 1.01 at most 3x the alpha = 2 time
at n = 1024 with MI within 1 % of the exact path, and n = 4096 under 1 s and 1 GB. The
accuracy table compares fast with exact on random Gaussian features (a flat spectrum, the
hard case) and on MNIST digits with a random ReLU layer (../shared/datasets/mnist);
--landmarks adds a landmark (Nystrom) estimate's rows to it, measured and not adopted
(docs/information.md says why).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch

from labpnn import info
from labpnn.pib import pib_terms

ALPHAS = (1.01, 2.0)
ESTIMATES = ((1.01, "exact"), (1.01, "fast"), (2.0, "exact"))
D = 128
WHATS = ("entropy", "MI")
LARGE = 4096
MNIST = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "datasets", "mnist")


def entropy_step(x: torch.Tensor, alpha: float, estimator: str = "exact"):
    def run():
        xg = x.clone().requires_grad_()
        info.entropy(info.normalize(info.gram(xg)), alpha, estimator).backward()
    return run


def mi_step(x: torch.Tensor, z: torch.Tensor, alpha: float, estimator: str = "exact"):
    def run():
        zg = z.clone().requires_grad_()
        info.mutual_information(x, zg, alpha, estimator=estimator).backward()
    return run


def mi_and_gradient(x, z, alpha: float, estimator: str) -> tuple[float, torch.Tensor]:
    zg = z.clone().requires_grad_()
    mi = info.mutual_information(x, zg, alpha, estimator=estimator)
    mi.backward()
    return mi.item(), zg.grad.reshape(-1)


def mnist_pairs(n: int):
    """(name, x, z) pairs: random features, and MNIST digits (or labels) with a ReLU layer."""
    g = torch.Generator().manual_seed(n)
    pairs = [("randn 128 / randn 128", torch.randn(n, D, generator=g), torch.randn(n, D, generator=g))]
    try:
        with gzip.open(os.path.join(MNIST, "t10k-images-idx3-ubyte.gz")) as f:
            x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 784)[:n] / 255.0
        with gzip.open(os.path.join(MNIST, "t10k-labels-idx1-ubyte.gz")) as f:
            y = np.frombuffer(f.read(), np.uint8, offset=8)[:n].astype(np.int64)
    except OSError:
        return pairs
    x = torch.tensor(x, dtype=torch.float32)
    z = torch.relu(x @ (torch.randn(784, 64, generator=g) / 28))
    return pairs + [("MNIST x / relu z", x, z), ("MNIST y / relu z", torch.tensor(y), z)]


def accuracy_table(sizes: list[int], landmarks: bool = False) -> None:
    print("fast against exact, alpha 1.01: MI relative error, gradient cosine and relative error")
    for n in sizes:
        for name, x, z in mnist_pairs(n):
            e, ge = mi_and_gradient(x, z, 1.01, "exact")
            rows = [("fast", mi_and_gradient(x, z, 1.01, "fast"))]
            if landmarks:
                rows += [(f"landmarks {m}", landmark_mi_and_gradient(x, z, m))
                         for m in LANDMARKS if m < n]
            for label, (f, gf) in rows:
                cos = float(torch.nn.functional.cosine_similarity(ge, gf, 0))
                print(f"  n {n:>5} {name:<22} {label:<14} MI exact {e:.4f} bit, {f:.4f} bit, "
                      f"error {100 * (f - e) / e:+.2f} %; gradient cosine {cos:.3f}, "
                      f"error {100 * float((gf - ge).norm() / ge.norm()):.0f} %")


# -- the landmark (Nystrom) estimate, measured and not adopted (docs/information.md) --------

LANDMARKS = (256, 512, 1024)


class _Eigvalsh(torch.autograd.Function):
    """Eigenvalues of a symmetric M; backward V diag(g) V^T (no 1 / (l_i - l_j) terms)."""

    @staticmethod
    def forward(ctx, M):
        lam, V = torch.linalg.eigh(M)
        ctx.save_for_backward(V)
        return lam

    @staticmethod
    def backward(ctx, g):
        (V,) = ctx.saved_tensors
        return (V * g) @ V.T


def _landmark_sum(C: torch.Tensor, idx: torch.Tensor, n: int, alpha: float) -> torch.Tensor:
    """sum_i lambda_i^alpha over one diagonal block (rows C, n_b of them) of K / n, K a
    unit-diagonal kernel with columns C = K[:, idx] (idx: landmark rows of the block), from
    the Nystrom approximation C K[idx, idx]^-1 C^T (m eigenvalues from an m x m problem, in
    float64) and the block's missing trace spread evenly over its other n_b - m."""
    nb, m = C.shape
    C = C.to(torch.float64)
    W = C[idx]
    L = torch.linalg.cholesky((W + W.T) * 0.5 + 1e-7 * m * torch.eye(m, dtype=torch.float64))
    M = torch.linalg.solve_triangular(L, torch.linalg.solve_triangular(L, C.T @ C, upper=False).T,
                                      upper=False)
    lam = _Eigvalsh.apply((M + M.T) * 0.5).clamp_min(0.0) / n
    tail = (nb / n - lam.sum()).clamp_min(1e-300) / (nb - m)
    return (lam ** alpha).sum() + (nb - m) * tail ** alpha


def _landmark_entropy(C: torch.Tensor, idx: torch.Tensor, alpha: float,
                      y: torch.Tensor | None = None) -> torch.Tensor:
    """S_alpha of K / n from K[:, idx] (_landmark_sum); with labels y, of K o K_y, block by
    class (each block its landmarks and its own tail)."""
    n = C.shape[0]
    if y is None:
        return torch.log2(_landmark_sum(C, idx, n, alpha)) / (1.0 - alpha)
    total = 0.0
    for c in torch.unique(y):
        rows = torch.nonzero(y == c).squeeze(1)
        cols = torch.nonzero(y[idx] == c).squeeze(1)
        local = torch.searchsorted(rows, idx[cols])  # the block's landmarks, as its rows
        total = total + _landmark_sum(C[rows][:, cols], local, n, alpha)
    return torch.log2(total) / (1.0 - alpha)


def _landmark_columns(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """K[:, idx] of t's Gaussian kernel (info's default width, scale-free gradient): n x m,
    no n x n matrix."""
    t = t.reshape(t.shape[0], -1)
    u = info._ScaleFree.apply(t)
    v = u[idx]
    d2 = ((u * u).sum(1)[:, None] + (v * v).sum(1)[None, :] - 2.0 * u @ v.T).clamp_min(0.0)
    return torch.exp(d2 * (-0.5 / info.default_sigma(t.detach()) ** 2))


def landmark_mi_and_gradient(x, z, m: int, alpha: float = 1.01, seed: int = 0):
    """(MI, gradient in z) of the landmark estimate: m seeded uniform landmark samples, the
    joint (product) kernel's columns the Hadamard product of the marginal ones (with labels
    x, its class blocks')."""
    zg = z.clone().requires_grad_()
    idx = torch.randperm(z.shape[0], generator=torch.Generator().manual_seed(seed))[:m]
    cz = _landmark_columns(zg, idx)
    if not x.is_floating_point():  # labels: S(X, Z) block by class
        s_x, s_xz = info.label_entropy(x, alpha), _landmark_entropy(cz, idx, alpha, x)
    else:
        cx = _landmark_columns(x, idx)
        s_x, s_xz = _landmark_entropy(cx, idx, alpha), _landmark_entropy(cx * cz, idx, alpha)
    mi = s_x + _landmark_entropy(cz, idx, alpha) - s_xz
    mi.backward()
    return mi.item(), zg.grad.reshape(-1)


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


NETWORKS = {"784 -> 256 -> 128": [256, 128], "784 -> 6 x 1024": [1024] * 6}
BATCH = 1024


def _mlp(sizes: list[int]) -> torch.nn.Sequential:
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers)


def backprop_steps(widths: list[int]):
    """Two Adam steps of end-to-end backprop through 784 -> widths -> 10, batch BATCH."""
    g = torch.Generator().manual_seed(2)
    x, y = torch.rand(BATCH, 784, generator=g), torch.randint(0, 10, (BATCH,), generator=g)

    def run():
        net = torch.nn.Sequential(_mlp([784, *widths]), torch.nn.Linear(widths[-1], 10))
        opt = torch.optim.Adam(net.parameters())
        for _ in range(2):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    return run


def pib_unit_steps(widths: list[int], estimator: str):
    """PIB unit by unit through 784 -> widths, two Adam steps per unit on one batch of BATCH
    (the previous unit's outputs as input): PIB's peak is its largest unit's."""
    g = torch.Generator().manual_seed(2)
    x, y = torch.rand(BATCH, 784, generator=g), torch.randint(0, 10, (BATCH,), generator=g)

    def run():
        h = x
        for a, b in zip([784, *widths[:-1]], widths):
            unit = _mlp([a, b])
            opt = torch.optim.Adam(unit.parameters())
            for _ in range(2):
                opt.zero_grad()
                pib_terms(x, y, unit(h), beta=0.01, estimator=estimator).loss.backward()
                opt.step()
            with torch.no_grad():
                h = unit(h)
            del unit, opt
    return run


def network_cases():
    """(key, function) of the PIB-against-backprop memory table: 'net case'."""
    for name, widths in NETWORKS.items():
        yield f"{name}|backprop", backprop_steps(widths)
        for est in ("exact", "fast"):
            yield f"{name}|PIB {est}", pib_unit_steps(widths, est)


def cases(sizes: list[int], large: bool):
    """(key, function) of every measurement: 'n alpha estimator what' and 'pib alpha'."""
    if large:  # the exact path at n = 4096 takes minutes: fast and alpha = 2 only
        g = torch.Generator().manual_seed(LARGE)
        x, z = torch.randn(LARGE, D, generator=g), torch.randn(LARGE, D, generator=g)
        for alpha, est in ESTIMATES[1:]:
            yield f"{LARGE} {alpha} {est} MI", mi_step(x, z, alpha, est)
    for n in sizes:
        g = torch.Generator().manual_seed(n)
        x, z = torch.randn(n, D, generator=g), torch.randn(n, D, generator=g)
        for alpha, est in ESTIMATES:
            yield f"{n} {alpha} {est} entropy", entropy_step(x, alpha, est)
            yield f"{n} {alpha} {est} MI", mi_step(x, z, alpha, est)
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
    cmd = [sys.executable, __file__, "--memory-only"] + ["--quick"] * args.quick + ["--large"] * args.large
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n up to 1024, fewer repeats")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--large", action="store_true", help="the fast estimator at n = 4096 too")
    parser.add_argument("--landmarks", action="store_true",
                        help="also the landmark (Nystrom) estimate's accuracy (not adopted)")
    parser.add_argument("--memory-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [256, 512, 1024] if args.quick else [256, 512, 1024, 2048]
    if args.memory_only:
        print(json.dumps({key: peak_rss_growth(fn) for key, fn in
                          [*cases(sizes, args.large), *network_cases()]}))
        return
    mib = memory_in_child(args)
    times = {}
    for key, fn in cases(sizes, args.large):
        big = key.startswith(("2048", "4096", "pib"))
        times[key] = timed(fn, 2 if (args.quick or big) else 5)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.1f}, d = {D}")
    head = " | ".join(f"{w + ' ms':>10} {w + ' CPU ms':>14} {w + ' MiB':>11}" for w in WHATS)
    print(f"{'n':>5} {'alpha':>5} {'estimator':>9} | {head}")
    for n in sizes:
        for alpha, est in ESTIMATES:
            keys = [f"{n} {alpha} {est} {w}" for w in WHATS]
            print(f"{n:>5} {alpha:>5} {est:>9} | " + " | ".join(
                f"{times[k][0]:>10.1f} {times[k][1]:>14.1f} {mib[k]:>11.1f}" for k in keys))
    ratio = lambda a, b, w, i: times[f"1024 {a} {w}"][i] / times[f"1024 {b} {w}"][i]  # noqa: E731
    print("speed-up of alpha=2 over the eigenvalue path at n=1024 (wall / CPU): "
          + ", ".join(f"{w} {ratio('1.01 exact', '2.0 exact', w, 0):.0f}x / "
                      f"{ratio('1.01 exact', '2.0 exact', w, 1):.0f}x" for w in WHATS)
          + " (target >= 10x)")
    print("fast alpha=1.01 time over alpha=2 time at n=1024 (wall / CPU): "
          + ", ".join(f"{w} {ratio('1.01 fast', '2.0 exact', w, 0):.1f}x / "
                      f"{ratio('1.01 fast', '2.0 exact', w, 1):.1f}x" for w in WHATS)
          + " (target <= 3x)")
    if args.large:
        for alpha, est in ESTIMATES[1:]:
            k = f"{LARGE} {alpha} {est} MI"
            print(f"MI + gradient at n={LARGE}, alpha {alpha} {est}: {times[k][0]:.0f} ms "
                  f"({times[k][1]:.0f} ms CPU), {mib[k]:.0f} MiB (target fast: < 1000 ms, < 1 GB)")
    for alpha in ALPHAS:
        wall, cpu = times[f"pib {alpha}"]
        print(f"PIB loss + gradient, batch 1024, 128->64 linear+relu unit, X dim 784, "
              f"alpha {alpha}: {wall:.0f} ms ({cpu:.0f} ms CPU), {mib[f'pib {alpha}']:.0f} MiB")
    print(f"peak memory above the start, batch {BATCH}, Adam, two steps (per unit for PIB):")
    for name in NETWORKS:
        bp = mib[f"{name}|backprop"]
        print(f"  {name:<18} backprop {bp:7.1f} MiB | " + " | ".join(
            f"PIB {est} {mib[f'{name}|PIB {est}']:7.1f} MiB ({mib[f'{name}|PIB {est}'] / bp:.2f}x)"
            for est in ("exact", "fast")) + " (target on the deep network: <= 0.5x)")
    accuracy_table([1024] + [LARGE] * args.large, args.landmarks)
    if torch.cuda.is_available():
        gpu_rows([1024, LARGE])


def gpu_rows(sizes: list[int]) -> None:
    """MI + gradient on the CUDA device (wall ms, synchronised), when there is one."""
    print(f"GPU ({torch.cuda.get_device_name()}), MI + gradient, wall ms:")
    for n in sizes:
        g = torch.Generator().manual_seed(n)
        x, z = (torch.randn(n, D, generator=g).cuda() for _ in range(2))
        for alpha, est in ESTIMATES:
            step = mi_step(x, z, alpha, est)

            def run():
                step()
                torch.cuda.synchronize()
            print(f"  n {n:>5} alpha {alpha} {est:<5}: {timed(run, 3)[0]:8.1f} ms")


if __name__ == "__main__":
    main()

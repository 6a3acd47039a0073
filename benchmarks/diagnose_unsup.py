"""Why unsupervised PIB's probe stops rising (issue 13): the features of every unit along PIB iterations.

    python benchmarks/diagnose_unsup.py [--iterations 0 10 50 200 1000] [--seed 0] [--full] [--mnist DIR]
                                        [--variant NAME]

Recipe unsup-mnist-memristor as packaged (--variant: with the changes of that variant of
ablation_unsup.py instead, its iteration count ignored), on the ablation's subset (2,000 /
1,000; --full: the 8,000 / 2,000 split), one run per iteration count through bench_unsup.unit_features. Per unit
and count it prints: the linear probe (C = 1, as linear_eval), the probe with C chosen on a
validation split of the training features (probe_cv), the effective rank of the centred
training features (exp of the entropy of the normalised singular values), the fraction of dead
features (constant on the training set) and of zero outputs, and I(X;Z), I(Z;Y) in bits
(matrix-Renyi, alpha 1.01, median widths, on the first 1,000 test samples). The last rows: raw
inputs and PCA of the last unit's width, with the same two probes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ablation_unsup import BEFORE, VARIANTS  # noqa: E402
from bench_unsup import DEFAULT_MNIST, merged, unit_features  # noqa: E402

SUBSET = {"dataset": {"n_train": 2000, "n_test": 1000}}
C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0)
INFO_SAMPLES = 1000


def probe_cv(f_train, y_train, f_test, y_test, seed: int = 0) -> tuple[float, float]:
    """(test accuracy, C): the logistic-regression probe (standardised features) whose C, of
    C_GRID, scores best on a stratified 20 % validation split of the training set, refitted on
    all of it."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def model(c):
        return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))

    f_train = np.asarray(f_train, np.float64)
    a, b, ya, yb = train_test_split(f_train, y_train, test_size=0.2, stratify=y_train, random_state=seed)
    best = max(C_GRID, key=lambda c: model(c).fit(a, ya).score(b, yb))
    return float(model(best).fit(f_train, y_train).score(np.asarray(f_test, np.float64), y_test)), best


def effective_rank(f: np.ndarray) -> float:
    """exp(entropy) of the normalised singular values of the centred features."""
    s = np.linalg.svd(f - f.mean(0), compute_uv=False)
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def row(label: str, ds, f_train, f_test) -> str:
    import torch

    from labpnn import info
    from labpnn.linear_eval import linear_probe

    acc = linear_probe(f_train, ds.y_train, f_test, ds.y_test)
    acc_cv, c = probe_cv(f_train, ds.y_train, f_test, ds.y_test)
    n = min(INFO_SAMPLES, len(f_test))
    x, z = (torch.as_tensor(np.asarray(v[:n], np.float64)) for v in (ds.x_test, f_test))
    i_xz = info.mutual_information(x, z).item()
    i_zy = info.mutual_information(z, torch.as_tensor(ds.y_test[:n])).item()
    dead = float((np.std(f_train, 0) < 1e-6).mean())
    zeros = float((np.asarray(f_train) == 0).mean())
    return (f"| {label} | {100 * acc:.1f} | {100 * acc_cv:.1f} (C {c:g}) | {effective_rank(f_train):.1f} / "
            f"{f_train.shape[1]} | {dead:.2f} | {zeros:.2f} | {i_xz:.2f} | {i_zy:.2f} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iterations", type=int, nargs="+", default=[0, 10, 50, 200, 1000])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--full", action="store_true", help="the 8,000 / 2,000 split instead of the subset")
    p.add_argument("--mnist", type=Path, default=DEFAULT_MNIST)
    p.add_argument("--out", type=Path, default=Path("/tmp/labpnn-diagnose-unsup"))
    p.add_argument("--variant", help="an ablation_unsup.py variant's recipe changes")
    args = p.parse_args(argv)
    if any(i < 0 for i in args.iterations):
        p.error("--iterations: must be >= 0")
    if args.variant is not None and args.variant not in VARIANTS:
        p.error(f"--variant: unknown {args.variant!r}; one of: {'; '.join(VARIANTS)}")
    changes = {} if args.variant is None else merged(BEFORE, VARIANTS[args.variant][1])
    if not args.full:
        changes = merged(changes, SUBSET)
    args.out.mkdir(parents=True, exist_ok=True)
    print("| unit @ PIB iterations | probe C=1 (%) | probe, C on validation (%) | effective rank | dead | zeros "
          "| I(X;Z) bits | I(Z;Y) bits |\n|---|---|---|---|---|---|---|---|", flush=True)
    ds = width = None
    for steps in args.iterations:
        job = ("diagnose", "unsup-mnist-memristor", args.seed, steps, args.mnist, args.out, changes)
        _, ds, feats, *_ = unit_features(job)
        for k, (f_train, f_test) in enumerate(feats):
            print(row(f"unit {k} @ {steps}", ds, f_train, f_test), flush=True)
        width = feats[-1][0].shape[1]
    from sklearn.decomposition import PCA

    pca = PCA(width, random_state=0).fit(ds.x_train)
    print(row("raw inputs", ds, ds.x_train, ds.x_test), flush=True)
    print(row(f"PCA to {width}", ds, pca.transform(ds.x_train), pca.transform(ds.x_test)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

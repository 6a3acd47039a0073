"""`labpnn compare`: its options and what it does with them."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from dataclasses import replace
from pathlib import Path

REPO_DOCS = Path(__file__).resolve().parents[2] / "docs"


def add_arguments(ap: argparse.ArgumentParser) -> None:
    from labpnn.compare.methods import METHODS

    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick",
                      help="2 seeds, fewer steps, no generalisation tests: about 15 min on 2 cores (default)")
    mode.add_argument("--full", dest="mode", action="store_const", const="full",
                      help="6 seeds, the recipes' steps, the generalisation tests (hours)")
    ap.set_defaults(mode="quick")
    ap.add_argument("--out", type=Path, help="jobs, run files and results (default runs/compare-MODE)")
    ap.add_argument("--report", type=Path, default=REPO_DOCS / "results.md",
                    help="markdown file whose comparison section is (re)written (default docs/results.md)")
    ap.add_argument("--json", type=Path, default=REPO_DOCS / "results.json",
                    help="every table's numbers (default docs/results.json)")
    ap.add_argument("--mnist", type=Path, help="MNIST IDX folder (default /work/shared/datasets/mnist)")
    ap.add_argument("--workers", type=int, default=2, help="worker processes (0: in this process)")
    ap.add_argument("--methods", help=f"comma-separated subset of {','.join(METHODS)}")
    ap.add_argument("--datasets", help="comma-separated subset of mnist1d,mnist")
    ap.add_argument("--seeds", type=int, help="number of seeds (default: the mode's)")
    ap.add_argument("--generalise", action=argparse.BooleanOptionalAction, default=None,
                    help="the generalisation tests (default: on in full mode, off in quick mode)")
    ap.add_argument("--generalise-seeds", type=int, help="seeds they run on (default 3)")
    ap.add_argument("--section", help="name of the report's section and of results.json's (default: the mode)")


def main(args: argparse.Namespace) -> int:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")  # one thread per worker process
    from labpnn.compare import report, runner
    from labpnn.compare.methods import METHODS
    from labpnn.errors import ConfigError

    mode = runner.MODES[args.mode]
    if args.methods:
        names = tuple(n.strip() for n in args.methods.split(",") if n.strip())
        unknown = [n for n in names if n not in METHODS]
        if unknown:
            raise ConfigError(f"--methods: unknown method(s) {', '.join(unknown)}; known: {', '.join(METHODS)}")
        mode = replace(mode, methods=names)
    if args.datasets:
        names = [n.strip() for n in args.datasets.split(",") if n.strip()]
        unknown = [n for n in names if n not in mode.data]
        if unknown:
            raise ConfigError(f"--datasets: unknown dataset(s) {', '.join(unknown)}; known: {', '.join(mode.data)}")
        mode = replace(mode, data={n: mode.data[n] for n in names})
    if args.seeds is not None:
        if args.seeds < 1:
            raise ConfigError(f"--seeds: at least 1, got {args.seeds}")
        mode = replace(mode, seeds=tuple(range(args.seeds)))
    if args.generalise is not None:
        mode = replace(mode, generalise=args.generalise)
    if args.generalise_seeds is not None:
        if args.generalise_seeds < 1:
            raise ConfigError(f"--generalise-seeds: at least 1, got {args.generalise_seeds}")
        mode = replace(mode, generalise_seeds=args.generalise_seeds)
    out = (args.out or Path("runs") / f"compare-{mode.name}").resolve()
    result = runner.compare(mode, out, mnist=args.mnist or runner.DEFAULT_MNIST, workers=args.workers)
    command = "labpnn compare " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if sys.argv[1:2] == ["compare"] \
        else f"labpnn compare --{mode.name}"
    report.write(result, command.strip(), args.report, args.json, args.section or mode.name)
    print(f"labpnn compare: {args.report} and {args.json} written ({result.wall_s / 60:.1f} min)")
    return 1 if result.failed else 0

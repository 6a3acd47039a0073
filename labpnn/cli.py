"""labpnn: train deep physical neural networks with the Physical Information Bottleneck.

  labpnn run                      the default recipe on the default bench (the twins)
  labpnn run --recipe NAME|FILE --config instruments.yaml --out RUN.h5
  labpnn run --resume RUN.h5      continue a killed, aborted or failed run
  labpnn run --recipe hybrid-parallel [--scheduler tcp://HOST:PORT]
                                  every unit trained at once at its own site (dask workers)
  labpnn worker --scheduler tcp://HOST:PORT --config site.yaml  [--tls-ca-file --tls-cert --tls-key]
                                  a site: the instruments of one lab, serving the runs
  labpnn inspect RUN.h5 [--json]  what a run file holds
  labpnn sim crossbar|opu ...     serve a simulated instrument on its wire protocol
  labpnn characterise crossbar [--config BENCH] [--out board.h5]   measure a board (docs/characterise.md)
  labpnn calibrate board.h5 --out twin.yaml                        fit the twin to it
  labpnn compare [--quick|--full]  every training method on the same twins, data and seeds:
                                  docs/results.md's comparison and docs/results.json (docs/compare.md)
  labpnn gui [RUN.h5]             the bench GUI
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path

from labpnn.errors import LabpnnError
from labpnn.recipes import DEFAULT_RECIPE


def _run(args: argparse.Namespace) -> int:
    from labpnn.threads import limited

    with limited(args.threads):
        return _train(args)


def _train(args: argparse.Namespace) -> int:
    from labpnn.bench import Bench
    from labpnn.engine import Run
    from labpnn.recipe import load_recipe
    from labpnn.sites import ClusterBench

    recipe = _stored_recipe(args.resume) if args.resume else load_recipe(args.recipe)
    sites = _sites(recipe, args)
    try:
        bench = Bench.load(args.config) if sites is None else ClusterBench(sites)
        if args.resume:
            run = Run.reopen(args.resume, bench)
        else:
            out = Path(args.out) if args.out else Path("runs") / f"{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}.h5"
            out.parent.mkdir(parents=True, exist_ok=True)
            run = Run(recipe, bench, out)
        return _execute(run, bench, args)
    finally:
        if sites is not None:
            sites.close()


def _stored_recipe(path: str):
    from labpnn.recipe import parse_recipe
    from labpnn.runlog import RunReader

    with RunReader(path) as reader:
        return parse_recipe(reader.recipe, f"recipe stored in {path}")


def _sites(recipe, args: argparse.Namespace):
    """The sites of a parallel recipe (or of any recipe given --scheduler): None otherwise."""
    from labpnn.schemes.parallel import parallel_options
    from labpnn.sites import open_sites

    security = _tls(args)
    options = parallel_options(recipe)
    if options is None and not args.scheduler:
        return None
    print(f"labpnn: {'joining the dask cluster at ' + args.scheduler if args.scheduler else 'starting the sites'}",
          file=sys.stderr)
    sites = open_sites(recipe, scheduler=args.scheduler, bench_path=args.config,
                       layout=options.sites if options else None, security=security)
    print(f"labpnn: {sites.describe()}", file=sys.stderr)
    return sites


def _execute(run, bench, args: argparse.Namespace) -> int:
    from labpnn.engine import State
    from labpnn.progress import Progress
    from labpnn.runlog import RunReader, format_summary

    if args.on_fault:
        run.recipe.faults.on_persistent = args.on_fault
        print(f"labpnn: persistent faults handled by policy {args.on_fault!r} (--on-fault)", file=sys.stderr)
    print(f"labpnn: run file {run.path} (bench {bench.source}, recipe {run.recipe.name})", file=sys.stderr)

    def stop(signum, frame):
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C interrupts hard
        run.abort(f"interrupted by {signal.Signals(signum).name}")

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    run.bus.subscribe(_FaultPrompt(run, interactive=sys.stdin is not None and sys.stdin.isatty()))
    try:
        with Progress(run.bus, disable=args.quiet):
            try:
                state = run.execute()
            except LabpnnError as exc:
                if run.path.exists():
                    print(f"labpnn: the run failed: {exc}\nlabpnn: the run file keeps every completed step; once "
                          f"the cause is fixed, continue it with: labpnn run --resume {run.path}", file=sys.stderr)
                raise
            finally:
                bench.close()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(format_summary(RunReader(run.path).summary()))
    if state is State.IDLE:
        print(f"labpnn: run aborted; continue it with: labpnn run --resume {run.path}", file=sys.stderr)
        return 3
    return 0


class _FaultPrompt:
    """Policy "pause" in a terminal: a run paused on a fault asks the operator whether to
    continue or abort. Without a terminal (stdin not a TTY) nobody can answer: the run is
    aborted at once, in a resumable state, and says so."""

    def __init__(self, run, interactive: bool):
        self.run, self.interactive = run, interactive
        self.last_fault = ""

    def __call__(self, ev) -> None:
        if ev.kind == "fault":
            self.last_fault = ev.message
        elif ev.kind == "state" and ev.data.get("state") == "paused":
            if self.interactive:
                threading.Thread(target=self._ask, name="fault-prompt", daemon=True).start()
            else:
                self.run.abort("paused on a fault with no operator to ask (stdin is not a terminal); stopped "
                               "with the instruments safe, resumable: " + (self.last_fault or "no fault message"))

    def _ask(self) -> None:
        print(f"\nlabpnn: the run is paused, instruments in their safe state: {self.last_fault or 'paused'}",
              file=sys.stderr)
        while True:
            try:
                answer = input("labpnn: continue (keep going as the fault message says) or abort "
                               "(stop, resumable)? [c/a] ").strip().lower()
            except (EOFError, OSError):
                answer = "a"
            if answer in ("c", "continue"):
                self.run.unpause()
                return
            if answer in ("a", "abort"):
                self.run.abort("aborted by the operator at the fault prompt")
                return


def _inspect(args: argparse.Namespace) -> int:
    from labpnn.runlog import RunReader, format_summary

    summary = RunReader(args.run).summary()
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def _sim(args: argparse.Namespace) -> int:
    if args.instrument == "crossbar":
        from labpnn.sim_devices.scpi_server import cli_main
    else:
        from labpnn.sim_devices.opu_server import cli_main
    return cli_main(args.rest)


def _characterise(args: argparse.Namespace) -> int:
    from labpnn.characterise import characterise_bench

    jobs = []

    def stop(signum, frame):
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for job in jobs:
            job.stop.set()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return characterise_bench(args, jobs.append)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _calibrate(args: argparse.Namespace) -> int:
    from labpnn import board_stats
    from labpnn.calibrate import calibrate

    cal = calibrate(board_stats.load(args.board), seed=args.seed)
    print(cal.table())
    print(f"labpnn: twin written to {cal.write(args.out, args.instrument)} "
          f"(use it with --config {args.out})", file=sys.stderr)
    return 0


def _tls(args: argparse.Namespace):
    """dask's Security from --tls-ca-file/--tls-cert/--tls-key (none: dask's configuration)."""
    from labpnn.sites.site import tls

    security = tls(args.tls_ca_file, args.tls_cert, args.tls_key)
    if args.tls_ca_file and not args.scheduler:
        from labpnn.errors import ConfigError

        raise ConfigError("TLS options need --scheduler tls://HOST:PORT (the embedded cluster is plain TCP on "
                          "127.0.0.1)")
    return security


def _add_tls(parser: argparse.ArgumentParser) -> None:
    """dask's own TLS flags (as `dask scheduler` and `dask worker` take them)."""
    parser.add_argument("--tls-ca-file", metavar="CA.pem", help="TLS: the CA certificate (with --tls-cert, --tls-key; "
                        "default: dask's configuration, distributed.comm.tls)")
    parser.add_argument("--tls-cert", metavar="CERT.pem", help="TLS: this endpoint's certificate")
    parser.add_argument("--tls-key", metavar="KEY.pem", help="TLS: this endpoint's private key")


def _worker(args: argparse.Namespace) -> int:
    from labpnn.sites import serve

    return serve(args.scheduler, args.config, host=args.host, security=_tls(args))


def _compare(args: argparse.Namespace) -> int:
    from labpnn.compare.cli import main as compare_main

    return compare_main(args)


def _gui(args: argparse.Namespace) -> int:
    from labpnn.gui.app import main as gui_main

    return gui_main(config=args.config, run_file=args.run)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="labpnn", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train a deep PNN on the bench (default: the twins)")
    run.add_argument("--config", help="bench file (default: ./instruments.yaml, else the packaged twins)")
    run.add_argument("--recipe", default=DEFAULT_RECIPE, help=f"packaged recipe name or file (default {DEFAULT_RECIPE})")
    run.add_argument("--out", help="run file to write (default runs/RECIPE-TIME.h5)")
    run.add_argument("--resume", metavar="RUN.h5", help="continue this killed, aborted or failed run")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument("--threads", type=_positive, default=1,
                     help="torch and BLAS threads (default 1: on an idle 2-core machine 2 threads ran the main "
                          "job at most 10 %% faster, beside one other job 2.6x slower; benchmarks/bench_threads.py)")
    run.add_argument("--on-fault", choices=["recover", "pause", "abort"],
                     help="override the recipe's faults.on_persistent (e.g. to resume past a fault "
                          "with 'recover'); 'pause' asks in a terminal, aborts (resumable) without one")
    run.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                     help="train on the sites of this dask cluster (default for a parallel recipe: start "
                          "one here, one worker per site, cut from --config)")
    _add_tls(run)
    run.set_defaults(func=_run)

    worker = sub.add_parser("worker", help="serve one site's instruments to runs (a dask worker)")
    worker.add_argument("--scheduler", required=True, metavar="tcp://HOST:PORT", help="the dask scheduler to join")
    worker.add_argument("--config", required=True, metavar="SITE.yaml",
                        help="site file: 'site: NAME' and the site's instruments (bench-file entries)")
    worker.add_argument("--host", help="address to listen on (e.g. 127.0.0.1; default: dask's choice)")
    _add_tls(worker)
    worker.set_defaults(func=_worker)

    inspect = sub.add_parser("inspect", help="summarise a run file")
    inspect.add_argument("run", help="RUN.h5")
    inspect.add_argument("--json", action="store_true", help="machine-readable")
    inspect.set_defaults(func=_inspect)

    sim = sub.add_parser("sim", help="serve a simulated instrument on its wire protocol")
    sim.add_argument("instrument", choices=["crossbar", "opu"])
    sim.add_argument("rest", nargs=argparse.REMAINDER, help="options of the simulator (--help)")
    sim.set_defaults(func=_sim)

    char = sub.add_parser("characterise", help="measure a crossbar board's noise, programming, drift, "
                                               "linearity, ADC and stuck cells (docs/characterise.md)")
    char.add_argument("kind", choices=["crossbar"])
    char.add_argument("--config", help="bench file (default: ./instruments.yaml, else the packaged twins)")
    char.add_argument("--instrument", default="crossbar", help="the bench's instrument (default crossbar)")
    char.add_argument("--out", default="board.h5", help="characterisation file (default board.h5)")
    char.add_argument("--report", help="folder for the plots and report.md (default: OUT without .h5)")
    char.add_argument("--noise-rows", type=int, help="rows used for noise, programming and drift (default 64)")
    char.add_argument("--levels", type=int, help="conductance levels (default 8)")
    char.add_argument("--reads", type=int, help="reads per cell for read noise (default 24)")
    char.add_argument("--drift-times", help="re-read times after programming, s, comma-separated "
                                            "(default 10,30,60,120; '' skips drift)")
    char.add_argument("--quiet", action="store_true", help="no progress bar")
    char.set_defaults(func=_characterise)

    cal = sub.add_parser("calibrate", help="fit the crossbar twin's options to a characterisation")
    cal.add_argument("board", help="board.h5 from labpnn characterise crossbar")
    cal.add_argument("--out", default="twin.yaml", help="bench file to write (default twin.yaml)")
    cal.add_argument("--instrument", default="crossbar", help="the twin's name in it (default crossbar)")
    cal.add_argument("--seed", type=int, default=0, help="the twin's seed (default 0)")
    cal.set_defaults(func=_calibrate)

    comp = sub.add_parser("compare", help="every training method side by side on the twins (docs/compare.md)")
    from labpnn.compare.cli import add_arguments as compare_arguments

    compare_arguments(comp)
    comp.set_defaults(func=_compare)

    gui = sub.add_parser("gui", help="the bench GUI")
    gui.add_argument("--config", help="bench file")
    gui.add_argument("run", nargs="?", help="a run file, or a characterisation file, to open")
    gui.set_defaults(func=_gui)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except LabpnnError as exc:
        print(f"labpnn: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("labpnn: interrupted", file=sys.stderr)
        return 130

"""Reproduce the paper's experiments on the simulated bench and write the report.

    python benchmarks/reproduce/run.py --quick                  # < 15 min on 2 cores
    python benchmarks/reproduce/run.py --full --out /data/repro --report /data/repro/results.md
    python benchmarks/reproduce/run.py --quick --fashion ~/data/fashion-mnist --mnist ~/data/mnist

Runs every experiment of benchmarks/reproduce/experiments.py (PIB through labpnn.engine.Run
on benches of twins, one HDF5 run file per run in OUT/runs/; the backprop baseline of
labpnn.backprop), then writes the report (markdown) and its plots (REPORT's folder /img/
results-*.png). Finished jobs are kept in OUT/results/ and not run again: rerun the same
command to continue an interrupted reproduction, or with --report-only to redraw.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one thread per worker process; the workers share the cores

import argparse  # noqa: E402
import json  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reproduce import config, experiments, report  # noqa: E402
from labpnn.compare.jobs import run_jobs  # noqa: E402
from labpnn.compare.report import marked_sections  # noqa: E402
from labpnn.provenance import git_commit, versions  # noqa: E402

EXPERIMENTS = ("mnist", "mnist1d", "adc", "opu", "sweep")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick",
                      help="3 seeds, smaller data, fewer steps (default)")
    mode.add_argument("--full", dest="mode", action="store_const", const="full",
                      help="6 seeds, all data, the recipes' steps (hours)")
    ap.set_defaults(mode="quick")
    ap.add_argument("--out", type=Path, help="output folder (default: runs/reproduce-MODE in the repo)")
    ap.add_argument("--report", type=Path, default=config.REPO / "docs" / "results.md",
                    help="markdown report to write; plots go to its folder's img/ (default docs/results.md)")
    ap.add_argument("--mnist", type=Path, default=config.DEFAULT_MNIST,
                    help="MNIST IDX folder (t10k only: stratified 8,000/2,000; with the train files: 60k/10k)")
    ap.add_argument("--fashion", type=Path, help="Fashion-MNIST IDX folder (else the OPU experiment runs on MNIST)")
    ap.add_argument("--workers", type=int, default=2, help="worker processes (0: in this process)")
    ap.add_argument("--only", default=",".join(EXPERIMENTS), help=f"comma-separated subset of {','.join(EXPERIMENTS)}")
    ap.add_argument("--report-only", action="store_true", help="no new jobs: report what is finished")
    ap.add_argument("--mode-override", type=json.loads, default=None, help=argparse.SUPPRESS)  # tests: tiny modes
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mode = config.MODES[args.mode]
    if args.mode_override:
        mode = config.Mode(**{**mode.__dict__, **args.mode_override})
    out = (args.out or config.REPO / "runs" / f"reproduce-{mode.name}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = experiments.Data(mnist=args.mnist.resolve(), fashion=args.fashion.resolve() if args.fashion else None)
    only = {e.strip() for e in args.only.split(",") if e.strip()}
    unknown = only - set(EXPERIMENTS)
    if unknown:
        sys.exit(f"--only: unknown experiment(s) {sorted(unknown)}; known: {', '.join(EXPERIMENTS)}")
    jobs = [j for j in experiments.plan(mode, data) if j.experiment in only]
    commit = git_commit()  # what runs the jobs (the tree may move on while they run)
    load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    t0 = time.perf_counter()
    log_file = (out / "reproduce.log").open("a")

    def log(msg: str) -> None:
        print(msg, flush=True)
        log_file.write(msg + "\n")
        log_file.flush()

    log(f"reproduce {mode.name}: output {out}, {len(jobs)} jobs, load {load}")
    if args.report_only:
        from labpnn.compare.jobs import load_result

        results = {j.id: r for j in jobs if (r := load_result(out, j.id)) is not None}
    else:
        results = run_jobs([j.spec for j in jobs], out, args.workers, log)
    wall = time.perf_counter() - t0
    summary = experiments.summarise(jobs, results)
    planes = {name: experiments.info_planes(jobs, results, name) for name in ("mnist", "mnist1d")}
    (out / "summary.json").write_text(json.dumps({"summary": summary, "info_planes": planes}, indent=1))

    from labpnn import data as datamod

    split = "?"
    try:
        split = datamod.load("mnist", path=data.mnist).meta["split"]
    except Exception as exc:  # noqa: BLE001
        split = f"not loadable: {exc}"
    report_path = args.report.resolve()
    img_dir = report_path.parent / "img"
    img_dir.mkdir(parents=True, exist_ok=True)
    img = {k: f"img/results-{k}.png" for k in ("accuracy", "adc", "opu", "info", "noise")}
    if "mnist" in only or "mnist1d" in only:
        report.plot_accuracy(summary, img_dir / "results-accuracy.png")
    if "adc" in only:
        report.plot_adc(summary, img_dir / "results-adc.png")
    if "opu" in only:
        report.plot_opu(summary, data, img_dir / "results-opu.png")
    report.plot_info_plane(planes, img_dir / "results-info.png")
    if "sweep" in only:
        report.plot_noise(summary, img_dir / "results-noise.png")
    command = "python benchmarks/reproduce/run.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    meta = {"command": command, "jobs": len({j.id for j in jobs}), "workers": args.workers, "wall_s": wall,
            "host_cpus": os.cpu_count(), "load": load, "out": str(out), "versions": versions(),
            "commit": commit, "mnist_split": split}
    record = out / "command.json"
    if not args.report_only:
        record.write_text(json.dumps({k: meta[k] for k in ("command", "workers", "wall_s", "load", "commit")}))
    elif record.exists():  # a redrawn report: say what ran the jobs
        ran = json.loads(record.read_text())
        meta |= ran | {"command": f"{ran['command']}\n# report redrawn with: {command}"}
    kept = marked_sections(report_path.read_text()) if report_path.exists() else []  # compare, bench_unsup
    report_path.write_text("\n\n".join([report.markdown(summary, planes, mode, data, meta, img).rstrip("\n"), *kept]) + "\n")
    log(f"report: {report_path} ({wall / 60:.1f} min)")
    if summary["failed"]:
        log(f"{len(summary['failed'])} job(s) failed or not run: see {out}/results/*.json")
        return 0 if args.report_only else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

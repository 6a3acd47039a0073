"""Jobs: one run through the engine, or one backprop baseline trained and deployed on benches.

A job is a JSON-able spec; its id is a hash of the spec, so identical jobs of different
experiments run once, and a finished job (its result JSON in OUT/results/) is not run again
when the driver is restarted. Jobs run in worker processes, one BLAS/torch thread each, the
process's peak memory reset before each job (labpnn.costs.reset_peak: the peak is the job's
own). Used by `labpnn compare` and by benchmarks/reproduce.

- {"kind": "run", "recipe": {...}, "bench": {...}}: labpnn.engine.Run(recipe, Bench.load(yaml),
  OUT/runs/<id>.h5).execute() (any scheme), then the numbers read back from the run file with
  RunReader, its costs record (labpnn.costs) among them. With "generalise": "main", "ood" or
  "data", also those generalisation tests of labpnn.generalise on the executed run.
- {"kind": "bp", "recipe": {...}, "epochs": n, "seed": s, "benches": {label: {...}}}: the
  baseline (labpnn.backprop) trained once, evaluated in silico, then deployed on each bench
  (no run file: the calibration's many benches).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml


def job_id(spec: dict[str, Any]) -> str:
    digest = hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    return f"{spec['kind']}-{spec['recipe']['dataset']['name']}-{digest}"


def _bench_file(out: Path, bench: dict[str, Any]) -> Path:
    text = yaml.safe_dump(bench, sort_keys=True)
    path = out / "benches" / f"bench-{hashlib.sha1(text.encode()).hexdigest()[:12]}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return path


def _run_engine(spec: dict[str, Any], out: Path, jid: str) -> dict[str, Any]:
    from labpnn.bench import Bench
    from labpnn.engine import Run
    from labpnn.recipe import parse_recipe
    from labpnn.runlog import RunReader

    path = out / "runs" / f"{jid}.h5"
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():  # an earlier attempt was killed before its result was written
        path.unlink()
    bench_path = _bench_file(out, spec["bench"])
    bench = Bench.load(bench_path)
    generalised = None
    try:
        run = Run(parse_recipe(spec["recipe"]), bench, path)
        state = run.execute()
        if spec.get("generalise"):
            generalised = _generalise(run, spec["generalise"])
    finally:
        bench.close()
    r = RunReader(path)
    units = []
    for u in r.units:
        info = u.info_plane
        rev0 = info[info["revision"] == 0]
        units.append({"I_XZ": rev0["I_XZ"].tolist(), "I_YZ": rev0["I_YZ"].tolist(),
                      "loss": rev0["loss"].tolist()})
    probes = [a for a in r.accuracies if a["what"] == "probe"]
    readouts = [a for a in r.accuracies if a["what"] == "readout"]
    verify = [e["message"] for e in r.events if "verification on the hardware" in e["message"]]
    return {"state": r.state, "returned": state.value,
            "run_file": str(path), "bench_file": str(bench_path),
            "test_accuracy": r.test_accuracy, "train_accuracy": r.train_accuracy,
            "readout_rev0_test": next((a["value"] for a in readouts
                                       if a["split"] == "test" and a["revision"] == 0), None),
            "probes": probes, "units": units, "faults": r.faults, "verify_events": verify,
            "fault_events": [e["message"] for e in r.events if e["kind"] == "fault"],
            "duration_s": r.duration(),
            "costs": next((c for c in r.site_records if c.get("what") == "costs"), None),
            "generalise": generalised}


GENERALISE_TESTS = {"main": {"noise", "data"}, "ood": {"ood"}, "data": {"data"}}


def _generalise(run, which: str) -> list[dict[str, Any]] | None:
    """labpnn.generalise's records for an executed run, those `which` run is for ("main": the noise
    curve and the 100 % data point; "ood"; "data"), also written into the run file's analyses;
    None: that module is not there yet."""
    try:
        from labpnn import generalise
    except ImportError:
        return None
    from labpnn.runlog import RunLog

    records = [r for r in generalise.evaluate(run) if r["test"] in GENERALISE_TESTS[which]]
    log = RunLog.annotate(run.path)  # kept in the run file too (its analyses)
    try:
        for r in records:
            log.analysis(r)
    finally:
        log.close()
    return records


def _run_bp(spec: dict[str, Any], out: Path, jid: str) -> dict[str, Any]:
    from labpnn import backprop, data
    from labpnn.bench import Bench
    from labpnn.recipe import parse_recipe

    recipe = parse_recipe(spec["recipe"])
    d = recipe.dataset
    ds = data.load(d.name, **d.load_options())
    t0 = time.perf_counter()
    net = backprop.train(recipe, ds, backprop.BackpropSettings(epochs=spec["epochs"], seed=spec["seed"]))
    train_s = time.perf_counter() - t0
    result = {"ideal_test": backprop.accuracy(net, ds.x_test, ds.y_test),
              "ideal_train": backprop.accuracy(net, ds.x_train, ds.y_train), "train_s": train_s,
              "deployed": {}}
    for label, bench_spec in spec["benches"].items():
        bench = Bench.load(_bench_file(out, bench_spec))
        try:
            t0 = time.perf_counter()
            dep = backprop.deploy(net, recipe, bench, ds)
        finally:
            bench.close()
        result["deployed"][label] = {"test": dep.test_accuracy, "weight_error": dep.weight_error,
                                     "feature_error": dep.feature_error,
                                     "seconds": time.perf_counter() - t0}
    if any(u.clip for u in recipe.units) and "twin" in spec["benches"]:
        # the usual deployment of an in-silico network: every weight as trained, none clipped
        unclipped = recipe.model_copy(update={"units": [u.model_copy(update={"clip": None}) for u in recipe.units]})
        bench = Bench.load(_bench_file(out, spec["benches"]["twin"]))
        try:
            result["deployed_unclipped"] = backprop.deploy(net, unclipped, bench, ds).test_accuracy
        finally:
            bench.close()
    return result


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)
    quiet = logging.getLogger("labpnn")  # the engine records driver warnings as run events
    quiet.propagate = False
    quiet.addHandler(logging.NullHandler())


def run_one(spec: dict[str, Any], out: str) -> tuple[str, dict[str, Any]]:
    """Run one job in this process; the result is also written to OUT/results/<id>.json."""
    out_dir = Path(out)
    jid = job_id(spec)
    from labpnn.costs import reset_peak

    reset_peak()
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        fn = {"run": _run_engine, "bp": _run_bp}[spec["kind"]]
        result = {"ok": True, **fn(spec, out_dir, jid)}
    except Exception as exc:  # noqa: BLE001 - a failed job is reported, the others go on
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    result |= {"id": jid, "spec": spec, "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
               "pid": os.getpid()}
    path = out_dir / "results" / f"{jid}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, default=_jsonable))
    tmp.replace(path)
    return jid, result


def _jsonable(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON-able: {type(o).__name__}")


def load_result(out: Path, jid: str) -> dict[str, Any] | None:
    path = out / "results" / f"{jid}.json"
    if not path.exists():
        return None
    result = json.loads(path.read_text())
    return result if result.get("ok") else None


def cost(spec: dict[str, Any]) -> float:
    """A rough relative cost, to start the longest jobs first."""
    r = spec["recipe"]
    n = (r["dataset"].get("n_train") or 8000) + (r["dataset"].get("n_test") or 2000)
    if spec["kind"] == "bp":
        return spec["epochs"] * n * 2e-4 + len(spec["benches"])
    steps = r["pib"]["steps"] * len(r["units"])
    optical = any(u["kind"] == "scattering" for u in r["units"])
    return steps * 0.08 + (n * 0.01 if optical else n * 0.0005)


def run_jobs(specs: list[dict[str, Any]], out: Path, workers: int,
             log: Callable[[str], None] = print, ran: set[str] | None = None) -> dict[str, dict[str, Any]]:
    """Every job not yet finished, on `workers` processes (0: in this process); returns all
    results by id (failed jobs included, with ok False); the ids of the jobs run now are added to `ran`."""
    unique = {job_id(s): s for s in specs}
    results = {jid: r for jid in unique if (r := load_result(out, jid)) is not None}
    todo = sorted((s for jid, s in unique.items() if jid not in results), key=cost, reverse=True)
    log(f"{len(unique)} jobs, {len(results)} already done, {len(todo)} to run on {max(workers, 1)} process(es)")
    t0 = time.perf_counter()

    def report(jid: str, result: dict[str, Any], done: int) -> None:
        results[jid] = result
        if ran is not None:
            ran.add(jid)
        what = (f"test {100 * result['test_accuracy']:.1f} %" if result.get("test_accuracy") is not None else
                f"ideal {100 * result['ideal_test']:.1f} %" if "ideal_test" in result else
                f"FAILED: {result.get('error')}")
        log(f"[{done}/{len(todo)}] {time.perf_counter() - t0:6.0f} s  {jid}  {what}  "
            f"({result['wall_s']:.0f} s wall, {result['cpu_s']:.0f} s CPU)")

    if workers <= 0:
        _worker_init()
        for i, spec in enumerate(todo, 1):
            report(*run_one(spec, str(out)), i)
        return results
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_worker_init) as pool:
        futures = [pool.submit(run_one, spec, str(out)) for spec in todo]
        for i, fut in enumerate(as_completed(futures), 1):
            report(*fut.result(), i)
    return results

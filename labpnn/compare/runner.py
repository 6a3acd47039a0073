"""The fair harness: every method of labpnn.compare.methods on the same recipes, twins, data and
seeds, its learning rate tuned with the same budget on a validation split, then run per seed;
the results (accuracy, costs, generalisation) as records for labpnn.compare.report.

    result = compare(QUICK, out=Path("runs/compare-quick"))       # labpnn compare --quick

Jobs are labpnn.compare.jobs specs (one engine run each, one run file each, in OUT/runs/),
finished ones kept in OUT/results/ and not run again.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from labpnn.compare.benches import bench_dict, recipe_dict
from labpnn.compare.jobs import job_id, run_jobs
from labpnn.compare.methods import METHODS, Method, lr_grid
from labpnn.provenance import git_commit, versions

__all__ = ["FULL", "MODES", "QUICK", "Mode", "compare", "plan_runs", "plan_tuning"]

PACKAGED = {"mnist": "mnist-memristor", "mnist1d": "mnist1d-memristor"}
DEFAULT_MNIST = Path("/work/shared/datasets/mnist")


@dataclass(frozen=True)
class Mode:
    """How much of everything."""

    name: str
    seeds: tuple[int, ...]
    data: dict[str, dict[str, Any]]        # dataset -> the recipe's dataset overrides (n_train, n_test)
    pib_steps: dict[str, int]              # PIB steps per unit
    bp_epochs: dict[str, int]              # backprop epochs (in silico)
    loop_epochs: dict[str, int]            # epochs of the hardware-in-the-loop schemes (pat, dfa, phyll)
    finetune_epochs: dict[str, int]        # backprop-finetune: epochs after each deployed layer
    lr_values: int = 3                     # the tuning budget: learning rates tried per method
    validation: float = 0.2                # share of the training split held out for tuning
    generalise: bool = True                # labpnn.generalise's tests (when that module exists)
    generalise_seeds: int = 3              # ... on the first seeds
    fractions: tuple[float, ...] = (0.1, 0.2, 0.5)   # data efficiency: shares of the training split
    ood_classes: tuple[int, ...] = tuple(range(8))   # OOD: trained on these, the others held out
    methods: tuple[str, ...] = tuple(METHODS)


FULL = Mode("full", seeds=(0, 1, 2, 3, 4, 5),
            data={"mnist1d": {"n_train": 4000, "n_test": 1000}, "mnist": {"n_train": 8000, "n_test": 2000}},
            pib_steps={"mnist1d": 200, "mnist": 300}, bp_epochs={"mnist1d": 100, "mnist": 30},
            loop_epochs={"mnist1d": 10, "mnist": 5}, finetune_epochs={"mnist1d": 20, "mnist": 5})
QUICK = Mode("quick", seeds=(0, 1),
             data={"mnist1d": {"n_train": 4000, "n_test": 1000}, "mnist": {"n_train": 2000, "n_test": 1000}},
             pib_steps={"mnist1d": 120, "mnist": 120}, bp_epochs={"mnist1d": 60, "mnist": 20},
             loop_epochs={"mnist1d": 3, "mnist": 2}, finetune_epochs={"mnist1d": 10, "mnist": 3},
             lr_values=2, generalise=False)
MODES = {"quick": QUICK, "full": FULL}


def registered(method: Method) -> bool:
    from labpnn.schemes import SCHEMES

    return method.needs_scheme in SCHEMES.names()


def method_recipe(name: str, dataset: str, mode: Mode, seed: int, lr: float | None, mnist: Path,
                  validation: bool = False) -> dict[str, Any]:
    """The recipe dict of one method's run: the packaged recipe with the mode's data and steps,
    the method's scheme, clipping and learning rate; `validation`: trained on the training split
    minus the held-out share, tested on that share."""
    m = METHODS[name]
    ds = {"name": dataset, **mode.data[dataset]} | ({"path": str(mnist)} if dataset == "mnist" else {})
    if validation:
        ds["validation"] = mode.validation
    r = recipe_dict(PACKAGED[dataset], seed=seed, dataset=ds, steps=mode.pib_steps[dataset])
    if not m.clip:
        for unit in r["units"]:
            unit["clip"] = None
    if m.scheme is not None:
        scheme = dict(m.scheme)
        if m.epochs == "bp":
            scheme["epochs"] = mode.bp_epochs[dataset]
        elif m.epochs == "loop":
            scheme["epochs"] = mode.loop_epochs[dataset]
        if m.extra.get("finetune"):
            scheme["finetune_epochs"] = mode.finetune_epochs[dataset]
        r["scheme"] = scheme
    if lr is not None:
        where = r
        for key in m.lr[:-1]:
            where = where.setdefault(key, {})
        where[m.lr[-1]] = lr
    return r


def _spec(name: str, dataset: str, mode: Mode, seed: int, lr: float, mnist: Path, *, validation: bool = False,
          generalise: str | None = None, data: dict[str, Any] | None = None) -> dict[str, Any]:
    recipe = method_recipe(name, dataset, mode, seed, lr, mnist, validation)
    recipe["dataset"].update(data or {})
    spec = {"kind": "run", "recipe": recipe, "bench": bench_dict(seed, METHODS[name].bench)}
    return spec | ({"generalise": generalise} if generalise else {})


def generalise_available() -> bool:
    try:
        import labpnn.generalise  # noqa: F401
    except ImportError:
        return False
    return True


def plan_tuning(mode: Mode, mnist: Path) -> dict[tuple[str, str, float], dict[str, Any]]:
    """(method, dataset, lr) -> the validation job (seed 0) of every registered method (none with a
    budget of one value: that is the default, nothing to choose)."""
    return {(name, ds, lr): _spec(name, ds, mode, mode.seeds[0], lr, mnist, validation=True)
            for name in mode.methods if registered(METHODS[name]) for ds in mode.data
            for lr in lr_grid(METHODS[name].default_lr, mode.lr_values)}


def defaults(mode: Mode) -> dict[tuple[str, str], dict]:
    """The choice when the budget is one value: every method's default learning rate."""
    return {(name, ds): {"tried": {METHODS[name].default_lr: None}, "lr": METHODS[name].default_lr}
            for name in mode.methods if registered(METHODS[name]) for ds in mode.data}


def plan_runs(mode: Mode, chosen: dict[tuple[str, str], float], mnist: Path) -> dict[tuple, dict]:
    """(method, dataset, seed) -> the job with the chosen learning rate; with the generalisation
    tests, on their seeds, also (method, dataset, seed, "ood") trained on mode.ood_classes and
    (method, dataset, seed, "data", f) on a share f of the training split. The main runs give
    the noise curve (labpnn.generalise.evaluate), the others the OOD AUROC and the data points."""
    gen = mode.generalise and generalise_available()
    runs: dict[tuple, dict] = {}
    for (name, ds), lr in chosen.items():
        for i, s in enumerate(mode.seeds):
            on = gen and i < mode.generalise_seeds
            runs[(name, ds, s)] = _spec(name, ds, mode, s, lr, mnist, generalise="main" if on else None)
            if on:
                runs[(name, ds, s, "ood")] = _spec(name, ds, mode, s, lr, mnist, generalise="ood",
                                                   data={"train_classes": list(mode.ood_classes)})
                for f in mode.fractions:
                    runs[(name, ds, s, "data", f)] = _spec(name, ds, mode, s, lr, mnist, generalise="data",
                                                           data={"train_fraction": f})
    return runs


def choose(tuning: dict[tuple[str, str, float], dict], results: dict[str, dict]) -> dict[tuple[str, str], dict]:
    """Per (method, dataset): every lr's validation accuracy and the best one (ties: the smaller lr)."""
    out: dict[tuple[str, str], dict] = {}
    for (name, ds, lr), spec in sorted(tuning.items()):
        r = results.get(job_id(spec), {})
        entry = out.setdefault((name, ds), {"tried": {}, "lr": None})
        entry["tried"][lr] = r.get("test_accuracy") if r.get("ok") else None
    for entry in out.values():
        scored = {lr: a for lr, a in entry["tried"].items() if a is not None}
        entry["lr"] = max(sorted(scored), key=lambda lr: scored[lr]) if scored else None
    return out


def _stats(values: list[float]) -> dict[str, Any]:
    v = np.asarray(values, float)
    return {"mean": float(v.mean()) if v.size else None, "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "seeds": int(v.size)}


COSTS = [("calls", "calls"), ("samples", "samples"), ("bytes_sent", "bytes"), ("bytes_received", "bytes"),
         ("busy_s", "s"), ("wall_s", "s"), ("peak_rss_mb", "MB"), ("memory_mb", "MB")]


def _cost(costs: dict[str, Any] | None, key: str) -> float | None:
    """A costs record's value; memory_mb: the peak above the RSS at the run's start."""
    if not costs:
        return None
    if key == "memory_mb":
        start = costs.get("rss_start_mb")
        return None if start is None else max(costs["peak_rss_mb"] - start, 0.0)
    return costs.get(key)


def records(mode: Mode, runs: dict[tuple[str, str, int], dict], results: dict[str, dict]) -> list[dict[str, Any]]:
    """Every table's numbers: {method, dataset, setting, mean, std, seeds, unit, table}."""
    grouped: dict[tuple[str, str], list[dict]] = {}
    for (name, ds, *variant), spec in runs.items():
        r = results.get(job_id(spec))
        if r and r.get("ok"):
            grouped.setdefault((name, ds), []).append(r | {"variant": variant})
    out: list[dict[str, Any]] = []

    def add(table: str, name: str, ds: str, setting: Any, values: list[float], unit: str) -> None:
        if values:
            out.append({"table": table, "method": name, "dataset": ds, "setting": setting, **_stats(values),
                        "unit": unit})

    for (name, ds), every in grouped.items():
        rs = [r for r in every if len(r["variant"]) == 1]  # the main runs, one per seed
        add("accuracy", name, ds, "test", [100 * r["test_accuracy"] for r in rs if r["test_accuracy"] is not None], "%")
        for key, unit in COSTS:
            add("costs", name, ds, key, [v for r in rs if (v := _cost(r.get("costs"), key)) is not None], unit)
        gen: dict[tuple[str, Any, str], list[float]] = {}
        for r in every:
            for g in r.get("generalise") or []:
                gen.setdefault((g["test"], g["setting"], g["unit"]), []).append(g["value"])
        for (test, setting, unit), values in gen.items():
            add(f"generalise-{test}", name, ds, setting, values, unit)
    return out


@dataclass
class Comparison:
    """What a compare run produced (report.py writes it)."""

    mode: Mode
    records: list[dict[str, Any]]
    tuning: dict[tuple[str, str], dict]
    skipped: dict[str, str]
    failed: list[dict[str, Any]]
    wall_s: float
    meta: dict[str, Any] = field(default_factory=dict)


def compare(mode: Mode, out: Path, *, mnist: Path = DEFAULT_MNIST, workers: int = 2,
            log: Callable[[str], None] = print) -> Comparison:
    """Tune, run every seed, summarise. Methods whose scheme is not registered are skipped."""
    t0 = time.perf_counter()
    commit = git_commit()  # what runs the jobs (the tree may move on while they run)
    out.mkdir(parents=True, exist_ok=True)
    skipped = {n: f"scheme {METHODS[n].needs_scheme!r} is not registered (labpnn/schemes/) yet"
               for n in mode.methods if not registered(METHODS[n])}
    for name, why in skipped.items():
        log(f"skipping {name}: {why}")
    if "mnist" in mode.data and not mnist.is_dir():
        log(f"no MNIST at {mnist}: MNIST skipped")
        mode = replace(mode, data={k: v for k, v in mode.data.items() if k != "mnist"})
    tuning = plan_tuning(mode, mnist) if mode.lr_values > 1 else {}
    log(f"tuning: {len(tuning)} validation runs ({mode.lr_values} learning rate(s) per method and dataset)")
    ran: set[str] = set()
    results = run_jobs(list(tuning.values()), out, workers, log, ran) if tuning else {}
    chosen = choose(tuning, results) if tuning else defaults(mode)
    runs = plan_runs(mode, {k: v["lr"] for k, v in chosen.items() if v["lr"] is not None}, mnist)
    log(f"runs: {len(runs)} ({len(mode.seeds)} seeds"
        + (", generalisation tests" if mode.generalise and generalise_available() else "") + ")")
    results |= run_jobs(list(runs.values()), out, workers, log, ran)
    failed = [{"job": job_id(s), "what": k, "error": results.get(job_id(s), {}).get("error", "not run")}
              for k, s in list(tuning.items()) + list(runs.items()) if not results.get(job_id(s), {}).get("ok")]
    jobs = [results[job_id(s)] for s in list(tuning.values()) + list(runs.values()) if job_id(s) in results]
    meta = {"load": " / ".join(f"{v:.1f}" for v in os.getloadavg()), "workers": workers, "out": str(out),
            "jobs": len(jobs), "cpu_s": sum(r.get("cpu_s", 0.0) for r in jobs), "wall_s": time.perf_counter() - t0,
            "versions": versions(), "commit": commit}
    plan = hashlib.sha1(" ".join(sorted(job_id(s) for s in list(tuning.values()) + list(runs.values()))).encode())
    record = out / f"compare-{plan.hexdigest()[:12]}.json"  # this plan's jobs when they ran (a redrawn report)
    if any(r.get("id") in ran for r in jobs) or not record.exists():
        record.write_text(json.dumps(meta))
    else:
        meta = json.loads(record.read_text()) | {"redrawn": True}
    return Comparison(mode, records(mode, runs, results), chosen, skipped, failed, meta["wall_s"], meta)

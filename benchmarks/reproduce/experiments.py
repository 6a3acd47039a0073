"""The experiments of the paper as jobs (labpnn.compare.jobs), and their results as tables.

Each experiment has plan(mode, data) -> list of (labels, spec) and a summary built from the
job results. The numbers are the engine's (the run file's final readout accuracy) and the
baseline's (labpnn.backprop), per seed; summaries give mean, std (ddof=1) and n.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import config
from .config import Mode, bench_dict, recipe_dict
from labpnn.compare.jobs import job_id

PAPER = {
    "mnist": {"pib_twin": 96.3, "pib_sim": 96.8, "bp_ideal": 96.4, "bp_deployed": 94.0},
    "mnist1d": {"bp_drop": 8.5},
    "adc": {"after_fault": 73.5, "drop_more_than": 20.0, "recovered_more_than": 90.0},
    "opu": {"fashion-mnist": 86.4},
}


@dataclass
class Data:
    mnist: Path
    fashion: Path | None = None

    @property
    def opu_dataset(self) -> str:
        return "fashion-mnist" if self.fashion else "mnist"


@dataclass
class Job:
    experiment: str
    labels: dict[str, Any]
    spec: dict[str, Any]

    @property
    def id(self) -> str:
        return job_id(self.spec)


def _dataset(name: str, mode: Mode, data: Data) -> dict[str, Any]:
    if name == "mnist":
        return {"name": "mnist", "path": str(data.mnist), "n_train": mode.mnist_n_train, "n_test": mode.mnist_n_test}
    if name == "mnist1d":
        return {"name": "mnist1d", "n_train": mode.mnist1d_n_train, "n_test": mode.mnist1d_n_test}
    raise ValueError(name)


PACKAGED = {"mnist": "mnist-memristor", "mnist1d": "mnist1d-memristor"}
REPEATS = 4  # measurements averaged per input in the "pib_twin_repeats" runs


def _steps(name: str, mode: Mode) -> int:
    return mode.mnist_steps if name == "mnist" else mode.mnist1d_steps


def _bp_benches(name: str, seed: int, mode: Mode) -> dict[str, Any]:
    benches = {"twin": bench_dict(seed), "ideal": bench_dict(seed, "ideal")}
    if name in mode.sweep_datasets and seed in mode.sweep_seeds:
        for what in ("read", "prog"):
            for f in mode.sweep_factors:
                benches[f"{what}:{f:g}"] = bench_dict(seed, factors={what: f})
    return benches


def plan(mode: Mode, data: Data) -> list[Job]:
    jobs: list[Job] = []
    # 1. MNIST and MNIST-1D: PIB on the twin, PIB in simulation, backprop ideal and deployed
    for name in ("mnist", "mnist1d"):
        for s in mode.seeds:
            r = recipe_dict(PACKAGED[name], seed=s, dataset=_dataset(name, mode, data), steps=_steps(name, mode))
            jobs.append(Job(name, {"method": "pib_twin", "seed": s}, {"kind": "run", "recipe": r, "bench": bench_dict(s)}))
            jobs.append(Job(name, {"method": "pib_sim", "seed": s},
                            {"kind": "run", "recipe": r, "bench": bench_dict(s, "ideal")}))
            if name == "mnist1d":  # the lab's lever against read noise: average repeated measurements
                r4 = copy.deepcopy(r)
                r4["measure"]["repeats"] = REPEATS
                jobs.append(Job(name, {"method": "pib_twin_repeats", "seed": s},
                                {"kind": "run", "recipe": r4, "bench": bench_dict(s)}))
            jobs.append(Job(name, {"method": "bp", "seed": s},
                            {"kind": "bp", "recipe": r, "epochs": mode.bp_epochs[name], "seed": s,
                             "benches": _bp_benches(name, s, mode)}))
    # 2. broken ADC after training (the adc-fault recipe's mechanism) on the MNIST network
    for variant, faults in config.ADC_VARIANTS.items():
        for s in mode.seeds:
            r = recipe_dict(PACKAGED["mnist"], seed=s, dataset=_dataset("mnist", mode, data),
                            steps=mode.mnist_steps, faults=faults, name=f"mnist-adc-fault-{variant}")
            jobs.append(Job("adc", {"variant": variant, "seed": s}, {"kind": "run", "recipe": r, "bench": bench_dict(s)}))
    # 3. OPU: accuracy against PIB steps per unit
    opu_data = ({"name": "fashion-mnist", "path": str(data.fashion)} if data.fashion else
                {"name": "mnist", "path": str(data.mnist)}) | {"n_train": mode.opu_n_train, "n_test": mode.opu_n_test}
    for steps in mode.opu_steps:
        for s in mode.opu_seeds:
            r = recipe_dict("opu-mnist", seed=s, dataset=opu_data, steps=steps,
                            name="opu-fashion-mnist" if data.fashion else "opu-mnist")
            jobs.append(Job("opu", {"steps": steps, "seed": s}, {"kind": "run", "recipe": r, "bench": bench_dict(s)}))
    # 4. noise sweep: PIB on twins with scaled noise (backprop: the bp jobs above deploy on them)
    for name in mode.sweep_datasets:
        for what in ("read", "prog"):
            for f in mode.sweep_factors:
                for s in mode.sweep_seeds:
                    r = recipe_dict(PACKAGED[name], seed=s, dataset=_dataset(name, mode, data),
                                    steps=mode.sweep_steps.get(name, _steps(name, mode)))
                    jobs.append(Job("sweep", {"dataset": name, "what": what, "factor": f, "seed": s},
                                    {"kind": "run", "recipe": r, "bench": bench_dict(s, factors={what: f})}))
    return jobs


# -- summaries -----------------------------------------------------------------------------

def stats(values: list[float | None]) -> dict[str, Any]:
    v = np.array([x for x in values if x is not None], float)
    return {"mean": float(v.mean()) if v.size else None,
            "std": float(v.std(ddof=1)) if v.size > 1 else 0.0 if v.size else None,
            "n": int(v.size), "values": v.tolist()}


def _pct(x: float | None) -> float | None:
    return None if x is None else 100 * x


def summarise(jobs: list[Job], results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per experiment: the per-seed numbers (%) and their stats."""
    by_exp: dict[str, list[tuple[Job, dict | None]]] = {}
    for j in jobs:
        by_exp.setdefault(j.experiment, []).append((j, results.get(j.id) if results.get(j.id, {}).get("ok") else None))
    out: dict[str, Any] = {"failed": [{"id": j.id, "experiment": j.experiment, "labels": j.labels,
                                       "error": results.get(j.id, {}).get("error", "not run")}
                                      for j in jobs if not results.get(j.id, {}).get("ok")]}
    for name in ("mnist", "mnist1d"):
        rows: dict[str, list] = {"pib_twin": [], "pib_sim": [], "bp_ideal": [], "bp_deployed": [], "bp_on_ideal": [],
                                 "pib_twin_repeats": [], "bp_deployed_unclipped": []}
        probes: dict[str, list] = {"pib_twin": [], "pib_sim": []}
        errors = {"weight": [], "feature": []}
        for j, r in by_exp.get(name, []):
            if r is None:
                continue
            if j.labels["method"] == "bp":
                rows["bp_ideal"].append(_pct(r["ideal_test"]))
                rows["bp_deployed"].append(_pct(r["deployed"]["twin"]["test"]))
                rows["bp_on_ideal"].append(_pct(r["deployed"]["ideal"]["test"]))
                if r.get("deployed_unclipped") is not None:
                    rows["bp_deployed_unclipped"].append(_pct(r["deployed_unclipped"]))
                errors["weight"].append(r["deployed"]["twin"]["weight_error"])
                errors["feature"].append(r["deployed"]["twin"]["feature_error"])
            else:
                rows[j.labels["method"]].append(_pct(r["test_accuracy"]))
                probe = {p["unit"]: p["value"] for p in r["probes"] if p["revision"] == 0 and p["split"] == "test"}
                if j.labels["method"] in probes:
                    probes[j.labels["method"]].append([_pct(probe[u]) for u in sorted(probe)])
        s = {k: stats(v) for k, v in rows.items()}
        s["probes"] = {k: np.mean(v, axis=0).tolist() if v else None for k, v in probes.items()}
        # the paper deploys backprop's weights as trained: its loss is the unclipped one (calibrated)
        deployed = rows["bp_deployed_unclipped"] or rows["bp_deployed"]
        s["bp_drop"] = stats([a - b for a, b in zip(rows["bp_ideal"], deployed)])
        s["bp_drop_clipped"] = stats([a - b for a, b in zip(rows["bp_ideal"], rows["bp_deployed"])])
        s["errors"] = {k: np.mean(v, axis=0).tolist() if v else None for k, v in errors.items()}
        out[name] = s
    out["adc"] = {}
    for variant in config.ADC_VARIANTS:
        adc = {"before": [], "after_fault": [], "recovered": [], "channels": [], "no_fault_found": 0}
        for j, r in by_exp.get("adc", []):
            if r is None or j.labels["variant"] != variant:
                continue
            # the verification's record: that of the first faulty unit, where the recovery starts (the
            # engine also records each broken-channel finding on its own, and a later unit's channels
            # fed by the broken ones may be recorded as recovered on the way)
            faults = [f for f in r["faults"] if f.get("accuracy_recovered") is not None]
            if not faults:
                adc["no_fault_found"] += 1
                continue
            f = min(faults, key=lambda f: f["unit"])
            adc["before"].append(_pct(f["accuracy_before"]))
            adc["after_fault"].append(_pct(f["accuracy_after_fault"]))
            adc["recovered"].append(_pct(f["accuracy_recovered"]))
            adc["channels"].append(f"unit {f['unit']}: {len(f['channels'])}")
        out["adc"][variant] = {k: stats(v) if isinstance(v, list) and k != "channels" else v for k, v in adc.items()}
    opu: dict[int, list] = {}
    opu_train: dict[int, list] = {}
    for j, r in by_exp.get("opu", []):
        if r is not None:
            opu.setdefault(j.labels["steps"], []).append(_pct(r["test_accuracy"]))
            opu_train.setdefault(j.labels["steps"], []).append(_pct(r["train_accuracy"]))
    out["opu"] = {str(k): stats(v) for k, v in sorted(opu.items())}
    out["opu_train"] = {str(k): stats(v) for k, v in sorted(opu_train.items())}
    sweep: dict[str, dict] = {}
    for j, r in by_exp.get("sweep", []):
        if r is None:
            continue
        key = f"{j.labels['dataset']}/{j.labels['what']}"
        sweep.setdefault(key, {}).setdefault(j.labels["factor"], {"pib": [], "bp": []})["pib"].append(
            _pct(r["test_accuracy"]))
    for name, bp_jobs in ((n, by_exp.get(n, [])) for n in ("mnist", "mnist1d")):
        for j, r in bp_jobs:
            if r is None or j.labels["method"] != "bp":
                continue
            for label, dep in r["deployed"].items():
                if ":" not in label:
                    continue
                what, f = label.split(":")
                key = f"{name}/{what}"
                if key in sweep and float(f) in sweep[key]:
                    sweep[key][float(f)]["bp"].append(_pct(dep["test"]))
    out["sweep"] = {k: {str(f): {m: stats(v) for m, v in d.items()} for f, d in sorted(fs.items())}
                    for k, fs in sweep.items()}
    return out


def info_planes(jobs: list[Job], results: dict[str, dict[str, Any]], experiment: str = "mnist",
                method: str = "pib_twin") -> list[list[dict[str, list[float]]]]:
    """Per seed, per unit: the information-plane trajectory {I_XZ, I_YZ} of revision 0."""
    return [results[j.id]["units"] for j in jobs
            if j.experiment == experiment and j.labels.get("method") == method and results.get(j.id, {}).get("ok")]

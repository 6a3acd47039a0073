"""The benches and recipes of comparisons and reproductions, as dicts (written to YAML files by
labpnn.compare.jobs and loaded with labpnn.bench.Bench.load like any bench).

- "twin": the hardware-in-the-loop stand-in. The crossbar twin with the calibrated noise
  (TWIN_NOISE, docs/calibration.md) and the packaged OPU twin.
- "ideal": the same crossbar twin with every noise source off (no read noise, no programming
  error, no device-to-device spread, 2^16 conductance levels, a 24-bit ADC): the measured
  outputs equal the model's to float32 precision, so a run on it is "in simulation": the same
  units and engine, trained and evaluated digitally.

Seeds: seed s sets the recipe seed (initialisation, minibatches) and the twins' seeds (crossbar
100 + s: its device-to-device variation and noise streams; OPU 200 + s: its scattering matrix).
The same seed gives every method the same twin.
"""

from __future__ import annotations

import copy
from typing import Any

from labpnn.recipe import load_recipe

# The calibrated crossbar noise (docs/calibration.md), the twin's defaults since the calibration;
# spelled out so that the reproduction's benches do not move if the defaults ever do.
TWIN_NOISE: dict[str, Any] = {"read_noise_rel": 0.15, "prog_tolerance": 0.12}

# Every noise source of the crossbar twin off.
IDEAL_NOISE: dict[str, Any] = {"read_noise_rel": 0.0, "read_noise_abs": 0.0, "prog_noise": 0.0, "d2d": 0.0,
                               "levels": 65536, "adc_bits": 24, "prog_tolerance": 1e-4}

OPU_OPTIONS: dict[str, Any] = {"n_components": 2000, "max_n_features": 1024}


# -- benches -------------------------------------------------------------------------------

def crossbar_options(seed: int, kind: str = "twin", factors: dict[str, float] | None = None,
                     overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every option of the crossbar twin, explicitly (so that the bench file says it all).
    kind "twin": the calibrated noise, optionally scaled by factors {"read": f, "prog": f};
    "ideal": every noise source off; "default": the twin's own defaults. `overrides` last."""
    from labpnn.bench import driver_class  # the twin by its driver name: no import of sim_devices here

    opts = driver_class("sim-crossbar").Options().model_dump()
    opts.pop("serial")
    opts["seed"] = 100 + seed
    if kind == "ideal":
        return opts | IDEAL_NOISE | (overrides or {})
    if kind not in ("twin", "default"):
        raise ValueError(f"unknown bench kind {kind!r}")
    if kind == "twin":
        opts |= TWIN_NOISE
    for what, f in (factors or {}).items():
        if what == "read":
            opts["read_noise_rel"] *= f
            opts["read_noise_abs"] *= f
        elif what == "prog":
            # write-verify bounds the programming error by its tolerance window: scale both
            opts["prog_noise"] *= f
            opts["prog_tolerance"] = max(opts["prog_tolerance"] * f, IDEAL_NOISE["prog_tolerance"])
        else:
            raise ValueError(f"unknown noise factor {what!r}")
    return opts | (overrides or {})


def bench_dict(seed: int, kind: str = "twin", factors: dict[str, float] | None = None,
               overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"instruments": {
        "crossbar": {"driver": "sim-crossbar", "options": crossbar_options(seed, kind, factors, overrides)},
        "opu": {"driver": "sim-opu", "options": {**OPU_OPTIONS, "seed": 200 + seed}},
    }}


# -- recipes -------------------------------------------------------------------------------

def recipe_dict(packaged: str, *, seed: int, dataset: dict[str, Any] | None = None,
                steps: int | None = None, faults: dict[str, Any] | None = None,
                name: str | None = None) -> dict[str, Any]:
    """A packaged recipe as a dict, with the reproduction's seed, data and step count."""
    d = copy.deepcopy(load_recipe(packaged).model_dump())
    d["seed"] = seed
    if name:
        d["name"] = name
    if dataset:
        d["dataset"].update(dataset)
    if steps is not None:
        d["pib"]["steps"] = steps
    if faults is not None:
        d["faults"] = copy.deepcopy(faults)
    return d

"""What the reproduction runs: modes (quick, full), the benches of twins and the recipes.

Benches (written as YAML files into the output folder, one per distinct setting, and loaded
with labpnn.bench.Bench.load like any bench):

- "twin": the hardware-in-the-loop stand-in. The crossbar twin with the calibrated noise
  (TWIN_NOISE, docs/calibration.md) and the packaged OPU twin.
- "ideal": the same crossbar twin with every noise source off (no read noise, no programming
  error, no device-to-device spread, 2^16 conductance levels, a 24-bit ADC): the measured
  outputs equal the model's to float32 precision, so a PIB run on it is "PIB in simulation":
  the same units and engine, trained and evaluated digitally.

Seeds: seed s sets the recipe seed (initialisation, PIB minibatches) and the twins' seeds
(crossbar 100 + s: its device-to-device variation and noise streams; OPU 200 + s: its
scattering matrix), and backprop's initialisation and minibatch order. The same seed gives
PIB and backprop the same twin.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labpnn.recipe import load_recipe

REPO = Path(__file__).resolve().parents[2]
DEFAULT_MNIST = (REPO / ".." / "shared" / "datasets" / "mnist").resolve()

# The calibrated crossbar noise (docs/calibration.md), the twin's defaults since the calibration;
# spelled out so that the reproduction's benches do not move if the defaults ever do.
TWIN_NOISE: dict[str, Any] = {"read_noise_rel": 0.15, "prog_tolerance": 0.12}

# Every noise source of the crossbar twin off.
IDEAL_NOISE: dict[str, Any] = {"read_noise_rel": 0.0, "read_noise_abs": 0.0, "prog_noise": 0.0, "d2d": 0.0,
                               "levels": 65536, "adc_bits": 24, "prog_tolerance": 1e-4}

OPU_OPTIONS: dict[str, Any] = {"n_components": 2000, "max_n_features": 1024}

# The adc-fault recipe's fault, applied to the MNIST network: 24 of the 128 ADC columns return
# garbage (both units use columns 0..63, so both are hit).
ADC_FAULTS: dict[str, Any] = load_recipe("adc-fault").faults.model_dump()
# A milder fault by the same mechanism: 6 ADC columns read 0 A; columns 64..127 hold only the
# G- halves of unit 0's 64 outputs, so only unit 0 is hit (outputs 0, 10, ..., 50).
ADC_MILD_FAULTS: dict[str, Any] = copy.deepcopy(ADC_FAULTS)
ADC_MILD_FAULTS["inject"][0]["params"] = {"columns": [64, 74, 84, 94, 104, 114], "mode": "constant", "value": 0.0}
ADC_VARIANTS = {"recipe": ADC_FAULTS, "mild": ADC_MILD_FAULTS}


@dataclass
class Mode:
    """How much of everything: seeds, data, PIB steps, sweeps."""

    name: str
    seeds: list[int]
    mnist_n_train: int | None          # None: the whole split (8,000 with only t10k)
    mnist_n_test: int | None
    mnist1d_n_train: int
    mnist1d_n_test: int
    mnist_steps: int                   # PIB steps per crossbar unit, MNIST
    mnist1d_steps: int
    bp_epochs: dict[str, int]          # backprop epochs per dataset
    opu_n_train: int | None
    opu_n_test: int | None
    opu_steps: list[int]               # PIB steps per unit, OPU sweep
    opu_seeds: list[int]
    sweep_factors: list[float]         # noise sweep: multiples of the calibrated noise
    sweep_seeds: list[int]
    sweep_datasets: list[str]
    sweep_steps: dict[str, int] = field(default_factory=dict)


QUICK = Mode(
    name="quick", seeds=[0, 1, 2],
    mnist_n_train=4000, mnist_n_test=2000, mnist1d_n_train=4000, mnist1d_n_test=1000,
    mnist_steps=150, mnist1d_steps=120, bp_epochs={"mnist": 30, "mnist1d": 100, "fashion-mnist": 30},
    opu_n_train=2000, opu_n_test=1000, opu_steps=[5, 20, 80], opu_seeds=[0, 1, 2],
    sweep_factors=[0.0, 1.0, 2.0, 4.0], sweep_seeds=[0, 1], sweep_datasets=["mnist1d"],
    sweep_steps={"mnist1d": 120},
)

FULL = Mode(
    name="full", seeds=[0, 1, 2, 3, 4, 5],
    mnist_n_train=None, mnist_n_test=None, mnist1d_n_train=4000, mnist1d_n_test=1000,
    mnist_steps=300, mnist1d_steps=200, bp_epochs={"mnist": 30, "mnist1d": 100, "fashion-mnist": 30},
    opu_n_train=None, opu_n_test=None, opu_steps=[5, 20, 80, 300, 1000], opu_seeds=[0, 1, 2, 3, 4, 5],
    sweep_factors=[0.0, 0.5, 1.0, 2.0, 3.0, 4.0], sweep_seeds=[0, 1, 2, 3, 4, 5],
    sweep_datasets=["mnist1d", "mnist"], sweep_steps={"mnist1d": 200, "mnist": 300},
)

MODES = {"quick": QUICK, "full": FULL}


# -- benches -------------------------------------------------------------------------------

def crossbar_options(seed: int, kind: str = "twin", factors: dict[str, float] | None = None,
                     overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every option of the crossbar twin, explicitly (so that the bench file says it all).
    kind "twin": the calibrated noise, optionally scaled by factors {"read": f, "prog": f};
    "ideal": every noise source off; "default": the twin's own defaults. `overrides` last."""
    from labpnn.sim_devices.crossbar import PhysicsOptions

    opts = PhysicsOptions().model_dump()
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

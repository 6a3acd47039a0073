"""What the reproduction runs: modes (quick, full) and the fault variants. The benches of twins
and the recipes as dicts are labpnn.compare.benches (shared with `labpnn compare`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labpnn.compare.benches import (  # noqa: F401  (the reproduction's names for them)
    IDEAL_NOISE, OPU_OPTIONS, TWIN_NOISE, bench_dict, crossbar_options, recipe_dict,
)
from labpnn.recipe import load_recipe

REPO = Path(__file__).resolve().parents[2]
DEFAULT_MNIST = (REPO / ".." / "shared" / "datasets" / "mnist").resolve()


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



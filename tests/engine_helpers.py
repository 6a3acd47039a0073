"""Tiny recipes and benches for engine tests: each run takes seconds on the twins."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from labpnn.bench import Bench
from labpnn.recipe import Recipe, parse_recipe

TINY = {
    "name": "tiny",
    "seed": 0,
    "dataset": {"name": "digits", "n_train": 300, "n_test": 100},
    "units": [{"kind": "crossbar", "instrument": "crossbar", "out": 16},
              {"kind": "crossbar", "instrument": "crossbar", "out": 8}],
    "pib": {"steps": 12, "batch_size": 64},
    "measure": {"batch_size": 60},
    "readout": {"steps": 50},
}

TWIN_BENCH = {"instruments": {"crossbar": {"driver": "sim-crossbar", "options": {"seed": 1}}}}


def tiny_recipe(**changes) -> Recipe:
    data = copy.deepcopy(TINY)
    data.update(changes)
    return parse_recipe(data)


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def twin_bench(tmp_path: Path, bench: dict = TWIN_BENCH) -> Bench:
    return Bench.load(write_yaml(tmp_path / "instruments.yaml", bench))

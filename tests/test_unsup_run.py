"""Unsupervised PIB through the engine on the crossbar twin: two views measured, no labels."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from engine_helpers import TINY, TWIN_BENCH, tiny_recipe, twin_bench, write_yaml
from fault_helpers import fault_recipe
from labpnn import data
from labpnn.engine import Run, State
from labpnn.errors import ConfigError
from labpnn.objectives import OBJECTIVES
from labpnn.objectives.two_view import TwoViewPIB
from labpnn.recipe import load_recipe
from labpnn.run_context import RunContext
from labpnn.runlog import RunReader

AUGMENT = [{"name": "shift", "pixels": 1}, {"name": "rotate", "degrees": 10}, {"name": "pixel_noise", "std": 0.1}]


def unsup_recipe(**changes):
    return tiny_recipe(objective="pib-2view", augment=AUGMENT, **changes)


def trained(path) -> list[dict[str, np.ndarray]]:
    with RunReader(path) as reader:
        return [u.trained for u in reader.units]


def test_run_and_inspect_report_the_linear_probe(tmp_path):
    bench = write_yaml(tmp_path / "bench.yaml", TWIN_BENCH)
    run = subprocess.run([sys.executable, "-m", "labpnn", "run", "--recipe", "unsup-digits", "--config", bench,
                          "--out", tmp_path / "run.h5", "--quiet"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "linear" in run.stdout
    summary = json.loads(subprocess.run([sys.executable, "-m", "labpnn", "inspect", tmp_path / "run.h5", "--json"],
                                        capture_output=True, text=True, timeout=120).stdout)
    assert summary["state"] == "done" and summary["recipe"]["objective"] == "pib-2view"
    assert 0.5 < summary["probe_accuracy"] <= 1  # chance: 0.1
    last = summary["units"][-1]["last"]
    assert last["I_XZ"] > 0 and last["I_YZ"] is None  # no labels: no I(Y;Z)


@pytest.mark.parametrize("draws", [2, 4])
def test_training_is_identical_with_labels_shuffled(tmp_path, monkeypatch, draws):
    (tmp_path / "a").mkdir()
    Run(unsup_recipe(augment_views=draws), twin_bench(tmp_path / "a"), tmp_path / "a" / "run.h5").execute()
    load = data.load

    def shuffled(*args, **kwargs):
        ds = load(*args, **kwargs)
        ds.y_train = np.random.default_rng(7).permutation(ds.y_train)
        return ds

    monkeypatch.setattr(data, "load", shuffled)
    seen = []
    loss = TwoViewPIB.loss
    monkeypatch.setattr(TwoViewPIB, "loss", lambda self, model, batch: seen.append(set(batch.targets))
                        or loss(self, model, batch))
    (tmp_path / "b").mkdir()
    assert Run(unsup_recipe(augment_views=draws), twin_bench(tmp_path / "b"),
               tmp_path / "b" / "run.h5").execute() is State.DONE
    assert seen and all(keys == {"x2", "h2"} for keys in seen)
    for a, b in zip(trained(tmp_path / "a" / "run.h5"), trained(tmp_path / "b" / "run.h5")):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    with RunReader(tmp_path / "b" / "run.h5") as reader:  # the probe sees the shuffled labels: near chance
        probe = [a["value"] for a in reader.accuracies if a["what"] == "linear" and a["split"] == "test"]
    assert probe and probe[-1] < 0.4


def test_views_change_what_a_unit_learns(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Run(unsup_recipe(), twin_bench(tmp_path / "a"), tmp_path / "a" / "run.h5").execute()
    other = AUGMENT[:2] + [{"name": "pixel_noise", "std": 0.3}]
    Run(tiny_recipe(objective="pib-2view", augment=other), twin_bench(tmp_path / "b"),
        tmp_path / "b" / "run.h5").execute()
    a, b = trained(tmp_path / "a" / "run.h5")[0], trained(tmp_path / "b" / "run.h5")[0]
    assert not np.allclose(a["0.weight"], b["0.weight"])


def test_every_draw_of_the_pool_is_measured_through_every_unit(tmp_path, monkeypatch):
    splits = []
    measure = RunContext.measure
    monkeypatch.setattr(RunContext, "measure", lambda self, index, rev, unit, h, split, **kw:
                        splits.append((index, split)) or measure(self, index, rev, unit, h, split, **kw))
    assert Run(unsup_recipe(augment_views=3), twin_bench(tmp_path), tmp_path / "run.h5").execute() is State.DONE
    for index in (0, 1):
        assert {s for i, s in splits if i == index} >= {f"train view {v}" for v in (1, 2, 3)}


def test_recovery_retrains_on_both_views(tmp_path):
    """A broken ADC found at verification: unit 1 is retrained on the views as the faulty
    unit 0 measures them now, without labels, and a new linear evaluation is recorded."""
    recipe = fault_recipe({"verify": True, "mask": True, "inject": [
        {"at": "verify", "instrument": "crossbar", "kind": "broken_adc",
         "params": {"columns": [16, 19, 21, 25, 28], "mode": "garbage"}}]}, objective="pib-2view", augment=AUGMENT)
    assert Run(recipe, twin_bench(tmp_path), tmp_path / "run.h5").execute() is State.DONE
    with RunReader(tmp_path / "run.h5") as reader:
        assert {(0, 1, "measured"), (1, 1, "optimised"), (1, 1, "measured")} <= set(reader.checkpoints)
        linear = [a["revision"] for a in reader.accuracies if a["what"] == "linear"]
    assert linear == [0, 1]


@pytest.mark.parametrize("changes, says", [
    ({"objective": "pib-2view"}, "augment: objective 'pib-2view'"),
    ({"objective": "pib-2view", "augment": [{"name": "blur"}]}, "augment.0.name: unknown augmentation 'blur'"),
    ({"objective": "pib-2view", "augment": [{"name": "rotate", "degrees": 60}]}, "augment.0.degrees"),
    ({"objective": "pib-2view", "augment": AUGMENT, "augment_views": 1}, "augment_views: Input should be greater"),
    ({"objective": "pib-2view", "augment": AUGMENT, "augment_views": "many"}, "augment_views"),
    ({"units": [{**TINY["units"][0], "objective": {"name": "pib-2view", "beta": -1}}]}, "units.0.objective"),
    ({"objective": {"name": "pib-2view", "keep": -1}, "augment": AUGMENT}, "objective.keep"),
    ({"objective": "pib-2view", "augment": AUGMENT, "pib": {**TINY["pib"], "width_z": "class"}},
     "pib.width_z: 'class' reads the labels, which objective 'pib-2view' never sees"),
    ({"objective": "pib-2view", "augment": AUGMENT,
      "units": [TINY["units"][0], {**TINY["units"][1], "pib": {"width_x": "class"}}]}, "units.1.pib.width_x: 'class'"),
])
def test_bad_unsupervised_recipes_name_the_field(changes, says):
    with pytest.raises(ConfigError, match=says):
        tiny_recipe(**changes)


def test_packaged_unsupervised_recipes():
    for name in ("unsup-digits", "unsup-mnist-memristor"):
        recipe = load_recipe(name)
        assert recipe.augment
        for i in range(len(recipe.units)):
            assert OBJECTIVES.parse(recipe.objective_spec(i), recipe.objective_field(i))[0] == "pib-2view"
        assert recipe.augmentations().steps

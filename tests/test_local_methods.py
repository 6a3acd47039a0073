"""The hardware-in-the-loop schemes pat, dfa and phyll (docs/methods.md), run end to end on the
twins through the engine at tiny sizes: they train, beat chance, write a readable run file and
refuse bad options; an aborted run resumes; DFA's feedback matrices stay fixed; PAT's forward
values are the measured ones, so a fault on the twin shows in them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine_helpers import tiny_recipe, twin_bench
from fault_helpers import assert_checkpoints_once, assert_every_step_once
from labpnn import state_image
from labpnn.engine import Run, State
from labpnn.errors import ConfigError
from labpnn.events import Step
from labpnn.runlog import RunReader
from labpnn.schemes.dfa import feedback_matrices
from labpnn.schemes.hardware_loop import derived_seed, measured_forward
from labpnn.units import build_units

SCHEMES = {"pat": {"epochs": 3, "batch_size": 64, "lr": 0.01},
           "dfa": {"epochs": 3, "batch_size": 64, "lr": 0.01},
           "phyll": {"epochs": 3, "batch_size": 64, "lr": 0.01, "goodness_accuracy": True}}


def run_scheme(tmp_path, name: str):
    recipe = tiny_recipe(scheme={"name": name, **SCHEMES[name]})
    path = tmp_path / f"{name}.h5"
    run = Run(recipe, twin_bench(tmp_path), path)
    events = []
    run.bus.subscribe(events.append)
    assert run.execute() is State.DONE
    return path, events


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """runs(name): the scheme run once on the twins (per test process), (run file, events)."""
    done = {}

    def get(name: str):
        if name not in done:
            done[name] = run_scheme(tmp_path_factory.mktemp(name), name)
        return done[name]

    return get


@pytest.mark.parametrize("name", sorted(SCHEMES))
def test_scheme_trains_beats_chance_and_writes_a_run_file(runs, name):
    path, events = runs(name)
    with RunReader(path) as reader:
        accuracy = reader.test_accuracy
        assert accuracy is not None and accuracy > 0.3  # 10 classes: chance is 0.1
        assert reader.state == "done"
        for index in range(2):
            unit = reader.unit(index)
            assert unit.features("test").shape == (100, (16, 8)[index])
            assert len(unit.info_plane) == 3 * 5  # 3 epochs of 300 rows in batches of 64
            assert (0, "measured") in unit.checkpoints()
    steps = [e for e in events if e.kind.value == "step"]
    assert steps and all(np.isfinite(e.loss) for e in steps)
    cost = [e.text for e in events if e.kind.value == "info" and e.text.startswith(f"{name}: training used")]
    assert cost and "30 deployments" in cost[0]  # 15 steps x 2 units, deployed every step
    if name == "phyll":
        assert any("goodness-per-label accuracy" in e.message for e in events)


@pytest.mark.parametrize("scheme, field", [({"name": "pat", "lr": -1}, "lr"),
                                           ({"name": "dfa", "epochs": 0}, "epochs"),
                                           ({"name": "phyll", "threshold": 2}, "threshold"),
                                           ({"name": "pat", "deploy_every": 0}, "deploy_every")])
def test_bad_options_are_refused_naming_the_field(scheme, field):
    with pytest.raises(ConfigError, match=f"scheme.*{field}"):
        tiny_recipe(scheme=scheme)


def test_scattering_units_are_refused(tmp_path):
    recipe = tiny_recipe(scheme="pat", units=[{"kind": "scattering", "instrument": "opu", "out": 16}])
    bench = twin_bench(tmp_path, {"instruments": {"opu": {"driver": "sim-opu", "options": {"seed": 2}}}})
    with pytest.raises(ConfigError, match="crossbar units only"):
        Run(recipe, bench, tmp_path / "r.h5").execute()


def test_dfa_feedback_matrices_stay_fixed(runs, tmp_path):
    path, _ = runs("dfa")
    with RunReader(path) as reader:
        _, _, blob = reader.unit(0).live_state
        trained = reader.unit(0).params("trained")["0.weight"]
    state = state_image.load(blob)
    expected = feedback_matrices(derived_seed(0, "dfa feedback"), 10, [16, 8], 1.0)
    for index, b in enumerate(expected):
        assert torch.equal(state["digital"][f"feedback{index}"], b)  # as drawn: never trained
    assert "readout.weight" in state["digital"]  # the readout, trained alongside
    fresh = build_units(tiny_recipe(), twin_bench(tmp_path), 64)[0].model().state_dict()
    assert not np.allclose(trained, fresh["0.weight"].numpy(), atol=1e-4)  # the units were trained


def test_pat_forward_values_are_the_measured_ones(tmp_path):
    bench = twin_bench(tmp_path)
    units = build_units(tiny_recipe(), bench, 64)
    bench["crossbar"].connect()
    for unit in units:
        unit.deploy()
    x = torch.rand(50, 64)
    seen = []

    def measure(index, h):
        seen.append(units[index].measure(h))
        return seen[-1]

    def dead_columns(z):
        return set(np.flatnonzero(z.detach().numpy().std(0) == 0))

    out = measured_forward(units, measure, x, chain=True)
    for z, m in zip(out, seen):
        np.testing.assert_allclose(z.detach().numpy(), m, atol=1e-6)
    alive = sorted(set(range(16)) - dead_columns(out[0]) - dead_columns(units[0].model()(x)))[:2]
    assert len(alive) == 2
    bench["crossbar"].inject_fault("broken_adc", columns=alive, mode="constant", value=0.0)
    out = measured_forward(units, measure, x, chain=True)
    assert set(alive) <= dead_columns(out[0])  # the model's outputs there are alive; the measured are not
    assert not set(alive) & dead_columns(units[0].model()(x))
    out[-1].sum().backward()  # the gradient still flows through the models
    assert units[0].model()[0].weight.grad.abs().sum() > 0


def test_an_aborted_run_resumes_after_its_last_saved_step(tmp_path):
    recipe = tiny_recipe(scheme={"name": "pat", **SCHEMES["pat"], "checkpoint_every": 5})
    path = tmp_path / "cut.h5"
    cut = Run(recipe, twin_bench(tmp_path), path)
    cut.bus.subscribe(lambda e: cut.abort("test: stop at step 11") if isinstance(e, Step) and e.step == 11 else None)
    assert cut.execute() is State.IDLE
    with RunReader(path) as reader:
        assert reader.unit(0).info_plane["step"].tolist() == list(range(10))  # saved after steps 4 and 9
    resumed = Run.reopen(path, twin_bench(tmp_path))
    steps, infos = [], []
    resumed.bus.subscribe(lambda e: steps.append(e.step) if isinstance(e, Step) and e.unit == 0 else None)
    resumed.bus.subscribe(lambda e: infos.append(e.message) if e.kind.value == "info" else None)
    assert resumed.execute() is State.DONE
    assert steps == list(range(10, 15))
    assert any("training used 30 deployments" in m for m in infos)  # the saved cost carried over
    with RunReader(path) as reader:
        assert_every_step_once(reader, steps=15)
        assert_checkpoints_once(reader)
        assert reader.test_accuracy > 0.3

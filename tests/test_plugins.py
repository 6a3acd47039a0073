"""The engine's extension points, proved by plug-ins defined here: a toy objective (a local linear
head with cross-entropy, trained with the unit) and a toy scheme (every unit trained in silico on
its predecessor's model outputs first, then the whole network deployed and measured), run end to
end on the twins through the engine with a pause, an abort and a resume. Also: the recipe's
`scheme:` / `objective:` fields and their errors."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from pydantic import BaseModel, ConfigDict, Field

from engine_helpers import tiny_recipe, twin_bench
from fault_helpers import assert_checkpoints_once, assert_every_step_once, assert_features_complete
from labpnn.batches import sampler
from labpnn.engine import Run, State
from labpnn.errors import ConfigError
from labpnn.events import Step
from labpnn.objectives import OBJECTIVES, ObjectiveContext, register_objective
from labpnn.protocols import Batch, Objective, Scheme
from labpnn.run_context import RunContext
from labpnn.runlog import RunReader
from labpnn.schemes import register_scheme


class HeadOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scale: float = Field(1.0, gt=0)


class LocalHead:
    """Cross-entropy of a linear head on the unit's output: the head is the objective's own."""

    name = "toy-local-head"
    needs = frozenset({"y"})

    def __init__(self, out_features: int, n_classes: int, scale: float, seed: int):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.head = torch.nn.Linear(out_features, n_classes)
        self.scale = scale

    def parameters(self):
        return self.head.parameters()

    def loss(self, model, batch: Batch):
        ce = torch.nn.functional.cross_entropy(self.head(model(batch.h)), batch.targets["y"]) * self.scale
        return ce, {"ce": ce.item()}


class OfflineOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Offline:
    """Train every unit in silico (unit l on unit l-1's model outputs), then deploy and measure
    the network unit by unit, and fit the readout on the measured features."""

    name = "toy-offline"

    def run(self, ctx: RunContext) -> None:
        ds = ctx.dataset
        h = ds.x_train
        for index, unit in enumerate(ctx.units):
            if ctx.done(index, 0, "optimised"):
                ctx.restore(index, 0, unit)
            else:
                inputs = ctx.prepare(index, unit, h)
                ctx.optimise(index, 0, unit, sampler(ds.x_train, inputs, ctx.supervised_targets(),
                                                     ctx.recipe.unit_pib(index).batch_size, ctx.unit_seed(index, 0)))
            with torch.no_grad():
                h = unit.model()(torch.as_tensor(unit.prepare(h))).numpy()
        h_train, h_test = ds.x_train, ds.x_test
        for index, unit in enumerate(ctx.units):
            if ctx.done(index, 0, "measured"):
                h_train, h_test = (ctx.log.read_features(index, 0, s) for s in ("train", "test"))
                continue
            ctx.deploy(index, 0, unit)
            monitor = ctx.monitor(index)
            h_train = ctx.measure(index, 0, unit, h_train, "train", monitor=monitor)
            h_test = ctx.measure(index, 0, unit, h_test, "test", monitor=monitor)
            ctx.checkpoint_phase(index, 0, "measured")
        ctx.readout(h_train, h_test, 0)


def _head(options: HeadOptions, ctx: ObjectiveContext) -> LocalHead:
    return LocalHead(ctx.out_features, ctx.n_classes, options.scale, ctx.seed)


register_objective("toy-local-head", HeadOptions, _head)
register_scheme("toy-offline", OfflineOptions, lambda options: Offline())

TOY = {"scheme": "toy-offline", "objective": {"name": "toy-local-head", "scale": 2.0},
       "pib": {"steps": 12, "batch_size": 64, "lr": 0.05}}


def test_the_toys_satisfy_the_protocols():
    assert isinstance(Offline(), Scheme)
    assert isinstance(LocalHead(4, 3, 1.0, 0), Objective)


def toy_run(path, bench, on_step=None) -> tuple[Run, list[Step]]:
    run = Run(tiny_recipe(**TOY), bench, path)
    steps: list[Step] = []
    run.bus.subscribe(lambda e: steps.append(e) if isinstance(e, Step) else None)
    if on_step:
        run.bus.subscribe(lambda e: on_step(run, e) if isinstance(e, Step) else None)
    return run, steps


def test_a_toy_scheme_and_objective_run_pause_abort_and_resume_on_the_twins(tmp_path):
    full, full_steps = toy_run(tmp_path / "full.h5", twin_bench(tmp_path))
    assert full.execute() is State.DONE
    assert all("ce" in s.values and "I_XZ" not in s.values for s in full_steps)

    bench = twin_bench(tmp_path)
    paused = threading.Event()

    def control(run, step):
        if step.unit == 0 and step.step == 4 and not paused.is_set():
            paused.set()
            run.pause()
        if step.unit == 1 and step.step == 5:
            run.abort("toy: stop in unit 1")

    cut, cut_steps = toy_run(tmp_path / "cut.h5", bench, control)
    worker = threading.Thread(target=cut.execute)
    worker.start()
    assert cut.states.wait_for(State.PAUSED, timeout=120) is State.PAUSED
    assert bench["crossbar"].output is False  # the instruments are safe while paused
    with RunReader(tmp_path / "cut.h5") as reader:
        assert reader.state == "paused" and reader.unit(0).info_plane["step"].tolist() == list(range(5))
    cut.unpause()
    worker.join(120)
    assert cut.state is State.IDLE
    with RunReader(tmp_path / "cut.h5") as reader:
        assert reader.state == "idle" and "toy: stop in unit 1" in reader.reason
        assert not any(phase == "deployed" for _, _, phase in reader.checkpoints)  # all in silico so far

    resumed = Run.reopen(tmp_path / "cut.h5", twin_bench(tmp_path))
    assert resumed.recipe.scheme_spec() == "toy-offline"
    resumed_steps: list[Step] = []
    resumed.bus.subscribe(lambda e: resumed_steps.append(e) if isinstance(e, Step) else None)
    assert resumed.execute() is State.DONE
    assert [(s.unit, s.step) for s in resumed_steps] == [(1, s) for s in range(6, 12)]
    with RunReader(tmp_path / "cut.h5") as reader:
        assert_every_step_once(reader, steps=12)
        assert_checkpoints_once(reader)
        assert_features_complete(reader)
        assert np.isnan(reader.unit(0).info_plane["I_XZ"]).all()  # the toy logs no information terms
        assert reader.test_accuracy > 0.5  # 10 classes: chance is 0.1
    # the head's parameters and moments were checkpointed: the resumed trajectory is the uninterrupted one
    losses = {(s.unit, s.step): s.loss for s in cut_steps + resumed_steps}
    np.testing.assert_allclose([losses[(s.unit, s.step)] for s in full_steps], [s.loss for s in full_steps],
                               rtol=1e-5)


@pytest.mark.parametrize("changes, where", [
    ({"scheme": "nonesuch"}, r"scheme: no scheme 'nonesuch'; the schemes are: .*cascade"),
    ({"objective": {"name": "pib", "beta": -1}}, r"objective \(objective 'pib'\): objective\.beta: "),
    ({"objective": {"beta": 0.1}}, r"objective: expected a objective name, or a mapping with 'name'"),
    ({"units": [{"kind": "crossbar", "instrument": "crossbar", "out": 8, "objective": "nope"}]},
     r"units\.0\.objective: no objective 'nope'"),
    ({"scheme": {"name": "cascade", "speed": 2}}, r"scheme \(scheme 'cascade'\): scheme\.speed: unknown key"),
])
def test_bad_plug_in_names_and_options_name_the_recipe_field(changes, where):
    with pytest.raises(ConfigError, match=where):
        tiny_recipe(**changes)


def test_a_unit_overrides_the_recipes_objective_and_pib_options_default_to_the_pib_section():
    recipe = tiny_recipe(objective={"name": "pib", "beta": 0.5}, pib={"steps": 3, "beta": 0.02},
                         units=[{"kind": "crossbar", "instrument": "crossbar", "out": 8},
                                {"kind": "crossbar", "instrument": "crossbar", "out": 4, "objective": "pib"}])
    assert recipe.objective_spec(0) == {"name": "pib", "beta": 0.5} and recipe.objective_spec(1) == "pib"
    built = [OBJECTIVES.build(recipe.objective_spec(i), recipe.objective_field(i),
                              ObjectiveContext(index=i, in_features=64, out_features=8, n_classes=10,
                                               settings=recipe.unit_pib(i), seed=i)) for i in (0, 1)]
    assert [o.beta for o in built] == [0.5, 0.02] and built[0].alpha == recipe.pib.alpha
    assert tiny_recipe().scheme_spec() == "cascade" and tiny_recipe().objective_spec(0) == "pib"

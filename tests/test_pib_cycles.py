"""Measurement as augmentation in the cascade: measured copies of the training set
(`pib.copies`) and optimise-deploy-measure cycles against a unit's own measured outputs
(`pib.cycles`)."""

import numpy as np
import pytest
import torch

from engine_helpers import tiny_recipe, twin_bench
from labpnn.engine import Run
from labpnn.objectives.pib import PIBObjective
from labpnn.pib import pib_terms
from labpnn.protocols import Batch
from labpnn.runlog import RunReader
from labpnn.schemes import cascade
from labpnn.schemes.cascade import AtMeasured


def test_at_measured_scores_the_measured_value_with_the_model_gradient():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 6, generator=g), torch.arange(64) % 3
    model = torch.nn.Linear(6, 4)
    measured = model(x).detach() + 0.3 * torch.randn(64, 4, generator=g)
    batch = Batch(x, x, {"y": y, "dz": measured - model(x).detach()})
    loss, values = AtMeasured(PIBObjective(beta=0.1)).loss(model, batch)
    assert loss.item() == pytest.approx(pib_terms(x, y, measured, beta=0.1).loss.item(), abs=1e-5)
    loss.backward()
    assert model.weight.grad.abs().sum() > 0 and set(values) == {"I_XZ", "I_YZ"}


def test_copies_and_cycles_through_the_engine(tmp_path, monkeypatch):
    seen = []
    original = cascade.Cascade.copies

    def spy(self, ctx, index, unit, h_train, f_train, cycles):
        out = original(self, ctx, index, unit, h_train, f_train, cycles)
        seen.append((index, out))
        return out

    monkeypatch.setattr(cascade.Cascade, "copies", spy)
    recipe = tiny_recipe(pib={"steps": 12, "batch_size": 64, "copies": 3, "cycles": 2, "cycle_steps": 5})
    bench = twin_bench(tmp_path)
    try:
        assert Run(recipe, bench, tmp_path / "run.h5").execute().value == "done"
    finally:
        bench.close()
    # every unit, every revision 0..2: its logged features and 2 fresh measurements of them
    assert [i for i, _ in seen] == [0, 0, 0, 1, 1, 1]
    for _, copies in seen:
        assert len(copies) == 3 and copies[0].shape == copies[1].shape
        assert not np.array_equal(copies[0], copies[1]) and not np.array_equal(copies[1], copies[2])
        assert np.corrcoef(copies[0].ravel(), copies[1].ravel())[0, 1] > 0.8  # same inputs, new read noise
    r = RunReader(tmp_path / "run.h5")
    for u in r.units:
        revs = u.info_plane["revision"]
        assert [int((revs == k).sum()) for k in (0, 1, 2)] == [12, 5, 5]   # cycle_steps per cycle
    readouts = [a["revision"] for a in r.accuracies if a["what"] == "readout"]
    assert set(readouts) == {2} and r.test_accuracy > 0.5
    # each cycle re-optimised the unit: its trained parameters moved
    assert r.units[0].param_revisions("trained") == [0, 1, 2]
    w0, w1 = (r.units[0].params("trained", k) for k in (0, 1))
    assert any(not np.array_equal(w0[k], w1[k]) for k in w0)


def test_cycles_are_one_setting_for_the_whole_recipe(tmp_path):
    from labpnn.errors import ConfigError
    units = [dict(u) for u in tiny_recipe().model_dump()["units"]]
    units[1]["pib"] = {"cycles": 1}
    recipe = tiny_recipe(pib={"steps": 4, "batch_size": 64}, units=units)
    bench = twin_bench(tmp_path)
    try:
        with pytest.raises(ConfigError, match=r"units\.1\.pib\.cycles"):
            Run(recipe, bench, tmp_path / "run.h5").execute()
    finally:
        bench.close()

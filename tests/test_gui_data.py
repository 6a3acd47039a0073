"""What the GUI keeps of a run (RunData) and how it times it (RunProgress), without Qt."""

from __future__ import annotations

import numpy as np
import pytest

from labpnn.events import Accuracy, Deployed, InfoPlane, Measured, PhaseStarted, StateChanged, Step
from labpnn.gui.run_data import RunData
from labpnn.gui.run_progress import RunProgress
from labpnn.recipe import parse_recipe

RECIPE = {"name": "t", "dataset": {"name": "digits", "n_train": 100, "n_test": 50},
          "units": [{"kind": "crossbar", "instrument": "crossbar", "out": 8},
                    {"kind": "crossbar", "instrument": "crossbar", "out": 4, "pib": {"steps": 20}}],
          "pib": {"steps": 10}}


def step(unit, s, t=0.0, revision=0):
    """The two events the engine emits per PIB step, in its order."""
    values = {"I_XZ": 1.0 + s, "I_YZ": 0.5 + s / 10}
    return [Step(unit=unit, step=s, steps=10, loss=-s / 10, values=values, revision=revision, time=t),
            InfoPlane(unit=unit, step=s, revision=revision, **values, time=t)]


def test_points_carry_the_loss_of_their_step_and_revisions_are_kept_apart():
    data = RunData.for_recipe(parse_recipe(RECIPE))
    assert data.units == {0: "unit0 (crossbar)", 1: "unit1 (crossbar)"} and data.planned == {0: 10, 1: 20}
    data.changed.clear()
    for s in range(3):
        for ev in step(0, s):
            data.apply(ev)
    for ev in step(0, 0, revision=1):
        data.apply(ev)
    assert data.changed == {"info_plane", "training"}
    traj = data.trajectories[(0, 0)]
    assert traj.steps == [0, 1, 2] and traj.loss == [0.0, -0.1, -0.2] and traj.i_xz == [1.0, 2.0, 3.0]
    assert data.trajectories[(0, 1)].steps == [0]
    assert data.log == []  # steps are drawn, not listed


def test_a_resumed_run_redoing_steps_replaces_them():
    data = RunData()
    for s in (0, 1, 2, 3, 1, 2):
        for ev in step(0, s):
            data.apply(ev)
    assert data.trajectories[(0, 0)].steps == [0, 1, 2]


def test_accuracies_deployed_arrays_and_log():
    data = RunData()
    g = np.full((3, 4), 2e-5)
    data.apply(Deployed(unit=0, revision=0, arrays={"g_target": g, "g_read": g * 1.01}))
    data.apply(Accuracy(unit=0, split="test", value=0.8, what="probe"))
    data.apply(Accuracy(split="test", value=0.9, what="readout"))
    data.apply(StateChanged(state="paused"))
    assert data.accuracies == {(0, "probe", "test"): 0.8, (None, "readout", "test"): 0.9}
    np.testing.assert_array_equal(data.deployed[0]["g_read"], g * 1.01)
    assert data.state == "paused"
    assert [row.kind for row in data.log] == ["deployed", "accuracy", "accuracy", "state"]


def test_remaining_time_from_the_rates_seen():
    progress = RunProgress(parse_recipe(RECIPE), clock=lambda: 100.0)
    assert progress.remaining() is None and progress.elapsed() == 0.0
    progress.apply(StateChanged(state="running", time=90.0))
    progress.apply(PhaseStarted(unit=0, phase="optimise", steps=10, what="pib", time=90.0))
    for s in range(4):  # one step every 0.5 s
        for ev in step(0, s, t=91.0 + s / 2):
            progress.apply(ev)
    assert progress.phase.done == 4 and progress.phase.total == 10
    seconds, lower_bound = progress.remaining()
    assert lower_bound  # no input measured yet: measuring is left out
    assert seconds == pytest.approx(0.5 * (6 + 20))
    progress.apply(PhaseStarted(unit=0, phase="measure", split="train", steps=100, time=93.0))
    for done in (25, 50):  # 0.04 s per input
        progress.apply(Measured(unit=0, split="train", done=done, total=100, time=93.0 + done * 0.04))
    seconds, lower_bound = progress.remaining()
    inputs = (100 + 50) + (100 + 100 + 50) + 50  # unit 0: prepare + test; unit 1: all; unit 0 train rest
    assert not lower_bound
    assert seconds == pytest.approx(0.5 * 26 + 0.04 * inputs)
    assert progress.elapsed() == pytest.approx(10.0)
    progress.apply(StateChanged(state="idle", time=96.0))
    assert progress.remaining() == (0.0, False) and progress.elapsed() == pytest.approx(6.0)


def test_remaining_steps_follow_the_plan_a_scheme_announces():
    """Schemes that train every unit at once (pat, dfa, phyll) announce their own step count."""
    progress = RunProgress(parse_recipe(RECIPE), clock=lambda: 100.0)
    progress.apply(StateChanged(state="running", time=90.0))
    progress.apply(PhaseStarted(unit=None, phase="optimise", steps=300, what="pat", time=90.0))
    for s in range(2):
        for unit in (0, 1):
            for ev in step(unit, s, t=91.0 + s):
                progress.apply(ev)
    assert progress.steps == [300, 300]
    seconds, _ = progress.remaining()
    assert seconds == pytest.approx(progress.rate["step"] * 2 * 298)

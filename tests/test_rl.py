"""Reinforcement learning on the OPU twins: environment checks, thermometer code, replay
buffer, the pib-td objective's locality, and short online runs (acting through the
hardware, learning overlapped or in turns, checkpoint and resume). Short runs only:
solving CartPole is benchmarks/rl_cartpole.py's job."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from labpnn.errors import ConfigError
from labpnn.protocols import Batch
from labpnn.rl.env import EnvSpec, Environment, ThermometerCode
from labpnn.rl.online import OnlineOptions, OnlineRun
from labpnn.objectives.pib_td import PIBTDObjective, PIBTDOptions
from labpnn.rl.replay import ReplayBuffer

gymnasium = pytest.importorskip("gymnasium")

CARTPOLE = EnvSpec(id="CartPole-v1", episodes=4, bounds=[2.4, 3.0, 0.2095, 3.5], levels=4)


def test_environment_checks_name_the_field_and_the_problem(monkeypatch):
    with pytest.raises(ConfigError, match=r"env.id: unknown gymnasium environment 'CartPol-v9'"):
        Environment(EnvSpec(id="CartPol-v9"), 0)
    with pytest.raises(ConfigError, match=r"Pendulum-v1.*action space Box.*Discrete spaces only"):
        Environment(EnvSpec(id="Pendulum-v1", bounds=[1, 1, 8]), 0)
    with pytest.raises(ConfigError, match=r"observation space is unbounded"):
        Environment(EnvSpec(id="CartPole-v1"), 0)
    with pytest.raises(ConfigError, match=r"env.bounds: \[1.0\] must be 4 finite numbers"):
        Environment(EnvSpec(id="CartPole-v1", bounds=[1.0]), 0)
    monkeypatch.setitem(sys.modules, "gymnasium", None)
    with pytest.raises(ConfigError, match=r"needs the gymnasium package.*labpnn\[rl\]"):
        Environment(CARTPOLE, 0)


def test_episodes_are_seeded_by_run_seed_and_episode():
    a, b, c = Environment(CARTPOLE, 3), Environment(CARTPOLE, 3), Environment(CARTPOLE, 4)
    assert np.array_equal(a.reset(5), b.reset(5))
    assert not np.array_equal(a.reset(5), a.reset(6))
    assert not np.array_equal(a.reset(5), c.reset(5))
    assert a.solved_return == 475.0 and a.n_actions == 2


def test_thermometer_code_lights_levels_in_order():
    code = ThermometerCode(np.array([1.0, 2.0]), levels=4)
    bits = code(np.array([[-1.0, 0.0], [0.3, 2.0], [5.0, -5.0]]))
    assert bits.dtype == np.uint8 and bits.shape == (3, 8)
    assert bits.tolist() == [[0, 0, 0, 0, 1, 1, 0, 0], [1, 1, 1, 0, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0, 0, 0]]


def _filled(n=50, seed=1) -> ReplayBuffer:
    rb = ReplayBuffer(40, 2, [3], seed)
    rng = np.random.default_rng(0)
    for i in range(n):
        rb.add(rng.random(2), i % 2, [1.0], i % 7 == 0, [rng.random(3)], [rng.random(3)])
    return rb


def test_replay_minibatches_depend_on_seed_and_step_and_survive_a_checkpoint():
    rb = _filled()
    assert len(rb) == 40 and rb.added == 50
    first = rb.sample(3, 8)
    assert all(np.array_equal(first[k], rb.sample(3, 8)[k]) for k in first)
    assert not np.array_equal(first["h0"], rb.sample(4, 8)["h0"])
    copy = ReplayBuffer(40, 2, [3], 1)
    copy.load(rb.state())
    assert copy.added == 50 and all(np.array_equal(first[k], copy.sample(3, 8)[k]) for k in first)
    with pytest.raises(ValueError, match="'h0' missing or of the wrong shape"):
        ReplayBuffer(40, 2, [5], 1).load(rb.state())


def _batch(n=16, width=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, width, generator=g)
    targets = {"action": torch.randint(0, 2, (n,), generator=g), "reward": torch.ones(n, 1),
               "steps": torch.ones(n, dtype=torch.long),
               "h_next": torch.randn(n, width, generator=g), "done": (torch.rand(n, generator=g) < 0.2).float()}
    return Batch(torch.rand(n, 4, generator=g), h, targets)


def test_pib_td_gradients_stay_in_the_unit_and_its_head():
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Sigmoid())
    objective = PIBTDObjective(PIBTDOptions(), out_features=5, n_actions=2, last=False, seed=0)
    batch = _batch()
    upstream = torch.nn.Linear(6, 6)  # what produced h on the hardware: no graph reaches it
    h = batch.h.requires_grad_(False)
    loss, values = objective.loss(model, Batch(batch.x, h, batch.targets))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert all(p.grad is not None for p in objective.parameters())
    assert all(p.grad is None for p in upstream.parameters()) and h.grad is None
    assert set(values) == {"td", "q", "I_XZ", "I_YZ"} and values["I_XZ"] >= 0
    assert objective.target is not None and not any(p.requires_grad for p in objective.target.parameters())


def test_pib_td_bootstraps_from_a_target_copy_refreshed_on_schedule():
    model = torch.nn.Linear(6, 2)
    objective = PIBTDObjective(PIBTDOptions(target_every=2), 2, 2, last=True, seed=0)
    objective.loss(model, _batch())
    frozen = objective.target[0].weight.clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    objective.loss(model, _batch())  # step 1: the copy is kept
    assert torch.equal(objective.target[0].weight, frozen)
    objective.loss(model, _batch())  # step 2: refreshed
    assert torch.equal(objective.target[0].weight, model.weight)
    td_only, values = PIBTDObjective(PIBTDOptions(pib=False), 2, 2, True, 0).loss(model, _batch())
    assert "I_XZ" not in values and td_only.item() == pytest.approx(10 * values["td"], rel=1e-6)
    with pytest.raises(ValueError, match=r"the last unit gives the Q-values.*out \(3\).*actions \(2\)"):
        PIBTDObjective(PIBTDOptions(), 3, 2, last=True, seed=0)


def test_pib_td_n_step_targets_discount_the_rewards_and_the_bootstrap_by_their_steps():
    model = torch.nn.Linear(6, 2)
    objective = PIBTDObjective(PIBTDOptions(pib=False, gamma=0.5, lambda_td=1.0), 2, 2, last=True, seed=0)
    b = _batch(n=3)
    targets = {**b.targets, "reward": torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [2.0, 0.0, 0.0]]),
               "steps": torch.tensor([3, 2, 1]), "done": torch.tensor([0.0, 0.0, 1.0])}
    loss, _ = objective.loss(model, Batch(b.x, b.h, targets))
    with torch.no_grad():  # the target copy is the model here (made at this first step)
        q_next = model(targets["h_next"])
        bootstrap = q_next.gather(1, q_next.argmax(1, keepdim=True))[:, 0]
        q = model(b.h).gather(1, targets["action"][:, None])[:, 0]
    expected = torch.stack([1.75 + 0.125 * bootstrap[0], 1.5 + 0.25 * bootstrap[1], torch.tensor(2.0)])
    assert loss.item() == pytest.approx(torch.nn.functional.smooth_l1_loss(q, expected).item(), rel=1e-6)


def test_pib_td_value_label_pairs_the_greedy_action_with_equal_count_value_bins():
    model = torch.nn.Linear(6, 2)
    objective = PIBTDObjective(PIBTDOptions(label="value", value_bins=4), 2, 2, last=True, seed=0)
    objective.loss(model, _batch(n=64))  # makes the target copy
    h = _batch(n=64, seed=1).h
    y = objective._label(h, torch.zeros(64, dtype=torch.long))
    q = objective.target(h)
    assert torch.equal(y // 4, q.argmax(1))  # the greedy action, then the value bin
    bins = y % 4
    assert torch.bincount(bins, minlength=4).tolist() == [16, 16, 16, 16]
    value = q.max(1).values  # a higher bin holds higher values
    assert all(value[bins == b].max() <= value[bins == b + 1].min() for b in range(3))


def test_pib_td_polyak_target_moves_by_tau_each_step():
    model = torch.nn.Linear(6, 2)
    objective = PIBTDObjective(PIBTDOptions(tau=0.25, target_every=1), 2, 2, last=True, seed=0)
    objective.loss(model, _batch())
    start = objective.target[0].weight.clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    objective.loss(model, _batch())  # a quarter of the way to the online weights, not a copy
    assert torch.allclose(objective.target[0].weight, start + 0.25)


def test_learning_rates_decay_linearly_to_their_end_fraction():
    options = OnlineOptions(lr_decay_steps=100, lr_end=0.2)
    assert [options.lr_factor(s) for s in (0, 50, 100, 1000)] == pytest.approx([1.0, 0.6, 0.2, 0.2])
    assert OnlineOptions().lr_factor(10**6) == 1.0


def _run(overlap: bool, episodes: int = 4, spec: EnvSpec = CARTPOLE, hold: int | None = None, n_step: int = 1,
         remeasure: bool = True, **callbacks) -> OnlineRun:
    from labpnn.sim_devices.opu import SimOPUDevice
    from labpnn.units.scattering import ScatteringUnit

    env = Environment(spec.model_copy(update={"episodes": episodes}), 0)
    units, n_in = [], env.encoder.n_bits
    for i, (out, act, enc, bits) in enumerate(((8, "sigmoid", "threshold", 1), (2, "none", "bitplane", 2))):
        opu = SimOPUDevice(name=f"opu{i}", n_components=32, max_n_features=16, seed=i)
        opu.connect()
        units.append(ScatteringUnit(f"unit{i}", opu, n_in, out, activation=act, encoding=enc, bits=bits, seed=i))
        n_in = out
    options = OnlineOptions(overlap=overlap, replay=500, batch_size=16, warmup=30, calibration=20,
                            deploy_every=5, updates_per_step=1.0, epsilon_steps=100, checkpoint_every=2,
                            hold=hold, n_step=n_step, remeasure=remeasure)
    objectives = [PIBTDObjective(PIBTDOptions(), u.out_features, 2, i == 1, seed=i) for i, u in enumerate(units)]
    return OnlineRun.build(units, env, options, objectives, seed=0, **callbacks)


@pytest.mark.parametrize("overlap", [False, True])
def test_every_action_comes_from_the_hardware_while_the_units_learn(overlap):
    rows = []
    run = _run(overlap, on_episode=rows.append)
    calls = []
    for unit in run.agent.units:
        project = unit.projector.project
        unit.projector.project = lambda x, project=project, name=unit.name: (calls.append(name), project(x))[1]
    progress = run.run()
    steps = progress.env_steps
    assert [r["episode"] for r in rows] == [0, 1, 2, 3]
    assert sum(r["length"] for r in rows) == steps == sum(progress.returns)
    report = run.report()
    assert report["learner_steps"] > 0
    # one measurement per unit for each state seen (the first of each episode, then one per step);
    # unit 1 also measures each minibatch again from the learner's unit-0 outputs (remeasure),
    # overlapped one ahead: the minibatch after the last step is measured too
    assert calls.count("unit0") == 1 + steps + 4  # 1: calibration
    assert calls.count("unit1") == calls.count("unit0") + report["learner_steps"] + overlap
    # 2: each unit deployed at the start; in turns, the learner's snapshots follow on schedule
    # (overlapped, a learner slower than the actor may hand over none before the run ends)
    assert run.agent.deployments >= 2 + 2 * (not overlap) * (report["learner_steps"] // 5)
    assert 0 <= report["idle_fraction"] < 1
    # an episode's losses: one per unit, the mean over the learner steps made during it, NaN for
    # every unit when there were none (overlapped, a learner starved by a busy machine may make
    # none in an episode, and the count and the losses are not taken at one instant)
    before = 0
    for r in rows:
        finite = np.isfinite(r["losses"])
        assert finite.all() or not finite.any()
        if not overlap:
            assert finite.all() == (r["learner_steps"] > before)
        before = r["learner_steps"]


@pytest.mark.parametrize("activation, scale", [("sigmoid", 1.0), ("clip", 1.0), ("relu", None)])
def test_a_unit_after_a_bounded_activation_codes_its_inputs_over_0_to_1(activation, scale):
    from labpnn.rl.agent import Agent

    units = _run(False, episodes=1).agent.units
    units[0].activation, units[1].input_scale = activation, None
    Agent(units, lambda obs: obs, 2, seed=0)
    assert units[1].input_scale == scale  # None: the largest value of the first batch, later


def test_clip_is_a_relu_bounded_at_1():
    from labpnn.units.base import Activation

    assert Activation("clip")(torch.tensor([-9.0, 0.25, 9.0])).tolist() == [0.0, 0.25, 1.0]


@pytest.mark.parametrize("max_behind", [8, None])
def test_an_overlapped_actor_waits_for_a_slow_learner_unless_told_not_to(max_behind):
    import time

    run = _run(True, episodes=6)
    run.o = run.o.model_copy(update={"max_behind": max_behind})
    step = run.learner.step
    run.learner.step = lambda *args: (time.sleep(0.02), step(*args))[1]
    progress = run.run()
    quota = run.o.updates_per_step * (progress.env_steps - progress.held_steps - run.o.warmup)
    behind = quota - run.learner.steps
    if max_behind is None:     # the actor ran ahead: 20 ms a learner step, about 1 ms an action
        assert behind > 20
    else:
        assert behind <= max_behind + 1


def test_a_fault_in_the_learners_measurement_stops_an_overlapped_run_with_that_error():
    run = _run(True, episodes=50)
    unit = run.agent.units[1]
    project = unit.projector.project

    def faulty(x):  # the learner's re-measurements are batches; the actor's single frames
        if len(x) > 1 and run.learner.steps >= 3:
            raise OSError("opu1: camera timed out")
        return project(x)

    unit.projector.project = faulty
    with pytest.raises(OSError, match="camera timed out"):
        run.run()
    assert run.progress.episode < 50 and run.learner.steps >= 3


@pytest.mark.parametrize("threads", [1, None])
def test_actor_and_learner_compute_on_the_threads_asked_and_the_setting_is_restored(threads):
    from threadpoolctl import threadpool_info

    seen = []
    run = _run(True, episodes=2)
    run.o = run.o.model_copy(update={"threads": threads})
    step, blas = run.learner.step, []
    run.learner.step = lambda *args: (seen.append(torch.get_num_threads()),
                                      blas.append(max(p["num_threads"] for p in threadpool_info())), step(*args))[2]
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        run.run()
        assert seen and set(seen) == ({1} if threads else {2})  # in the learner's thread too
        if threads:
            assert set(blas) == {1}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("pipelined", [False, True])
def test_downstream_units_learn_on_inputs_measured_from_the_current_upstream_model(pipelined):
    from concurrent.futures import ThreadPoolExecutor

    run = _run(False, episodes=2)
    run.run()
    learner, agent = run.learner, run.agent
    # the replay keeps unit 0's inputs only: unit 1's would go stale as unit 0 learns
    assert sorted(k for k in learner.replay.arrays if k.startswith("h")) == ["h0", "h0_next"]
    stored = learner.replay.batches(learner.steps, 16)
    h0 = torch.cat([stored[0].h, stored[0].targets["h_next"]])
    with torch.no_grad():  # unit 1's inputs from unit 0 as it stands, then unit 0 learns on
        stale = torch.from_numpy(agent.features(1, learner.models[0](h0).numpy()))
        weight = learner.models[0][0].weight
        weight.add_(torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)))
        upstream = learner.models[0](h0).numpy()
    seen, update = [], learner._update
    learner._update = lambda i, batch: (seen.append(batch), update(i, batch))[1]
    with ThreadPoolExecutor(1) as executor:
        learner.step(executor if pipelined else None)
    measured = seen[1]
    again = torch.from_numpy(agent.features(1, upstream))  # shot noise: close, not equal
    fresh = torch.cat([measured.h, measured.targets["h_next"]])
    assert (fresh - again).abs().mean() < 0.5 * (stale - again).abs().mean()


def test_without_remeasure_every_unit_learns_on_its_inputs_as_measured_when_acting():
    run = _run(False, episodes=2, remeasure=False)
    run.run()
    learner = run.learner
    assert sorted(k for k in learner.replay.arrays if k.startswith("h")) == ["h0", "h0_next", "h1", "h1_next"]
    stored = learner.replay.batches(learner.steps, 16)
    seen, update = [], learner._update
    learner._update = lambda i, batch: (seen.append(batch), update(i, batch))[1]
    learner.step()
    assert torch.equal(seen[1].h, stored[1].h) and torch.equal(seen[1].targets["h_next"], stored[1].targets["h_next"])


def test_a_pipelined_step_measures_the_next_minibatch_from_the_upstream_unit_as_updated():
    from concurrent.futures import ThreadPoolExecutor

    run = _run(False, episodes=2)
    run.run()
    learner = run.learner
    sent, remeasure = [], learner.remeasure
    learner.remeasure = lambda i, z: (sent.append(z), remeasure(i, z))[1]
    with ThreadPoolExecutor(1) as executor:
        learner.step(executor)          # measures its own minibatch, then the next one's
        executor.submit(lambda: None).result()  # one thread, in order: the measurements are done
        assert len(sent) == 2
        with torch.no_grad():
            nxt = learner.replay.batches(learner.steps, 16)[0]
            expected = learner.models[0](torch.cat([nxt.h, nxt.targets["h_next"]])).numpy()
        np.testing.assert_array_equal(sent[1], expected)
        learner.step(executor)          # uses it, and measures one more ahead
    assert len(sent) == 3


def test_the_hardware_meter_counts_overlapping_busy_spells_once():
    import threading
    import time

    from labpnn.rl.agent import HardwareMeter

    meter = HardwareMeter()
    meter.start()
    barrier = threading.Barrier(2)

    def spell():
        barrier.wait()
        with meter.busy():
            time.sleep(0.05)

    threads = [threading.Thread(target=spell) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 0.045 <= meter.busy_s < 0.09


def test_a_checkpoint_resumes_the_run_where_it_stopped():
    blobs = []
    first = _run(False, episodes=2, on_checkpoint=blobs.append)
    first.run()
    assert len(blobs) == 1
    rows = []
    resumed = _run(False, episodes=4, on_episode=rows.append)
    resumed.load_state_bytes(blobs[0])
    assert resumed.progress.episode == 2 and resumed.replay.added == first.replay.added
    assert resumed.learner.steps == first.learner.steps
    assert all(torch.equal(a, b) for a, b in zip(resumed.learner.models[0].state_dict().values(),
                                                  first.learner.models[0].state_dict().values()))
    resumed.run()
    assert [r["episode"] for r in rows] == [2, 3] and len(resumed.progress.returns) == 4


def test_learning_pauses_while_the_last_episodes_reach_the_solved_return_and_owes_no_steps():
    rows = []
    spec = CARTPOLE.model_copy(update={"solved_return": 20.0, "window": 1000})
    run = _run(False, episodes=12, spec=spec, hold=2, on_episode=rows.append)
    run.run()
    returns, before, held, resumed = [r["return"] for r in rows], 0, 0, 0
    for k, r in enumerate(rows):
        learnt = r["learner_steps"] - before
        if k >= 2 and min(returns[k - 2:k]) >= 20:
            assert learnt == 0  # paused for the whole episode
            held += r["length"]
        elif before:  # resumes at its own pace: no burst for the steps spent paused
            assert learnt <= r["length"]
            resumed += 1
        before = r["learner_steps"]
    assert held > 0 and resumed > 0 and run.progress.held_steps == held
    assert _restored(run).progress.held_steps == held  # checkpointed


def test_n_step_transitions_hold_the_rewards_up_to_n_steps_ahead_and_fewer_at_an_episodes_end():
    rows = []
    run = _run(False, episodes=3, n_step=3, on_episode=rows.append)
    run.run()
    a, n = run.replay.arrays, run.replay.added
    assert n == run.progress.env_steps  # one transition per step taken, the last ones at each end too
    start = 0
    for r in rows:  # every CartPole step pays 1; an episode that ends by falling ends in done
        length, tail = r["length"], min(3, r["length"])
        steps = a["steps"][start:start + length].tolist()
        assert steps == [3] * (length - tail) + [3, 2, 1][-tail:]
        assert a["reward"][start:start + length].sum(1).tolist() == steps
        assert a["done"][start:start + length].tolist() == [0] * (length - tail) + [float(length < 500)] * tail
        start += length


def _restored(run: OnlineRun) -> OnlineRun:
    other = _run(False, episodes=1)
    other.load_state_bytes(run.state_bytes())
    return other


ENGINE_RECIPE = {
    "name": "rl-engine-tiny", "seed": 0,
    "env": {"id": "CartPole-v1", "episodes": 4, "bounds": [2.4, 3.0, 0.2095, 3.5], "levels": 4},
    "units": [{"kind": "scattering", "instrument": "opu-rl1", "out": 8, "activation": "sigmoid"},
              {"kind": "scattering", "instrument": "opu-rl2", "out": 2, "activation": "none",
               "encoding": "thermometer", "bits": 4}],
    "scheme": {"name": "online", "overlap": False, "warmup": 30, "calibration": 20, "batch_size": 16,
               "replay": 500, "checkpoint_every": 2},
    "objective": "pib-td"}


def test_a_bad_environment_is_refused_before_any_instrument_is_touched(tmp_path):
    from labpnn.bench import Bench
    from labpnn.engine import Run
    from labpnn.recipe import parse_recipe

    bench = Bench.load(None)
    recipe = parse_recipe({**ENGINE_RECIPE, "env": {**ENGINE_RECIPE["env"], "id": "NoSuchEnv-v0"}})
    with pytest.raises(ConfigError, match="unknown gymnasium environment 'NoSuchEnv-v0'"):
        Run(recipe, bench, tmp_path / "bad.h5").execute()
    assert not bench["opu-rl1"].connected and not bench["opu-rl2"].connected
    with pytest.raises(ConfigError, match="either 'dataset'.*or 'env'.*not neither"):
        parse_recipe({k: v for k, v in ENGINE_RECIPE.items() if k != "env"})
    with pytest.raises(ConfigError, match="scheme: no scheme 'offline'"):
        parse_recipe({**ENGINE_RECIPE, "scheme": "offline"})


def test_an_aborted_run_resumes_from_its_checkpoint_with_the_replay_buffer(tmp_path):
    from labpnn.bench import Bench
    from labpnn.engine import Run, State
    from labpnn.events import Episode
    from labpnn.recipe import parse_recipe
    from labpnn.runlog import RunReader

    bench, path = Bench.load(None), tmp_path / "rl.h5"
    run = Run(parse_recipe(ENGINE_RECIPE), bench, path)
    run.bus.subscribe(lambda ev: run.abort("test") if isinstance(ev, Episode) and ev.episode == 2 else None)
    assert run.execute() is State.IDLE
    with RunReader(path) as reader:
        assert [e["episode"] for e in reader.episodes] == [0, 1, 2]
        assert reader.unit(0).live_state is not None
    assert Run.reopen(path, bench).execute() is State.DONE
    with RunReader(path) as reader:
        rows = reader.episodes
        episodes = [e["episode"] for e in rows]
        summary = reader.summary()
    assert episodes == [0, 1, 2, 2, 3]  # episode 2 again: from the checkpoint after episode 1
    assert [e["episode"] for e in summary["episodes"]] == episodes
    assert set(summary["episodes"][0]) == {"episode", "return", "length"}
    assert any("resumed at episode 2" in e["message"] for e in summary["events"])
    # each execution's bill, the aborted one's too, counts the optics' measurements: every state
    # acted on, through both units (and the learner's re-measured minibatches through unit 1)
    steps = [r["env_steps"] for r in rows]  # episodes 0, 1, 2, then 2 and 3 again
    aborted, resumed = summary["costs"]
    assert aborted["samples"] >= 2 * steps[2] and resumed["samples"] >= 2 * (steps[4] - steps[1])
    assert aborted["busy_s"] > 0 and resumed["busy_s"] > 0
    bench.close()


def test_a_unit_on_the_slm_and_camera_twins_acts_and_learns_in_the_agent(tmp_path, monkeypatch):
    from labpnn.bench import Bench
    from labpnn.engine import Run, State
    from labpnn.recipe import parse_recipe
    from labpnn.runlog import RunReader
    from labpnn.sim_devices.optics import SimSLM

    shown = []
    put = SimSLM._put
    monkeypatch.setattr(SimSLM, "_put", lambda self, frames: (shown.append(len(frames)), put(self, frames))[1])
    units = [ENGINE_RECIPE["units"][0], {**ENGINE_RECIPE["units"][1], "instrument": ["slm", "camera"],
                                         "optical_features": 64}]
    bench, path = Bench.load(None), tmp_path / "slm.h5"
    assert Run(parse_recipe({**ENGINE_RECIPE, "units": units}), bench, path).execute() is State.DONE
    with RunReader(path) as reader:
        episodes = reader.episodes
    assert len(episodes) == 4 and episodes[-1]["learner_steps"] > 0
    # every state the agent acted on went through the SLM (and the learner's re-measurements too)
    assert sum(shown) >= episodes[-1]["env_steps"] + episodes[-1]["learner_steps"] * 2 * 16
    bench.close()

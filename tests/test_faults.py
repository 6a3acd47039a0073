"""Hardware faults mid-run, injected on the twins: a link that drops, an instrument that stops
answering or replies garbage, a broken ADC column, stuck cells, a saturating camera, an OPU
whose exposure collapses, a killed run process. For each, the run either recovers or stops in
a resumable state with the instruments safe, and the run file keeps every completed step.

Tiny runs (digits, 240/100 samples, 6 PIB steps per unit) so each takes seconds."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from engine_helpers import twin_bench, write_yaml
from fault_helpers import (
    STEPS,
    Board,
    SilentServer,
    assert_checkpoints_once,
    assert_every_step_once,
    assert_features_complete,
    fault_recipe,
    messages,
    on_measure,
)
from labpnn import cli
from labpnn.engine import Run, State
from labpnn.errors import DeviceError, TransportError
from labpnn.events import Fault, FaultKind
from labpnn.health import ChannelMonitor, Diagnosis, describe_channels, no_signal, significant_drop
from labpnn.runlog import RunReader

GARBAGE = {Diagnosis.UNCORRELATED, Diagnosis.SPURIOUS}  # a channel returning garbage: moves unlike the model


def collect(run: Run, kind: type) -> list:
    """The run's events of one type, as they are emitted."""
    found = []
    run.bus.subscribe(lambda e: found.append(e) if isinstance(e, kind) else None)
    return found


# ---------------------------------------------------------------- channel statistics


def test_channel_statistics_find_broken_channels_and_spare_healthy_noisy_ones():
    """Healthy hardware departs from its model about equally on every channel, so a channel
    with little signal correlates poorly yet is healthy; a garbage ADC, a dead ReLU that moves,
    a stuck channel, non-finite values are broken."""
    rng = np.random.default_rng(0)
    n = 200
    predicted = np.maximum(rng.normal(size=(n, 8)) * [1, 1, 1, 1, 1, 0.05, 1, 1] + [0, 0, 0, 0, 0, 3, 0, 0], 0)
    predicted[:, 6] = 0.0  # a dead ReLU
    measured = predicted + 0.1 * rng.normal(size=(n, 8))  # read noise on every channel
    monitor = ChannelMonitor(8)
    assert monitor.check(measured[:100], predicted[:100]) == {}  # channel 5: r ~ 0.4, healthy
    broken = measured[100:].copy()
    broken[:, 0] = rng.uniform(-50, 50, 100)  # garbage ADC
    broken[:, 1] = 0.0  # stuck
    broken[:, 2] = np.nan
    broken[:, 6] = rng.uniform(-50, 50, 100)  # garbage on a dead channel
    found = monitor.check(broken, predicted[100:])
    assert sorted(found) == [0, 1, 2, 6]
    assert {c: f.diagnosis for c, f in found.items()} == {0: Diagnosis.UNCORRELATED, 1: Diagnosis.STUCK,
                                                          2: Diagnosis.NON_FINITE, 6: Diagnosis.SPURIOUS}
    assert describe_channels(found).startswith("uncorrelated with its inputs: channel 0; stuck: channel 1")
    assert not monitor.instrument_broken()  # 3 of 7 live channels
    assert monitor.check(broken, predicted[100:]) == {}  # found once


def test_a_split_remainder_of_one_row_is_not_judged_stuck():
    """A split of 241 rows measured 60 at a time ends with a batch of one row: no spread to see,
    with a model or without."""
    rng = np.random.default_rng(3)
    predicted = np.maximum(rng.normal(size=(61, 4)), 0)
    measured = predicted + 0.01 * rng.normal(size=(61, 4))
    for model in (predicted, None):
        monitor = ChannelMonitor(4)
        assert monitor.check(measured[:60], None if model is None else model[:60]) == {}
        assert monitor.check(measured[60:], None if model is None else model[60:]) == {}


def test_channel_history_from_a_reference_finds_a_fault_present_from_the_first_batch():
    """No model (an optical unit): a saturated detector sticks every channel from the first
    batch of a re-measurement; only the earlier measurement tells that they moved before."""
    rng = np.random.default_rng(1)
    earlier = rng.normal(size=(100, 6))
    earlier[:, 5] = 0.0  # dead before: not judged
    saturated = np.tile(rng.normal(size=6), (40, 1))
    assert ChannelMonitor(6).check(saturated) == {}  # no history: nothing to compare with
    monitor = ChannelMonitor(6, reference=earlier)
    assert sorted(monitor.check(saturated)) == [0, 1, 2, 3, 4]
    assert monitor.instrument_broken() and monitor.broken_live() == (5, 5)
    assert no_signal(saturated) == "all 6 outputs constant or non-finite over 40 different inputs"
    assert no_signal(earlier) is None and no_signal(np.where(earlier > 2, np.nan, earlier)) is None
    assert no_signal(np.where(earlier > 2, np.nan, earlier), strict=True).endswith("NaN or infinite values")


def test_a_sparse_relu_channel_quiet_for_a_batch_is_not_stuck():
    """No model: a ReLU channel that fires on ~1 % of inputs reads 0 for a whole batch now and
    then (0.99^500 ~ 0.7 %); a dense channel at its floor for a whole batch is stuck."""
    rng = np.random.default_rng(2)
    first = np.maximum(rng.normal(size=(500, 3)) + [-2.33, 0, 0], 0)  # channel 0 fires on ~1 %
    monitor = ChannelMonitor(3)
    assert monitor.check(first) == {}
    quiet = np.maximum(rng.normal(size=(500, 3)), 0)
    quiet[:, 0] = 0.0  # the sparse channel silent this batch
    quiet[:, 1] = 0.0  # a dense channel silent: stuck at its floor
    quiet[:, 2] = 0.7  # stuck at a constant off the floor
    assert sorted(monitor.check(quiet)) == [1, 2]
    monitor = ChannelMonitor(3)
    for _ in range(4):  # the tally grows batch by batch: ~2 % off the floor, 4 x 500 values
        assert monitor.check(np.maximum(rng.normal(size=(500, 3)) + [-2.05, 0, 0], 0)) == {}
    assert sorted(monitor.check(quiet)) == [1, 2]
    sparse = np.maximum(rng.normal(size=(500, 3)) + [-1.28, 0, 0], 0)  # channel 0 fires on ~10 %
    monitor = ChannelMonitor(3, reference=sparse)
    assert sorted(monitor.check(quiet)) == [0, 1, 2]  # 0.9^500 ~ 1e-23: too quiet to be chance


def test_accuracy_drop_counts_only_beyond_re_measurement_noise():
    assert significant_drop(0.88, 0.44, 100)
    assert not significant_drop(0.60, 0.49, 100)  # 100 test samples: within the noise
    assert significant_drop(0.89, 0.75, 360) and not significant_drop(0.89, 0.81, 360)


# ---------------------------------------------------------------- the link


def test_tcp_link_cut_mid_measurement_reconnects_reprograms_and_completes(tmp_path):
    """The server dies while unit 0 is measured and comes back as a fresh board (its
    programming lost): the run retries, reconnects, re-identifies the board, finds by
    read-back that it no longer holds unit 0, reprograms it and completes."""
    board = Board()
    run = Run(fault_recipe({"retries": 4, "backoff_s": 0.2}), board.bench(tmp_path), tmp_path / "run.h5")
    on_measure(run, 0, "train", 80, lambda: (board.kill(), board.start_later(0.3)))
    assert run.execute() is State.DONE

    reader = RunReader(tmp_path / "run.h5")
    warnings, infos = messages(reader, "warning"), messages(reader, "info")
    assert any("link lost during 'MEAS:MVM?" in m and "reconnecting in 0.2 s (attempt 1 of 4)" in m
               for m in warnings), warnings
    assert any("unit 0: reprogramming (the instrument held other parameters)" in m for m in infos), infos
    assert any("unit 0: link restored; measurement continues" in m for m in infos), infos
    assert reader.state == "done"
    assert_every_step_once(reader)
    assert_checkpoints_once(reader)
    assert_features_complete(reader)
    assert reader.test_accuracy > 0.5
    assert board.physics.output is False  # the new board ends in its safe state


def test_tcp_link_cut_while_deploying_reprograms_from_the_start_and_completes(tmp_path):
    """The server dies just as unit 1 is programmed and comes back blank: the deployment is
    retried from the start after reconnecting (programming again is safe: write-verify); unit
    0's measurements are recorded, so its lost programming costs nothing."""
    board = Board()
    run = Run(fault_recipe({"retries": 4, "backoff_s": 0.2}), board.bench(tmp_path), tmp_path / "run.h5")
    fired = []

    def cut(ev):
        if ev.kind == "phase" and ev.data.get("phase") == "deploy" and ev.unit == 1 and not fired:
            fired.append(True)
            board.kill()
            board.start_later(0.3)
    run.bus.subscribe(cut)
    assert run.execute() is State.DONE and fired

    reader = RunReader(tmp_path / "run.h5")
    warnings, infos = messages(reader, "warning"), messages(reader, "info")
    assert any(m.startswith("unit 1: ") and "reconnecting in 0.2 s (attempt 1 of 4)" in m for m in warnings), warnings
    assert any("unit 1: link restored; deployment continues" in m for m in infos), infos
    assert_checkpoints_once(reader)
    assert_features_complete(reader)
    assert reader.test_accuracy > 0.5


def test_tcp_server_gone_for_good_fails_resumably_then_resume_completes(tmp_path, capsys):
    board = Board()
    bench_file = board.bench_file(tmp_path)
    run = Run(fault_recipe({"retries": 2}), board.bench(tmp_path), tmp_path / "run.h5")
    on_measure(run, 0, "train", 80, board.kill)
    with pytest.raises(TransportError, match="unit 0: still failing after 2 reconnect attempts"):
        run.execute()
    assert run.state is State.FAILED

    reader = RunReader(tmp_path / "run.h5")
    assert reader.state == "failed" and "still failing after 2 reconnect attempts" in reader.reason
    assert reader.checkpoints == [(0, 0, "optimised"), (0, 0, "deployed")]
    assert reader.unit(0).info_plane["step"].tolist() == list(range(STEPS))  # every completed step kept
    assert reader.unit(0).feature_rows("train") >= 80  # and every measured batch
    assert any("could not switch the output off" in m for m in messages(reader, "warning"))  # safe state tried
    reader.close()

    board.start()  # the instrument is back (power-cycled: its programming is lost)
    assert cli.main(["run", "--resume", str(tmp_path / "run.h5"), "--config", str(bench_file), "--quiet"]) == 0
    reader = RunReader(tmp_path / "run.h5")
    assert reader.state == "done"
    assert any("unit 0: the hardware no longer holds the deployed parameters" in m for m in messages(reader))
    assert_every_step_once(reader)
    assert_checkpoints_once(reader)
    assert_features_complete(reader)
    assert board.physics.output is False
    assert "faults: 0" in capsys.readouterr().out


def test_instrument_that_stops_answering_then_recovers(tmp_path):
    """Timeouts: the board hangs (reads commands, answers none) for 1.5 s mid-measurement."""
    board = Board()
    run = Run(fault_recipe({"retries": 6, "backoff_s": 0.2}), board.bench(tmp_path, timeout_ms=300),
              tmp_path / "run.h5")

    def hang():
        board.front.mode = "hung"
        threading.Timer(1.5, lambda: setattr(board.front, "mode", None)).start()

    on_measure(run, 0, "train", 80, hang)
    assert run.execute() is State.DONE
    reader = RunReader(tmp_path / "run.h5")
    warnings = messages(reader, "warning")
    assert any("no reply to 'MEAS:MVM?" in m and "within 300 ms; reconnecting" in m for m in warnings), warnings
    assert any("link restored" in m for m in messages(reader, "info"))
    # the board kept its programming: verified by read-back, not reprogrammed
    assert not any("unit 0: reprogramming" in m for m in messages(reader))
    assert_every_step_once(reader)
    assert_features_complete(reader)
    assert board.physics.output is False


def test_instrument_that_never_answers_is_a_clear_error(tmp_path, capsys):
    silent = SilentServer()
    bench = write_yaml(tmp_path / "bench.yaml", {"instruments": {"crossbar": {
        "driver": "crossbar", "resource": silent.resource, "options": {"timeout_ms": 200}}}})
    recipe = write_yaml(tmp_path / "recipe.yaml", fault_recipe().model_dump())
    try:
        code = cli.main(["run", "--config", str(bench), "--recipe", str(recipe), "--out",
                         str(tmp_path / "run.h5"), "--quiet"])
    finally:
        silent.close()
    assert code == 2
    assert "crossbar: no reply to '*IDN?' within 200 ms" in capsys.readouterr().err
    assert not (tmp_path / "run.h5").exists()  # nothing started, nothing to resume


def test_garbage_identity_at_connect(tmp_path):
    board = Board()
    board.front.mode = "garbage-idn"
    with pytest.raises(DeviceError, match=r"expected '<maker>,<model>,<serial>,<firmware>' in reply to "
                                          r"'\*IDN\?', got 'READY'"):
        Run(fault_recipe(), board.bench(tmp_path), tmp_path / "run.h5").execute()
    assert board.physics.output is False


def test_garbage_replies_fail_cleanly_then_resume(tmp_path):
    board = Board()
    run = Run(fault_recipe(), board.bench(tmp_path), tmp_path / "run.h5")
    on_measure(run, 0, "train", 80, lambda: setattr(board.front, "mode", "garbage"))
    expected = r"crossbar: expected a block of 5120 bytes in reply to 'MEAS:MVM\? 40,0,65,0,32,', got '#210'"
    with pytest.raises(DeviceError, match=expected):
        run.execute()
    reader = RunReader(tmp_path / "run.h5")
    assert reader.state == "failed" and "expected a block of 5120 bytes" in reader.reason
    assert reader.unit(0).feature_rows("train") >= 80
    assert board.physics.output is False  # the driver put the board in its safe state
    reader.close()

    board.front.mode = None  # the line is clean again
    assert Run.reopen(tmp_path / "run.h5", board.bench(tmp_path)).execute() is State.DONE
    reader = RunReader(tmp_path / "run.h5")
    assert_every_step_once(reader)
    assert_checkpoints_once(reader)
    assert_features_complete(reader)
    assert board.physics.output is False


# ---------------------------------------------------------------- channels (in-process twin)


def test_broken_adc_while_training_is_found_from_statistics_and_checks_on_demand(tmp_path):
    """ADC column 2 returns garbage from unit 1 on, while the board's own diagnostics
    (DIAG:ADC?, *TST?) say healthy: the channel statistics find it; the readout downstream is
    trained on it (policy recover). Run.check() runs the self-tests on demand."""
    bench = twin_bench(tmp_path)
    recipe = fault_recipe({"inject": [{"at": 1, "instrument": "crossbar", "kind": "broken_adc",
                                       "params": {"columns": [2], "mode": "garbage"}}]})
    run = Run(recipe, bench, tmp_path / "run.h5")
    run.bus.subscribe(lambda e: run.check() if e.kind == "step" and e.unit == 1 and e.data["step"] == 1 else None)
    found = collect(run, Fault)
    assert run.execute() is State.DONE

    # garbage on a channel: "uncorrelated" where the model has it move, "spurious" where the model
    # holds it constant (a dead ReLU); which one depends on the trained weights, so either
    (fault,) = found
    assert (fault.fault, fault.unit, fault.channels, fault.split, fault.action) == (
        FaultKind.BROKEN_CHANNELS, 1, (2,), "train", "recover")
    assert set(fault.diagnoses) == {2} and fault.diagnoses[2] in GARBAGE
    reader = RunReader(tmp_path / "run.h5")
    assert [(e["kind"], e["unit"]) for e in reader.events if e["kind"] == "fault"] == [("fault", 1)]
    (record,) = reader.faults
    assert record["kind"] == "broken_channels" and record["unit"] == 1 and record["channels"] == [2]
    assert record["split"] == "train" and record["action"] == "recover"
    assert record["diagnoses"] == {"2": fault.diagnoses[2]}
    infos = messages(reader, "info")
    assert any(m.startswith("crossbar self-test passed") for m in infos), infos  # the board claims health
    assert "channel health: no broken channel found so far" in infos
    assert bench["crossbar"].self_test().ok
    assert reader.state == "done"
    assert_every_step_once(reader)
    assert bench["crossbar"].output is False


def test_broken_adc_at_verification_recovers_by_retraining_downstream(tmp_path, capsys):
    """The paper's scenario: after training, five ADC columns break. Verification finds them,
    unit 0 is re-measured as revision 1 (masked), unit 1 and the readout are retrained on it
    (here cut short by an abort and resumed); revision 0 stays in the file; `labpnn inspect
    --json` lists the fault. (Columns 16..31
    carry the G- halves of unit 0's outputs 0..15; unit 1, on the same board, uses 0..15 only.)"""
    bench = twin_bench(tmp_path)
    outputs = [0, 3, 5, 9, 12]
    columns = [16 + c for c in outputs]
    recipe = fault_recipe({"verify": True, "mask": True, "inject": [
        {"at": "verify", "instrument": "crossbar", "kind": "broken_adc", "params": {"columns": columns,
                                                                                   "mode": "garbage"}}]})
    run = Run(recipe, bench, tmp_path / "run.h5")  # aborted while retraining unit 1 ...
    run.bus.subscribe(lambda e: run.abort("cut the recovery short") if e.kind == "step" and e.unit == 1
                      and e.data["revision"] == 1 and e.data["step"] == 2 else None)
    assert run.execute() is State.IDLE
    bench = twin_bench(tmp_path)  # ... and resumed: the recovery continues revision 1
    assert Run.reopen(tmp_path / "run.h5", bench).execute() is State.DONE

    reader = RunReader(tmp_path / "run.h5")
    (record,) = reader.faults
    assert record["kind"] == "broken_channels" and record["unit"] == 0
    assert 3 <= len(record["channels"]) and set(record["channels"]) <= set(outputs)
    assert record["accuracy_after_fault"] < record["accuracy_before"] - 0.1
    assert record["accuracy_recovered"] > record["accuracy_after_fault"] + 0.1
    assert bench["crossbar"].self_test().ok  # the board's diagnostics never noticed
    # revision 1: unit 0 re-measured (not retrained), unit 1 and the readout retrained
    marks = reader.checkpoints
    assert {(0, 1, "measured"), (1, 1, "optimised"), (1, 1, "measured"), (-1, 1, "optimised")} <= set(marks)
    assert reader.unit(0).info_plane["revision"].tolist() == [0] * STEPS
    assert reader.unit(1).info_plane["revision"].tolist() == [0] * STEPS + [1] * STEPS
    assert_every_step_once(reader)
    # nothing of revision 0 lost; revision 1 of unit 0 has the broken channels masked
    assert_features_complete(reader, revision=0)
    assert_features_complete(reader, revision=1)
    masked = reader.unit(0).features("test", 1)[:, record["channels"]]
    assert not masked.any()
    assert reader.unit(0).features("test", 0)[:, record["channels"]].any()
    assert reader.test_accuracy == pytest.approx(record["accuracy_recovered"])
    assert bench["crossbar"].output is False

    assert cli.main(["inspect", str(tmp_path / "run.h5"), "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)["faults"]
    for key in ("kind", "unit", "channels", "accuracy_before", "accuracy_after_fault", "accuracy_recovered"):
        assert listed[key] == record[key]


def test_stuck_cells_tolerated_at_deploy_detected_at_verification(tmp_path):
    """A few cells stuck before unit 0 is deployed: write-verify reports them (a warning),
    the measurements still match the model per channel: tolerated. Many more stuck after
    training: verification reads the array back, finds it changed and reprograms it; the
    accuracy on the hardware drops although no single channel fails its checks: recovered
    by re-measuring unit 0 and retraining downstream."""
    bench = twin_bench(tmp_path, {"instruments": {"crossbar": {"driver": "sim-crossbar",
                                                               "options": {"seed": 1, "rows": 80, "cols": 32}}}})
    recipe = fault_recipe({"verify": True, "inject": [
        {"at": 0, "instrument": "crossbar", "kind": "stuck_cells", "params": {"count": 8, "seed": 5}},
        {"at": "verify", "instrument": "crossbar", "kind": "stuck_cells", "params": {"fraction": 0.02, "seed": 3}}]})
    run = Run(recipe, bench, tmp_path / "run.h5")
    found = collect(run, Fault)
    assert run.execute() is State.DONE
    (drop,) = found
    assert (drop.fault, drop.unit, drop.channels, drop.action) == (FaultKind.ACCURACY_DROP, None, (), "recover")
    assert drop.accuracy_after_fault < drop.accuracy_before and drop.pending  # recorded once recovered

    reader = RunReader(tmp_path / "run.h5")
    events = reader.events
    verify_at = next(i for i, e in enumerate(events) if "verifying the deployed network" in e["message"])
    before, after = events[:verify_at], events[verify_at:]
    assert any("cells failed write-verify" in e["message"] for e in before)  # seen at deploy ...
    assert not any(e["kind"] == "fault" for e in before)  # ... and tolerated
    assert any(e["message"] == "unit 0: reprogramming (the instrument held other parameters)" for e in after)
    assert [e["kind"] for e in after].count("fault") == 1
    (record,) = reader.faults
    assert record["kind"] == "accuracy_drop" and record["unit"] == 0 and record["channels"] == []
    assert record["accuracy_recovered"] > record["accuracy_after_fault"]
    assert reader.state == "done"
    assert_every_step_once(reader)


# ---------------------------------------------------------------- optics

def optics(table: str) -> dict:
    """SLM + camera on their own light path (optical tables are shared per process), an OPU."""
    return {"instruments": {
        "slm": {"driver": "sim-slm", "options": {"width": 64, "height": 64, "mode_block": 4, "table": table}},
        "camera": {"driver": "sim-camera", "options": {"width": 32, "height": 32, "table": table}},
        "opu": {"driver": "sim-opu", "options": {"n_components": 200, "max_n_features": 64}},
        "crossbar": {"driver": "sim-crossbar", "options": {"seed": 1}}}}


def optical_recipe(projector, faults):
    unit = ({"kind": "scattering", "instrument": ["slm", "camera"], "out": 16, "optical_features": 200}
            if projector == "slm" else {"kind": "scattering", "instrument": "opu", "out": 16})
    return fault_recipe(faults, units=[unit, {"kind": "crossbar", "instrument": "crossbar", "out": 8}])


def test_saturating_camera_stops_the_run_resumably(tmp_path):
    """The camera link drops while unit 0 prepares its inputs (retried, reconnected); after
    training the camera saturates: every channel of unit 0 sticks, a fault of the instrument
    that retraining cannot fix: with policy recover the run fails, resumable."""
    bench = twin_bench(tmp_path, optics(tmp_path.name))
    recipe = optical_recipe("slm", {"verify": True, "inject": [
        {"at": 0, "instrument": "camera", "kind": "disconnect"},
        {"at": "verify", "instrument": "camera", "kind": "saturate"}]})
    run = Run(recipe, bench, tmp_path / "run.h5")
    found = collect(run, Fault)
    with pytest.raises(DeviceError, match=r"^unit 0: .* while measuring verify"):
        run.execute()
    (fault,) = found
    assert (fault.fault, fault.unit, fault.split, fault.action) == (FaultKind.INSTRUMENT, 0, "verify", "recover")
    assert 12 <= len(fault.channels) <= 16 and set(fault.channels) <= set(range(16))
    reader = RunReader(tmp_path / "run.h5")
    assert any("link lost (injected fault); reconnecting" in m for m in messages(reader, "warning"))
    assert any("link restored" in m for m in messages(reader, "info"))
    assert reader.state == "failed" and reader.reason == fault.detail
    (record,) = reader.faults
    assert record["kind"] == "instrument" and record["unit"] == 0 and record["split"] == "verify"
    assert record["channels"] == list(fault.channels) and record["action"] == "recover"
    assert (-1, 0, "optimised") in reader.checkpoints  # the trained network is all there
    assert_every_step_once(reader)


def test_opu_exposure_collapse_pauses_then_recovers_after_the_fix(tmp_path):
    """Policy pause: the OPU's exposure collapses after training; verification pauses the run
    with the light source off; the operator fixes the OPU and resumes; the run reconnects it,
    verifies again and completes."""
    bench = twin_bench(tmp_path, optics(tmp_path.name))
    recipe = optical_recipe("opu", {"verify": True, "on_persistent": "pause", "inject": [
        {"at": "verify", "instrument": "opu", "kind": "exposure_collapse"}]})
    run = Run(recipe, bench, tmp_path / "run.h5")
    found = collect(run, Fault)
    result = {}
    worker = threading.Thread(target=lambda: result.setdefault("state", run.execute()))
    worker.start()
    assert run.states.wait_for(State.PAUSED, timeout=120) is State.PAUSED
    (fault,) = found
    assert (fault.fault, fault.unit, fault.split, fault.action) == (FaultKind.INSTRUMENT, 0, "verify", "pause")
    opu = bench["opu"]
    assert opu.connected is False  # safe: the light source is off
    reader = RunReader(tmp_path / "run.h5")
    assert reader.state == "paused"
    assert [(e["kind"], e["unit"]) for e in reader.events if e["kind"] == "fault"] == [("fault", 0)]
    reader.close()
    opu._core.clear_faults()  # the operator fixes the exposure
    run.unpause()
    worker.join(120)
    assert result["state"] is State.DONE
    reader = RunReader(tmp_path / "run.h5")
    infos = messages(reader, "info")
    assert "opu: reconnected after the pause" in infos
    assert infos[-1] == "verification: every channel healthy"  # measured again, healthy now
    (record,) = reader.faults
    assert record["kind"] == "instrument" and record["unit"] == 0 and record["action"] == "pause"
    assert reader.state == "done"
    assert [h["state"] for h in reader.state_history][-4:] == ["pausing", "paused", "running", "done"]
    assert_every_step_once(reader)


# ---------------------------------------------------------------- policies


def adc_at_unit0(policy: str) -> dict:
    """Unit 0's output 2 breaks (ADC column 18, its G- half) as soon as unit 0 is measured."""
    return {"on_persistent": policy, "inject": [{"at": 0, "instrument": "crossbar", "kind": "broken_adc",
                                                 "params": {"columns": [18], "mode": "garbage"}}]}


def wait_for_state(run: Run, state: State, timeout: float = 120) -> None:
    assert run.states.wait_for(state, timeout=timeout) is state


def start(run: Run) -> tuple[threading.Thread, dict]:
    result = {}
    worker = threading.Thread(target=lambda: result.setdefault("state", run.execute()))
    worker.start()
    return worker, result


def test_policy_pause_then_abort_then_resume_and_continue(tmp_path):
    bench = twin_bench(tmp_path)
    run = Run(fault_recipe(adc_at_unit0("pause")), bench, tmp_path / "run.h5")
    found = collect(run, Fault)
    worker, result = start(run)
    wait_for_state(run, State.PAUSED)
    assert bench["crossbar"].output is False  # safe while the operator decides
    (fault,) = found
    assert (fault.fault, fault.unit, fault.channels, fault.split, fault.action) == (
        FaultKind.BROKEN_CHANNELS, 0, (2,), "train", "pause")
    assert fault.diagnoses[2] in GARBAGE
    reader = RunReader(tmp_path / "run.h5")
    assert reader.state == "paused"
    assert [e["message"] for e in reader.events if e["kind"] == "fault"] == [fault.message]
    reader.close()
    run.abort("operator: stop here")
    worker.join(60)
    assert result["state"] is State.IDLE
    reader = RunReader(tmp_path / "run.h5")
    assert reader.state == "idle" and "operator: stop here" in reader.reason
    assert (0, 0, "measured") not in reader.checkpoints
    reader.close()

    # resumed: unit 0 is measured again, the fault found again; this time the operator goes on
    bench = twin_bench(tmp_path)
    run = Run.reopen(tmp_path / "run.h5", bench)
    worker, result = start(run)
    wait_for_state(run, State.PAUSED)
    run.unpause()
    worker.join(120)
    assert result["state"] is State.DONE
    reader = RunReader(tmp_path / "run.h5")
    assert [(f["unit"], f["channels"], f["action"]) for f in reader.faults] == [(0, [2], "pause")] * 2
    assert reader.state == "done"
    assert_every_step_once(reader)
    assert_checkpoints_once(reader)
    assert_features_complete(reader)
    assert reader.unit(0).features("test")[:, 2].any()  # kept as it is (mask off)
    assert bench["crossbar"].output is False


def test_policy_abort_stops_resumably_and_on_fault_overrides_it(tmp_path):
    bench = twin_bench(tmp_path)
    run = Run(fault_recipe(adc_at_unit0("abort")), bench, tmp_path / "run.h5")
    found = collect(run, Fault)
    assert run.execute() is State.IDLE
    (fault,) = found
    assert (fault.fault, fault.unit, fault.channels, fault.action) == (FaultKind.BROKEN_CHANNELS, 0, (2,), "abort")
    reader = RunReader(tmp_path / "run.h5")
    assert reader.state == "idle" and reader.reason == "aborted: unit 0: broken output channels [2]"
    (record,) = reader.faults
    assert record["kind"] == "broken_channels" and record["channels"] == [2] and record["action"] == "abort"
    assert reader.unit(0).info_plane["step"].tolist() == list(range(STEPS))
    assert bench["crossbar"].output is False
    reader.close()
    # the operator accepts the broken channel: resume with policy recover
    assert cli.main(["run", "--resume", str(tmp_path / "run.h5"), "--config", str(tmp_path / "instruments.yaml"),
                     "--quiet", "--on-fault", "recover"]) == 0
    reader = RunReader(tmp_path / "run.h5")
    assert reader.state == "done"
    assert [(f["channels"], f["action"]) for f in reader.faults] == [([2], "abort"), ([2], "recover")]
    assert_every_step_once(reader)


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_cli_pause_without_a_terminal_aborts_then_the_prompt_continues(tmp_path, monkeypatch, capsys):
    bench = write_yaml(tmp_path / "bench.yaml", {"instruments": {"crossbar": {"driver": "sim-crossbar",
                                                                             "options": {"seed": 1}}}})
    recipe = write_yaml(tmp_path / "recipe.yaml", fault_recipe(adc_at_unit0("pause")).model_dump())
    path = tmp_path / "run.h5"
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # headless: nobody to ask
    sigint = signal.getsignal(signal.SIGINT)  # SIG_IGN under a shell's `&`, else Python's default
    assert cli.main(["run", "--config", str(bench), "--recipe", str(recipe), "--out", str(path), "--quiet"]) == 3
    err = capsys.readouterr().err
    assert f"run aborted; continue it with: labpnn run --resume {path}" in err
    reader = RunReader(path)
    assert reader.state == "idle"
    assert "paused on a fault with no operator to ask (stdin is not a terminal)" in reader.reason
    reader.close()

    monkeypatch.setattr(sys, "stdin", FakeTerminal("maybe\nc\n"))  # an operator at a terminal
    assert cli.main(["run", "--resume", str(path), "--config", str(bench), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "labpnn: the run is paused, instruments in their safe state: unit 0: 1 broken output channel(s)" in err
    reader = RunReader(path)
    assert reader.state == "done"
    assert_every_step_once(reader)
    assert signal.getsignal(signal.SIGINT) is sigint  # the CLI put its handlers back


# ---------------------------------------------------------------- a killed run process


def wait_for_file(path: Path, proc: subprocess.Popen, condition, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        try:
            with RunReader(path) as reader:
                if condition(reader):
                    return
        except Exception:  # not created yet, or being replaced by a resume's repair
            pass
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting on {path}")


def test_sigkill_mid_optimisation_and_mid_measurement_then_resume(tmp_path):
    board = Board()
    board.front.mvm_delay_s = 0.1  # a slow board: each unit measures for about a second
    bench = board.bench_file(tmp_path)
    recipe = write_yaml(tmp_path / "recipe.yaml", fault_recipe().model_dump())
    path = tmp_path / "run.h5"
    command = [sys.executable, "-m", "labpnn", "run", "--config", str(bench), "--quiet"]

    def launch(*args):
        return subprocess.Popen(command + list(args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    first = launch("--recipe", str(recipe), "--out", str(path))
    wait_for_file(path, first, lambda r: len(r.unit(0).info_plane) >= 2)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    second = launch("--resume", str(path))
    wait_for_file(path, second, lambda r: r.unit(0).feature_rows("train") > 0
                  and (0, 0, "measured") not in r.checkpoints)
    os.kill(second.pid, signal.SIGKILL)
    second.wait()
    assert board.physics.output is True  # killed mid-measurement: nobody switched the board off

    assert cli.main(["run", "--resume", str(path), "--config", str(bench), "--quiet"]) == 0
    reader = RunReader(path)
    assert reader.state == "done"
    assert [w["action"] for w in reader.writers] == ["create", "resume", "resume", "close"]
    assert_every_step_once(reader)
    assert_checkpoints_once(reader)
    assert_features_complete(reader)
    assert board.physics.output is False  # the resumed run switched it off at connect and at the end

"""Fault records carry their accuracies once the run has measured them, and `labpnn inspect`
says what is known, never "n/a -> n/a"."""

from __future__ import annotations

from engine_helpers import twin_bench
from fault_helpers import fault_recipe
from labpnn.engine import Run, State
from labpnn.runlog import RunReader, format_summary
from test_runlog import new_log


def test_a_fault_found_while_measuring_gets_the_accuracies_measured_after_it(tmp_path):
    path = tmp_path / "run.h5"
    with new_log(path) as log:
        log.accuracy(0, 0, "test", 0.80, "probe")          # the unit feeding the faulty one
        log.fault({"kind": "broken_channels", "unit": 1, "channels": [3], "split": "train"})
        log.accuracy(1, 0, "train", 0.60, "probe")
        log.accuracy(1, 0, "test", 0.55, "probe")          # the faulty unit, with its fault
        log.accuracy(None, 0, "test", 0.83, "readout")     # retrained downstream
        log.accuracy(None, 0, "test", 0.20, "readout")     # later rows do not replace the first
    with RunReader(path) as r:
        (fault,) = r.faults
        summary = r.summary()
    assert (fault["accuracy_before"], fault["accuracy_after_fault"], fault["accuracy_recovered"]) == (
        0.80, 0.55, 0.83)
    assert fault["accuracy_sources"] == {"accuracy_before": "probe of unit 0, revision 0, test",
                                         "accuracy_after_fault": "probe of unit 1, revision 0, test",
                                         "accuracy_recovered": "final readout, revision 0, test"}
    text = format_summary(summary)
    assert ("broken_channels on unit 1 channels [3]: test accuracy 80.0 % before -> 55.0 % after "
            "the fault -> 83.0 % recovered") in text
    assert "n/a" not in text


def test_what_the_record_says_is_kept_and_nothing_known_is_said_so(tmp_path):
    path = tmp_path / "run.h5"
    with new_log(path) as log:
        log.fault({"kind": "accuracy_drop", "unit": None, "accuracy_before": 0.9,
                   "accuracy_after_fault": 0.6})
        log.fault({"kind": "broken_channels", "unit": 0, "channels": [1], "accuracy_recovered": 0.7})
        log.fault({"kind": "instrument", "unit": 1, "channels": []})
    with RunReader(path) as r:
        drop, first, nothing = r.faults
        text = format_summary(r.summary())
    assert drop["accuracy_before"] == 0.9 and "accuracy_sources" not in drop
    assert first["accuracy_recovered"] == 0.7 and first["accuracy_before"] is None  # unit 0: no upstream
    assert "test accuracy 90.0 % before -> 60.0 % after the fault" in text
    assert "channels [1]: test accuracy 70.0 % recovered" in text
    assert "channels []: test accuracy not measured yet" in text
    assert "n/a" not in text


def test_broken_adc_found_while_training_is_recorded_with_its_accuracies(tmp_path):
    recipe = fault_recipe({"inject": [{"at": 1, "instrument": "crossbar", "kind": "broken_adc",
                                       "params": {"columns": [2], "mode": "garbage"}}]})
    assert Run(recipe, twin_bench(tmp_path), tmp_path / "run.h5").execute() is State.DONE
    with RunReader(tmp_path / "run.h5") as r:
        faults = [f for f in r.faults if f["unit"] == 1]
        text = format_summary(r.summary())
    assert faults, text
    for f in faults:
        assert None not in (f["accuracy_before"], f["accuracy_after_fault"], f["accuracy_recovered"]), f
    assert "n/a" not in text

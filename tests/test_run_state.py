"""The run's state table: what moves where, what is refused, and who reads it."""

import threading

import pytest

from labpnn.gui.run_worker import controls
from labpnn.run_state import ENDED, LIVE, REQUESTS, STATES, TRANSITIONS, IllegalTransition, State, StateMachine
from labpnn.runlog import STATES as FILE_STATES


def test_the_table_covers_every_state_and_the_lists_derive_from_it():
    assert set(TRANSITIONS) == set(State) and STATES == FILE_STATES
    assert LIVE == {State.RUNNING, State.PAUSING, State.PAUSED, State.ABORTING}
    assert ENDED == {State.DONE, State.FAILED}
    assert all(State.FAILED in TRANSITIONS[s] for s in LIVE)  # anything under way can fail
    assert controls("paused", True) == {"Pause": False, "Resume": True, "Abort": True, "Check": False}
    assert controls("starting", True) == dict.fromkeys(("Pause", "Resume", "Abort", "Check"), False)
    assert not any(controls("running", False).values())  # no run of ours: nothing to control
    assert REQUESTS["abort"] <= LIVE


def test_an_illegal_transition_names_both_states():
    machine = StateMachine()
    with pytest.raises(IllegalTransition, match="from 'idle' to 'paused'"):
        machine.move(State.PAUSED)
    machine.move(State.RUNNING)
    machine.move(State.DONE)
    with pytest.raises(IllegalTransition, match="from 'done' to 'running'.*goes to: nothing"):
        machine.move(State.RUNNING)
    assert machine.state is State.DONE


def test_hooks_run_in_order_before_waiters_wake():
    machine = StateMachine()
    seen = []
    machine.on_transition(lambda old, new, reason: seen.append((old, new, reason)))
    remove = machine.on_transition(lambda old, new, reason: seen.append("second"))
    woke = []
    waiter = threading.Thread(target=lambda: woke.append((machine.wait_for(State.PAUSED, timeout=30), list(seen))))
    waiter.start()
    machine.move(State.RUNNING)
    machine.move(State.PAUSING, "operator")
    machine.move(State.PAUSED)
    waiter.join(30)
    assert woke[0][0] is State.PAUSED and woke[0][1][-1] == "second"  # the hooks had run
    assert seen[:2] == [(State.IDLE, State.RUNNING, ""), "second"]
    remove()
    machine.move(State.ABORTING)
    assert seen[-1] == (State.PAUSED, State.ABORTING, "")
    machine.move(State.IDLE)
    assert machine.wait_for(State.PAUSED, timeout=30) is State.IDLE  # aborted: does not wait for a pause

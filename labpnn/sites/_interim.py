"""INTERIM (until the engine's RunContext lands): the contract's ctx over today's Run."""

from __future__ import annotations

from labpnn.engine import Run, _InstrumentFault
from labpnn.events import Event
from labpnn.health import ChannelMonitor


class _Ctx:
    def __init__(self, run: Run, units, ds):
        self.run, self.units, self.dataset = run, units, ds
        self.recipe, self.log, self.seed = run.recipe, run._log, run.recipe.seed

    def _done(self):
        return set(self.log.checkpoints())

    def deploy(self, index, rev, unit):
        self.run._deploy(index, rev, unit, self._done())

    def measure(self, index, rev, unit, h, split, *, monitor=True):
        while True:
            mon = ChannelMonitor(unit.out_features, self.run._faulty.get(index), None) if monitor else None
            try:
                return self.run._measure(index, rev, unit, h, split, mon)
            except _InstrumentFault as exc:
                self.run._stop_or_pause(exc)

    def readout(self, f_train, f_test, rev):
        return self.run._readout(f_train, f_test, self.dataset, rev, self._done())

    def done(self, index, rev, phase):
        return (index, rev, phase) in self._done()

    def checkpoint_phase(self, index, rev, phase):
        self.log.checkpoint(index, rev, phase)

    def checkpoint(self):
        self.run._checkpoint()

    def emit(self, kind, message, unit=None, **data):
        self.run.bus.emit(Event(kind, message, unit, data))


class ParallelRun(Run):
    def __init__(self, *args, scheme=None, **kwargs):
        super().__init__(*args, **kwargs)
        from labpnn.sites.scheme import ParallelScheme, parallel_options
        self.scheme = scheme or ParallelScheme(parallel_options(self.recipe))

    def _train(self, units, ds):
        self.scheme.run(_Ctx(self, units, ds))

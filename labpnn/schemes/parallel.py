"""The `parallel` scheme: every unit trained at the same time, each at its own site.

What each unit trains on, and why. Training unit l needs its input, the measured output of
unit l-1, which in a cascade exists only once unit l-1 is trained. Here:

1. Revision 0, the initialisation pass: the initial (untrained) network is deployed and
   measured once, unit after unit, over the training and test data. Unit l's recorded rev-0
   features are the input unit l+1 trains on in round 1 (unit 0 trains on the data itself).
2. Round r (revision r = 1..rounds): every unit is optimised at once, at its own site, with its
   objective (PIB: I(Y;Z_l) - beta I(X;Z_l), X the network input, Y the labels) on its inputs
   from revision r-1, starting from its revision r-1 parameters; then deployed. The measurement
   is a pass through the network as now deployed: unit l measures unit l-1's rev-r outputs as
   soon as they exist (unit 0 while unit 1 may still train). These rev-r features are what the
   readout (after the last round) and the next round train on.

So unit l > 0 trains on the outputs of an upstream unit that changes under it: in round 1 on
those of the initial network, in round r on those of round r-1. Its layer-local objective does
not depend on the upstream parameters, only on what the upstream unit emits, and the readout
is fitted on the network as finally deployed (step 2's pass), so the mismatch costs accuracy
only where the upstream unit's training changed its outputs a lot; further rounds (the recipe's
`rounds`) re-measure the inputs through the trained network and train again to close that gap.
Units never wait for each other while optimising: no synchronised updates, no gradients or
instruments travel, only arrays and parameters (and each site's optimiser state, for resume).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from labpnn.errors import ConfigError
from labpnn.events import InfoPlane, PhaseStarted, Step
from labpnn.run_context import RunContext
from labpnn.schemes import register_scheme


class ParallelOptions(BaseModel):
    """`scheme: {name: parallel, rounds: 1, chunk: 25, sites: {paris: [opu], beijing: [crossbar]}}`."""

    model_config = ConfigDict(extra="forbid")
    rounds: int = Field(1, ge=1, description="train-all-then-measure rounds after the initialisation pass")
    chunk: int = Field(25, ge=1, description="optimisation steps per call to a site (and per checkpoint)")
    sites: dict[str, list[str]] | None = Field(
        None, description="the embedded cluster: each site's name and the bench instruments it holds "
                          "(default: one site per unit's instruments); ignored with --scheduler")


class _Stopped(Exception):
    """Another unit's thread failed: this one stops at its next chunk."""


class Parallel:
    name = "parallel"

    def __init__(self, options: ParallelOptions):
        self.options = options

    def run(self, ctx: RunContext) -> None:
        from labpnn.sites.remote import RemoteUnit  # dask only where a parallel run needs it

        units = ctx.units
        local = [i for i, u in enumerate(units) if not isinstance(u, RemoteUnit)]
        if local:
            raise ConfigError(f"scheme parallel: unit(s) {local} are not at a site; run it on a cluster "
                              "(labpnn run starts one for a parallel recipe, or joins --scheduler)")
        if ctx.recipe.faults.verify:
            raise ConfigError("scheme parallel: faults.verify is not supported (its recovery retrains units one "
                              "after another: use scheme cascade)")
        for index, unit in enumerate(units):
            needs = set(ctx.objective(index).needs) - set(ctx.supervised_targets())
            if needs:
                raise ConfigError(f"scheme parallel: unit {index}'s objective {ctx.objective(index).name!r} needs "
                                  f"{sorted(needs)}, which this scheme does not provide (it provides the labels)")
            ctx.log.site_record({"unit": index, "revision": None, "site": unit.site, "host": unit.host,
                                 "address": unit.address, "what": "assigned"})
        features = self._revisions(ctx)
        ctx.readout(*features[-1][self.options.rounds], self.options.rounds)

    def _revisions(self, ctx: RunContext) -> list[list[tuple[np.ndarray, np.ndarray]]]:
        """Every revision of every unit, one thread per unit going through its revisions: optimise
        (rev > 0) as soon as its inputs of rev - 1 exist, deploy, then measure as soon as the
        upstream unit's rev features exist. No barrier between units: unit 0 trains right after
        its own initialisation measurement, while the later units are still measured.
        Returns features[unit][rev] = (train, test)."""
        units, ds, rounds = ctx.units, ctx.dataset, self.options.rounds
        features: list[list[Any]] = [[None] * (rounds + 1) for _ in units]
        ready = [[threading.Event() for _ in range(rounds + 1)] for _ in units]
        stop = threading.Event()
        errors: list[BaseException] = []

        def upstream(index: int, rev: int) -> tuple[np.ndarray, np.ndarray]:
            """Unit index's input at revision rev: the data, or unit index - 1's rev features."""
            if index == 0:
                return ds.x_train, ds.x_test
            while not ready[index - 1][rev].wait(0.2):
                if stop.is_set():
                    raise _Stopped
            return features[index - 1][rev]

        def work(index: int) -> None:
            unit = units[index]
            try:
                for rev in range(rounds + 1):
                    before, started = unit.traffic(), time.perf_counter()
                    if rev == 0:
                        if not ctx.done(index, 0, "measured"):
                            ctx.inject(index)  # a recipe's simulated fault due before the unit's first deployment
                        self._initial(ctx, index, unit)
                    else:
                        self._optimise(ctx, index, rev, unit, upstream(index, rev - 1)[0], stop)
                    if not ctx.done(index, rev, "measured"):  # measured already: nothing left to deploy it for
                        ctx.deploy(index, rev, unit)
                    inputs = upstream(index, rev)
                    measuring = time.perf_counter()
                    features[index][rev] = self._measure(ctx, index, rev, unit, inputs, keep=rev < rounds)
                    ready[index][rev].set()
                    after, now = unit.traffic(), time.perf_counter()
                    ctx.log.site_record({"unit": index, "revision": rev, "site": unit.site, "host": unit.host,
                                         "address": unit.address, "what": "trained" if rev else "initial",
                                         "wall_s": now - started, "measure_s": now - measuring,
                                         **{k: after[k] - before[k] for k in ("busy_s", "bytes_sent",
                                                                              "bytes_received")}})
            except BaseException as exc:  # the first failure stops the others, then is raised
                if not isinstance(exc, _Stopped):
                    errors.append(exc)
                stop.set()

        threads = [threading.Thread(target=work, args=(i,), name=f"parallel-u{i}", daemon=True)
                   for i in range(len(units))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return features

    @staticmethod
    def _initial(ctx: RunContext, index: int, unit) -> None:
        """Revision 0 is the initial network: its parameters recorded as trained, with no step."""
        if ctx.done(index, 0, "optimised"):
            ctx.restore(index, 0, unit)
        else:
            ctx.log.params(index, 0, "trained", {k: v.detach().numpy() for k, v in unit.model().state_dict().items()})
            ctx.checkpoint_phase(index, 0, "optimised")

    def _optimise(self, ctx: RunContext, index: int, rev: int, unit, h_train: np.ndarray,
                  stop: threading.Event) -> None:
        """Optimise at the unit's site in chunks; each chunk's steps and the optimiser state
        after it are recorded here as they arrive (so a resume repeats no recorded step)."""
        if ctx.done(index, rev, "optimised"):
            ctx.restore(index, rev, unit)
            return
        ctx.restore(index, rev - 1, unit)
        log, ds, settings = ctx.log, ctx.dataset, ctx.recipe.unit_pib(index)
        objective = ctx.objective(index)
        unit.load_inputs(rev, objective, ds.x_train, ctx.supervised_targets(), h_train, settings,
                         ctx.unit_seed(index, rev), ctx.recipe.measure.batch_size)
        live = log.live_state(index, rev)
        start, state = (live[0] + 1, live[1]) if live is not None else (0, None)
        ctx.emit(PhaseStarted(unit=index, phase="optimise", steps=settings.steps, start=start,
                              what=f"{objective.name} at site {unit.site}"))
        for a in range(start, settings.steps, self.options.chunk):
            ctx.checkpoint()
            if stop.is_set():
                raise _Stopped
            b = min(a + self.options.chunk, settings.steps)
            out = unit.train(rev, a, b, state, final=b == settings.steps)
            state = None  # the site keeps its optimiser between chunks
            rows = [(s, loss, values.get("I_XZ", np.nan), values.get("I_YZ", np.nan))
                    for s, loss, values in out["records"]]
            log.steps(index, rev, rows, out["state"])
            for (step, loss, values), (_, _, i_xz, i_yz) in zip(out["records"], rows):
                ctx.emit(Step(unit=index, step=step, steps=settings.steps, loss=loss, values=values, revision=rev))
                if "I_XZ" in values and "I_YZ" in values:
                    ctx.emit(InfoPlane(unit=index, step=step, I_XZ=i_xz, I_YZ=i_yz, revision=rev))
        if start >= settings.steps:  # every step recorded before a resume: the saved state holds the model
            unit.train(rev, settings.steps, settings.steps, state, final=True)
        ctx.log.params(index, rev, "trained", {k: v.detach().numpy() for k, v in unit.model().state_dict().items()})
        ctx.checkpoint_phase(index, rev, "optimised")

    @staticmethod
    def _measure(ctx: RunContext, index: int, rev: int, unit, upstream, keep: bool) -> tuple[np.ndarray, np.ndarray]:
        """Both splits through the deployed unit; `keep`: the site keeps the training split's rows
        (and their optical features), the next round's inputs, so they are not sent or measured again."""
        if ctx.done(index, rev, "measured"):
            return ctx.log.read_features(index, rev, "train"), ctx.log.read_features(index, rev, "test")
        monitor = ctx.monitor(index)  # one history for both splits
        unit.keep = keep
        try:
            f_train = ctx.measure(index, rev, unit, upstream[0], "train", monitor=monitor)
        finally:
            unit.keep = False
        f_test = ctx.measure(index, rev, unit, upstream[1], "test", monitor=monitor)
        ctx.checkpoint_phase(index, rev, "measured")
        ctx.probe(index, rev, f_train, f_test)
        return f_train, f_test


register_scheme("parallel", ParallelOptions, Parallel)


def parallel_options(recipe) -> ParallelOptions | None:
    """The recipe's parallel scheme options, or None when its scheme is another."""
    from labpnn.schemes import SCHEMES

    name, options = SCHEMES.parse(recipe.scheme_spec(), "scheme")
    return options if name == "parallel" else None

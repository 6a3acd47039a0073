"""Scheme `online` (reinforcement learning): the agent acts on the hardware while its units
learn (labpnn.rl.online holds the loop; this wires it to the run). Needs a recipe with `env:`
and objectives that read TD targets (pib-td). Episodes are Episode events (the run file's
episodes table); every `checkpoint_every` episodes the agent's state (learner, replay buffer,
progress) is saved in unit 0's optimiser slot and each unit gets an info-plane row, so a killed
run resumes from the last checkpoint (`labpnn run --resume`)."""

from __future__ import annotations

import numpy as np

from labpnn.errors import ConfigError, RunLogError
from labpnn.events import Episode, InfoEvent, Step
from labpnn.objectives.pib_td import NEEDS
from labpnn.rl.build import check_units
from labpnn.rl.env import Environment
from labpnn.rl.online import OnlineOptions, OnlineRun
from labpnn.run_context import RunContext
from labpnn.schemes import register_scheme


class Online:
    name = "online"

    def __init__(self, options: OnlineOptions):
        self.options = options

    def run(self, ctx: RunContext) -> None:
        env = ctx.dataset
        if not isinstance(env, Environment):
            raise ConfigError("scheme: scheme 'online' acts in an environment; the recipe needs 'env:' "
                              "instead of 'dataset:'")
        check_units(ctx.units)
        objectives = [ctx.objective(i) for i in range(len(ctx.units))]
        for i, objective in enumerate(objectives):
            if not objective.needs <= NEEDS:
                raise ConfigError(f"{ctx.recipe.objective_field(i)}: objective {objective.name!r} needs "
                                  f"{sorted(objective.needs - NEEDS)}, which scheme 'online' does not provide "
                                  f"(it provides {sorted(NEEDS)}: use pib-td)")
        run = OnlineRun.build(ctx.units, env, self.options, objectives, ctx.seed,
                              deploy=ctx.link.deploy, measured=ctx.link.costs.measured, between=ctx.checkpoint,
                              on_episode=lambda row: self._episode(ctx, run, row),
                              on_checkpoint=lambda blob: self._checkpoint(ctx, run, blob))
        saved = ctx.log.live_state(0, 0)
        if saved is not None:
            try:
                run.load_state_bytes(saved[1])
            except ValueError as exc:
                raise RunLogError(f"{ctx.log.path}: the agent's checkpoint (unit 0's optimiser slot): {exc}") from None
            ctx.emit(InfoEvent(text=f"resumed at episode {run.progress.episode} "
                                    f"({run.progress.env_steps} environment steps, replay buffer restored)"))
        progress = run.run()
        for i, unit in enumerate(ctx.units):
            ctx.log.params(i, 0, "trained", {k: v.detach().numpy() for k, v in unit.model().state_dict().items()})
            ctx.log.params(i, 0, "deployed", unit.read_back())
        r = run.report()
        ctx.emit(InfoEvent(text=(f"solved after {progress.solved_at} episodes" if progress.solved_at else
                                 f"not solved in {progress.episode} episodes")
                           + f"; {r['steps_per_s']:.1f} environment steps/s, instruments idle "
                             f"{r['idle_fraction']:.0%} of the time, {r['learner_steps']} learner steps, "
                             f"{r['deployments']} deployments"))

    @staticmethod
    def _episode(ctx: RunContext, run: OnlineRun, row: dict) -> None:
        ctx.emit(Episode(episode=row["episode"], total=row["return"], length=row["length"], epsilon=row["epsilon"],
                         env_steps=row["env_steps"], learner_steps=row["learner_steps"], average=row["average"],
                         losses=tuple(row["losses"])))
        for i, values in enumerate(run.learner.last):
            if values:
                ctx.emit(Step(unit=i, step=row["learner_steps"], steps=0, loss=values["loss"],
                              values={k: v for k, v in values.items() if k != "loss"}))

    @staticmethod
    def _checkpoint(ctx: RunContext, run: OnlineRun, blob: bytes) -> None:
        """The agent's state into unit 0's slot (the others' rows name the same moment)."""
        for i, values in enumerate(run.learner.last):
            ctx.log.step(i, 0, run.learner.steps, loss=values.get("loss", np.nan), i_xz=values.get("I_XZ", np.nan),
                         i_yz=values.get("I_YZ", np.nan), state=blob if i == 0 else b"")


register_scheme("online", OnlineOptions, Online)

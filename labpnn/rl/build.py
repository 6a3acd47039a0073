"""An RL recipe on a bench, as an OnlineRun: the environment (checked before any
instrument is touched), the units on their instruments, one pib-td objective per unit."""

from __future__ import annotations

from labpnn.errors import ConfigError
from labpnn.objectives import OBJECTIVES
from labpnn.rl.env import EnvSpec, Environment
from labpnn.rl.online import OnlineOptions, OnlineRun
from labpnn.objectives.pib_td import PIBTDObjective, PIBTDOptions


def check_units(units) -> None:
    """The online scheme measures each unit's physical stage and applies its digital part
    itself: only units whose physical stage has no parameters (scattering units) qualify."""
    from labpnn.units.scattering import ScatteringUnit

    for i, unit in enumerate(units):
        if not isinstance(unit, ScatteringUnit):
            raise ConfigError(f"recipe units.{i}: scheme online drives scattering units (a fixed optical "
                              f"projection and a digital layer); {unit.name} is a {type(unit).__name__}")


def scheme_options(recipe) -> OnlineOptions:
    """The recipe's `scheme:` options (scheme online)."""
    from labpnn.schemes import SCHEMES

    return SCHEMES.parse(recipe.scheme_spec(), "scheme")[1]


def objective_options(recipe, index: int = 0) -> PIBTDOptions:
    """Unit `index`'s `objective:` options (pib-td)."""
    return OBJECTIVES.parse(recipe.objective_spec(index), recipe.objective_field(index))[1]


def objectives(recipe, units, env: Environment) -> list[PIBTDObjective]:
    return [PIBTDObjective(objective_options(recipe, i), u.out_features, env.n_actions, i == len(units) - 1,
                           seed=recipe.seed + i) for i, u in enumerate(units)]


def build_online_run(recipe, bench, env_spec: EnvSpec | None = None, options: OnlineOptions | None = None,
                     seed: int | None = None, **callbacks) -> OnlineRun:
    """The recipe's agent on `bench` (its instruments connected here, after the checks)."""
    from labpnn.units import build_units

    seed = recipe.seed if seed is None else seed
    env = Environment(env_spec or recipe.env, seed)
    options = options or scheme_options(recipe)
    units = build_units(recipe, bench, env.encoder.n_bits)
    check_units(units)
    objs = objectives(recipe, units, env)
    for name in recipe.instruments():
        bench[name].connect()
    return OnlineRun.build(units, env, options, objs, seed, **callbacks)

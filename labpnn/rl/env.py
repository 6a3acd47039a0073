"""The environment side of an RL recipe: a seeded gymnasium environment with a discrete
action space, and the binary thermometer code that puts its observation on an optical unit.

Every check here runs before any instrument is touched: a missing gymnasium, an unknown
environment id, an action space the agent cannot serve or an observation without bounds
is a ConfigError naming the recipe field.
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from labpnn.errors import ConfigError
from labpnn.units.opu_encoding import ThermometerEncoder


class EnvSpec(BaseModel):
    """A recipe's `env` section."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(description="gymnasium environment id, e.g. CartPole-v1")
    episodes: int = Field(600, ge=1, description="episodes at most; the run stops once solved")
    solved_return: float | None = Field(None, description="mean return over `window` episodes that "
                                        "solves the task; None: the environment's reward_threshold")
    window: int = Field(100, ge=1, description="consecutive episodes the solved mean is taken over")
    bounds: list[float] | None = Field(None, description="half-range of each observation dimension "
                                       "(the thermometer code spans -b..b); None: the observation space's")
    levels: int = Field(16, ge=1, le=256, description="thermometer levels per observation dimension")


def _gymnasium():
    try:
        import gymnasium
    except ImportError:
        raise ConfigError("recipe env: needs the gymnasium package, which is not installed "
                          "(pip install 'labpnn[rl]')") from None
    return gymnasium


class Environment:
    """A gymnasium environment, episode e reset with seed (seed, e): a resumed run replays
    the same episodes. Construction checks the id, the action and the observation spaces."""

    def __init__(self, spec: EnvSpec, seed: int):
        gym = _gymnasium()
        if spec.id not in gym.registry:
            close = [k for k in gym.registry if k.lower().startswith(spec.id.split("-")[0].lower()[:4])]
            raise ConfigError(f"recipe env.id: unknown gymnasium environment {spec.id!r}"
                              + (f" (similar: {', '.join(sorted(close)[:5])})" if close else ""))
        try:
            self.env = gym.make(spec.id)
        except Exception as exc:  # a registered id whose extra dependencies are missing
            raise ConfigError(f"recipe env.id: gymnasium cannot make {spec.id!r} ({exc})") from None
        space, obs = self.env.action_space, self.env.observation_space
        if not isinstance(space, gym.spaces.Discrete):
            self.env.close()
            raise ConfigError(f"recipe env.id: {spec.id!r} has action space {space}; the agent picks "
                              "one of n discrete actions (Discrete spaces only)")
        if not isinstance(obs, gym.spaces.Box) or len(obs.shape) != 1:
            self.env.close()
            raise ConfigError(f"recipe env.id: {spec.id!r} has observation space {obs}; the agent "
                              "takes a flat vector (a 1-D Box)")
        self.spec, self.seed = spec, int(seed)
        self.n_actions = int(space.n)
        self.obs_dim = int(obs.shape[0])
        self.encoder = ThermometerCode(self._bounds(obs), spec.levels)
        self.in_features = self.encoder.n_bits  # what the first unit takes
        self.n_classes = self.n_actions  # what the objectives choose among (the engine's name)
        threshold = self.env.spec.reward_threshold if self.env.spec else None
        self.solved_return = spec.solved_return if spec.solved_return is not None else threshold
        if self.solved_return is None:
            raise ConfigError(f"recipe env.solved_return: {spec.id!r} has no reward_threshold; set one")
        self.meta = {"source": f"gymnasium {gym.__version__} {spec.id}", "seed": self.seed,
                     "solved_return": self.solved_return, "window": spec.window,
                     "bounds": self.encoder.bounds.tolist(), "levels": spec.levels}

    def _bounds(self, obs) -> np.ndarray:
        if self.spec.bounds is not None:
            if len(self.spec.bounds) != self.obs_dim or not all(
                    math.isfinite(b) and b > 0 for b in self.spec.bounds):
                raise ConfigError(f"recipe env.bounds: {self.spec.bounds} must be {self.obs_dim} finite "
                                  f"numbers > 0 (one per dimension of {self.spec.id!r}'s observation)")
            return np.asarray(self.spec.bounds, np.float32)
        half = np.maximum(np.abs(obs.low), np.abs(obs.high))
        if not np.isfinite(half).all():
            raise ConfigError(f"recipe env.bounds: {self.spec.id!r}'s observation space is unbounded "
                              f"({obs}); give the half-range of each of its {self.obs_dim} dimensions")
        return half.astype(np.float32)

    def reset(self, episode: int) -> np.ndarray:
        seed = int(np.random.SeedSequence([self.seed, int(episode)]).generate_state(1)[0])
        obs, _ = self.env.reset(seed=seed)
        return np.asarray(obs, np.float32)

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool]:
        """(observation, reward, terminated, truncated)."""
        obs, reward, terminated, truncated, _ = self.env.step(int(action))
        return np.asarray(obs, np.float32), float(reward), bool(terminated), bool(truncated)

    def close(self) -> None:
        self.env.close()


class ThermometerCode:
    """Observation (n, d) -> binary (n, d * levels): dimension i lights its first k levels,
    k growing with the value over -bounds[i]..bounds[i]. Nearby states share most bits, so
    the optics' random features of the code vary smoothly with the state."""

    def __init__(self, bounds: np.ndarray, levels: int):
        self.bounds = np.asarray(bounds, np.float32)
        self.encoder = ThermometerEncoder(levels)
        self.n_bits = len(self.bounds) * self.encoder.levels

    def scaled(self, obs: np.ndarray) -> np.ndarray:
        """The observation mapped onto 0..1 per dimension (clipped): the X of the PIB term."""
        return np.clip((np.asarray(obs, np.float32) / self.bounds + 1) / 2, 0, 1)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return self.encoder.transform(self.scaled(np.atleast_2d(obs)))

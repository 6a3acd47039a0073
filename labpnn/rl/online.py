"""Scheme `online`: the agent acts on the hardware while its units learn.

Every action comes from the deployed units (the observation is measured through them).
With `overlap` (the default) a learner thread optimises copies of the units' models on
replay minibatches while the actor keeps stepping the environment, and hands a snapshot
over every `deploy_every` steps; the actor deploys it between two actions, so the
instruments are busy reconfiguring instead of waiting. Without overlap the same work runs
in turns (act, then learn, then deploy), the instruments idle while the digital side
computes: the comparison of benchmarks/rl_overlap.py.

The learner never runs more than `updates_per_step` optimisation steps per environment
step past the warm-up, in either mode, and overlapped the actor waits while the learner is
more than `max_behind` steps short of that, so both do the same learning per experience.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from labpnn import state_image
from labpnn.rl.agent import Agent, Learner
from labpnn.rl.env import Environment
from labpnn.rl.replay import ReplayBuffer
from labpnn.threads import limited


class OnlineOptions(BaseModel):
    """Options of scheme `online` (recipe: `scheme: {name: online, ...}`)."""

    model_config = ConfigDict(extra="forbid")
    overlap: bool = Field(True, description="learn in a thread while acting (False: take turns)")
    replay: int = Field(50_000, ge=1, description="replay buffer capacity, transitions")
    batch_size: int = Field(64, ge=2)
    lr: float = Field(1e-3, gt=0, description="learning rate of the last unit (the Q-values)")
    lr_upstream: float = Field(1e-4, ge=0, description="learning rate of the other units: slower, since "
                               "the inputs of every unit after them drift with their outputs")
    lr_decay_steps: int | None = Field(None, ge=1, description="learner steps over which every learning rate "
                                       "falls linearly to lr_end times its start (None: constant)")
    lr_end: float = Field(0.1, ge=0, le=1, description="the learning rates' final fraction (lr_decay_steps)")
    warmup: int = Field(1000, ge=1, description="transitions collected before learning starts")
    updates_per_step: float = Field(0.25, gt=0, description="learner steps per environment step, at most")
    deploy_every: int = Field(25, ge=1, description="learner steps between deployments")
    max_behind: int | None = Field(8, ge=1, description="overlapped: learner steps the learner may fall behind "
                                   "its quota (updates_per_step) before the actor waits for it, so a run learns "
                                   "as much per experience on any machine (None: never waits; a slow learner "
                                   "then makes fewer steps)")
    n_step: int = Field(1, ge=1, description="TD targets over this many environment steps: each replayed "
                        "transition holds the rewards of up to n_step steps and bootstraps from the state "
                        "after them (fewer at the episode's end)")
    epsilon_start: float = Field(1.0, ge=0, le=1)
    epsilon_end: float = Field(0.01, ge=0, le=1)
    epsilon_steps: int = Field(5000, ge=1, description="environment steps of the linear epsilon decay")
    remeasure: bool = Field(True, description="measure the replayed inputs of every unit after the first "
                            "again, from the learner's current upstream outputs (False: learn on the "
                            "inputs as measured when acting, which go stale as the upstream units learn)")
    calibration: int = Field(500, ge=2, description="random-policy observations the units' input and "
                                                   "feature scales are fixed on")
    checkpoint_every: int = Field(25, ge=1, description="episodes between checkpoints (replay included)")
    threads: int | None = Field(1, ge=1, description="torch and BLAS threads of the actor and the learner "
                                "each (None: the libraries' defaults, which busy-wait against each other "
                                "on a small machine)")
    hold: int | None = Field(None, ge=1, description="learning pauses while each of the last `hold` episodes "
                             "returned at least the solved return, and resumes at the first that does not "
                             "(None: never pauses): DQN unlearns a policy that works (docs/rl.md)")

    def lr_factor(self, step: int) -> float:
        """The learning rates' fraction of their start at learner step `step`."""
        if self.lr_decay_steps is None:
            return 1.0
        return 1.0 - (1.0 - self.lr_end) * min(1.0, step / self.lr_decay_steps)


@dataclass
class Progress:
    """Where a run is: restored from a checkpoint on resume."""

    episode: int = 0
    env_steps: int = 0
    returns: list[float] = field(default_factory=list)
    solved_at: int | None = None
    held_steps: int = 0  # environment steps taken while learning paused (`hold`)


class OnlineRun:
    """One agent's episodes on one environment. Callbacks: `on_episode(row)` after each
    episode, `on_checkpoint(blob)` with a resumable state, `between()` between steps
    (honour pause/abort: it may raise)."""

    def __init__(self, agent: Agent, learner: Learner, env: Environment, replay: ReplayBuffer,
                 options: OnlineOptions, *, on_episode: Callable[[dict], None] = lambda row: None,
                 on_checkpoint: Callable[[bytes], None] = lambda blob: None,
                 between: Callable[[], None] = lambda: None):
        self.agent, self.learner, self.env, self.replay, self.o = agent, learner, env, replay, options
        self.on_episode, self.on_checkpoint, self.between = on_episode, on_checkpoint, between
        self.progress = Progress()
        self._pending: dict[int, dict] = {}
        self._pending_lock = threading.Lock()
        self._stop = threading.Event()
        self._stepped = threading.Condition()
        self._losses: list[list[float]] = [[] for _ in agent.units]
        self.learner_error: BaseException | None = None

    @classmethod
    def build(cls, units, env: Environment, options: OnlineOptions, objectives, seed: int, *, deploy=None,
              measured=None, **callbacks) -> OnlineRun:
        """The run of `units` (their last one gives the Q-values) on `env`, each unit trained
        on its objective in `objectives`; deploy(index, unit) puts a unit on its instruments,
        measured(rows, out, repeats, seconds) counts each measurement (Agent)."""
        remeasure = options.remeasure and len(units) > 1
        kept = units[:1] if remeasure else units  # the later units' inputs are measured again
        replay = ReplayBuffer(options.replay, env.obs_dim, [u.n_outputs for u in kept], seed, options.n_step)
        agent = Agent(units, env.encoder, env.n_actions, seed, deploy, measured)
        lrs = [options.lr_upstream] * (len(units) - 1) + [options.lr]
        learner = Learner([u.model() for u in units], objectives, replay, options.batch_size, lrs, seed,
                          remeasure=agent.features if remeasure else None, lr_factor=options.lr_factor)
        return cls(agent, learner, env, replay, options, **callbacks)

    # -- schedule ------------------------------------------------------------------------------
    def epsilon(self, step: int) -> float:
        o = self.o
        return o.epsilon_start + (o.epsilon_end - o.epsilon_start) * min(1.0, step / o.epsilon_steps)

    def _owed(self) -> float:
        """Learner steps due and not yet made (<= 0: none due)."""
        if self.holding() or len(self.replay) < self.o.warmup:
            return 0.0
        past = self.progress.env_steps - self.progress.held_steps - self.o.warmup
        return self.o.updates_per_step * past - self.learner.steps

    def _learning_due(self) -> bool:
        return self._owed() > 0

    def _wait_for_learner(self) -> None:
        """Overlapped: hold the actor while the learner is more than max_behind steps behind."""
        while self.o.max_behind is not None and self._owed() > self.o.max_behind:
            if self.learner_error is not None:
                raise self.learner_error
            self.between()
            with self._stepped:  # woken by the learner's next step (no polling against it)
                self._stepped.wait(0.05)

    def holding(self) -> bool:
        """Whether learning pauses: each of the last `hold` episodes reached the solved return."""
        recent = self.progress.returns[-self.o.hold:] if self.o.hold else []
        return len(recent) == self.o.hold and min(recent) >= self.env.solved_return

    def _learn_once(self, executor: Executor | None = None) -> None:
        values = self.learner.step(executor)
        with self._stepped:
            self._stepped.notify_all()
        for i, v in enumerate(values):
            self._losses[i].append(v["loss"])
        if self.learner.steps % self.o.deploy_every == 0:
            snapshots = {i: self.learner.snapshot(i) for i in range(len(self.agent.units))}
            with self._pending_lock:
                self._pending = snapshots

    def _deploy_pending(self) -> None:
        with self._pending_lock:
            pending, self._pending = self._pending, {}
        for i, state in sorted(pending.items()):
            self.agent.deploy(i, state)

    def _learner_thread(self) -> None:
        """Learn while the actor acts; each step's re-measurements go to the optics from a
        thread of their own while the upstream unit's update computes (Learner.step)."""
        try:
            with ThreadPoolExecutor(1, thread_name_prefix="labpnn-remeasure") as executor:
                while not self._stop.is_set():
                    if self._learning_due():
                        self._learn_once(executor)
                    else:
                        time.sleep(2e-4)
        except BaseException as exc:  # reported by the actor, which stops the run
            self.learner_error = exc

    # -- the run -------------------------------------------------------------------------------
    def calibration_observations(self) -> np.ndarray:
        """Observations of random-policy episodes (seeds apart from the run's)."""
        rng = np.random.default_rng([self.agent.seed, 7])
        rows, episode = [], 0
        while len(rows) < self.o.calibration:
            obs, done = self.env.reset(10**6 + episode), False
            while not done and len(rows) < self.o.calibration:
                rows.append(obs)
                obs, _, terminated, truncated = self.env.step(int(rng.integers(self.env.n_actions)))
                done = terminated or truncated
            episode += 1
        return np.stack(rows)

    def run(self) -> Progress:
        """Act until solved or out of episodes; returns the progress (solved_at: episodes taken).
        Actor and learner each compute on `threads` threads (BLAS and torch; one by default):
        their small products gain little from a pool, and two pools on 2 cores busy-wait
        against each other (docs/rl.md, fifth round)."""
        with limited(self.o.threads):
            return self._run()

    def _run(self) -> Progress:
        self.agent.calibrate(self.calibration_observations())
        for i in range(len(self.agent.units)):
            self.agent.deploy(i, self.learner.snapshot(i) if self.learner.steps else None)
        self.agent.meter.start()
        self.started = time.perf_counter()
        self.steps_at_start = self.progress.env_steps
        thread = None
        if self.o.overlap:
            thread = threading.Thread(target=self._learner_thread, name="labpnn-learner", daemon=True)
            thread.start()
        try:
            while self.progress.solved_at is None and self.progress.episode < self.env.spec.episodes:
                self._episode()
        finally:
            self._stop.set()
            if thread is not None:
                thread.join()
        self.elapsed = time.perf_counter() - self.started
        return self.progress

    def _episode(self) -> None:
        p, o, agent = self.progress, self.o, self.agent
        obs = self.env.reset(p.episode)
        features, q = agent.measure(obs)
        total, length, done = 0.0, 0, False
        waiting: list[tuple] = []  # (scaled observation, action, features, rewards) not yet stored
        while not done:
            if self.learner_error is not None:
                raise self.learner_error
            self.between()
            epsilon = self.epsilon(p.env_steps)
            action = agent.act(q, epsilon, p.env_steps)
            obs2, reward, terminated, truncated = self.env.step(action)
            features2, q = agent.measure(obs2)
            waiting.append((self.env.encoder.scaled(obs), action, features, []))
            for row in waiting:
                row[3].append(reward)
            done = terminated or truncated
            while waiting and (done or len(waiting[0][3]) == o.n_step):
                x, a, h, rewards = waiting.pop(0)
                self.replay.add(x, a, rewards, terminated, h, features2)
            p.env_steps += 1
            p.held_steps += self.holding()
            total, length = total + reward, length + 1
            obs, features = obs2, features2
            if not o.overlap:
                while self._learning_due():
                    self._learn_once()
            else:
                self._wait_for_learner()
            self._deploy_pending()
        p.returns.append(total)
        p.episode += 1
        window = p.returns[-self.env.spec.window:]
        if len(window) == self.env.spec.window and np.mean(window) >= self.env.solved_return:
            p.solved_at = p.episode
        losses = [float(np.mean(v)) if v else float("nan") for v in self._losses]
        self._losses = [[] for _ in agent.units]
        self.on_episode({"episode": p.episode - 1, "return": total, "length": length, "epsilon": epsilon,
                         "losses": losses, "env_steps": p.env_steps, "learner_steps": self.learner.steps,
                         "average": float(np.mean(window))})
        if p.episode % o.checkpoint_every == 0 or p.solved_at is not None:
            self.on_checkpoint(self.state_bytes())

    def report(self) -> dict[str, float]:
        """Throughput and the instruments' idle fraction over the run."""
        steps = self.progress.env_steps - self.steps_at_start
        return {"elapsed_s": self.elapsed, "env_steps": steps, "steps_per_s": steps / self.elapsed,
                "idle_fraction": self.agent.meter.idle_fraction(),
                "learner_steps": self.learner.steps, "deployments": self.agent.deployments}

    # -- checkpoints ---------------------------------------------------------------------------
    def state_bytes(self) -> bytes:
        """Progress, learner (models, optimisers, objectives) and replay buffer, as a training
        state image (labpnn.state_image: no pickle); the learner's lock makes it one
        consistent moment even while the learner thread runs."""
        with self.learner.lock:
            state = {"episode": self.progress.episode, "env_steps": self.progress.env_steps,
                     "held_steps": self.progress.held_steps,
                     "returns": list(self.progress.returns), "learner": self.learner.state(),
                     "replay": self.replay.state()}
        return state_image.dump(state)

    def load_state_bytes(self, b: bytes) -> None:
        """Restore a state_bytes() checkpoint; ValueError when it is damaged or does not fit."""
        try:
            state = state_image.load(bytes(b))
            self.learner.load_state(state["learner"])
            self.replay.load(state["replay"])
        except (state_image.StateError, KeyError, RuntimeError, ValueError) as exc:
            raise ValueError(f"the agent's checkpoint does not fit this run ({type(exc).__name__}: {exc})") from None
        self.progress = Progress(int(state["episode"]), int(state["env_steps"]), [float(r) for r in state["returns"]],
                                 held_steps=int(state["held_steps"]))

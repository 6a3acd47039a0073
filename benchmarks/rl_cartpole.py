"""CartPole-v1 solved by the optical deep PNN of recipe rl-cartpole-opu (OPU twins, each unit
on its local PIB + TD objective, scheme online), beside a digital DQN of the same size trained
with backprop, over several seeds.

Solved: the mean return of `window` (100) consecutive episodes reaches the environment's
reward threshold (475 for CartPole-v1); episodes to solve: the episodes run when it does.
The digital DQN has the same widths as the PNN (thermometer code 128 -> 256 ReLU -> 128 with unit
0's activation -> 256 ReLU -> 2 actions), every layer trained
end to end by backprop on the TD loss alone (double DQN,
the same replay, epsilon schedule, target refresh, optimiser and scheme), acting without
hardware. `--only raw-dqn` runs the textbook DQN instead (the raw observation, 4 -> 128 -> 128
ReLU -> 2), which checks the learner and the settings apart from the optics; `--only code-dqn` the
same network on the thermometer code. Prints a table and saves the running-average curves (docs/img/rl-cartpole.png).
With --in-turns acting and learning take turns (overlap off): the learner then does exactly
`updates_per_step` steps per environment step whatever the machine's load, so a run on a busy
machine learns as one on a quiet machine would (overlapped, a starved learner falls behind).
--scheme, --objective and --env override the recipe's settings (JSON objects), --units its units'
(a JSON list, one object per unit), for the tuning runs of docs/rl.md. The progress lines say what
ended the last 50 episodes: the cart's position, the pole's angle, or the time limit.
Run: python benchmarks/rl_cartpole.py [--quick] [--seeds 5 | --seed K] [--in-turns] [--png docs/img/rl-cartpole.png]
     [--only pnn|dqn|raw-dqn|code-dqn]
     [--scheme '{"lr": 1e-3}'] [--objective '{"gamma": 0.95}'] [--env '{"levels": 128}']
     [--units '[{"out": 8}, {"bits": 8}]'] [--bench instruments.yaml]
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from labpnn.bench import Bench
from labpnn.recipe import load_recipe
from labpnn.rl.build import build_online_run, objective_options, scheme_options
from labpnn.rl.env import Environment
from labpnn.rl.online import OnlineRun
from labpnn.units.base import Activation
from labpnn.objectives.pib_td import PIBTDObjective


class DigitalUnit:
    """The digital DQN as one 'unit': no physical stage, the whole MLP as its model (hidden
    layers ReLU, or ReLU and `middle` alternating as the PNN's, middle its unit 0's activation)."""

    name = "digital"

    def __init__(self, in_features: int, widths: list[int], n_actions: int, seed: int, middle: str = "relu"):
        torch.manual_seed(seed)
        layers, n = [], in_features
        for i, w in enumerate(widths):
            layers += [nn.Linear(n, w), Activation(middle) if i % 2 else nn.ReLU()]
            n = w
        self._model = nn.Sequential(*layers, nn.Linear(n, n_actions))
        self.in_features = self.n_outputs = in_features
        self.out_features = n_actions

    def prepare(self, h):
        return np.asarray(h, np.float32)

    def model(self):
        return self._model

    def deploy(self):
        return {}


def pnn_run(recipe, seed: int, episodes: int, bench_path: Path | None = None) -> OnlineRun:
    bench = Bench.load(bench_path)
    return build_online_run(recipe, bench, recipe.env.model_copy(update={"episodes": episodes}), seed=seed)


def dqn_run(recipe, seed: int, episodes: int) -> OnlineRun:
    env = Environment(recipe.env.model_copy(update={"episodes": episodes}), seed)
    widths = [256, recipe.units[0].out, 256]
    unit = DigitalUnit(env.encoder.n_bits, widths, env.n_actions, seed, recipe.units[0].activation)
    options = objective_options(recipe).model_copy(update={"pib": False})
    objective = PIBTDObjective(options, env.n_actions, env.n_actions, True, seed)
    return OnlineRun.build([unit], env, scheme_options(recipe), [objective], seed)


class RawObservation:
    """The scaled observation itself (-1..1 per dimension) as the DQN's input, no code."""

    def __init__(self, code):
        self.scaled, self.n_bits = code.scaled, len(code.bounds)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return self.scaled(np.atleast_2d(obs)) * 2 - 1


def raw_dqn_run(recipe, seed: int, episodes: int, raw: bool = True) -> OnlineRun:
    """The textbook DQN, two hidden ReLU layers of 128 (the learner's check), on the raw
    observation or (raw False) on the thermometer code the PNN's first optics see."""
    env = Environment(recipe.env.model_copy(update={"episodes": episodes}), seed)
    if raw:
        env.encoder = RawObservation(env.encoder)
    unit = DigitalUnit(env.encoder.n_bits, [128, 128], env.n_actions, seed)
    options = objective_options(recipe).model_copy(update={"pib": False})
    objective = PIBTDObjective(options, env.n_actions, env.n_actions, True, seed)
    return OnlineRun.build([unit], env, scheme_options(recipe), [objective], seed)


class Ends:
    """What ended each episode of a CartPole run: 'x' (the cart past x_threshold), 'theta' (the
    pole past theta_threshold_radians) or 'time' (truncated at the step limit)."""

    def __init__(self, env: Environment):
        self.causes: list[str] = []
        self._step, cart = env.step, env.env.unwrapped
        self._limits = (cart.x_threshold, cart.theta_threshold_radians)
        env.step = self.step

    def step(self, action: int):
        obs, reward, terminated, truncated = self._step(action)
        if terminated:
            self.causes.append("x" if abs(obs[0]) > self._limits[0] else "theta")
        elif truncated:
            self.causes.append("time")
        return obs, reward, terminated, truncated

    def last(self, n: int) -> str:
        recent = self.causes[-n:]
        return ", ".join(f"{c} {recent.count(c)}" for c in ("x", "theta", "time"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1 seed, 120 episodes at most (does not solve)")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--seed", type=int, default=None, help="this seed alone (one process per seed, run side by side)")
    p.add_argument("--episodes", type=int, default=None, help="at most, per run (default: the recipe's)")
    p.add_argument("--png", type=Path, default=Path("docs/img/rl-cartpole.png"))
    p.add_argument("--only", choices=["pnn", "dqn", "raw-dqn", "code-dqn"], default=None)
    p.add_argument("--in-turns", action="store_true", help="overlap off: the learner's pace fixed per step")
    for part in ("scheme", "objective", "env"):
        p.add_argument(f"--{part}", type=json.loads, default={}, help=f"the recipe's {part} settings to override")
    p.add_argument("--bench", type=Path, default=None, help="the instruments file (default: the twins' bench)")
    p.add_argument("--units", type=json.loads, default=[], help="the recipe's unit settings to override, per unit")
    p.add_argument("--merge", type=Path, nargs="+", default=None, help="no runs: the table and curves of the "
                   "results (.json beside each --png) of runs made one seed per process")
    args = p.parse_args()
    if args.merge:
        results: dict[str, list[dict]] = {}
        for path in args.merge:
            for name, rows in json.loads(path.read_text()).items():
                results.setdefault(name, []).extend(rows)
        return report(results, 100, 475.0, "as run", args.png)
    recipe = load_recipe("rl-cartpole-opu")
    scheme = {**recipe.scheme_spec(), **args.scheme, **({"overlap": False} if args.in_turns else {})}
    recipe = recipe.model_copy(update={"scheme": scheme, "objective": {**recipe.objective_spec(0), **args.objective},
                                       "env": recipe.env.model_copy(update=args.env),
                                       "units": [u.model_copy(update=d) for u, d in
                                                 zip(recipe.units, args.units + [{}] * len(recipe.units))]})
    seeds = [args.seed] if args.seed is not None else range(1 if args.quick else args.seeds)
    episodes = args.episodes or (120 if args.quick else recipe.env.episodes)
    pnn = functools.partial(pnn_run, bench_path=args.bench)
    pnn_name = "optical PNN, " + ("PIB + TD" if args.objective.get("pib", True) else "TD alone") + " (twin)"
    makers = {pnn_name: pnn, "digital DQN, backprop": dqn_run}
    if args.only:
        makers = {"pnn": {pnn_name: pnn}, "dqn": {"digital DQN, backprop": dqn_run},
                  "raw-dqn": {"DQN on the raw observation": raw_dqn_run},
                  "code-dqn": {"DQN on the thermometer code": functools.partial(raw_dqn_run, raw=False)}}[args.only]
    results: dict[str, list[dict]] = {}
    for name, make in makers.items():
        for seed in seeds:
            run = make(recipe, seed, episodes)
            ends = Ends(run.env) if recipe.env.id.startswith("CartPole") else None
            run.on_episode = lambda row, seed=seed, ends=ends: row["episode"] % 50 == 49 and print(
                f"  seed {seed}, episode {row['episode'] + 1}: mean of the last 100 {row['average']:.1f}, "
                f"{row['env_steps']} env steps, {row['learner_steps']} learner steps"
                + (f"; the last 50 ended by {ends.last(50)}" if ends else ""), flush=True)
            started, cpu = time.perf_counter(), time.process_time()
            progress = run.run()
            r = {"seed": seed, "solved_at": progress.solved_at, "returns": progress.returns,
                 "wall_s": time.perf_counter() - started, "cpu_s": time.process_time() - cpu, **run.report()}
            results.setdefault(name, []).append(r)
            print(f"{name}, seed {seed}: {'solved after ' + str(r['solved_at']) + ' episodes' if r['solved_at'] else 'not solved'}"
                  f" ({len(r['returns'])} episodes, {r['env_steps']} env steps, {r['wall_s']:.0f} s wall, "
                  f"{r['cpu_s']:.0f} s CPU)", flush=True)
    args.png.parent.mkdir(parents=True, exist_ok=True)
    args.png.with_suffix(".json").write_text(json.dumps(results))
    report(results, recipe.env.window, 475.0, episodes, args.png)


def report(results: dict[str, list[dict]], window: int, threshold: float, episodes, png: Path) -> None:
    print(f"\nCartPole-v1, solved = mean return >= {threshold:g} over {window} consecutive episodes "
          f"(at most {episodes} episodes per run)")
    print("CPU s: the process's CPU time, what a quiet machine's wall time would be (one core each)")
    print(f"{'agent':<32} {'solved':>8} {'episodes to solve (median, range)':>36} {'best mean of 100':>17} "
          f"{'env steps (median)':>19} {'wall s':>7} {'CPU s':>7}")
    for name, rows in results.items():
        solved = [r["solved_at"] for r in rows if r["solved_at"]]
        best = [max(np.convolve(r["returns"], np.ones(window) / window, "valid"))
                if len(r["returns"]) >= window else np.mean(r["returns"]) for r in rows]
        span = f"{int(np.median(solved))} ({min(solved)}-{max(solved)})" if solved else "-"
        print(f"{name:<32} {len(solved):>3}/{len(rows):<4} {span:>36} {np.median(best):>17.1f} "
              f"{np.median([r['env_steps'] for r in rows]):>19.0f} {np.median([r['wall_s'] for r in rows]):>7.0f} "
              f"{np.median([r['cpu_s'] for r in rows]):>7.0f}")
    plot(results, window, threshold, png)


def plot(results, window: int, threshold: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for (name, rows), colour in zip(results.items(), ("tab:blue", "tab:grey")):
        for i, r in enumerate(rows):
            returns = np.asarray(r["returns"])
            avg = [returns[max(0, k - window + 1):k + 1].mean() for k in range(len(returns))]
            ax.plot(np.arange(1, len(avg) + 1), avg, color=colour, lw=1.2, alpha=0.8,
                    label=name if i == 0 else None)
    ax.axhline(threshold, color="k", ls="--", lw=0.8, label=f"solved ({threshold:g})")
    ax.set_xlabel("episode")
    ax.set_ylabel(f"return, mean of the last {window} episodes")
    ax.set_title("CartPole-v1: one curve per seed")
    ax.legend(loc="upper left", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"curves: {path}")


if __name__ == "__main__":
    main()

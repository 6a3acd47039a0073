"""Acting and learning overlapped, or in turns: the instruments' idle fraction and the
environment steps per second of scheme `online` with `overlap` on and off.

The agent of recipe rl-cartpole-opu (two scattering units on OPU twins) acts on CartPole-v1
for a fixed number of episodes past a short warm-up, the twins given a per-frame time and a
reconfiguration time (each deployment refits the OPU: the slow step on optical hardware).
Idle: the share of wall time the instruments neither measure nor reconfigure. Target:
overlapped at most half the idle fraction of the turn-taking run.
Run: python benchmarks/rl_overlap.py [--quick] [--frametime-us 100] [--reconfigure-us 20000]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import yaml

from labpnn.bench import Bench, default_path
from labpnn.recipe import load_recipe
from labpnn.rl.build import build_online_run, objective_options, scheme_options


def twin_bench(recipe, **options) -> Bench:
    """The default bench with `options` added to the recipe's instruments (the twins' latencies)."""
    spec = yaml.safe_load(default_path().read_text())
    for name in recipe.instruments():
        spec["instruments"][name]["options"].update(options)
    path = Path(tempfile.mkdtemp()) / "instruments.yaml"
    path.write_text(yaml.safe_dump(spec))
    return Bench.load(path)


def measure(overlap: bool, args) -> dict[str, float]:
    recipe = load_recipe("rl-cartpole-opu")
    env = recipe.env.model_copy(update={"episodes": args.episodes})
    options = scheme_options(recipe).model_copy(update={"overlap": overlap, "warmup": 200, "epsilon_steps": 2000})
    bench = twin_bench(recipe, frametime_us=args.frametime_us, reconfigure_us=args.reconfigure_us)
    try:
        run = build_online_run(recipe, bench, env, options, seed=args.seed)
        run.run()
        return run.report()
    finally:
        bench.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="15 episodes instead of 60")
    p.add_argument("--episodes", type=int, default=None)
    p.add_argument("--frametime-us", type=float, default=100.0)
    p.add_argument("--reconfigure-us", type=float, default=20_000.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    args.episodes = args.episodes or (15 if args.quick else 60)
    rows = {name: measure(overlap, args) for name, overlap in (("in turns", False), ("overlapped", True))}
    print(f"OPU twins: {args.frametime_us:g} us per frame, {args.reconfigure_us / 1000:g} ms per "
          f"reconfiguration; {args.episodes} episodes of CartPole-v1, seed {args.seed}")
    print(f"{'scheme online':<14} {'idle':>7} {'env steps/s':>12} {'env steps':>10} {'learner steps':>14} "
          f"{'deployments':>12} {'wall s':>8}")
    for name, r in rows.items():
        print(f"{name:<14} {r['idle_fraction']:>6.1%} {r['steps_per_s']:>12.1f} {r['env_steps']:>10d} "
              f"{r['learner_steps']:>14d} {r['deployments']:>12d} {r['elapsed_s']:>8.1f}")
    ratio = rows["overlapped"]["idle_fraction"] / max(rows["in turns"]["idle_fraction"], 1e-9)
    print(f"idle overlapped / in turns: {ratio:.2f} (target <= 0.50: {'met' if ratio <= 0.5 else 'MISSED'})")


if __name__ == "__main__":
    main()

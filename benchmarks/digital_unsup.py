"""Unsupervised PIB on a digital copy of unsup-mnist-memristor's units (issue 13): a cheap screen.

    python benchmarks/digital_unsup.py [CHANGES ...] [--iterations 10 50 200 1000] [--seed 0] [--clip C]
                                       [--mnist DIR]

CHANGES: JSON recipe changes merged into the packaged recipe (e.g. '{"pib": {"width_scale_z": 3}}',
'{"objective": {"name": "pib-2view", "keep": 1}}'); none: the recipe as packaged. The two units
(784 -> 64 -> 32, Linear + activation) are trained in torch with the recipe's objective, views
and optimiser, without the crossbar twin, on the ablation's subset (2,000 / 1,000): unit 0 for
each iteration count in turn (one run, continued), unit 1 afresh at every count on unit 0's
outputs of both views. --clip C: each unit's [W; b] clipped to C x its RMS before its outputs
are used (as the crossbar's deployment clips). Prints the linear probe (%) of both units at 0 and
every count. About 1 CPU minute per change.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_unsup import DEFAULT_MNIST, merged  # noqa: E402


def clipped(layer, clip: float | None):
    """layer (Linear + activation), its weights and bias clipped to clip x their RMS."""
    import torch

    if not clip:
        return layer
    layer = copy.deepcopy(layer)
    lin = layer[0]
    with torch.no_grad():
        bound = clip * torch.cat([lin.weight, lin.bias[:, None]], 1).pow(2).mean().sqrt()
        lin.weight.clamp_(-bound, bound)
        lin.bias.clamp_(-bound, bound)
    return layer


def curve(changes: dict, iterations: list[int], seed: int, clip: float | None, mnist: Path) -> list[tuple]:
    """[(iterations, probe of unit 0, probe of unit 1)] for the recipe with `changes`."""
    import torch

    from labpnn import data
    from labpnn.linear_eval import linear_probe
    from labpnn.objectives import OBJECTIVES, ObjectiveContext
    from labpnn.recipe import load_recipe, parse_recipe
    from labpnn.views import pair_sampler

    torch.set_num_threads(1)
    recipe = parse_recipe(merged(load_recipe("unsup-mnist-memristor").model_dump(mode="json", exclude_none=True),
                                 merged(changes, {"seed": seed})))
    ds = data.load("mnist", path=mnist, n_train=2000, n_test=1000, seed=0)
    pipe = recipe.augmentations()
    views = [pipe(ds.x_train, seed, v) for v in (1, 2)]

    def objective(i):
        u = recipe.units[i]
        ctx = ObjectiveContext(index=i, in_features=0, out_features=u.out, n_classes=10,
                               settings=recipe.unit_pib(i), seed=seed, last=i == len(recipe.units) - 1)
        return OBJECTIVES.build(recipe.objective_spec(i), recipe.objective_field(i), ctx)

    def layer(i, n_in):
        u = recipe.units[i]
        act = torch.nn.ReLU() if u.activation == "relu" else torch.nn.Identity()
        return torch.nn.Sequential(torch.nn.Linear(n_in, u.out), act)

    def train(model, i, inputs, start, stop, opt, rows_seed):
        s, obj = recipe.unit_pib(i), objective(i)
        sample = pair_sampler(views, inputs, s.batch_size, rows_seed)
        for step in range(start, stop):
            loss, _ = obj.loss(model, sample(step))
            opt.zero_grad()
            loss.backward()
            opt.step()

    def outputs(model, arrays):
        with torch.no_grad():
            return [clipped(model, clip)(torch.as_tensor(a)).numpy() for a in arrays]

    torch.manual_seed(seed)
    m0 = layer(0, views[0].shape[1])
    opt0 = torch.optim.Adam(m0.parameters(), lr=recipe.unit_pib(0).lr)
    done, out = 0, []
    for n in [0, *iterations]:
        train(m0, 0, views, done, n, opt0, 1000 + seed)
        done = n
        f0 = outputs(m0, [ds.x_train, ds.x_test, *views])
        torch.manual_seed(seed + 7)
        m1 = layer(1, f0[0].shape[1])
        train(m1, 1, f0[2:], 0, n, torch.optim.Adam(m1.parameters(), lr=recipe.unit_pib(1).lr), 2000 + seed)
        f1 = outputs(m1, f0[:2])
        out.append((n, *(100 * linear_probe(a, ds.y_train, b, ds.y_test) for a, b in (f0[:2], f1))))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("changes", nargs="*", type=json.loads, help="JSON recipe changes, one screen each")
    p.add_argument("--iterations", type=int, nargs="+", default=[10, 50, 200, 1000])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clip", type=float)
    p.add_argument("--mnist", type=Path, default=DEFAULT_MNIST)
    args = p.parse_args(argv)
    if any(i < 1 for i in args.iterations) or args.iterations != sorted(args.iterations):
        p.error("--iterations: increasing counts >= 1")
    counts = [0, *args.iterations]
    print("| changes | " + " | ".join(f"{n}" for n in counts) + " |  (unit 0 / unit 1, linear probe %)\n|---|"
          + "---|" * len(counts), flush=True)
    for changes in args.changes or [{}]:
        t0 = time.process_time()
        res = curve(changes, args.iterations, args.seed, args.clip, args.mnist)
        print(f"| `{json.dumps(changes)}` | " + " | ".join(f"{a:.1f} / {b:.1f}" for _, a, b in res)
              + f" |  ({time.process_time() - t0:.0f} CPU s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Optimiser-state serialisation cost: labpnn.state_image (HDF5 image, no pickle) against
torch.save / torch.load (what run files held before), for a unit's model + Adam state.

    python benchmarks/bench_state_image.py [--repeats 200] [--quick]

The engine serialises the state once per PIB step (UnitOptimiser.state_bytes) and loads it
once per resume, so dump time is the per-step cost.
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
import torch

from labpnn import state_image

SIZES = [(40, 64), (64, 128), (784, 256)]   # (in, out) of one Linear unit


def _state(d_in: int, d_out: int) -> dict:
    model = torch.nn.Linear(d_in, d_out)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(8, d_in)).sum().backward()
    opt.step()
    return {"model": model.state_dict(), "optimiser": opt.state_dict()}


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3


def _torch_bytes(state: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="20 repeats")
    args = parser.parse_args()
    repeats = 20 if args.quick else args.repeats
    torch.set_num_threads(1)
    print(f"{'unit (in x out)':<16} {'state kB':>9} {'image kB':>9} {'dump ms':>8} "
          f"{'torch.save ms':>14} {'load ms':>8} {'torch.load ms':>14}")
    for d_in, d_out in SIZES:
        state = _state(d_in, d_out)
        image, archive = state_image.dump(state), _torch_bytes(state)
        dump = _median_ms(lambda: state_image.dump(state), repeats)
        save = _median_ms(lambda: _torch_bytes(state), repeats)
        load = _median_ms(lambda: state_image.load(image), repeats)
        tload = _median_ms(lambda: torch.load(io.BytesIO(archive), weights_only=True), repeats)
        print(f"{f'{d_in} x {d_out}':<16} {len(archive) / 1e3:9.1f} {len(image) / 1e3:9.1f} "
              f"{dump:8.2f} {save:14.2f} {load:8.2f} {tload:14.2f}")


if __name__ == "__main__":
    main()

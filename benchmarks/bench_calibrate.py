"""Calibration validation: crossbar twins with hidden options are characterised (labpnn.characterise,
through the twin's driver interface), calibrated (labpnn.calibrate) and compared.

    python benchmarks/bench_calibrate.py [--quick]

For each hidden option set: the recovered value of every fitted option against the hidden one.
Then a backprop network per dataset, trained in silico, deployed on the hidden twin and on its
calibrated twin with the same seeds: test accuracy (mean and std over the seeds) on both and
the difference, in points. Drift is characterised on a virtual clock (re-reads up to 1000 s
in no time); the deployments take seconds, so drift plays no part in them.

--quick: 256 x 64 arrays, two option sets, digits, 20 seeds (about a minute);
full: 1024 x 128 arrays, four option sets, digits and MNIST-1D, 40 seeds.
--example board.h5: only write the characterisation of docs/characterise.md's screenshot (a
1024 x 128 twin with the 'noisy' options and garbage on ADC columns 17 and 90).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from labpnn import backprop, board_stats, data
from labpnn.bench import Bench
from labpnn.calibrate import calibrate
from labpnn.characterise import Characterisation, CharacteriseSettings
from labpnn.recipe import parse_recipe
from labpnn.sim_devices.crossbar import SimCrossbarBoard

HIDDEN = {  # option sets away from the twin's defaults (read_noise_abs in S, adc_range in A)
    "noisy": {"read_noise_rel": 0.10, "read_noise_abs": 0.4e-6, "d2d": 0.3, "prog_noise": 2.0,
              "prog_tolerance": 0.06, "drift_nu": 0.05, "stuck_fraction": 0.02, "adc_range": 150e-6},
    "paper + drift": {"read_noise_rel": 0.15, "read_noise_abs": 0.2e-6, "d2d": 0.2, "prog_noise": 1.0,
                      "prog_tolerance": 0.12, "drift_nu": 0.02, "stuck_fraction": 0.005, "adc_range": 200e-6},
    "quiet": {"read_noise_rel": 0.05, "read_noise_abs": 0.1e-6, "d2d": 0.15, "prog_noise": 0.7,
              "prog_tolerance": 0.03, "drift_nu": 0.01, "stuck_fraction": 0.001, "adc_range": 300e-6},
    "bad chip": {"read_noise_rel": 0.2, "read_noise_abs": 0.5e-6, "d2d": 0.4, "prog_noise": 3.0,
                 "prog_tolerance": 0.05, "drift_nu": 0.08, "stuck_fraction": 0.05, "adc_range": 100e-6},
}
UNITS = {"read_noise_abs": (1e6, "uS"), "adc_range": (1e6, "uA")}
DRIFT_TIMES = [40.0, 100.0, 300.0, 1000.0]


class VirtualClock:
    """Time a twin's drift and the characterisation's waits share: sleeping is instant."""

    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, dt: float) -> None:
        self.t += dt


def characterise_twin(path: Path | None, options: dict, settings: CharacteriseSettings, **board_options
                      ) -> tuple[SimCrossbarBoard, Characterisation]:
    """A twin with `options` and the characterisation of it into `path`, on a virtual clock."""
    board = SimCrossbarBoard(name="crossbar", **options, **board_options)
    clock = VirtualClock()
    board.physics.clock = clock
    return board, Characterisation(board, path, settings, clock=clock, sleep=clock.sleep, progress=False)


def recover(hidden: dict, array: dict, noise_rows: int, path: Path, seed: int = 3):
    """Characterise a twin with `hidden` options, calibrate it: (calibration, relative errors)."""
    _, job = characterise_twin(path, {**array, **hidden}, CharacteriseSettings(noise_rows=noise_rows,
                                                                               drift_times=DRIFT_TIMES), seed=seed)
    job.run()
    cal = calibrate(board_stats.load(path))
    return cal, {k: cal.options[k] / v - 1 for k, v in hidden.items()}


def deployed_accuracy(net, recipe, ds, options: dict, seeds: range) -> np.ndarray:
    """Test accuracy of `net` deployed on twins with `options` (drift left out), one per seed."""
    options = {k: v for k, v in options.items() if k not in ("drift_nu", "drift_t0")}
    out = []
    for seed in seeds:
        board = SimCrossbarBoard(name="crossbar", **{**options, "seed": seed})
        out.append(backprop.deploy(net, recipe, Bench({"crossbar": board}, Path(".")), ds).test_accuracy)
    return np.array(out)


def network(dataset: str, outs: list[int], epochs: int):
    ds = data.load(dataset, seed=0)
    recipe = parse_recipe({"name": f"calibration-{dataset}", "dataset": {"name": dataset},
                           "units": [{"kind": "crossbar", "instrument": "crossbar", "out": n} for n in outs]})
    return backprop.train(recipe, ds, backprop.BackpropSettings(epochs=epochs)), recipe, ds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small arrays, two option sets, digits only")
    ap.add_argument("--example", metavar="board.h5", help="write the screenshot's characterisation and exit")
    args = ap.parse_args()
    if args.example:
        board, job = characterise_twin(Path(args.example), {"rows": 1024, "cols": 128, **HIDDEN["noisy"]},
                                       CharacteriseSettings(noise_rows=256, drift_times=DRIFT_TIMES), seed=5)
        board.inject_fault("broken_adc", columns=[17, 90], mode="garbage")
        print(f"wrote {job.run()}")
        return
    array = {"rows": 256, "cols": 64} if args.quick else {"rows": 1024, "cols": 128}
    noise_rows = 192 if args.quick else 512
    sets = dict(list(HIDDEN.items())[:2]) if args.quick else HIDDEN
    seeds = range(20 if args.quick else 40)
    nets = {"digits": network("digits", [32, 16], 30)}
    if not args.quick:
        nets["mnist1d"] = network("mnist1d", [64, 32], 100)
    print(f"arrays {array['rows']} x {array['cols']}, {noise_rows} noise rows; drift re-reads at "
          f"{', '.join(f'{t:g}' for t in DRIFT_TIMES)} s (virtual clock)\n")
    deploy_rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, hidden in sets.items():
            t0 = time.perf_counter()
            cal, errors = recover(hidden, array, noise_rows, Path(tmp) / f"{name}.h5")
            took = time.perf_counter() - t0
            print(f"option set '{name}' (characterise + calibrate {took:.1f} s)")
            print(f"  {'option':<16} {'hidden':>12} {'recovered':>12} {'error':>8}")
            for k, v in hidden.items():
                scale, unit = UNITS.get(k, (1, ""))
                print(f"  {k:<16} {v * scale:>9.4g} {unit:<2} {cal.options[k] * scale:>9.4g} {unit:<2} "
                      f"{100 * errors[k]:>+7.1f} %")
            print(f"  largest error {100 * max(abs(e) for e in errors.values()):.1f} %\n")
            for dataset, (net, recipe, ds) in nets.items():
                on_board = deployed_accuracy(net, recipe, ds, {**array, **hidden}, seeds)
                on_twin = deployed_accuracy(net, recipe, ds, cal.options, seeds)
                ideal = backprop.accuracy(net, ds.x_test, ds.y_test)
                deploy_rows.append((name, dataset, ideal, on_board, on_twin))
    print(f"deployed test accuracy, backprop network, {len(seeds)} seeds (same seeds on both twins)")
    print(f"  {'option set':<14} {'dataset':<8} {'in silico':>9} {'hidden twin':>15} {'calibrated twin':>17} "
          f"{'difference (± standard error)':>30}")
    for name, dataset, ideal, a, b in deploy_rows:
        se = np.std(b - a) / np.sqrt(len(a))
        print(f"  {name:<14} {dataset:<8} {100 * ideal:>7.1f} % {100 * a.mean():>6.1f} ± {100 * a.std():>3.1f} % "
              f"{100 * b.mean():>8.1f} ± {100 * b.std():>3.1f} % {100 * (b.mean() - a.mean()):>+12.2f} ± "
              f"{100 * se:.2f} pt")


if __name__ == "__main__":
    main()

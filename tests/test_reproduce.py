"""Smoke test of the reproduction driver (benchmarks/reproduce) on a tiny configuration."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from labpnn.runlog import RunReader

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from reproduce import config, experiments  # noqa: E402

TINY = {"seeds": [0], "mnist_n_train": 200, "mnist_n_test": 100, "mnist1d_n_train": 300, "mnist1d_n_test": 100,
        "mnist_steps": 4, "mnist1d_steps": 4, "bp_epochs": {"mnist": 2, "mnist1d": 2, "fashion-mnist": 2},
        "opu_n_train": 200, "opu_n_test": 100, "opu_steps": [3], "opu_seeds": [0],
        "sweep_factors": [1.0], "sweep_seeds": [0], "sweep_datasets": ["mnist1d"], "sweep_steps": {"mnist1d": 4}}


def test_plan_shares_identical_jobs_and_seeds_the_twins():
    mode = config.Mode(**{**config.QUICK.__dict__, **TINY})
    jobs = experiments.plan(mode, experiments.Data(mnist=Path("/nowhere")))
    ids = [j.id for j in jobs]
    # the sweep's factor-1 runs are the MNIST-1D twin runs: one job, not two
    sweep_1 = [j.id for j in jobs if j.experiment == "sweep" and j.labels["factor"] == 1.0]
    main = [j.id for j in jobs if j.experiment == "mnist1d" and j.labels["method"] == "pib_twin"]
    assert set(sweep_1) == set(main) and len(set(ids)) < len(ids)
    twin = config.crossbar_options(3)
    assert twin["seed"] == 103 and twin["read_noise_rel"] == config.TWIN_NOISE["read_noise_rel"]
    ideal = config.crossbar_options(3, "ideal")
    assert ideal["read_noise_rel"] == ideal["prog_noise"] == ideal["d2d"] == 0
    assert config.crossbar_options(3, factors={"read": 2.0})["read_noise_rel"] == 2 * twin["read_noise_rel"]


def test_reproduce_driver_end_to_end(tmp_path):
    # mnist and opu run the same kind of job as mnist1d; the sweep's factor 1 is mnist1d's twin run
    only = "mnist1d,sweep" + (",adc" if config.DEFAULT_MNIST.is_dir() else "")
    out, report = tmp_path / "out", tmp_path / "docs" / "results.md"
    cmd = [sys.executable, str(REPO / "benchmarks" / "reproduce" / "run.py"), "--out", str(out), "--report",
           str(report), "--workers", "2", "--only", only, "--mode-override", json.dumps(TINY)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    text = report.read_text()
    assert "Quick-mode numbers" in text and "MNIST-1D: PIB on the twin" in text and "Noise sweep" in text
    images = ["results-accuracy.png", "results-noise.png", "results-info.png"]
    images += ["results-adc.png"] if "adc" in only else []
    for image in images:
        assert (report.parent / "img" / image).stat().st_size > 10_000
    summary = json.loads((out / "summary.json").read_text())["summary"]
    m = summary["mnist1d"]
    assert m["pib_twin"]["n"] == m["pib_sim"]["n"] == m["bp_deployed"]["n"] == 1
    assert abs(m["bp_on_ideal"]["mean"] - m["bp_ideal"]["mean"]) < 5  # the noise-free twin: clipping only
    assert m["bp_deployed_unclipped"]["n"] == 1 and "not clipped" in text  # the recipe clips; also deployed as trained
    assert set(summary["sweep"]["mnist1d/read"]) == {"1.0"}
    assert summary["sweep"]["mnist1d/read"]["1.0"]["pib"]["values"] == m["pib_twin"]["values"]
    runs = sorted((out / "runs").glob("*.h5"))
    assert runs and all(RunReader(p).state == "done" for p in runs)
    if "adc" in only:
        for variant in config.ADC_VARIANTS:
            adc = summary["adc"][variant]
            # found on the first unit and recovered; 4 training steps on 200 images leave a network whose
            # accuracy the fault need not lower (the full run's drop is in docs/results.md)
            assert adc["no_fault_found"] == 0 and adc["recovered"]["n"] == 1, adc
            assert adc["channels"][0].startswith("unit 0: ") and adc["after_fault"]["mean"] <= adc["before"]["mean"]
    # finished jobs are not run again
    again = subprocess.run([*cmd[:-4], "--only", "mnist1d", *cmd[-2:]], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and " 0 to run" in again.stdout


@pytest.mark.parametrize("flag", ["--only=nonsense"])
def test_unknown_experiment_is_refused(tmp_path, flag):
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "reproduce" / "run.py"), "--out", str(tmp_path),
                           flag], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "unknown experiment" in done.stderr

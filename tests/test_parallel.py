"""The parallel scheme on dask sites: an embedded cluster (one worker process per site), the
checks before training, and real processes (a dask scheduler and two `labpnn worker`s on
127.0.0.1) with one site killed mid-run and restarted."""

from __future__ import annotations

import collections
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from labpnn.cli import main
from labpnn.errors import ClusterError, ConfigError
from labpnn.recipe import parse_recipe
from labpnn.runlog import RunReader
from labpnn.sites import SiteFile, Sites, load_site, open_sites, payload_bytes

OPU = {"driver": "sim-opu", "options": {"n_components": 400, "max_n_features": 1024, "seed": 2}}
CROSSBAR = {"driver": "sim-crossbar", "options": {"seed": 1}}
STEPS = 12
TINY = {
    "name": "tiny-hybrid",
    "seed": 0,
    "dataset": {"name": "digits", "n_train": 300, "n_test": 100},
    "units": [{"kind": "scattering", "instrument": "opu", "out": 16},
              {"kind": "crossbar", "instrument": "crossbar", "out": 8, "clip": 2}],
    "pib": {"steps": STEPS, "batch_size": 64},
    "measure": {"batch_size": 100},
    "readout": {"steps": 50},
    "scheme": {"name": "parallel", "chunk": 4, "sites": {"paris": ["opu"], "beijing": ["crossbar"]}},
}


def write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def steps_once(path: Path) -> dict[tuple[int, int], list[int]]:
    """(unit, revision) -> the steps recorded, each expected once."""
    found = collections.defaultdict(list)
    for u in RunReader(path).units:
        for row in u.info_plane:
            found[(u.index, int(row["revision"]))].append(int(row["step"]))
    return dict(found)


@pytest.fixture
def bench_file(tmp_path) -> Path:
    return write(tmp_path / "instruments.yaml", {"instruments": {"opu": OPU, "crossbar": CROSSBAR}})


def test_embedded_cluster_trains_every_unit_at_once_at_its_site(tmp_path, bench_file, capsys):
    # beijing's ADC columns of output 0 dead from the start: its site's fault, handled by the policy
    faults = {"on_persistent": "recover", "mask": True,
              "inject": [{"at": 1, "instrument": "crossbar", "kind": "broken_adc", "params": {"columns": [0, 1]}}]}
    recipe, out = write(tmp_path / "tiny.yaml", {**TINY, "faults": faults}), tmp_path / "run.h5"
    assert main(["run", "--recipe", str(recipe), "--config", str(bench_file), "--out", str(out), "--quiet"]) == 0
    assert steps_once(out) == {(0, 1): list(range(STEPS)), (1, 1): list(range(STEPS))}  # revision 0: no steps
    capsys.readouterr()
    assert main(["inspect", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["state"] == "done"
    assert [(f["kind"], f["unit"], f["channels"]) for f in summary["faults"]][:1] == [("broken_channels", 1, [0, 1])]
    assert [u["site"] for u in summary["units"]] == ["paris", "beijing"]
    assert all(u["host"] == socket.gethostname() for u in summary["units"])
    for name, unit in (("paris", 0), ("beijing", 1)):
        site = summary["sites"][name]
        assert site["units"] == [unit] and site["busy_s"] > 0
        assert site["bytes_sent"] > 0 and site["bytes_received"] > 0
    # revision 0 (the initialisation pass) and revision 1 both measured, every row
    reader = RunReader(out)
    for u in reader.units:
        assert [u.feature_rows("train", r) for r in (0, 1)] == [300, 300]
    assert reader.test_accuracy > 0.3  # ten classes: chance is 0.1
    from labpnn.gui.run_data import RunData

    assert RunData.from_reader(reader).name(1) == "unit1 (crossbar, site beijing)"


@pytest.fixture
def thread_sites():
    """Two sites as worker threads in this process (fast; the checks do not need processes)."""
    files = [SiteFile(site="paris", instruments={"opu": OPU}), SiteFile(site="beijing", instruments={"crossbar": CROSSBAR})]
    with Sites.embedded(files, "test bench", processes=False) as sites:
        yield sites


def test_a_unit_pinned_to_an_instrument_no_site_holds_is_refused_before_training(thread_sites):
    recipe = parse_recipe({**TINY, "units": [TINY["units"][0], {"kind": "crossbar", "instrument": "crossbar2", "out": 8}]})
    with pytest.raises(ClusterError, match=r"recipe unit 1 \(crossbar\) is pinned to instrument\(s\) crossbar2, "
                                           r"which no site .* holds; the sites hold: beijing .*: crossbar; paris .*: opu"):
        thread_sites.check(recipe)
    thread_sites.check(parse_recipe(TINY))


def test_two_sites_claiming_one_instrument_are_refused_naming_both():
    files = [SiteFile(site="beijing", instruments={"crossbar": CROSSBAR}),
             SiteFile(site="lyon", instruments={"crossbar": CROSSBAR})]
    with pytest.raises(ClusterError, match=r"instrument 'crossbar' is claimed by two workers: site '(beijing|lyon)' "
                                           r"at tcp://127\.0\.0\.1:\d+ and site '(beijing|lyon)' at tcp://"):
        Sites.embedded(files, "test bench", processes=False)


def test_an_unreachable_scheduler_is_named():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free, nobody listens
    with pytest.raises(ClusterError, match=f"cannot reach the dask scheduler at tcp://127.0.0.1:{port}"):
        Sites.connect(f"tcp://127.0.0.1:{port}", timeout_s=1)


def test_site_file_errors_name_the_file_and_key(tmp_path, bench_file):
    bad = write(tmp_path / "site.yaml", {"instruments": {"opu": OPU}})
    with pytest.raises(ConfigError, match=r"site file .*site\.yaml: site: Field required"):
        load_site(bad)
    with pytest.raises(ClusterError, match=r"site 'lab' of the recipe's scheme.sites holds slm, which the bench file"):
        open_sites(parse_recipe({**TINY, "scheme": {"name": "parallel", "sites": {"lab": ["slm"]}}}),
                   bench_path=bench_file, layout={"lab": ["slm"]})


def test_payload_bytes_counts_arrays_and_parameters():
    import numpy as np
    import torch

    model = torch.nn.Linear(3, 2)  # 6 + 2 float32
    assert payload_bytes(({"a": np.zeros((4, 5), np.float32)}, [b"xyz", model], 7, "s")) == 80 + 3 + 32


# -- real processes -----------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "20s"}
    return subprocess.Popen(args, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.mark.slow
def test_real_sites_one_killed_mid_run_then_restarted_and_resumed(tmp_path):
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    labpnn = [sys.executable, "-m", "labpnn"]
    sites = {name: write(tmp_path / f"{name}.yaml", {"site": name, "instruments": {inst: spec}})
             for name, inst, spec in (("paris", "opu", OPU), ("beijing", "crossbar", CROSSBAR))}
    recipe = write(tmp_path / "tiny.yaml", {**TINY, "pib": {"steps": 60, "batch_size": 64},
                                            "scheme": {"name": "parallel", "chunk": 2}})
    out = tmp_path / "run.h5"
    procs: list[subprocess.Popen] = []

    def worker(name: str) -> subprocess.Popen:
        log = tmp_path / f"{name}-{len(procs)}.log"
        p = _start([*labpnn, "worker", "--scheduler", address, "--config", str(sites[name]), "--host", "127.0.0.1"], log)
        procs.append(p)
        _wait_for(lambda: "labpnn worker: site" in log.read_text() or p.poll() is not None, 120, f"site {name}")
        assert p.poll() is None, log.read_text()
        return p

    try:
        procs.append(_start([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                             "--port", str(port), "--no-dashboard"], tmp_path / "scheduler.log"))
        worker("paris")
        beijing = worker("beijing")
        # a third worker claiming beijing's instrument is refused, naming the holder
        clash = write(tmp_path / "lyon.yaml", {"site": "lyon", "instruments": {"crossbar": CROSSBAR}})
        refused = subprocess.run([*labpnn, "worker", "--scheduler", address, "--config", str(clash), "--host",
                                  "127.0.0.1"], capture_output=True, text=True, timeout=120)
        assert refused.returncode == 2
        assert "instrument(s) crossbar already held by site 'beijing' at tcp://127.0.0.1:" in refused.stderr

        run = _start([*labpnn, "run", "--recipe", str(recipe), "--scheduler", address, "--out", str(out), "--quiet"],
                     tmp_path / "run-1.log")
        procs.append(run)

        def unit1_training() -> bool:
            try:
                return len(RunReader(out).unit(1).info_plane) >= 4
            except Exception:  # not created yet, or caught mid-write
                return False

        _wait_for(unit1_training, 180, "unit 1 to train at beijing")
        beijing.send_signal(signal.SIGKILL)
        assert run.wait(120) == 2
        message = (tmp_path / "run-1.log").read_text()
        assert "site 'beijing'" in message and "was lost mid-run" in message
        assert RunReader(out).state == "failed"

        worker("beijing")
        resumed = subprocess.run([*labpnn, "run", "--resume", str(out), "--scheduler", address, "--quiet"],
                                 capture_output=True, text=True, timeout=300,
                                 env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert resumed.returncode == 0, resumed.stderr
        reader = RunReader(out)
        assert reader.state == "done"
        assert steps_once(out) == {(0, 1): list(range(60)), (1, 1): list(range(60))}
        assert [u["site"] for u in reader.summary()["units"]] == ["paris", "beijing"]
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()


def test_a_site_keeps_the_rows_it_measured_for_the_next_round_and_answers_expected_with_measure(thread_sites):
    import numpy as np

    from labpnn.objectives.pib import objective_of
    from labpnn.recipe import UnitSpec
    from labpnn.sites import ClusterBench

    recipe = parse_recipe(TINY)
    bench = ClusterBench(thread_sites)
    for device in bench.devices.values():
        device.connect()
    rng = np.random.default_rng(0)
    x, y = rng.random((300, 64), np.float32), rng.integers(0, 10, 300)
    settings = recipe.unit_pib(0)
    opu = bench.build_unit(0, UnitSpec.model_validate(TINY["units"][0]), 64, 0)
    opu.deploy()
    traffic = thread_sites.unit_traffic[0]

    def load_inputs() -> int:
        before = traffic.sent
        opu.load_inputs(1, objective_of(settings), x, {"y": y}, x, settings, 3, 100)
        return traffic.sent - before

    opu.keep = True
    measured = np.concatenate([opu.measure(x[a:a + 100]) for a in range(0, 300, 100)])
    opu.keep = False
    assert load_inputs() == y.nbytes  # x (and its optical features) kept at paris: only the labels travel
    assert load_inputs() == x.nbytes + y.nbytes  # used up: sent (and projected) again
    out = opu.train(1, 0, 2, None, final=True)
    assert [r[0] for r in out["records"]] == [0, 1] and measured.shape == (300, 16)

    crossbar = bench.build_unit(1, UnitSpec.model_validate(TINY["units"][1]), 16, 0)
    crossbar.deploy()
    calls = thread_sites.unit_traffic[1].calls
    h = measured[:100]
    z = crossbar.measure(h)
    expected = crossbar.expected(h)  # came with the measurement: no second call
    assert thread_sites.unit_traffic[1].calls == calls + 1
    assert expected.shape == z.shape and np.abs(expected - z).mean() < 0.5 * np.abs(z).mean() + 1e-3
    crossbar.expected(h)  # asked again: computed at the site
    assert thread_sites.unit_traffic[1].calls == calls + 2


def test_embedded_sites_are_processes_with_glibcs_default_malloc():
    # dask's nanny sets MALLOC_TRIM_THRESHOLD_, which made every large buffer of a PIB step be mapped anew
    with Sites.embedded([SiteFile(site="paris", instruments={"opu": OPU})], "test bench") as sites:
        site = sites.sites["paris"]
        got = sites.client.submit(lambda: (os.getpid(), os.environ.get("MALLOC_TRIM_THRESHOLD_")),
                                  workers=[site.address], pure=False).result()
    assert got[0] != os.getpid() and got[1] is None

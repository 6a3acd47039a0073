"""The `labpnn` command as a user meets it: exit codes, clear errors, inspect --json."""

import json
import subprocess
import sys

import torch
from engine_helpers import TINY, TWIN_BENCH, write_yaml

from labpnn.cli import main
from labpnn.runlog import RunReader


def labpnn(*args, cwd=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "labpnn", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


def test_run_then_inspect_json(tmp_path):
    recipe = write_yaml(tmp_path / "tiny.yaml", TINY)
    bench = write_yaml(tmp_path / "bench.yaml", TWIN_BENCH)
    done = labpnn("run", "--recipe", recipe, "--config", bench, "--out", tmp_path / "run.h5", "--quiet")
    assert done.returncode == 0, done.stderr
    assert "final readout" in done.stdout and "bits" in done.stdout
    summary = json.loads(labpnn("inspect", tmp_path / "run.h5", "--json").stdout)
    assert {"recipe", "state", "units", "test_accuracy", "events"} <= set(summary)
    assert summary["state"] == "done" and 0 <= summary["test_accuracy"] <= 1
    assert set(summary["units"][0]["info_plane"][0]) >= {"step", "I_XZ", "I_YZ"}
    assert set(summary["events"][0]) >= {"time", "kind", "message"}
    assert summary["recipe"]["name"] == "tiny"


def test_errors_are_one_clear_line_without_traceback(tmp_path):
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    for args in (["inspect", junk], ["run", "--recipe", "no-such-recipe"],
                 ["run", "--config", write_yaml(tmp_path / "b.yaml", {"instruments": {"x": {"driver": "?"}}})]):
        result = labpnn(*args, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("labpnn: error: ") and "Traceback" not in result.stderr


def test_a_run_computes_on_the_threads_it_is_given_and_records_them(tmp_path):
    recipe = write_yaml(tmp_path / "tiny.yaml", TINY)
    bench = write_yaml(tmp_path / "bench.yaml", TWIN_BENCH)
    before = torch.get_num_threads()
    for threads, name in ((None, "default.h5"), ("2", "two.h5")):
        args = ["run", "--recipe", str(recipe), "--config", str(bench), "--out", str(tmp_path / name), "--quiet"]
        assert main(args + (["--threads", threads] if threads else [])) == 0
        assert torch.get_num_threads() == before  # this process's count is given back
    with RunReader(tmp_path / "default.h5") as default, RunReader(tmp_path / "two.h5") as two:
        assert default.provenance["threads"] == 1 and two.provenance["threads"] == 2
    refused = labpnn("run", "--threads", "0")
    assert refused.returncode == 2 and "--threads: '0' is not a whole number of at least 1" in refused.stderr

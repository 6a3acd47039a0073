"""The `labpnn` command as a user meets it: exit codes, clear errors, inspect --json."""

import json
import subprocess
import sys

from engine_helpers import TINY, TWIN_BENCH, write_yaml


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

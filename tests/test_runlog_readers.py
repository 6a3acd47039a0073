"""Run files as other HDF5 readers see them: Debian's h5ls 1.10 (an older HDF5 than h5py's),
UTF-8 strings declared UTF-8, and the attributes that say what the arrays hold."""

from __future__ import annotations

import shutil
import subprocess

import h5py
import pytest

from engine_helpers import tiny_recipe, twin_bench
from labpnn.engine import Run, State
from labpnn.runlog import RunReader
from test_runlog import kill_writer, read_steps, spawn_writer

H5LS = shutil.which("h5ls")
needs_h5ls = pytest.mark.skipif(H5LS is None, reason="h5ls not installed (Debian: apt-get install "
                                "hdf5-tools; .ci/run installs it)")


def h5ls(path) -> subprocess.CompletedProcess:
    return subprocess.run([H5LS, "-r", "-d", str(path)], capture_output=True, text=True, timeout=120)


def h5ls_version() -> str:
    out = subprocess.run([H5LS, "--version"], capture_output=True, text=True).stdout
    return out.strip()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    assert Run(tiny_recipe(), twin_bench(tmp), tmp / "run.h5").execute() is State.DONE
    return tmp / "run.h5"


@needs_h5ls
def test_h5ls_reads_a_finished_run(finished_run):
    done = h5ls(finished_run)
    assert done.returncode == 0 and not done.stderr, (h5ls_version(), done.stderr[-2000:])
    for path in ("/units/0/params/deployed/g_read", "/units/1/info_plane", "/events", "/meta/recipe"):
        assert f"{path} " in done.stdout
    assert '"running\\000' in done.stdout and '"done\\000' in done.stdout   # the state table's strings


@needs_h5ls
def test_h5ls_reads_a_killed_run_once_its_open_flags_are_cleared_and_once_resumed(tmp_path):
    path = tmp_path / "run.h5"
    proc = spawn_writer(tmp_path, path, "create")
    read_steps(proc, 30)
    kill_writer(proc)
    # HDF5's own tools refuse a file a SWMR writer still flags open, as documented
    assert h5ls(path).returncode != 0
    copy = tmp_path / "copy.h5"
    shutil.copy(path, copy)
    subprocess.run([shutil.which("h5clear") or "h5clear", "-s", str(copy)], check=True, timeout=60)
    done = h5ls(copy)
    assert done.returncode == 0 and not done.stderr, (h5ls_version(), done.stderr[-2000:])
    assert "/units/0/info_plane " in done.stdout
    with RunReader(copy) as r:   # and labpnn reads the cleared copy as it read the original
        assert len(r.units[0].info_plane) >= 30 and not r.damaged
    proc = spawn_writer(tmp_path, path, "resume", limit=60)   # resumed (in place) to its end
    proc.stdout.read()
    assert proc.wait() == 0, proc.stderr.read()
    done = h5ls(path)
    assert done.returncode == 0 and not done.stderr, (h5ls_version(), done.stderr[-2000:])


def test_strings_are_declared_utf8_and_arrays_say_what_they_hold(finished_run):
    with h5py.File(finished_run, "r") as f:
        events = f["events"].id.get_type()
        kind = events.get_member_type(events.get_member_index(b"message"))
        assert kind.get_cset() == h5py.h5t.CSET_UTF8
        assert f["meta/recipe"].id.get_type().get_cset() == h5py.h5t.CSET_UTF8
        assert f["state"].id.get_type().get_member_type(1).get_cset() == h5py.h5t.CSET_UTF8
        deployed = f["units/0/params/deployed"]
        assert deployed["g_read"].attrs["units"] == "S"
        assert deployed["g_target"].attrs["units"] == "S"
        assert "G+ of outputs 0..15 | G- of the same outputs" in deployed["g_read"].attrs["axes"]
        assert "the last row: bias" in deployed["weights"].attrs["axes"]
        trained = f["units/0/params/trained/0.weight"]
        assert trained.shape[1:] == (16, 64)
        assert "output, input" in trained.attrs["axes"] and "out_features x in_features" in trained.attrs["axes"]
    with RunReader(finished_run) as r:   # still read back as before
        assert r.layout.units[0].array_attrs["deployed/g_read"]["units"] == "S"
        assert r.state == "done"

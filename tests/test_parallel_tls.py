"""Sites over TLS: a scheduler requiring encryption on 127.0.0.1, one site as a worker thread
here and one `labpnn worker` process with --tls-*, and `labpnn run --scheduler tls://...` with
--tls-*, on certificates made here by the openssl command."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from distributed import Client
from distributed.security import Security

from labpnn.cli import main
from labpnn.errors import ConfigError
from labpnn.runlog import RunReader
from labpnn.sites.cluster import start_cluster
from labpnn.sites.site import load_site, tls
from test_parallel import CROSSBAR, OPU, TINY, _start, _wait_for, steps_once, write

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl command to make certificates")


def _certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A CA, and one certificate signed by it (CN localhost, IP 127.0.0.1) with its key."""
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True, timeout=60)

    openssl("req", "-x509", "-nodes", "-newkey", "rsa:2048", "-days", "1", "-keyout", "ca.key", "-out", "ca.pem",
            "-subj", "/CN=labpnn test CA")
    openssl("req", "-nodes", "-newkey", "rsa:2048", "-keyout", "site.key", "-out", "site.csr", "-subj", "/CN=localhost")
    (folder / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "site.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "1",
            "-extfile", "ext.cnf", "-out", "site.pem")
    return folder / "ca.pem", folder / "site.pem", folder / "site.key"


@pytest.mark.slow
def test_parallel_training_over_tls_with_encryption_required(tmp_path):
    ca, cert, key = _certificates(tmp_path)
    files = ["--tls-ca-file", str(ca), "--tls-cert", str(cert), "--tls-key", str(key)]
    security = tls(str(ca), str(cert), str(key))
    paris = load_site(write(tmp_path / "paris.yaml", {"site": "paris", "instruments": {"opu": OPU}}))
    beijing = write(tmp_path / "beijing.yaml", {"site": "beijing", "instruments": {"crossbar": CROSSBAR}})
    recipe = write(tmp_path / "tiny.yaml", {**TINY, "scheme": {"name": "parallel", "chunk": 4}})
    out = tmp_path / "run.h5"
    with start_cluster([paris], str(tmp_path / "paris.yaml"), processes=False, security=security) as cluster:
        address = cluster.scheduler_address
        assert address.startswith("tls://127.0.0.1:")
        with pytest.raises(Exception):  # no certificate, no entry (encryption required)
            Client(address.replace("tls://", "tcp://"), timeout=3, set_as_default=False)
        log = tmp_path / "beijing.log"
        worker = _start([sys.executable, "-m", "labpnn", "worker", "--scheduler", address, "--config", str(beijing),
                         "--host", "127.0.0.1", *files], log)
        try:
            _wait_for(lambda: "labpnn worker: site" in log.read_text() or worker.poll() is not None, 120, "beijing")
            assert worker.poll() is None, log.read_text()
            assert "at tls://127.0.0.1:" in log.read_text()
            assert main(["run", "--recipe", str(recipe), "--scheduler", address, "--out", str(out), "--quiet",
                         *files]) == 0
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(30)
    reader = RunReader(out)
    assert reader.state == "done"
    assert steps_once(out) == {(0, 1): list(range(TINY["pib"]["steps"])), (1, 1): list(range(TINY["pib"]["steps"]))}
    assert [u["site"] for u in reader.summary()["units"]] == ["paris", "beijing"]
    assert reader.test_accuracy > 0.5


def test_tls_options_go_together_and_name_a_missing_file(tmp_path):
    assert isinstance(tls(), Security)  # none: dask's configuration
    with pytest.raises(ConfigError, match="--tls-cert, --tls-key missing"):
        tls(str(tmp_path / "ca.pem"))
    with pytest.raises(ConfigError, match=r"--tls-ca-file .*ca\.pem: no such file"):
        tls(str(tmp_path / "ca.pem"), str(tmp_path / "c.pem"), str(tmp_path / "k.pem"))


def test_tls_options_without_a_scheduler_are_refused(tmp_path, capsys):
    ca, cert, key = (write(tmp_path / n, {}) for n in ("ca.pem", "site.pem", "site.key"))
    recipe = write(tmp_path / "tiny.yaml", TINY)
    code = main(["run", "--recipe", str(recipe), "--out", str(tmp_path / "r.h5"), "--quiet", "--tls-ca-file", str(ca),
                 "--tls-cert", str(cert), "--tls-key", str(key)])
    assert code == 2
    assert "TLS options need --scheduler tls://HOST:PORT" in capsys.readouterr().err

"""Shared test set-up: offscreen Qt, one BLAS/torch thread per test worker, and opt-in
options for real hardware."""

import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")  # pytest -n 2 already fills both cores
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

HARDWARE_OPTIONS = {
    "--crossbar-resource": "PyVISA resource of a real crossbar board, e.g. ASRL/dev/ttyUSB0::INSTR",
    "--camera": "GenICam producer (.cti) path of a real camera",
    "--slm-screen": "index of the screen a real SLM is attached to",
    "--opu-address": "tcp://host:port of a real OPU server",
}


def pytest_addoption(parser):
    for flag, help_text in HARDWARE_OPTIONS.items():
        parser.addoption(flag, default=None, help=f"opt-in real-hardware tests: {help_text}")


def hardware_option(request, flag: str) -> str:
    """The value of a hardware option, or skip the test when it was not given."""
    value = request.config.getoption(flag)
    if value is None:
        pytest.skip(f"real hardware not requested (pass {flag})")
    return value

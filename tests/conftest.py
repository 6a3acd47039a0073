"""Shared test set-up: offscreen Qt, and opt-in options for real hardware."""

import os

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("MPLBACKEND", "Agg")

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

"""The crossbar driver on any VISA backend: the bench option and $PYVISA_LIBRARY choose it,
and the board's pyvisa-sim YAML lets the real driver run with nothing else running."""

from __future__ import annotations

from importlib.resources import files

import pytest

from engine_helpers import write_yaml
from labpnn.bench import Bench
from labpnn.drivers import scpi
from labpnn.drivers.crossbar import CrossbarBoard
from labpnn.instruments.scpi import CommandError

BOARD_YAML = files("labpnn.sim_devices") / "crossbar-pyvisa-sim.yaml"
SIM = f"{BOARD_YAML}@sim"


def test_the_backend_is_the_option_then_the_environment_then_pyvisa_py(monkeypatch):
    monkeypatch.delenv("PYVISA_LIBRARY", raising=False)
    assert scpi.visa_library() == "@py"
    monkeypatch.setenv("PYVISA_LIBRARY", "/opt/ni/libvisa.so")
    assert scpi.visa_library() == "/opt/ni/libvisa.so"
    assert scpi.visa_library("@sim") == "@sim"


@pytest.fixture
def sim_backend():
    pytest.importorskip("pyvisa_sim", reason="pyvisa-sim not installed (pip install -e '.[visa-sim]')")
    assert BOARD_YAML.is_file()


@pytest.mark.parametrize("resource", ["ASRL1::INSTR", "TCPIP::localhost::5025::SOCKET"])
def test_driver_on_the_pyvisa_sim_board(sim_backend, resource, monkeypatch):
    monkeypatch.delenv("PYVISA_LIBRARY", raising=False)
    board = CrossbarBoard("crossbar", resource, visa_library=SIM, v_limit=0.2)
    board.connect()
    try:
        assert board.identity() == "labpnn,crossbar (pyvisa-sim),PVSIM0001,2"
        assert board.size == (8, 4) and board.g_range == (1e-6, 1e-4)
        assert board.v_limit == pytest.approx(0.2)          # the option, applied at connect
        assert board.output is False                          # connect leaves the output off
        health = board.self_test()
        assert health.ok and "4 ADC columns healthy" in health.detail
        board.adc_bits = 10
        assert board.adc_bits == 10
        with pytest.raises(CommandError, match="SOUR:VOLT:LIM 5"):
            board.v_limit = 5.0                              # refused by the board, via SYST:ERR?
        assert board.v_limit == pytest.approx(0.2)          # and nothing changed
        assert board.snapshot()["options"]["visa_library"] == SIM
    finally:
        board.close()


def test_pyvisa_library_environment_variable_is_honoured(sim_backend, monkeypatch):
    monkeypatch.setenv("PYVISA_LIBRARY", SIM)
    board = CrossbarBoard("crossbar", "ASRL1::INSTR")
    board.connect()
    try:
        assert "pyvisa-sim" in board.identity()
    finally:
        board.close()


def test_bench_option_chooses_the_backend(sim_backend, tmp_path, monkeypatch):
    monkeypatch.delenv("PYVISA_LIBRARY", raising=False)
    bench = Bench.load(write_yaml(tmp_path / "instruments.yaml", {"instruments": {"crossbar": {
        "driver": "crossbar", "resource": "ASRL1::INSTR", "options": {"visa_library": SIM}}}}))
    board = bench["crossbar"]
    board.connect()
    try:
        assert board.size == (8, 4)
    finally:
        board.close()

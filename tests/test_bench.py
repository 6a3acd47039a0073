"""instruments.yaml: validated on load, every error names the file, the instrument and the key."""

import pytest

from engine_helpers import write_yaml
from labpnn.bench import Bench, default_path
from labpnn.errors import ConfigError
from labpnn.protocols import CrossbarArray, Device


def load(tmp_path, text: str) -> Bench:
    path = tmp_path / "bench.yaml"
    path.write_text(text)
    return Bench.load(path)


def test_packaged_default_points_at_the_twins():
    bench = Bench.load(default_path())
    assert bench.devices and all(d.simulated for d in bench.devices.values())
    assert isinstance(bench["crossbar"], CrossbarArray) and isinstance(bench["crossbar"], Device)


@pytest.mark.parametrize("text, message", [
    ("instruments:\n  xb:\n    driver: warp-drive\n", r"instrument 'xb': key 'driver': unknown driver 'warp-drive'"),
    ("instruments:\n  xb:\n    driver: crossbar\n    resource: COM-seven\n", r"instrument 'xb': key 'resource'"),
    ("instruments:\n  xb:\n    resource: x\n", r"instruments.xb.driver: Field required"),
    ("instruments:\n  xb:\n    driver: sim-crossbar\n    options: {adc_bits: 99}\n",
     r"instrument 'xb': options.adc_bits: Input should be less than or equal to 24"),
    ("instruments:\n  xb:\n    driver: sim-crossbar\n    options: {warp: 9}\n", r"options.warp: unknown key"),
    ("instruments: [1, 2\n", r"line \d+, column \d+: not valid YAML"),
    ("- just a list\n", r"expected a mapping"),
    ("instruments: {}\n", r"'instruments' is empty"),
])
def test_bad_bench_files_name_file_instrument_and_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message) as info:
        load(tmp_path, text)
    assert str(tmp_path / "bench.yaml") in str(info.value)


def test_missing_bench_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        Bench.load(tmp_path / "nope.yaml")


def test_unknown_instrument_lists_the_known_ones(tmp_path):
    bench = Bench.load(write_yaml(tmp_path / "b.yaml", {"instruments": {"xb": {"driver": "sim-crossbar"}}}))
    with pytest.raises(ConfigError, match="no instrument 'opu'; it has: xb"):
        bench["opu"]


def test_construction_does_not_touch_hardware(tmp_path):
    bench = load(tmp_path, "instruments:\n  xb:\n    driver: crossbar\n    resource: TCPIP::127.0.0.1::1::SOCKET\n")
    assert bench["xb"].connected is False and bench["xb"].simulated is False


@pytest.mark.parametrize("raw, message", [
    (b"instruments:\n  xb:\n    driver: sim-crossbar  # r\xe9sistance\n",
     r"line 3, column 30: not UTF-8 text \(byte 0xe9\)"),
    (b"instruments:\n  xb:\n    driver: sim-\x00crossbar\n",
     r"line 3, column 17: not valid YAML: character U\+0000 is not allowed"),
    (b"instruments:\n  xb:\n    driver: sim-crossbar\n    driver: sim-opu\n",
     r"line 4, column 5: not valid YAML: duplicate key 'driver' \(first given on line 3\)"),
    (b"", r"the file is empty"),
    (b"# only a comment\n", r"the file is empty"),
    (b"instruments:\n  opu:\n    driver: sim-opu\n"
     b"    options: {n_components: 1000000, max_n_features: 1000000}\n",
     r"instrument 'opu': options: .*R of 1000000 x 1000000 .* would take 7450.6 GiB of memory"),
])
def test_hostile_bench_files_name_file_line_and_problem(tmp_path, raw, message):
    path = tmp_path / "bench.yaml"
    path.write_bytes(raw)
    with pytest.raises(ConfigError, match=message) as info:
        Bench.load(path)
    assert str(path) in str(info.value)


def test_a_refused_tcp_resource_names_the_address():
    import socket

    from labpnn.drivers.crossbar import CrossbarBoard
    from labpnn.drivers.opu import OPU
    from labpnn.errors import TransportError

    with socket.socket() as s:     # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for device, address in ((CrossbarBoard(name="xb", resource=f"TCPIP::127.0.0.1::{port}::SOCKET"),
                             f"TCPIP::127.0.0.1::{port}::SOCKET"),
                            (OPU(name="opu", resource=f"tcp://127.0.0.1:{port}"), f"tcp://127.0.0.1:{port}")):
        with pytest.raises(TransportError, match="refused") as info:
            device.connect()
        assert address in str(info.value) and not device.connected

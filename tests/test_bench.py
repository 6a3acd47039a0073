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

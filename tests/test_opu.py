"""The OPU client, its twin (in process and over TCP), the OPU server, and the encoders."""

import json
import signal
import socket
import struct
import subprocess
import sys
import time
import types

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from labpnn.drivers.opu import OPU
from labpnn.units.opu_encoding import (
    BinaryThresholdEncoder,
    FixedRangeBitPlanDecoder,
    FixedRangeBitPlanEncoder,
)
from labpnn.instruments.opu_protocol import recv_message, send_message
from labpnn.errors import DeviceError, TransportError
from labpnn.protocols import Device, FaultInjectable, Projector
from labpnn.sim_devices.opu import SimOPUDevice
from labpnn.sim_devices.opu_server import OPUServer

N_FEATURES, N_COMPONENTS = 64, 400


def binary(n, fill=0.5, seed=0, features=N_FEATURES):
    return (np.random.default_rng(seed).random((n, features)) < fill).astype(np.uint8)


@pytest.fixture
def twin():
    with SimOPUDevice(n_components=N_COMPONENTS, max_n_features=N_FEATURES, seed=3) as opu:
        yield opu


@pytest.fixture(scope="module")
def server():
    with OPUServer(port=0, seed=3) as srv:
        yield srv


# -- encoders -----------------------------------------------------------------------------
def test_threshold_encoder_is_strictly_greater():
    out = BinaryThresholdEncoder(0.5).transform(np.array([[0.2, 0.5, 0.51, 3.0]]))
    assert out.dtype == np.uint8 and out.tolist() == [[0, 0, 1, 1]]


def test_bitplane_layout_groups_planes_by_sample_most_significant_first():
    planes = FixedRangeBitPlanEncoder(4).transform(np.array([[5 / 15, 1.0], [0.0, 8 / 15]]))
    assert planes.tolist() == [[0, 1], [1, 1], [0, 1], [1, 1],   # sample 0: 5 = 0101, 15 = 1111
                               [0, 1], [0, 0], [0, 0], [0, 0]]   # sample 1: 0 = 0000, 8 = 1000


@settings(max_examples=50, deadline=None)
@given(X=arrays(np.float64, (3, 5), elements=st.floats(0, 1)), n_bits=st.integers(1, 8))
def test_bitplane_round_trip_is_the_quantised_input(X, n_bits):
    decoded = FixedRangeBitPlanDecoder(n_bits).transform(FixedRangeBitPlanEncoder(n_bits).transform(X))
    assert decoded.shape == X.shape and decoded.dtype == np.float32
    assert np.abs(decoded - X).max() <= 0.5 / (2**n_bits - 1) + 1e-6


def test_bitplane_decoding_is_exact_for_a_linear_projection():
    X = np.random.default_rng(0).random((20, 10))
    M = np.random.default_rng(1).normal(size=(10, 7))
    planes = FixedRangeBitPlanEncoder(6).transform(X)
    decoded = FixedRangeBitPlanDecoder(6).transform(planes @ M)
    quantised = np.rint(X * 63) / 63
    np.testing.assert_allclose(decoded, quantised @ M, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("X, match", [(np.array([[1.5]]), r"\[0, 1\]"), (np.ones(3), "2-D"),
                                      (np.array([[np.nan]]), "NaN")])
def test_bitplane_encoder_refuses_bad_input(X, match):
    with pytest.raises(ValueError, match=match):
        FixedRangeBitPlanEncoder(4).transform(X)


def test_bitplane_decoder_refuses_a_row_count_not_a_multiple_of_the_planes():
    with pytest.raises(ValueError, match=r"n \* 4"):
        FixedRangeBitPlanDecoder(4).transform(np.zeros((6, 3)))


# -- the twin in process ----------------------------------------------------------------------
def test_twin_is_a_seeded_uint8_projector(twin):
    assert isinstance(twin, Projector) and isinstance(twin, Device) and isinstance(twin, FaultInjectable)
    X = binary(50)
    twin.fit1d(X=X)
    Y = twin.transform(X)
    assert Y.dtype == np.uint8 and Y.shape == (50, N_COMPONENTS)
    assert twin.n_inputs == N_FEATURES and twin.n_outputs == N_COMPONENTS
    with SimOPUDevice(N_COMPONENTS, N_FEATURES, seed=3) as same, \
            SimOPUDevice(N_COMPONENTS, N_FEATURES, seed=4) as other:
        same.fit1d(X=X)
        other.fit1d(X=X)
        np.testing.assert_array_equal(same.transform(X), Y)
        assert np.mean(other.transform(X) == Y) < 0.5


def test_twin_output_is_fully_developed_speckle(twin):
    twin.fit1d(X=binary(8))
    Y = twin.transform(binary(8)).astype(float)
    contrast = Y.std(axis=1) / Y.mean(axis=1)  # exponential intensity: std = mean
    assert np.all(np.abs(contrast - 1) < 0.2)


def test_auto_exposure_scales_with_the_number_of_ones(twin):
    means = {}
    for fill in (0.2, 0.9):
        X = binary(40, fill)
        twin.fit1d(X=X)
        Y = twin.transform(X)
        means[fill] = (twin.snapshot()["device"]["exposure_us"], Y.mean(), np.mean(Y == 255))
    assert means[0.9][0] < means[0.2][0] * 0.5  # shorter exposure for more ones
    for exposure, mean, saturated in means.values():
        assert abs(mean - 40) < 8 and saturated < 0.01  # kept at the target, unsaturated


def test_auto_exposure_is_capped_for_sparse_inputs(twin):
    X = binary(40, 0.002)
    twin.fit1d(X=X)
    assert twin.snapshot()["device"]["exposure_us"] == 4000.0 and twin.transform(X).mean() < 10


def test_without_fit_data_the_base_exposure_saturates_dense_inputs(twin):
    twin.fit1d(n_features=N_FEATURES)
    assert np.mean(twin.transform(binary(40, 0.95)) == 255) > 0.05


def test_exposure_collapse_fault_darkens_the_output_until_cleared(twin):
    X = binary(10)
    twin.fit1d(X=X)
    twin.inject_fault("exposure_collapse")
    assert twin.transform(X).mean() < 1
    assert not twin.self_test().ok
    twin.clear_faults()
    assert twin.transform(X).mean() > 20 and twin.self_test().ok


def test_project_fits_on_the_first_batch_and_returns_float32():
    with SimOPUDevice(N_COMPONENTS, N_FEATURES) as opu:
        y = opu.project(binary(5))
        assert opu.n_features == N_FEATURES and y.dtype == np.float32 and y.shape == (5, N_COMPONENTS)
        assert opu.last_frame.ndim == 2 and opu.last_frame.size >= N_COMPONENTS


def test_a_single_vector_gives_a_single_output(twin):
    twin.fit1d(n_features=N_FEATURES)
    assert twin.transform(binary(1)[0]).shape == (N_COMPONENTS,)


@pytest.mark.parametrize("X, match", [
    (np.full((2, N_FEATURES), 0.5), "binary 0/1 integers"),
    (np.full((2, N_FEATURES), 2), "not binary"),
    (np.ones((2, N_FEATURES + 1), np.uint8), "65 features"),
    (np.ones((2, 2, N_FEATURES), np.uint8), "shape"),
])
def test_bad_input_is_refused(twin, X, match):
    twin.fit1d(n_features=N_FEATURES)
    with pytest.raises(ValueError, match=match):
        twin.transform(X)


def test_fit_and_transform_misuse_is_refused(twin):
    with pytest.raises(ValueError, match="fit1d before transform"):
        twin.transform(binary(2))
    with pytest.raises(ValueError, match="one of them"):
        twin.fit1d()
    with pytest.raises(ValueError, match="max_n_features"):
        twin.fit1d(n_features=N_FEATURES + 1)
    twin.fit1d(n_features=N_FEATURES)
    twin.close()
    with pytest.raises(DeviceError, match="not connected"):
        twin.transform(binary(2))


def test_safe_state_switches_the_light_off_and_the_fit_survives_a_reconnect(twin):
    X = binary(20, 0.8)
    twin.fit1d(X=X)
    before = twin.snapshot()["device"]["exposure_us"]
    twin.safe_state()
    assert not twin.connected
    twin.connect()
    assert twin.snapshot()["device"]["exposure_us"] == before and twin.transform(X).shape == (20, N_COMPONENTS)


@pytest.mark.parametrize("cls, kwargs, match", [
    (OPU, {"seed": 1}, "seed"),
    (SimOPUDevice, {"resource": "tcp://127.0.0.1:1"}, "twin: resource must be empty"),
    (OPU, {"resource": "http://x:1"}, "tcp://host:port"),
    (OPU, {"resource": "tcp://host:0"}, "tcp://host:port"),
    (SimOPUDevice, {"colour": "red"}, "colour"),
])
def test_bad_options_are_refused(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(10, 10, **kwargs)


def test_bench_style_construction_takes_every_setting_as_an_option():
    options = {"n_components": 30, "max_n_features": 8, "seed": 2}
    SimOPUDevice.Options(**options)  # what the bench loader validates first
    opu = SimOPUDevice(name="opu", resource=None, **options)
    assert (opu.n_components, opu.max_n_features, opu.simulated) == (30, 8, True)
    assert OPU(10, 10).simulated is False
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        OPU.Options(n_components=0)


def test_snapshot_is_json_and_marks_the_twin(twin):
    twin.fit1d(n_features=N_FEATURES)
    snap = json.loads(json.dumps(twin.snapshot()))
    assert snap["simulated"] is True and snap["settings"]["seed"] == 3 and "SimOPU" in snap["identity"]


# -- the real OPU through lightonml ------------------------------------------------------------
def test_missing_lightonml_says_how_to_get_an_opu(monkeypatch):
    monkeypatch.setitem(sys.modules, "lightonml", None)
    opu = OPU(10, 10)
    with pytest.raises(DeviceError, match="lightonml is not installed.*own environment"):
        opu.connect()


def test_lightonml_is_driven_through_its_own_api(monkeypatch):
    calls = []

    class FakeLightonOPU:
        def __init__(self, n_components, max_n_features, open_at_init):
            calls.append(("init", n_components, max_n_features, open_at_init))
            self.device = types.SimpleNamespace(active=False, exposure_us=400, frametime_us=500)

        def open(self):
            self.device.active = True

        def close(self):
            self.device.active = False

        def fit1d(self, X=None, n_features=None):
            calls.append(("fit1d", None if X is None else X.shape, n_features))

        def transform(self, X):
            return np.full((len(X), 7), 9, np.uint8)

    monkeypatch.setitem(sys.modules, "lightonml", types.SimpleNamespace(OPU=FakeLightonOPU))
    with OPU(7, 5) as opu:
        assert opu.simulated is False
        opu.fit1d(X=binary(3, features=5))
        assert opu.transform(binary(3, features=5)).tolist() == [[9] * 7] * 3
        with pytest.raises(DeviceError, match="twin only"):
            opu.inject_fault("saturate")
    assert calls == [("init", 7, 5, False), ("fit1d", (3, 5), None)]
    assert not opu.connected


# -- over the network --------------------------------------------------------------------------
def test_network_twin_gives_the_in_process_twins_outputs(server, twin):
    X = binary(30)
    twin.fit1d(X=X)
    expected = twin.transform(X)
    with OPU(N_COMPONENTS, N_FEATURES, resource=server.address) as remote:
        assert remote.simulated is True and "SimOPU" in remote.identity()
        remote.fit1d(X=X)
        np.testing.assert_array_equal(remote.transform(X), expected)
        assert remote.self_test().ok
        assert json.loads(json.dumps(remote.snapshot()))["device"]["n_features"] == N_FEATURES


def test_network_faults_and_server_errors(server):
    with OPU(N_COMPONENTS, N_FEATURES, resource=server.address) as remote:
        remote.fit1d(n_features=N_FEATURES)
        remote.inject_fault("exposure_collapse")
        assert remote.transform(binary(4)).mean() < 1
        remote.clear_faults()
        with pytest.raises(DeviceError, match="OPU server: unknown OPU fault 'melt'") as err:
            remote.inject_fault("melt")
        assert not isinstance(err.value, TransportError)
        assert remote.transform(binary(4)).mean() > 5  # the link survives a refused request


def test_unreachable_server_is_a_transport_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TransportError, match="cannot reach"):
        OPU(10, 10, resource=f"tcp://127.0.0.1:{port}").connect()


def test_silent_server_is_a_transport_error():
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        opu = OPU(10, 10, resource=f"tcp://127.0.0.1:{silent.getsockname()[1]}", timeout_s=0.2)
        with pytest.raises(TransportError, match="no answer to 'open'"):
            opu.connect()
        assert not opu.connected


def raw_request(sock, header, payload=b""):
    head = json.dumps(header).encode()
    sock.sendall(struct.pack("!II", len(head), len(payload)) + head + payload)
    return recv_message(sock)


def test_server_answers_malformed_requests_with_errors_and_keeps_serving(server):
    host, port = server.server_address
    with socket.create_connection((host, port), timeout=5) as sock:
        bad_json = struct.pack("!II", 3, 0) + b"{x]"
        sock.sendall(bad_json)
        assert "not UTF-8 JSON" in recv_message(sock)[0]["error"]
        assert "before 'open'" in raw_request(sock, {"op": "transform"})[0]["error"]
        assert "unknown op 'fly'" in raw_request(sock, {"op": "fly"})[0]["error"]
        reply = raw_request(sock, {"op": "transform", "array": {"shape": [2, 2], "dtype": "uint8"}}, b"\0")
        assert "needs 4 bytes" in reply[0]["error"]
        huge = raw_request(sock, {"op": "open", "n_components": 10**6, "max_n_features": 10**6})[0]
        assert "past its 1024 MiB for all clients' twins" in huge["error"]
        reply, _ = raw_request(sock, {"op": "open", "n_components": 5, "max_n_features": 3})
        assert reply["ok"] and reply["simulated"]
        raw_request(sock, {"op": "fit", "n_features": 3})
        assert "binary" in raw_request(sock, {"op": "transform", "array": {"shape": [1, 3], "dtype": "uint8"}},
                                       b"\x00\x07\x01")[0]["error"]
        assert "malformed 'fit'" in raw_request(sock, {"op": "fit"})[0]["error"]
        send_message(sock, {"op": "transform"}, np.array([[1, 0, 1]], np.uint8))
        reply, Y = recv_message(sock)
        assert reply["ok"] and Y.shape == (1, 5)
    with socket.create_connection((host, port), timeout=5) as garbage:
        garbage.sendall(b"GET / HTTP/1.1\r\n\r\n")
        assert "implausible" in recv_message(garbage)[0]["error"]
    with OPU(5, 3, resource=server.address) as opu:  # still serving
        assert opu.project(np.array([[1, 1, 0]])).shape == (1, 5)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cli_serves_on_a_free_port_until_signalled(sig):
    proc = subprocess.Popen([sys.executable, "-m", "labpnn", "sim", "opu", "--tcp", "127.0.0.1:0", "--seed", "3"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("listening on tcp://127.0.0.1:")
        with OPU(N_COMPONENTS, N_FEATURES, resource=line.split()[-1]) as opu:
            assert opu.project(binary(3)).shape == (3, N_COMPONENTS)
        proc.send_signal(sig)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def test_cli_refuses_a_bad_address():
    proc = subprocess.run([sys.executable, "-m", "labpnn", "sim", "opu", "--tcp", "localhost:http"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "[HOST:]PORT" in proc.stderr


def test_server_bounds_connections_requests_twins_and_stalls():
    with OPUServer(port=0, max_connections=2, max_request_bytes=1000, max_twin_bytes=8 * 5 * 3 * 2,
                   stall_timeout=0.3, seed=0) as server:
        host, port = server.server_address
        first = socket.create_connection((host, port), timeout=5)
        second = socket.create_connection((host, port), timeout=5)
        with first, second:
            assert raw_request(first, {"op": "open", "n_components": 5, "max_n_features": 3})[0]["ok"]
            assert raw_request(second, {"op": "open", "n_components": 5, "max_n_features": 3})[0]["ok"]
            with socket.create_connection((host, port), timeout=5) as third:  # beyond the limit
                third.sendall(struct.pack("!II", 2, 0) + b"{}")
                assert third.recv(16) == b""
            # the two twins use the whole budget: a larger one is refused, naming the budget
            assert "past its 240 B" in raw_request(first, {"op": "open", "n_components": 6,
                                                          "max_n_features": 3})[0]["error"]
            # a request declaring more than the server takes is refused before it is read
            second.sendall(struct.pack("!II", 2, 1 << 30) + b"{}")
            assert "at most 1000 B" in recv_message(second)[0]["error"]
            assert second.recv(16) == b""  # and the stream is given up
            # a message that stops half way drops its connection after the stall timeout
            first.sendall(struct.pack("!II", 20, 0) + b'{"op":')
            assert first.recv(16) == b""
        for _ in range(100):  # both slots and the budget come back once the clients left
            if server.twin_bytes == 0 and server._connections == 0:
                break
            time.sleep(0.05)
        with OPU(6, 3, resource=server.address) as opu:
            assert opu.project(np.array([[1, 1, 0]])).shape == (1, 6)

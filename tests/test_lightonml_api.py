"""labpnn.lightonml against lightonml 1.4's documented behaviour (its docstrings and its
get-started notebook): a lightonml script runs with `lightonml` replaced by `labpnn.lightonml`,
on the twin and on an OPU server."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch

import labpnn.lightonml
from labpnn.lightonml import OPU
from labpnn.lightonml.context import ContextArray
from labpnn.lightonml.internal.simulated_device import SimulatedOpuDevice
from labpnn.lightonml.encoding.base import (
    BinaryThresholdEncoder, ConcatenatedBitPlanEncoder, ConcatenatingBitPlanDecoder, Float32Encoder,
    MultiThresholdEncoder, NoDecoding, NoEncoding, SeparatedBitPlanDecoder, SeparatedBitPlanEncoder,
    SequentialBaseTwoEncoder,
)
from labpnn.lightonml.types import OutputRescaling
from labpnn.sim_devices.opu_server import OPUServer

# written against lightonml, as its get-started notebook and docstrings use it
SCRIPT = textwrap.dedent("""
    import numpy as np
    import torch
    from lightonml import OPU
    from lightonml.encoding.base import SeparatedBitPlanEncoder, SeparatedBitPlanDecoder

    numpy_data = np.random.randint(0, 2, size=(300, 200), dtype=np.uint8)
    torch_data = torch.randint(0, 2, size=(300, 200), dtype=torch.uint8)
    opu = OPU(n_components=1000, max_n_features=400, **DEVICE)
    try:
        opu.transform(numpy_data)
    except AssertionError as e:
        out["unfitted"] = str(e)
    opu.fit1d(numpy_data)
    y_np = opu.transform(numpy_data)
    out["y_np"] = y_np
    out["context"] = y_np.context.as_dict()
    out["plain"] = np.array(y_np)
    out["y_torch"] = opu.fit_transform1d(torch_data)
    data_2d = np.random.randint(0, 2, size=(30, 16, 20), dtype=np.uint8)
    opu.fit2d(data_2d)
    out["y_2d"] = opu.transform(data_2d)
    X = np.random.randn(40, 200)
    opu.fit1d(n_features=200)
    out["decoded"] = opu.transform(X, SeparatedBitPlanEncoder, SeparatedBitPlanDecoder)
    out["version"] = opu.version(devices=True)
    opu.close()
""")


def run_script(device: str) -> dict:
    out: dict = {}
    code = SCRIPT.replace("lightonml", "labpnn.lightonml").replace("**DEVICE", device)
    exec(compile(code, "lightonml-script", "exec"), {"out": out})
    return out


def check_script_outputs(out: dict) -> None:
    assert out["unfitted"] == "Call fit1d or fit2d before transform"
    y = out["y_np"]
    assert isinstance(y, ContextArray) and y.dtype == np.float32 and y.shape == (300, 1000)
    assert out["context"]["exposure_us"] > 0 and out["context"]["n_ones"] == pytest.approx(100, rel=0.1)
    assert type(out["plain"]) is np.ndarray
    assert isinstance(out["y_torch"], torch.Tensor) and out["y_torch"].shape == (300, 1000)
    assert out["y_2d"].shape == (30, 1000)
    assert out["decoded"].shape == (40, 1000) and np.isfinite(out["decoded"]).all()
    lines = out["version"].splitlines()
    assert lines[0].startswith("lightonml version") and "SimOPU twin" in lines[1]


def test_a_lightonml_script_runs_on_the_twin():
    check_script_outputs(run_script("simulated=True"))


def test_a_lightonml_script_runs_on_an_opu_server(monkeypatch):
    with OPUServer(port=0, seed=1) as server:
        monkeypatch.setenv("LABPNN_OPU", server.address)
        out = run_script("")
    check_script_outputs(out)


def test_opu_server_from_opu_device_and_remote_equals_twin(monkeypatch):
    from labpnn.drivers.opu import OPU as Driver
    X = np.random.default_rng(0).integers(0, 2, (8, 30))
    with OPUServer(port=0, seed=5) as server:
        remote = OPU(n_components=50, max_n_features=30,
                     opu_device=Driver(10, 10, resource=server.address))
        twin = OPU(n_components=50, max_n_features=30,
                   opu_device=SimulatedOpuDevice())
        twin.device = twin.device.resized(seed=5)  # the server's twins draw R from its seed
        remote.fit1d(X), twin.fit1d(X)
        assert remote.transform(X).shape == (8, 50)
        assert np.corrcoef(remote.transform(X).ravel(), twin.transform(X).ravel())[0, 1] > 0.9
        remote.close(), twin.close()


def test_constructor_as_lightonml():
    opu = OPU(simulated=True, open_at_init=False)
    assert opu.n_components == 200000 and opu.max_n_features == 1000   # lightonml's defaults
    assert not opu.device.connected                                    # open_at_init=False
    assert opu.max_n_components >= 200000
    with pytest.raises(ValueError, match="conflicting"):
        OPU(10, opu_device=opu.device, simulated=True)
    with pytest.raises(TypeError, match="opu_device must be"):
        OPU(10, "not a device")
    with pytest.warns(DeprecationWarning):
        quiet = OPU(10, None, 10, "", None, 1, open_at_init=True, disable_pbar=True, simulated=True,
                    rescale="norm")
    assert labpnn.lightonml.get_verbose_level() == 1 and quiet.rescale is OutputRescaling.norm
    assert quiet.device.connected                                      # opens at init by default
    quiet.close()
    labpnn.lightonml.set_verbose_level(0)


def test_without_any_opu_the_error_says_what_to_do(monkeypatch):
    monkeypatch.delenv("LABPNN_OPU", raising=False)
    with pytest.raises(RuntimeError, match="simulated=True"):
        OPU(10, max_n_features=10)


def test_inputs_as_lightonml_accepts_them():
    opu = OPU(n_components=40, max_n_features=24, simulated=True)
    X = np.random.default_rng(1).integers(0, 2, (6, 24))
    opu.fit1d(X.astype(np.float64))                        # 0/1 in any dtype
    assert opu.transform(X.astype(bool)).shape == (6, 40)
    assert opu.transform(X[0]).shape == (40,)              # one vector
    assert opu.transform(X[:1]).shape == (1, 40)
    assert opu.transform(X.reshape(2, 3, 24)).shape == (2, 3, 40)   # a 2-D batch
    with pytest.raises(ValueError, match="should be binary"):
        opu.transform(X * 0.5)
    packed = np.packbits(X, axis=-1)                       # bit-packed, 8 features a byte
    opu.fit1d(packed, packed=True)
    assert opu.transform(packed).shape == (6, 40)
    opu.fit1d(n_features=24, online=True)
    assert opu.transform(X[0]).shape == (40,)
    with pytest.raises(TypeError, match="unsupported transform settings"):
        opu.fit1d(X, foo=1)
    with pytest.raises(RuntimeError, match="deprecated"):
        opu.transform1d(X)


def test_setters_resize_and_refit():
    opu = OPU(n_components=30, max_n_features=20, simulated=True)
    X = np.random.default_rng(2).integers(0, 2, (5, 20))
    opu.fit1d(X)
    opu.n_components = 70
    assert opu.transform(X).shape == (5, 70) and opu.device.n_components == 70
    opu.max_n_features = 50
    assert opu.device.max_n_features == 50 and opu.transform(X).shape == (5, 70)
    with pytest.raises(ValueError, match="n_components"):
        opu.n_components = 0
    opu.close()


def test_context_manager_keeps_an_opu_open_that_was_open():
    opu = OPU(n_components=10, max_n_features=10, simulated=True)
    with opu:
        pass
    assert opu.device.connected                           # open before: left open
    opu.close()
    with opu:
        assert opu.device.connected
    assert not opu.device.connected                       # closed before: closed again


def test_linear_transform_is_linear_and_rescaled():
    opu = OPU(n_components=200, max_n_features=64, simulated=True, rescale="none")
    rng = np.random.default_rng(3)
    a, b = rng.integers(0, 2, (2, 64)), rng.integers(0, 2, (2, 64))
    opu.fit1d(n_features=64)
    both = np.minimum(a + b, 1)
    overlap = a & b
    np.testing.assert_allclose(opu.linear_transform(both) + opu.linear_transform(overlap),
                               opu.linear_transform(a) + opu.linear_transform(b), atol=1e-4)
    raw = opu.linear_transform(a)
    opu.rescale = OutputRescaling.variance
    np.testing.assert_allclose(opu.linear_transform(a), raw / 8, rtol=1e-5)   # / sqrt(64)
    assert isinstance(opu.linear_transform(torch.from_numpy(a)), torch.Tensor)


# -- encoders, by lightonml's docstrings ----------------------------------------------------------
def test_binary_threshold_encoder_auto_threshold_is_the_median():
    X = np.array([[0.0, 10.0], [1.0, 20.0], [2.0, 30.0]])
    enc = BinaryThresholdEncoder()                         # threshold_enc "auto"
    with pytest.raises(RuntimeError, match="fit"):
        enc.transform(X)
    assert enc.fit_transform(X).tolist() == [[0, 0], [0, 0], [1, 1]]
    assert BinaryThresholdEncoder(1.5, greater_is_one=False).transform(X[:, :1]).tolist() == [[1], [1], [0]]
    out = BinaryThresholdEncoder(0.5).transform(torch.tensor([[0.2, 0.7]]))
    assert isinstance(out, torch.Tensor) and out.tolist() == [[0, 1]]


def test_separated_bit_planes_quantise_against_the_data_maximum():
    X = np.array([[1.0, -0.5], [0.25, 0.0]])
    enc = SeparatedBitPlanEncoder(precision=4)
    planes = enc.transform(X)
    assert planes.shape == (2 * 2 * 4, 2)                  # positive and negative planes
    params = enc.get_params()
    assert params["precision"] == 4 and params["magnitude_p"] > 0 and params["magnitude_n"] > 0
    decoded = SeparatedBitPlanDecoder(**params).transform(planes.astype(np.float32))
    np.testing.assert_allclose(decoded, X, atol=1 / 15)   # the planes themselves round-trip
    with pytest.raises(RuntimeError, match="precision"):
        SeparatedBitPlanEncoder(n_bits=4)


def test_other_encoders_as_documented():
    x8 = np.array([[5, 3]], dtype=np.uint8)
    bits = ConcatenatedBitPlanEncoder(n_bits=8).transform(x8)
    assert bits.tolist() == [[0, 0, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 1, 1]]
    with pytest.raises(ValueError, match="bit width"):
        ConcatenatedBitPlanEncoder(n_bits=8, starting_bit=1).transform(x8)
    dec = ConcatenatingBitPlanDecoder(n_bits=2).transform(np.ones((4, 3)))
    assert dec.shape == (2, 6) and dec[0].tolist() == [1, 1, 1, 0.5, 0.5, 0.5]
    f = Float32Encoder().transform(np.array([[1.0]], dtype=np.float32))
    assert f.shape == (32, 1) and f[:, 0].tolist()[:9] == [0, 0, 1, 1, 1, 1, 1, 1, 1]  # 1.0 = 0x3f800000
    thermo = MultiThresholdEncoder(thresholds=[0.5, 1.5]).transform(np.array([[0.0, 1.0, 2.0]]))
    assert thermo.tolist() == [[0, 1, 1, 0, 0, 1]]        # grouped by threshold
    base2 = SequentialBaseTwoEncoder(n_gray_levels=4).fit(np.array([[0.0, 3.0]]))
    assert base2.transform(np.array([[2.0]])).tolist() == [[1, 1, 0]]      # 2 = 10b: two ones, then zero
    X = np.arange(4.0).reshape(2, 2)
    assert NoEncoding().transform(X) is X and NoDecoding().fit_transform(X) is X

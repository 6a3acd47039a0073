"""The end-to-end backprop baseline: trains in silico, deploys through the crossbar units."""

import numpy as np
import pytest
import torch

from engine_helpers import tiny_recipe, twin_bench
from labpnn import backprop, data
from labpnn.errors import ConfigError

NOISE_FREE = {"read_noise_rel": 0.0, "read_noise_abs": 0.0, "prog_noise": 0.0, "d2d": 0.0,
              "levels": 65536, "adc_bits": 24, "prog_tolerance": 1e-4}


def crossbar_bench(tmp_path, **options):
    return twin_bench(tmp_path, {"instruments": {"crossbar": {"driver": "sim-crossbar",
                                                              "options": {"seed": 3, **options}}}})


@pytest.fixture(scope="module")
def trained():
    recipe = tiny_recipe(dataset={"name": "digits", "n_train": 600, "n_test": 200})
    ds = data.load("digits", n_train=600, n_test=200)
    net = backprop.train(recipe, ds, backprop.BackpropSettings(epochs=25, batch_size=64, lr=3e-3, seed=1))
    return recipe, ds, net


def test_architecture_follows_the_recipe_and_the_crossbar_unit():
    recipe = tiny_recipe()
    net = backprop.build_network(recipe, 64, 10)
    assert [tuple(layer[0].weight.shape) for layer in net.layers] == [(16, 64), (8, 16)]
    assert net.readout.weight.shape == (10, 8)
    # each layer loads into the unit's model as it is (same keys, same shapes)
    from labpnn.units.crossbar import CrossbarUnit

    unit = CrossbarUnit("u", object.__new__(_FakeBoard), 64, 16)
    unit.model().load_state_dict(net.layers[0].state_dict())


class _FakeBoard:  # passes CrossbarUnit's isinstance check without a twin
    name, simulated, array_shape, connected, deployment_id = "fake", True, (8, 8), True, 0

    def connect(self): ...
    def close(self): ...
    def __enter__(self): return self
    def __exit__(self, *exc): ...
    def identity(self): return "fake"
    def reset(self): ...
    def safe_state(self): ...
    def self_test(self): ...
    def snapshot(self): return {}
    def program_weights(self, weights): ...
    def read_weights(self): ...
    def matmul(self, x, format="float32"): ...
    def conductance_range(self): ...


def test_training_is_deterministic_and_learns(trained):
    recipe, ds, net = trained
    assert backprop.accuracy(net, ds.x_test, ds.y_test) > 0.85  # 10 classes: chance is 0.1
    again = backprop.train(recipe, ds, backprop.BackpropSettings(epochs=1, batch_size=64, seed=1))
    once_more = backprop.train(recipe, ds, backprop.BackpropSettings(epochs=1, batch_size=64, seed=1))
    for a, b in zip(again.parameters(), once_more.parameters()):
        assert torch.equal(a, b)


def test_deployed_on_a_noise_free_twin_equals_in_silico(tmp_path, trained):
    recipe, ds, net = trained
    bench = crossbar_bench(tmp_path, **NOISE_FREE)
    result = backprop.deploy(net, recipe, bench, ds, train_split=True)
    ideal = backprop.accuracy(net, ds.x_test, ds.y_test)
    assert result.test_accuracy == pytest.approx(ideal, abs=0.01)
    assert result.train_accuracy == pytest.approx(backprop.accuracy(net, ds.x_train, ds.y_train), abs=0.01)
    assert all(e < 1e-3 for e in result.weight_error) and all(e < 1e-3 for e in result.feature_error)
    assert [d["weights"].shape for d in result.deployed] == [(65, 16), (17, 8)]  # the bias row included
    with torch.no_grad():
        expected = net.features(torch.as_tensor(ds.x_test)).numpy()
    np.testing.assert_allclose(result.test_features, expected, rtol=0, atol=1e-3 * np.abs(expected).max())
    assert bench["crossbar"].output is False  # left in the safe state


def test_noise_costs_accuracy_after_deployment(tmp_path, trained):
    recipe, ds, net = trained
    ideal = backprop.accuracy(net, ds.x_test, ds.y_test)
    noisy = backprop.deploy(net, recipe, crossbar_bench(tmp_path, read_noise_rel=1.0, prog_tolerance=0.3), ds)
    assert noisy.weight_error[0] > 0.1 and noisy.feature_error[0] > 0.2
    assert noisy.test_accuracy < ideal - 0.05


def test_scattering_units_are_refused():
    recipe = tiny_recipe(units=[{"kind": "scattering", "instrument": "opu", "out": 8}])
    with pytest.raises(ConfigError, match="crossbar units only"):
        backprop.build_network(recipe, 64, 10)

"""The scheme `backprop`: in silico, then deployed through the engine as trained, with a refitted
readout, or with layer-wise chip-in-the-loop fine-tuning (tiny digits recipe, crossbar twin)."""

import numpy as np
import pytest

from engine_helpers import tiny_recipe, twin_bench
from labpnn import backprop, data, readout
from labpnn.engine import Run, State
from labpnn.errors import ConfigError
from labpnn.events import Step
from labpnn.runlog import RunReader

NOISE_FREE = {"read_noise_rel": 0.0, "read_noise_abs": 0.0, "prog_noise": 0.0, "d2d": 0.0,
              "levels": 65536, "adc_bits": 24, "prog_tolerance": 1e-4}
DATA = {"name": "digits", "n_train": 400, "n_test": 150}
SCHEME = {"name": "backprop", "epochs": 30, "batch_size": 64, "lr": 1e-2}


def bench(tmp_path, **options):
    return twin_bench(tmp_path, {"instruments": {"crossbar": {"driver": "sim-crossbar",
                                                              "options": {"seed": 3, **options}}}})


def run(tmp_path, name, bench_, **scheme):
    recipe = tiny_recipe(dataset=DATA, scheme={**SCHEME, **scheme})
    r = Run(recipe, bench_, tmp_path / f"{name}.h5")
    assert r.execute() is State.DONE
    return recipe, RunReader(tmp_path / f"{name}.h5")


def in_silico(recipe):
    ds = data.load("digits", n_train=DATA["n_train"], n_test=DATA["n_test"])
    settings = backprop.BackpropSettings(epochs=30, batch_size=64, lr=1e-2, seed=recipe.seed)
    return ds, backprop.train(recipe, ds, settings)


def test_as_trained_on_a_noise_free_twin_is_the_in_silico_network(tmp_path):
    recipe, reader = run(tmp_path, "as-trained", bench(tmp_path, **NOISE_FREE))
    ds, net = in_silico(recipe)
    with reader:
        assert reader.test_accuracy == pytest.approx(backprop.accuracy(net, ds.x_test, ds.y_test), abs=0.01)
        assert reader.test_accuracy > 0.6  # 10 classes: chance is 0.1
        for layer, unit in zip(net.layers, reader.units):  # the run file holds the in-silico weights
            np.testing.assert_allclose(unit.trained["0.weight"], layer[0].weight.detach().numpy(), atol=1e-6)
        # only what the trained readout needs is measured: the test split
        assert reader.unit(0).feature_rows("train") == 0 and reader.unit(1).feature_rows("test") == DATA["n_test"]


def test_refit_fits_the_engines_readout_on_the_measured_features(tmp_path):
    recipe, reader = run(tmp_path, "refit", bench(tmp_path), readout="refit")
    ds = data.load("digits", n_train=DATA["n_train"], n_test=DATA["n_test"])
    with reader:
        f_train, f_test = reader.unit(1).features("train"), reader.unit(1).features("test")
        params = readout.fit_readout(f_train, ds.y_train, ds.n_classes, steps=recipe.readout.steps,
                                     weight_decay=recipe.readout.weight_decay)
        assert reader.test_accuracy == pytest.approx(readout.accuracy(params, f_test, ds.y_test))
        assert {a["what"] for a in reader.accuracies} == {"probe", "readout"}


def test_finetuning_retrains_the_layers_above_each_deployed_one_on_its_measurements(tmp_path):
    steps = []
    recipe = tiny_recipe(dataset=DATA, scheme={**SCHEME, "finetune_epochs": 3, "readout": "refit"})
    r = Run(recipe, bench(tmp_path, read_noise_rel=0.5), tmp_path / "ft.h5")
    r.bus.subscribe(lambda e: steps.append(e) if isinstance(e, Step) else None)
    assert r.execute() is State.DONE
    ds, net = in_silico(recipe)
    with RunReader(tmp_path / "ft.h5") as reader:
        w0, w1 = (reader.unit(i).trained["0.weight"] for i in (0, 1))
    np.testing.assert_allclose(w0, net.layers[0][0].weight.detach().numpy(), atol=1e-6)  # deployed as trained
    assert not np.allclose(w1, net.layers[1][0].weight.detach().numpy(), atol=1e-3)   # fine-tuned first
    assert len(steps) == 30 + 3  # in silico, then one fine-tuning below the last layer (the readout: refit)


def test_bad_options_name_the_scheme_field():
    with pytest.raises(ConfigError, match=r"scheme \(scheme 'backprop'\): scheme\.readout"):
        tiny_recipe(scheme={"name": "backprop", "readout": "guess"})
    with pytest.raises(ConfigError, match=r"scheme\.finetune_epochs"):
        tiny_recipe(scheme={"name": "backprop", "finetune_epochs": -1})

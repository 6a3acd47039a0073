"""Generalisation tests: data options (fraction, held-out classes), Run.predict, noise curve, OOD AUROC."""

import numpy as np
import pytest

from engine_helpers import TINY, tiny_recipe, twin_bench, write_yaml
from labpnn import data, generalise
from labpnn.engine import Run
from labpnn.errors import ConfigError, LabpnnError
from labpnn.recipe import load_recipe, parse_recipe
from labpnn.runlog.reader import RunReader

SEVEN = list(range(8))
# one crossbar per unit (nothing reprogrammed between the run and predict), little read noise
TWO_BOARDS = {"instruments": {f"x{i}": {"driver": "sim-crossbar", "options": {"seed": i + 1, "read_noise_rel": 0.01}}
                              for i in range(2)}}


def rows_of(x_small, x_big):
    """Index in x_big of every row of x_small (each must be there)."""
    lookup = {row.tobytes(): i for i, row in enumerate(x_big)}
    return np.array([lookup[row.tobytes()] for row in x_small])


def test_train_fraction_is_stratified_seeded_and_drawn_from_the_training_split():
    full = data.load("digits", n_train=500)
    a, b = (data.load("digits", n_train=500, train_fraction=0.2, seed=s) for s in (0, 0))
    other = data.load("digits", n_train=500, train_fraction=0.2, seed=1)
    assert len(a.y_train) == 100 and a.meta["train_fraction"] == 0.2
    assert np.array_equal(a.x_train, b.x_train)                        # seeded
    assert not np.array_equal(a.x_train, other.x_train)                # ... by the seed
    idx = rows_of(a.x_train, full.x_train)
    assert np.array_equal(full.y_train[idx], a.y_train)               # rows of the training split
    counts, share = np.bincount(a.y_train, minlength=10), 0.2 * np.bincount(full.y_train, minlength=10)
    assert np.all(np.abs(counts - share) < 1)                          # stratified
    assert np.array_equal(a.x_test, full.x_test)                       # the test split untouched


def test_train_classes_keep_held_out_classes_out_of_training_and_in_the_ood_set():
    full = data.load("digits", n_train=400, n_test=200)
    ds = data.load("digits", n_train=400, n_test=200, train_classes=[1, 3, 5])
    assert ds.n_classes == 3 and set(ds.y_train) == set(ds.y_test) == {0, 1, 2}
    # every training row is a training sample of class 1, 3 or 5 (relabelled in order): none leaks
    original = full.y_train[rows_of(ds.x_train, full.x_train)]
    assert np.array_equal(np.array([1, 3, 5])[ds.y_train], original)
    assert len(ds.y_train) == np.isin(full.y_train, [1, 3, 5]).sum()
    # the test split is partitioned: in-distribution test set + OOD set of the other classes
    assert len(ds.y_test) + len(ds.y_ood) == len(full.y_test)
    assert not np.isin(ds.y_ood, [1, 3, 5]).any() and ds.meta["ood_classes"] == [0, 2, 4, 6, 7, 8, 9]
    assert np.array_equal(full.y_test[rows_of(ds.x_ood, full.x_test)], ds.y_ood)


@pytest.fixture(scope="module")
def held_out_run(tmp_path_factory):
    """A tiny run trained on digits 0-7, each unit on its own crossbar twin."""
    tmp = tmp_path_factory.mktemp("gen")
    recipe = tiny_recipe(units=[{"kind": "crossbar", "instrument": "x0", "out": 16},
                                {"kind": "crossbar", "instrument": "x1", "out": 8}])
    run = Run(generalise.variant(recipe, train_classes=SEVEN), twin_bench(tmp, TWO_BOARDS), tmp / "run.h5")
    run.execute()
    return run


def test_a_run_on_held_out_classes_trains_on_them_only(held_out_run):
    ds = held_out_run.dataset
    assert set(ds.y_train) <= set(SEVEN) and set(ds.y_ood) == {8, 9}
    with RunReader(held_out_run.path) as reader:
        assert reader.unit(0).features("train").shape[0] == len(ds.y_train)   # what the hardware saw
        assert reader.readout_params["weight"].shape[0] == 8


def test_noise_zero_reproduces_the_runs_test_accuracy_and_ood_is_scored(held_out_run):
    records = generalise.evaluate(held_out_run, levels=(0.0, 20.0), seed=0, save=True)
    by = {(r["test"], r["setting"]): r for r in records}
    with RunReader(held_out_run.path) as reader:
        recorded = 100 * reader.test_accuracy
    n = len(held_out_run.dataset.y_test)
    assert abs(by["noise", 0.0]["value"] - recorded) <= 100 * 2 / n     # read noise: a sample or two
    assert by["data", 100.0]["value"] == pytest.approx(recorded)
    assert 0 <= by["ood", "held out 8,9"]["value"] <= 1 and by["ood", "held out 8,9"]["unit"] == "AUROC"
    assert all(set(r) == {"test", "setting", "value", "unit"} for r in records)
    with RunReader(held_out_run.path) as reader:                           # in the run file too
        saved = reader.summary()["analyses"]
    assert [{k: a[k] for k in ("test", "setting", "value", "unit")} for a in saved] == records
    p = held_out_run.predict(held_out_run.dataset.x_test[:5])
    assert p.shape == (5, 8) and np.allclose(p.sum(1), 1)


def test_noise_curve_adds_noise_relative_to_the_input_rms():
    x = np.random.default_rng(0).normal(3.0, 1.0, (2000, 4)).astype(np.float32)
    copies = generalise.noisy_copies(x, (0.0, 10.0), seed=0).reshape(2, *x.shape)
    assert np.array_equal(copies[0], x)
    assert np.std(copies[1] - x) == pytest.approx(0.1 * np.sqrt(np.mean(x ** 2)), rel=0.05)
    # a predictor reading the sign of feature 0 - 3: accuracy falls as noise grows
    y = (x[:, 0] > 3).astype(int)
    curve = generalise.noise_curve(lambda z: np.eye(2)[(z[:, 0] > 3).astype(int)], x, y, (0.0, 50.0))
    assert curve[0]["value"] == 100.0 and curve[1]["value"] < 80


def test_auroc_is_half_for_a_scorer_that_cannot_tell_and_higher_for_an_easy_case():
    rng = np.random.default_rng(0)
    assert generalise.auroc(np.full(50, 0.7), np.full(30, 0.7)) == 0.5
    assert generalise.auroc(rng.uniform(size=4000), rng.uniform(size=4000)) == pytest.approx(0.5, abs=0.03)
    assert generalise.auroc(rng.uniform(0.5, 1, 100), rng.uniform(0, 0.6, 100)) > 0.9
    # from softmax outputs: confident on in-distribution inputs (> 0), unsure on the others
    predict = lambda z: np.where(z[:, :1] > 0, [[0.9, 0.1]], [[0.55, 0.45]])  # noqa: E731
    record = generalise.ood_auroc(predict, np.ones((10, 3)), -np.ones((5, 3)), [9, 8])
    assert record == {"test": "ood", "setting": "held out 8,9", "value": 1.0, "unit": "AUROC"}


@pytest.mark.parametrize("dataset, message", [
    ({"train_fraction": 0}, r"dataset.train_fraction: Input should be greater than 0"),
    ({"train_fraction": 1.5}, r"dataset.train_fraction: Input should be less than or equal to 1"),
    ({"train_classes": [3]}, r"dataset: Value error, train_classes: give at least 2 distinct class labels"),
    ({"train_classes": [1, 1, 2]}, r"train_classes: give at least 2 distinct"),
    ({"train_classes": [-1, 2]}, r"train_classes: give at least 2 distinct class labels >= 0"),
])
def test_bad_data_options_rejected_naming_the_key(dataset, message):
    with pytest.raises(ConfigError, match=message):
        parse_recipe({**TINY, "dataset": {**TINY["dataset"], **dataset}})


@pytest.mark.parametrize("dataset, message", [
    ({"train_classes": [0, 12]}, r"dataset: train_classes: class\(es\) \[12\] are not in digits"),
    ({"n_train": 40, "train_fraction": 0.1}, r"dataset: train_fraction: 0.1 of the 40 training samples \(4\) "
                                              r"leaves a class without samples"),
])
def test_data_options_checked_against_the_data_before_the_run_file(tmp_path, dataset, message):
    recipe_file = write_yaml(tmp_path / "bad.yaml", {**TINY, "dataset": {**TINY["dataset"], **dataset}})
    with pytest.raises(ConfigError, match=message):
        Run(load_recipe(recipe_file), twin_bench(tmp_path), tmp_path / "run.h5").execute()
    assert not (tmp_path / "run.h5").exists()


def test_predict_and_noise_levels_refuse_what_they_cannot_do(tmp_path, held_out_run):
    with pytest.raises(LabpnnError, match=r"predict\(\) needs a run executed to its end"):
        Run(tiny_recipe(), twin_bench(tmp_path), tmp_path / "r.h5").predict(np.zeros((2, 64)))
    with pytest.raises(ValueError, match=r"inputs must be \(n, 64\), got \(2, 5\)"):
        held_out_run.predict(np.zeros((2, 5)))
    with pytest.raises(ValueError, match=r"noise levels: give one or more finite levels >= 0"):
        generalise.noise_curve(held_out_run.predict, np.zeros((2, 64)), np.zeros(2), (-1.0,))

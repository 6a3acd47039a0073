"""Recipes: packaged ones load; bad ones give one clear message naming the key."""

import pytest

from engine_helpers import TINY, write_yaml
from labpnn.errors import ConfigError
from labpnn.recipe import load_recipe, packaged, parse_recipe


def test_packaged_recipes_all_validate():
    names = packaged()
    assert {"mnist1d-memristor", "mnist-memristor", "opu-mnist", "adc-fault"} <= set(names)
    for name in names:
        assert load_recipe(name).name == name


def test_recipe_by_path(tmp_path):
    assert load_recipe(write_yaml(tmp_path / "r.yaml", TINY)).units[1].out == 8


@pytest.mark.parametrize("change, message", [
    ({"units": []}, r"units: List should have at least 1 item"),
    ({"dataset": {"name": "cifar"}}, r"dataset.name: Input should be 'mnist1d'"),
    ({"pib": {"alpha": -1}}, r"pib.alpha: Input should be greater than 0"),
    ({"units": [{"kind": "crossbar", "instrument": "x", "out": 4, "pib": {"steps": 0}}]}, r"units.0.pib"),
    ({"measure": {"repeat": 3}}, r"measure.repeat: unknown key"),
])
def test_bad_recipes(change, message):
    with pytest.raises(ConfigError, match=message):
        parse_recipe({**TINY, **change})


def test_unknown_recipe_name_lists_packaged_ones():
    with pytest.raises(ConfigError, match="packaged recipes are: .*mnist1d-memristor"):
        load_recipe("no-such-recipe")


def test_unit_overrides_merge_with_recipe_pib():
    recipe = parse_recipe({**TINY, "units": [{"kind": "crossbar", "instrument": "x", "out": 4, "pib": {"beta": 0.5}}]})
    assert recipe.unit_pib(0).beta == 0.5 and recipe.unit_pib(0).steps == TINY["pib"]["steps"]


@pytest.mark.parametrize("change, message", [
    ({"dataset": {"name": "digits", "seed": -1}}, r"dataset.seed: Input should be greater than or equal to 0"),
    ({"seed": -3}, r"seed: Input should be greater than or equal to 0"),
    ({"units": [{"kind": "scattering", "instrument": "opu", "out": 4, "bits": 4}]},
     r"units.0: Value error, bits: 4 bits need encoding: bitplane"),
    ({"faults": {"inject": [{"at": 5, "instrument": "crossbar", "kind": "broken_adc"}]}},
     r"faults.inject.0.at: there is no unit 5 \(the recipe has units 0..1, or 'verify'\)"),
])
def test_recipes_that_would_be_silently_wrong(change, message):
    with pytest.raises(ConfigError, match=message):
        parse_recipe({**TINY, **change})


@pytest.mark.parametrize("raw, message", [
    (b"name: tiny\ndescription: caf\xe9\n", r"line 2, column 17: not UTF-8 text"),
    (b"name: tiny\n\x00\n", r"line 2, column 1: not valid YAML: character U\+0000"),
    (b"name: a\nname: b\n", r"line 2, column 1: not valid YAML: duplicate key 'name' \(first given on line 1\)"),
    (b"\n\n", r"the file is empty"),
])
def test_hostile_recipe_files_name_file_line_and_problem(tmp_path, raw, message):
    path = tmp_path / "r.yaml"
    path.write_bytes(raw)
    with pytest.raises(ConfigError, match=message) as info:
        load_recipe(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("change, message", [
    ({"dataset": {"name": "digits", "n_train": 5000}},
     r"dataset: n_train: 5,000 requested, but the digits train split has 1,437 samples"),
    ({"faults": {"inject": [{"at": 1, "instrument": "crossbar", "kind": "melted_wire"}]}},
     r"faults.inject.0: unknown fault 'melted_wire'; kinds: stuck_cells, broken_adc"),
    ({"faults": {"inject": [{"at": 1, "instrument": "crossbar", "kind": "broken_adc",
                             "params": {"columns": [3, 999]}}]}},
     r"faults.inject.0: broken_adc: columns \[999\] outside the array's 0..\d+"),
    ({"faults": {"inject": [{"at": 1, "instrument": "crossbar", "kind": "broken_adc",
                             "params": {"colums": [3]}}]}},
     r"faults.inject.0: broken_adc: missing a required argument: 'columns' \(it takes columns, "),
])
def test_recipe_checked_against_data_and_twins_before_the_run_file(tmp_path, change, message):
    from engine_helpers import twin_bench
    from labpnn.engine import Run

    recipe_file = write_yaml(tmp_path / "bad.yaml", {**TINY, **change})
    out = tmp_path / "run.h5"
    bench = twin_bench(tmp_path)
    try:
        with pytest.raises(ConfigError, match=message) as info:
            Run(load_recipe(recipe_file), bench, out).execute()
    finally:
        bench.close()
    assert str(recipe_file) in str(info.value)
    assert not out.exists()                      # no failed run file left behind

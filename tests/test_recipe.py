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

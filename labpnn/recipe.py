"""Recipes: what to train, on which instruments, and how (YAML, validated).

Packaged recipes live in labpnn/recipes/ and are selected by name (`mnist1d-memristor`);
any other recipe by path.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from labpnn.augment import VIEW_TARGETS, Pipeline, parse_pipeline
from labpnn.config_errors import read_yaml, validate
from labpnn.errors import ConfigError
from labpnn.objectives import DEFAULT as DEFAULT_OBJECTIVE
from labpnn.objectives import OBJECTIVES
from labpnn.pib import PIBSettings
from labpnn.rl.env import EnvSpec
from labpnn.schemes import DEFAULT as DEFAULT_SCHEME
from labpnn.schemes import SCHEMES


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetSpec(Strict):
    name: Literal["mnist1d", "digits", "mnist", "fashion-mnist"]
    n_train: int | None = Field(None, ge=10)
    n_test: int | None = Field(None, ge=10)
    path: str | None = None
    seed: int = Field(0, ge=0, description="seed of the stratified subsamples")
    train_fraction: float = Field(1.0, gt=0, le=1, description="stratified share of the training split "
                                  "trained on (data efficiency; seeded with seed)")
    train_classes: list[int] | None = Field(None, description="the classes trained on; the test samples of "
                                            "the others are the out-of-distribution set (labpnn.generalise)")
    validation: float = Field(0.0, ge=0, lt=1, description="share of the training split held out and used as "
                              "the test split (tuning, labpnn compare)")

    @model_validator(mode="after")
    def _classes_distinct(self):
        classes = self.train_classes
        if classes is not None and (len(set(classes)) != len(classes) or len(classes) < 2 or min(classes) < 0):
            raise ValueError(f"train_classes: give at least 2 distinct class labels >= 0, got {classes}")
        return self

    def load_options(self) -> dict:
        """The keyword arguments of labpnn.data.load for this spec (besides the name)."""
        return {"n_train": self.n_train, "n_test": self.n_test, "seed": self.seed, "path": self.path,
                "train_classes": self.train_classes, "train_fraction": self.train_fraction,
                "validation": self.validation}


class UnitSpec(Strict):
    kind: Literal["crossbar", "scattering"]
    instrument: str | list[str] = Field(description="bench name(s): one crossbar; an OPU; or [slm, camera]")
    out: int = Field(ge=1, description="output features of the unit")
    activation: Literal["relu", "tanh", "sigmoid", "clip", "none"] = "relu"
    bias: bool = True
    encoding: Literal["threshold", "bitplane", "thermometer"] = "threshold"
    bits: int = Field(1, ge=1, le=8)
    threshold: float = 0.5
    optical_features: int | None = Field(None, ge=1, description="camera pixels used (SLM + camera)")
    clip: float | None = Field(None, gt=0, description="crossbar: deploy weights clipped to +-clip x their RMS")
    pib: dict = Field(default_factory=dict, description="per-unit overrides of the recipe's pib")
    objective: str | dict | None = Field(None, description="this unit's objective, if not the recipe's")

    @model_validator(mode="after")
    def _bits_need_bitplanes(self):
        if self.bits != 1 and self.encoding == "threshold":
            raise ValueError(f"bits: {self.bits} bits need encoding: bitplane or thermometer (encoding "
                             f"{self.encoding!r} sends 1 bit per feature)")
        return self

    @property
    def instruments(self) -> list[str]:
        return [self.instrument] if isinstance(self.instrument, str) else list(self.instrument)


class ReadoutSpec(Strict):
    steps: int = Field(200, ge=1)
    weight_decay: float = Field(1e-4, ge=0)


class MeasureSpec(Strict):
    repeats: int = Field(1, ge=1, description="measurements averaged per input")
    batch_size: int = Field(500, ge=1, description="inputs per instrument call")
    format: Literal["float32", "codes"] = Field(
        "float32", description="crossbar: inputs and outputs as float32 voltages and currents, or as the "
                               "board's int8 DAC / int16 ADC codes (a third of the bytes, 8-bit inputs)")


class FaultInjection(Strict):
    """A twin's fault switched on at a point of the run (fault recipes and tests)."""
    at: int | Literal["verify"] = Field(description="before unit N is deployed, or before the verification pass")
    instrument: str
    kind: str
    params: dict = Field(default_factory=dict)


class FaultPolicy(Strict):
    retries: int = Field(3, ge=0, description="reconnect attempts after a lost link or a timeout")
    backoff_s: float = Field(0.5, ge=0, description="first wait before reconnecting; doubles each attempt")
    on_persistent: Literal["recover", "pause", "abort"] = Field(
        "recover", description="broken channels: keep going and retrain downstream, ask the operator, or stop")
    mask: bool = Field(False, description="zero broken channels (True) or keep their signals as they are")
    verify: bool = Field(False, description="after training, re-measure the deployed network on the test set, "
                                            "check every channel, and recover from what is found")
    inject: list[FaultInjection] = Field(default_factory=list)


class Recipe(Strict):
    name: str
    description: str = ""
    seed: int = Field(0, ge=0)
    dataset: DatasetSpec | None = None
    env: EnvSpec | None = Field(None, description="a reinforcement-learning environment instead of a dataset")
    units: list[UnitSpec] = Field(min_length=1)
    scheme: str | dict | None = Field(None, description="who trains when and where; None: cascade")
    objective: str | dict | None = Field(None, description="what each unit minimises; None: pib")
    pib: PIBSettings = Field(default_factory=PIBSettings)
    readout: ReadoutSpec = Field(default_factory=ReadoutSpec)
    measure: MeasureSpec = Field(default_factory=MeasureSpec)
    faults: FaultPolicy = Field(default_factory=FaultPolicy)
    augment: list = Field(default_factory=list, description="the transforms that make an unsupervised "
                          "objective's two views, in order (labpnn.augment, docs/unsupervised.md)")
    augment_views: int = Field(2, ge=2, le=64, description="augmented draws of every training input, each "
                               "measured through every unit; each minibatch pairs two of them at random "
                               "(2: one fixed pair of views)")

    _source: str = PrivateAttr("recipe")   # where it came from, for messages: parse_recipe()

    @property
    def source(self) -> str:
        return self._source

    @model_validator(mode="after")
    def _injections_at_units(self):
        for i, fault in enumerate(self.faults.inject):
            if fault.at != "verify" and not 0 <= fault.at < len(self.units):
                raise ValueError(f"faults.inject.{i}.at: there is no unit {fault.at} (the recipe "
                                 f"has units 0..{len(self.units) - 1}, or 'verify')")
        return self

    @model_validator(mode="after")
    def _dataset_or_env(self):
        if (self.dataset is None) == (self.env is None):
            raise ValueError("give either 'dataset' (supervised) or 'env' (reinforcement learning), not "
                             + ("both" if self.env else "neither"))
        return self

    @model_validator(mode="after")
    def _plug_ins_and_overrides(self):
        try:
            SCHEMES.parse(self.scheme_spec(), "scheme")
            for i in range(len(self.units)):
                pib = self.unit_pib(i)
                name, options = OBJECTIVES.parse(self.objective_spec(i), self.objective_field(i))
                for v in ("x", "z"):
                    if pib.width(v).rule == "class" and "y" not in getattr(options, "needs", {"y"}):
                        key = f"width_{v}"
                        raise ConfigError(f"{f'units.{i}.pib' if key in self.units[i].pib else 'pib'}.{key}: "
                                          f"'class' reads the labels, which objective {name!r} never sees; "
                                          "use median or knn")
                if getattr(options, "needs", frozenset()) & VIEW_TARGETS and not self.augment:
                    raise ConfigError(f"augment: objective {name!r} ({self.objective_field(i)}) compares two "
                                      "augmented views of every input; list the augmentations that make them, "
                                      "e.g. augment: [{name: shift, pixels: 2}] (docs/unsupervised.md)")
            if self.dataset is not None:
                self.augmentations()
            elif self.augment:
                raise ConfigError("augment: augmentations apply to a dataset's inputs; an env: recipe takes none")
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return self

    def scheme_spec(self) -> str | dict:
        return self.scheme if self.scheme is not None else DEFAULT_SCHEME

    def objective_field(self, index: int) -> str:
        """Where unit `index`'s objective is set in the recipe (for error messages)."""
        return f"units.{index}.objective" if self.units[index].objective is not None else "objective"

    def objective_spec(self, index: int) -> str | dict:
        """Unit `index`'s objective: its own, else the recipe's, else pib."""
        for spec in (self.units[index].objective, self.objective):
            if spec is not None:
                return spec
        return DEFAULT_OBJECTIVE

    def augmentations(self) -> Pipeline:
        """The `augment:` list as a seeded pipeline for this recipe's dataset."""
        return parse_pipeline(self.augment, self.dataset.name)

    def unit_pib(self, index: int) -> PIBSettings:
        """The recipe's PIB settings with unit `index`'s overrides applied."""
        merged = {**self.pib.model_dump(), **self.units[index].pib}
        return validate(PIBSettings, merged, f"units.{index}.pib")

    def instruments(self) -> list[str]:
        names = [n for u in self.units for n in u.instruments]
        names += [f.instrument for f in self.faults.inject]
        return list(dict.fromkeys(names))


def packaged() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("labpnn.recipes").iterdir() if p.name.endswith(".yaml"))


def load_recipe(name_or_path: str | Path) -> Recipe:
    """A packaged recipe by name, or a recipe file by path."""
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        if str(name_or_path) not in packaged():
            raise ConfigError(f"no recipe {str(name_or_path)!r}: not a file, and the packaged "
                              f"recipes are: {', '.join(packaged())}")
        path = Path(str(resources.files("labpnn.recipes") / f"{name_or_path}.yaml"))
    return parse_recipe(read_yaml(path, "recipe"), f"recipe {path}")


def parse_recipe(data: dict, where: str = "recipe") -> Recipe:
    recipe = validate(Recipe, data, where)
    recipe._source = where
    return recipe

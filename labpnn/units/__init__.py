"""Units: the trainable blocks of a deep PNN, built from a recipe on a bench."""

from __future__ import annotations

from labpnn.bench import Bench
from labpnn.errors import ConfigError
from labpnn.protocols import CrossbarArray, Projector, Unit


def build_units(recipe, bench: Bench, in_features: int) -> list[Unit]:
    """One unit per recipe entry, each fed by the previous one's outputs."""
    units = []
    for index, spec in enumerate(recipe.units):
        unit = build_unit(index, spec, bench, in_features, recipe.seed, recipe.measure.format)
        units.append(unit)
        in_features = unit.out_features
    return units


def build_unit(index: int, spec, bench: Bench, in_features: int, seed: int,
               measure_format: str = "float32") -> Unit:
    remote = getattr(bench, "build_unit", None)  # a cluster's bench builds each unit at its site
    if remote is not None:
        return remote(index, spec, in_features, seed, measure_format)
    who = f"recipe unit {index} ({spec.kind})"
    name = f"unit{index}"
    if spec.kind == "crossbar":
        from labpnn.units.crossbar import CrossbarUnit

        if len(spec.instruments) != 1:
            raise ConfigError(f"{who}: names {spec.instruments}; a crossbar unit uses one instrument")
        device = bench.require(spec.instruments[0], CrossbarArray, who)
        return CrossbarUnit(name, device, in_features, spec.out, activation=spec.activation, bias=spec.bias,
                            seed=seed + index, clip=spec.clip, measure_format=measure_format)
    from labpnn.units.scattering import ScatteringUnit, SLMCameraProjector, binary_width, inputs_taken

    if len(spec.instruments) == 1:
        projector = bench.require(spec.instruments[0], Projector, who)
    elif len(spec.instruments) == 2:
        slm, camera = (bench[n] for n in spec.instruments)
        if spec.optical_features is None:
            raise ConfigError(f"{who}: an SLM + camera unit needs 'optical_features' (camera pixels used)")
        projector = SLMCameraProjector(slm, camera, n_inputs=binary_width(in_features, spec.encoding, spec.bits),
                                       n_outputs=spec.optical_features,
                                       seed=seed + index)
    else:
        raise ConfigError(f"{who}: 'instrument' must name an OPU, or [slm, camera]; got {spec.instruments}")
    limit = inputs_taken(projector)
    width = binary_width(in_features, spec.encoding, spec.bits)
    if limit < width:
        raise ConfigError(f"{who}: its input has {in_features} features ({width} binary inputs in its "
                          f"{spec.encoding} code), but {spec.instruments[0]!r} takes at most {limit}")
    return ScatteringUnit(name, projector, in_features, spec.out, activation=spec.activation,
                          encoding=spec.encoding, bits=spec.bits, threshold=spec.threshold, seed=seed + index)

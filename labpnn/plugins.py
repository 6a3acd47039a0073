"""Registries of the engine's plug-ins (objectives, schemes): a name, a pydantic model of its
recipe options, and a factory. A recipe names one as a string (`pib`) or as a mapping with
`name` and options (`{name: pib, beta: 0.02}`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from labpnn.config_errors import validate
from labpnn.errors import ConfigError


class Registry:
    """Plug-ins of one sort (`what`: "objective", "scheme"), by name."""

    def __init__(self, what: str):
        self.what = what
        self._entries: dict[str, tuple[type[BaseModel], Callable[..., Any]]] = {}

    def register(self, name: str, options: type[BaseModel], factory: Callable[..., Any]) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.what} needs a non-empty name, got {name!r}")
        if name in self._entries and self._entries[name] != (options, factory):
            raise ValueError(f"{self.what} {name!r} is registered already")
        self._entries[name] = (options, factory)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def parse(self, spec: str | dict, where: str) -> tuple[str, BaseModel]:
        """(name, validated options) of a recipe's `spec`; a ConfigError names `where` and the key."""
        if isinstance(spec, str):
            name, options = spec, {}
        elif isinstance(spec, dict) and isinstance(spec.get("name"), str):
            name, options = spec["name"], {k: v for k, v in spec.items() if k != "name"}
        else:
            raise ConfigError(f"{where}: expected a {self.what} name, or a mapping with 'name' and its "
                              f"options; got {spec!r}")
        if name not in self._entries:
            raise ConfigError(f"{where}: no {self.what} {name!r}; the {self.what}s are: {', '.join(self.names())}")
        return name, validate(self._entries[name][0], options, f"{where} ({self.what} {name!r})", where)

    def build(self, spec: str | dict, where: str, *args: Any) -> Any:
        """The plug-in `spec` names, made by its factory(options, *args)."""
        name, options = self.parse(spec, where)
        return self._entries[name][1](options, *args)

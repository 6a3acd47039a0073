"""Turn YAML and pydantic failures into one clear message naming the file, the place and the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from labpnn.errors import ConfigError


def read_yaml(path: Path, what: str) -> dict[str, Any]:
    """Parse a YAML file holding a mapping; a missing file, a syntax error or a non-mapping is a ConfigError."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot read it ({exc.strerror or exc})") from None
    return parse_yaml(text, f"{what} {path}")


def parse_yaml(text: str, where: str) -> dict[str, Any]:
    """Parse YAML text holding a mapping; errors name `where`, the line and the column."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}:{at}: not valid YAML: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of keys at the top, got {type(data).__name__}")
    return data


def describe(exc: ValidationError, prefix: str = "") -> str:
    """One line per problem: `key.path: message`."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "")
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{loc or '(top)'}: {msg}")
    return "; ".join(lines)


def validate(model: type[BaseModel], data: dict[str, Any], where: str, prefix: str = "") -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{where}: {describe(exc, prefix)}") from None

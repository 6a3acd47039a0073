"""Turn YAML and pydantic failures into one clear message naming the file, the place and the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from labpnn.errors import ConfigError


def read_yaml(path: Path, what: str) -> dict[str, Any]:
    """Parse a YAML file holding a mapping; a missing or unreadable file, text that is not
    UTF-8, a syntax error, a duplicate key, an empty file or a non-mapping is a ConfigError."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot read it ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(f"{what} {path}: line {line}, column {column}: not UTF-8 text (byte "
                          f"0x{raw[exc.start]:02x}); save the file as UTF-8") from None
    return parse_yaml(text, f"{what} {path}")


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader refusing a key given twice in one mapping (the last would win)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, (list, dict)) and key in seen:
                first = seen[key].start_mark.line + 1
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first given on line {first})",
                    key_node.start_mark)
            if not isinstance(key, (list, dict)):
                seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, where: str) -> dict[str, Any]:
    """Parse YAML text holding a mapping; errors name `where`, the line and the column."""
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow (NUL, ...)
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        char = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise ConfigError(f"{where}: line {line}, column {column}: not valid YAML: character "
                          f"U+{char:04X} is not allowed in YAML") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}:{at}: not valid YAML: {problem}") from None
    if data is None:
        raise ConfigError(f"{where}: the file is empty (nothing but blanks or comments); "
                          "expected a mapping of keys at the top")
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

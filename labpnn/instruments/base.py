"""The instrument base: name, resource, validated options, one lock, `with` = connect/close."""

from __future__ import annotations

import threading
from typing import Any, ClassVar

from pydantic import BaseModel


class Connectable:
    """`with device:` connects it and closes it again."""

    def connect(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Instrument(Connectable):
    """What every driver and twin has. Subclasses set `Options` (a pydantic model) and
    `simulated`, implement connect()/close() and, when a resource must have a form,
    check_resource(). Construction validates and never touches hardware."""

    Options: ClassVar[type[BaseModel]]
    simulated: bool = False

    def __init__(self, name: str, resource: str | None = None, **options: Any):
        self.check_resource(resource)
        self.name = name
        self.resource = resource
        self.options = self.Options(**options)
        self._lock = threading.RLock()  # one owner at a time: every public method holds it

    @classmethod
    def check_resource(cls, resource: str | None) -> None:
        """Refuse (ValueError) a resource string this instrument cannot use."""

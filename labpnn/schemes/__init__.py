"""Schemes: who trains when and where (labpnn.protocols.Scheme), by name.

    register_scheme(name, Options, factory)    factory(options) -> Scheme

A recipe's `scheme:` names one; omitted, it is `cascade`, the supervised layer-by-layer
deploy-measure-retrain cycle. A scheme sees the run only through labpnn.run_context.RunContext;
docs/engine.md shows how to write one.
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel

from labpnn.plugins import Registry
from labpnn.protocols import Scheme

SCHEMES = Registry("scheme")
DEFAULT = "cascade"


def register_scheme(name: str, options: type[BaseModel], factory: Callable[[BaseModel], Scheme]) -> None:
    SCHEMES.register(name, options, factory)


from labpnn.schemes import cascade as _cascade  # noqa: E402,F401  (registers "cascade")
from labpnn.schemes import online as _online  # noqa: E402,F401  (registers "online")
from labpnn.schemes import parallel as _parallel  # noqa: E402,F401  (registers "parallel")
from labpnn.schemes import pat as _pat  # noqa: E402,F401  (registers "pat")
from labpnn.schemes import dfa as _dfa  # noqa: E402,F401  (registers "dfa")
from labpnn.schemes import phyll as _phyll  # noqa: E402,F401  (registers "phyll")
from labpnn.schemes import backprop as _backprop  # noqa: E402,F401  (registers "backprop")

"""lightonml's verbose level (0 nothing, 1 info, 2 debug, 3 trace): kept, for scripts that set it."""

_level = 0


def set_verbose_level(verbose_level: int) -> None:
    global _level
    _level = int(verbose_level)


def get_verbose_level() -> int:
    return _level

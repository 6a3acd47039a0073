"""lightonml.types: how linear_transform rescales its output."""

from enum import Enum


class OutputRescaling(Enum):
    variance = 1  # by the standard deviation a Gaussian input would give
    norm = 2      # keeps the norm approximately (RIP)
    none = 3

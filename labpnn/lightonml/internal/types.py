"""lightonml.internal.types: how features are laid out on the input device."""

from enum import Enum


class InputRoiStrategy(Enum):
    full = 1   # the features spread over the whole input device
    small = 2  # the features in the smallest region
    auto = 3   # chosen from the data given to fit

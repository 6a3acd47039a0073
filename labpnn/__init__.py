"""labpnn: hardware-in-the-loop training of deep physical neural networks with the
Physical Information Bottleneck (PIB)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("labpnn")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

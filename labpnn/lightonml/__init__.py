"""lightonml 1.4's API on labpnn's OPUs: replace `lightonml` by `labpnn.lightonml` in a script
and it runs on the twin (`OPU(simulated=True)`), on an OPU server ($LABPNN_OPU or
`opu_device=`), or, where lightonml is installed, on the real OPU through lightonml itself.
See docs/lightonml.md."""

from labpnn import __version__ as _labpnn_version
from labpnn.lightonml.verbosity import get_verbose_level, set_verbose_level

__version__ = f"1.4 (API of; labpnn {_labpnn_version})"

from labpnn.lightonml.opu import OPU  # noqa: E402 - after the names opu.py reads

__all__ = ["OPU", "get_verbose_level", "set_verbose_level", "__version__"]

"""The errors labpnn raises on purpose. The CLI prints these as one clear message
(no traceback); anything else is a bug."""


class LabpnnError(Exception):
    """Base of every error meant for the user: the message says what is wrong and where."""


class ConfigError(LabpnnError):
    """A bench file (instruments.yaml) or a recipe that does not validate."""


class DataError(LabpnnError):
    """A dataset that is missing, truncated or malformed."""


class RunLogError(LabpnnError):
    """An HDF5 run file that cannot be read, written or resumed."""


class DeviceError(LabpnnError):
    """An instrument refused, failed or misbehaved. `instrument` names it."""

    def __init__(self, message: str, instrument: str = ""):
        super().__init__(f"{instrument}: {message}" if instrument else message)
        self.instrument = instrument


class TransportError(DeviceError):
    """The link to an instrument failed: timeout, lost serial port or socket. Often transient."""


class ClusterError(LabpnnError):
    """A dask scheduler that cannot be reached, a site (worker) lost or misconfigured."""


class AbortRequested(LabpnnError):
    """Raised inside a run at a checkpoint when an abort was requested."""

"""lightonml.internal.simulated_device: `OPU(..., opu_device=SimulatedOpuDevice())`."""

from labpnn.sim_devices.opu import SimOPUDevice


def SimulatedOpuDevice(frametime_us: float = 0, exposure_us: float = 400, verbose: bool = False,
                       linear: bool = False) -> SimOPUDevice:  # noqa: N802 - lightonml's name
    """The OPU twin; OPU() sizes it to its n_components and max_n_features. (lightonml's
    simulated device takes no time per frame: frametime_us 0 unless given.)"""
    if linear:
        raise ValueError("SimulatedOpuDevice(linear=True): use OPU.linear_transform on the twin")
    return SimOPUDevice(n_components=1, max_n_features=1, frametime_us=frametime_us,
                        exposure_us=exposure_us)

"""What every run file records about where its numbers came from."""

from __future__ import annotations

import getpass
import platform
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from labpnn.protocols import Replaying

PACKAGES = ("labpnn", "numpy", "scipy", "torch", "h5py", "pyvisa", "pyvisa-py", "pydantic", "mnist1d")


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def git_commit(repo: Path = Path(__file__).resolve().parents[1]) -> str:
    """The short commit of the checkout at `repo` (labpnn's own by default), marked when its
    tracked files differ from it; "unknown" outside a git checkout."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True).stdout.strip()
        return rev + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def provenance(recipe, bench, names: list[str], dataset) -> dict[str, Any]:
    """Versions, host, command line, seeds, data source, whether any instrument is simulated,
    and the run file each replay instrument serves (`replay`)."""
    import torch

    simulated = {name: bool(bench[name].simulated) for name in names}
    replay = {name: bench[name].replay_of for name in names if isinstance(bench[name], Replaying)}
    return {
        "versions": versions(),
        "host": platform.node(),
        "user": getpass.getuser(),
        "platform": platform.platform(),
        "command": sys.argv,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "threads": torch.get_num_threads(),  # results round differently on another count
        "bench_file": str(bench.source),
        "seeds": {"recipe": recipe.seed, **({"dataset": recipe.dataset.seed} if recipe.dataset else {})},
        "dataset": dataset.meta,
        "simulated": simulated,
        "data_simulated": any(simulated.values()),
        "replay": replay,
    }

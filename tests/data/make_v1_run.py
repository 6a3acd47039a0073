"""Writes tests/data/v1-aborted.h5: a run file as labpnn wrote it before schemes and objectives
were plug-ins (commit 03f7bac): a tiny two-unit crossbar run on the twin, aborted at PIB step 3 of
unit 1 (resumable). test_legacy_run opens, inspects and resumes it with today's code.

    python tests/data/make_v1_run.py     (from the repository root; overwrites the file)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))

from engine_helpers import tiny_recipe, twin_bench  # noqa: E402
from labpnn.engine import Run  # noqa: E402

RECIPE = {"dataset": {"name": "digits", "n_train": 100, "n_test": 50},
          "units": [{"kind": "crossbar", "instrument": "crossbar", "out": 8},
                    {"kind": "crossbar", "instrument": "crossbar", "out": 4}],
          "pib": {"steps": 6, "batch_size": 32}, "measure": {"batch_size": 50}, "readout": {"steps": 20}}


def main() -> None:
    out = HERE / "v1-aborted.h5"
    out.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        run = Run(tiny_recipe(**RECIPE), twin_bench(Path(tmp)), out)
        run.bus.subscribe(lambda e: run.abort("fixture: stopped at unit 1, step 3")
                          if e.kind == "step" and e.unit == 1 and e.data["step"] == 3 else None)
        print(run.execute().value, out, out.stat().st_size, "bytes")


if __name__ == "__main__":
    main()

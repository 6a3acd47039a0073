"""The HDF5 run log: one file per run, written live (SWMR) and readable after a crash.

`RunLog` is the writer (the engine's threads; one lock serialises its calls), `RunReader` the reader (CLI, GUI,
anything watching a live run). The file layout, the string encodings and what
`RunLog.resume` does are documented in docs/runlog.md; the short version:

* The writer creates every group, dataset and attribute at `create()` from the
  `RunLayout`, then switches SWMR on. Afterwards only resizable datasets grow
  (append-only tables, and per-unit arrays with a leading revision axis). Nothing
  recorded is overwritten, except a revision that is redone after a resume.
* Every writer method flushes before it returns, so a run killed at any moment keeps
  every completed call. The optimiser state of a unit is double-buffered (two slots and
  a pointer written last, after a flush), so a kill mid-write leaves the last state whole.
* Strings are never variable-length (the HDF5 global heap is not SWMR-safe: a live
  reader fails with "actual len exceeds EOA"): table strings are fixed-length bytes,
  long messages truncated with an ellipsis; nested records (faults) are JSON in
  ragged uint8 storage; the recipe/bench/provenance/layout are fixed-length JSON.
* Every chunked dataset carries a Fletcher-32 checksum, so a damaged file fails
  loudly (RunLogError) instead of returning garbage. One exception: SIGKILL can cut a
  chunk write between pages, and the chunk then fails its checksum although the rows it
  already held are intact (same bytes before and after); readers decode such a chunk as
  stored and list it in `RunReader.damaged`, and `RunLog.resume` rewrites it.
* SWMR readers open with 26 metadata read attempts instead of HDF5's 100: with its
  exponential back-off the default turns one damaged block into minutes of sleeping.

The package, one module per concern (each imports only those above it):

* `layout`: format constants, record dtypes, `UnitLayout`/`RunLayout`, required paths, chunking.
* `h5io`: HDF5 helpers: encodings, SWMR reads, tolerant reads, open errors, the format check.
* `repair`: writer liveness and what `RunLog.resume` does to a killed run's file.
* `writer`: `RunLog`, and the creation of a new run file.
* `recorder`: `RunRecorder`, the run log as a subscriber of the engine's events.
* `reader`: `RunReader` and `UnitView`.
* `summary`: `format_summary`, the text of `labpnn inspect`.
"""

from labpnn.runlog.layout import (
    ACCURACY_DTYPE, ACCURACY_KINDS, CHECKPOINT_DTYPE, COMMIT_DTYPE, ELLIPSIS, EVENT_DTYPE,
    FORMAT, FORMAT_VERSION, INFO_DTYPE, MESSAGE_BYTES, PARAM_KINDS, PHASES,
    RAGGED_INDEX_DTYPE, REASON_BYTES, SPLITS, STATE_DTYPE, STATES, WRITER_DTYPE, RunLayout,
    UnitLayout,
)
from labpnn.runlog.reader import RunReader, UnitView
from labpnn.runlog.summary import format_summary
from labpnn.runlog.writer import RunLog

__all__ = [
    "ACCURACY_DTYPE", "ACCURACY_KINDS", "CHECKPOINT_DTYPE", "COMMIT_DTYPE", "ELLIPSIS",
    "EVENT_DTYPE", "FORMAT", "FORMAT_VERSION", "INFO_DTYPE", "MESSAGE_BYTES", "PARAM_KINDS",
    "PHASES", "RAGGED_INDEX_DTYPE", "REASON_BYTES", "SPLITS", "STATE_DTYPE", "STATES",
    "WRITER_DTYPE", "RunLayout", "RunLog", "RunReader", "UnitLayout", "UnitView",
    "format_summary",
]

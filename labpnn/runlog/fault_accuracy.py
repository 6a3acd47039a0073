"""Fault records completed with the accuracies the run measured around them.

A fault found while a unit is measured is recorded at once, before the run knows what it cost:
the record's accuracies are None. The run measures them later, into the accuracies table; the
reader fills each missing one from there and says where it came from (`accuracy_sources`):

- before: the last linear-probe test accuracy of the unit feeding the faulty one, measured
  before the fault (what the faulty unit was given; none for unit 0);
- after the fault: the faulty unit's own probe test accuracy, first measured after the record
  (its outputs with the fault);
- recovered: the final readout's test accuracy, first fitted after the record (the downstream
  units retrained on the faulty unit's measurements).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

KEYS = ("accuracy_before", "accuracy_after_fault", "accuracy_recovered")


def _pick(accuracies: Iterable[Mapping[str, Any]], unit: int | None, what: str, t: float,
          after: bool) -> Mapping[str, Any] | None:
    """The first test row of (unit, what) at or after t, or the last one before t."""
    rows = [a for a in accuracies if a["unit"] == unit and a["what"] == what
            and a["split"] == "test" and a["value"] is not None
            and (a["time"] >= t if after else a["time"] < t)]
    if not rows:
        return None
    return min(rows, key=lambda a: a["time"]) if after else max(rows, key=lambda a: a["time"])


def complete(record: Mapping[str, Any], accuracies: list[Mapping[str, Any]]) -> dict[str, Any]:
    """The record with its missing accuracies filled from the accuracies table, and
    `accuracy_sources` naming the row each filled one comes from."""
    rec = dict(record)
    unit, t = rec.get("unit"), rec.get("time")
    if not isinstance(unit, int) or not isinstance(t, (int, float)):
        return rec  # a record about no unit (an accuracy drop) carries its own accuracies
    found = {"accuracy_before": (_pick(accuracies, unit - 1, "probe", t, False) if unit > 0 else None,
                                 f"probe of unit {unit - 1}"),
             "accuracy_after_fault": (_pick(accuracies, unit, "probe", t, True), f"probe of unit {unit}"),
             "accuracy_recovered": (_pick(accuracies, None, "readout", t, True), "final readout")}
    sources = dict(rec.get("accuracy_sources") or {})
    for key, (row, what) in found.items():
        if rec.get(key) is None and row is not None:
            rec[key] = row["value"]
            sources[key] = f"{what}, revision {row['revision']}, test"
    if sources:
        rec["accuracy_sources"] = sources
    return rec

"""`format_summary`: the human-readable text of `RunReader.summary()` (for
`labpnn inspect`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# --------------------------------------------------------------------------- text summary

def _pct(v: Any) -> str:
    return "n/a" if v is None else f"{100.0 * float(v):.1f} %"


def _bits(v: Any) -> str:
    return "n/a" if v is None else f"{float(v):.3f} bits"


def _duration(seconds: Any) -> str:
    if seconds is None:
        return "n/a"
    s = int(round(float(seconds)))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h} h {m:02d} min {s:02d} s" if h else (f"{m} min {s:02d} s" if m else f"{s} s")


def format_summary(summary: Mapping[str, Any]) -> str:
    """A human-readable multi-line summary of RunReader.summary() (for `labpnn inspect`)."""
    lines = []
    recipe = summary.get("recipe") or {}
    title = recipe.get("name") if isinstance(recipe, Mapping) else None
    lines.append(f"run: {summary.get('file', '?')}" + (f"  (recipe {title})" if title else ""))
    state = summary.get("state", "?")
    reason = summary.get("reason") or ""
    lines.append(f"state: {state}" + (f" ({reason})" if reason else ""))
    lines.append(f"duration: {_duration(summary.get('duration_s'))}"
                 + (f"; resumed {summary['resumes']} time(s)" if summary.get("resumes") else ""))
    prov = summary.get("provenance") or {}
    if isinstance(prov, Mapping) and prov.get("simulated") is not None:
        lines.append("hardware: " + ("simulated (digital twins)" if prov["simulated"]
                                     else "real instruments"))
    accs = summary.get("accuracies") or []
    for u in summary.get("units") or []:
        last = u.get("last")
        head = f"unit {u.get('index', '?')} {u.get('name', '?')!r} ({u.get('kind', '?')}):"
        if last:
            rev = last.get("revision")
            in_rev = sum(1 for row in u.get("info_plane") or [] if row.get("revision") == rev)
            total = u.get("steps", 0)
            loss = last.get("loss")
            head += (f" revision {rev}, {in_rev} steps"
                     + (f" ({total} in all revisions)" if total != in_rev else "")
                     + f"; last step {last.get('step')}: I(X;Z) = {_bits(last.get('I_XZ'))}, "
                     f"I(Y;Z) = {_bits(last.get('I_YZ'))}, loss "
                     + ("n/a" if loss is None else f"{float(loss):.4g}"))
        else:
            head += " not optimised yet"
        lines.append(head)
        if u.get("site"):
            lines.append(f"    site: {u['site']} (host {u.get('host')})")
        probes = [a for a in accs if a.get("unit") == u.get("index")]
        if probes:
            latest: dict[str, Any] = {}
            for a in probes:
                latest[f"{a.get('what')} {a.get('split')}"] = a.get("value")
            lines.append("    accuracy: " + ", ".join(f"{k} {_pct(v)}"
                                                      for k, v in latest.items()))
        phases = [c.get("phase") for c in u.get("checkpoints") or []]
        if phases:
            lines.append(f"    checkpoints: {', '.join(str(p) for p in phases)}")
    final = [a for a in accs if a.get("unit") is None]
    if final:
        latest = {}
        for a in final:
            latest[str(a.get("split"))] = a.get("value")
        lines.append("final readout: " + ", ".join(f"{k} {_pct(v)}" for k, v in latest.items()))
    else:
        lines.append("final readout: none yet")
    for name, site in (summary.get("sites") or {}).items():
        lines.append(f"site {name} ({site.get('host')}, {site.get('address')}): units {site.get('units')}, "
                     f"busy {_duration(site.get('busy_s'))}, {site.get('bytes_sent', 0) / 1e6:.2f} MB sent to it, "
                     f"{site.get('bytes_received', 0) / 1e6:.2f} MB received from it")
    for c in summary.get("costs") or []:
        lines.append(f"costs: {c.get('calls')} instrument calls ({c.get('deployments')} deployments), "
                     f"{c.get('samples')} samples measured, "
                     f"{(c.get('bytes_sent', 0) + c.get('bytes_received', 0)) / 1e6:.2f} MB payload, "
                     f"{_duration(c.get('busy_s'))} in instrument calls, {_duration(c.get('wall_s'))} wall"
                     + (f", peak memory {c['peak_rss_mb']:.0f} MB" if c.get("peak_rss_mb") else ""))
    analyses = summary.get("analyses") or []
    if analyses:
        lines.append(f"analyses: {len(analyses)}")
    for a in analyses:
        unit = f" {a['unit']}" if a.get("unit") and a["unit"] != "%" else str(a.get("unit") or "")
        lines.append(f"  - {a.get('test')} {a.get('setting')}: {a.get('value')}{unit}")
    faults = summary.get("faults") or []
    lines.append(f"faults: {len(faults)}")
    for fr in faults:
        unit = fr.get("unit")
        known = [f"{_pct(fr[key])} {what}" for key, what in (
            ("accuracy_before", "before"), ("accuracy_after_fault", "after the fault"),
            ("accuracy_recovered", "recovered")) if fr.get(key) is not None]
        lines.append(
            f"  - {fr.get('kind')} on unit {unit if unit is not None else '-'}"
            f" channels {fr.get('channels')}: "
            + ("test accuracy " + " -> ".join(known) if known else "test accuracy not measured yet")
            + (f"; {fr.get('message')}" if fr.get("message") else ""))
    events = summary.get("events") or []
    warnings = [e for e in events if e.get("kind") in ("warning", "fault")]
    lines.append(f"events: {len(events)}" + (f", {len(warnings)} warnings/faults"
                                             if warnings else ""))
    for e in warnings[-5:]:
        lines.append(f"  - {e.get('kind')}: {e.get('message')}")
    for d in summary.get("damaged") or []:
        lines.append(f"WARNING: {d}")
    return "\n".join(lines)

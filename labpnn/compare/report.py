"""A comparison's section of docs/results.md (between the markers `<!-- compare-NAME: start -->` and
`<!-- compare-NAME: end -->`, NAME the section's name: the rest of the file kept) and its part of
docs/results.json ({"sections": {NAME: {command, mode, records, tuning, ...}}}: every table's
numbers as records {table, method, dataset, setting, mean, std, seeds, unit}; other sections kept)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from labpnn.compare.methods import METHODS
from labpnn.compare.runner import FULL, Comparison



def markers(section: str) -> tuple[str, str]:
    return f"<!-- compare-{section}: start -->", f"<!-- compare-{section}: end -->"
TITLES = {"mnist1d": "MNIST-1D", "mnist": "MNIST"}
COST_COLUMNS = [("calls", "instrument calls", 1, ""), ("samples", "samples measured", 1, ""),
                ("bytes", "payload", 1e-6, " MB"), ("busy_s", "in instrument calls", 1, " s"),
                ("wall_s", "wall time", 1, " s"), ("peak_rss_mb", "peak memory", 1, " MB"),
                ("memory_mb", "of it the run's", 1, " MB")]


# The paper's MNIST figures (Fig. 2) for the rows that have one.
PAPER_MNIST = {"pib": 96.3, "pib-sim": 96.8, "backprop-in-silico": 96.4, "backprop-deployed-as-trained": 94.0}
MARKED = re.compile(r"<!-- ([\w-]+): start -->.*?<!-- \1: end -->", re.S)


def marked_sections(text: str) -> list[str]:
    """The sections of a report that other commands write between their markers (bench_unsup,
    compare): a command rewriting the rest of the file keeps them."""
    return [m.group(0) for m in MARKED.finditer(text)]


def _find(records: list[dict], table: str, method: str, dataset: str, setting: Any) -> dict | None:
    return next((r for r in records if r["table"] == table and r["method"] == method and r["dataset"] == dataset
                 and r["setting"] == setting), None)


def _cell(r: dict | None, digits: int = 1, scale: float = 1.0, suffix: str = "") -> str:
    if r is None or r["mean"] is None:
        return "n/a"
    if r.get("seeds", 2) < 2:  # one seed: no spread to give
        return f"{scale * r['mean']:,.{digits}f}{suffix}"
    return f"{scale * r['mean']:,.{digits}f} ± {scale * r['std']:,.{digits}f}{suffix}"


def verdict(pib: dict, other: dict) -> tuple[str, float]:
    """("wins" / "ties" / "loses", PIB minus other in points): a tie when the means are within
    twice the standard error of their difference, or less than 0.5 points apart."""
    diff = pib["mean"] - other["mean"]
    se = math.sqrt(pib["std"] ** 2 / max(pib["seeds"], 1) + other["std"] ** 2 / max(other["seeds"], 1))
    if abs(diff) <= max(2 * se, 0.5):
        return "ties", diff
    return ("wins" if diff > 0 else "loses"), diff


def markdown(c: Comparison, command: str, section: str) -> str:
    m, recs = c.mode, c.records
    datasets = [d for d in m.data if any(r["dataset"] == d for r in recs)]
    methods = [n for n in m.methods if n not in c.skipped]
    start, end = markers(section)
    L = [start, f"## Every method on the same bench: {section} ({m.name} mode settings, {len(m.seeds)} seeds)", ""]
    add = L.append
    add(f"Made with `{command}` in {c.wall_s / 60:.1f} min on {c.meta.get('workers')} worker process(es) "
        f"(load average at the end {c.meta.get('load')}: the machine was shared, wall times are inflated; "
        f"the {c.meta.get('jobs')} jobs took {c.meta.get('cpu_s', 0) / 60:.1f} min of CPU in all, so about "
        f"{c.meta.get('cpu_s', 0) / 120:.0f} min on 2 idle cores)"
        + (" (report redrawn from the finished jobs)" if c.meta.get("redrawn") else "")
        + (f"; {c.meta['note']}" if c.meta.get("note") else "") + ". "
        f"Numbers: docs/results.json, section `{section}`. Method definitions and fairness rules: docs/compare.md."
        + (" **Quick mode**: fewer seeds, steps and epochs than the full run (`labpnn compare --full`, "
           f"{len(FULL.seeds)} seeds); compare methods with each other here, not with the paper."
           if m.name == "quick" else ""))
    if c.meta.get("versions"):
        add("")
        add(f"Versions: {', '.join(f'{k} {v}' for k, v in c.meta['versions'].items())}; labpnn commit "
            f"{c.meta.get('commit', 'unknown')} (the jobs'; report code as of this file's commit).")
    add("")
    add(f"Seeds {', '.join(map(str, m.seeds))}; data " + "; ".join(
        f"{TITLES[d]} {m.data[d].get('n_train')}/{m.data[d].get('n_test')}" for d in datasets)
        + f"; PIB steps per unit {_per(m.pib_steps, datasets)}; backprop epochs {_per(m.bp_epochs, datasets)}; "
        f"fine-tuning epochs per layer {_per(m.finetune_epochs, datasets)}; PAT/DFA/PhyLL epochs "
        f"{_per(m.loop_epochs, datasets)}. Tuning budget: {m.lr_values} learning rates per method and dataset "
        f"(factors of 3 around the method's default), seed 0, on {100 * m.validation:.0f} % of the training split "
        "held out; the best validation accuracy chose the rate for every seed.")
    add("")
    paper = "mnist" in datasets
    add("| method | " + " | ".join(f"{TITLES[d]} test accuracy (%)" for d in datasets)
        + (" | paper, MNIST (%) |" if paper else " |"))
    add("|---|" + "---|" * (len(datasets) + paper))
    for n in methods:
        add(f"| {METHODS[n].label} (`{n}`) | "
            + " | ".join(_cell(_find(recs, "accuracy", n, d, "test")) for d in datasets)
            + (f" | {PAPER_MNIST.get(n, '')} |" if paper else " |"))
    for n, why in c.skipped.items():
        add(f"| {METHODS[n].label} (`{n}`) | " + " | ".join("skipped" for _ in datasets) + (" | |" if paper else " |"))
    add("")
    add("Mean ± std (ddof 1) over the seeds. Every hardware row's readout is refitted on the last unit's measured "
        "training features, except the two backprop rows \"readout as trained\"; every twin row deploys with the "
        "recipes' `clip: 2` except \"weights as trained\"; the \"in simulation\" rows run on the noise-free twin, "
        "unclipped.")
    add("")
    add("**Where PIB (on the twin) wins, ties and loses** (points, PIB minus the method; tie: within twice the "
        "standard error of the difference, or under 0.5 points):")
    add("")
    for d in datasets:
        pib = _find(recs, "accuracy", "pib", d, "test")
        if pib is None:
            continue
        groups: dict[str, list[str]] = {"wins": [], "ties": [], "loses": []}
        for n in methods:
            other = _find(recs, "accuracy", n, d, "test")
            if n != "pib" and other is not None:
                word, diff = verdict(pib, other)
                groups[word].append(f"{n} ({diff:+.1f})")
        add(f"- {TITLES[d]}: PIB " + "; ".join(f"**{word}** against {', '.join(names)}"
                                             for word, names in groups.items() if names) + ".")
    add("")
    add("Learning rates tried (validation accuracy, %; the chosen one in bold):")
    add("")
    add("| method | " + " | ".join(TITLES[d] for d in datasets) + " |")
    add("|---|" + "---|" * len(datasets))
    for n in methods:
        cells = []
        for d in datasets:
            t = c.tuning.get((n, d))
            cells.append("n/a" if not t else ", ".join(
                (f"**{lr:g}: {100 * a:.1f}**" if lr == t["lr"] else f"{lr:g}: {100 * a:.1f}") if a is not None
                else f"{lr:g}: failed" for lr, a in sorted(t["tried"].items())))
        add(f"| `{n}` | " + " | ".join(cells) + " |")
    add("")
    for d in datasets:
        add(f"**Cost per run, {TITLES[d]}** (labpnn.costs, the run file's costs record; mean ± std over the seeds; "
            "payload: bytes to and from the instruments, float32; the crossbar twin keeps no clock of its own, so "
            "there is no twin-time column; peak memory: the job process's peak RSS, the Python, torch and "
            "numpy it starts with included; of it the run's: the peak above the RSS when the run started, which "
            "depends on what the worker process's allocator kept from its earlier jobs: indicative only)")
        add("")
        add("| method | " + " | ".join(h for _, h, _, _ in COST_COLUMNS) + " |")
        add("|---|" + "---|" * len(COST_COLUMNS))
        for n in methods:
            cells = []
            for key, _, scale, suffix in COST_COLUMNS:
                if key == "bytes":
                    a, b = (_find(recs, "costs", n, d, k) for k in ("bytes_sent", "bytes_received"))
                    r = None if a is None or b is None else {"mean": a["mean"] + b["mean"], "std": math.hypot(a["std"], b["std"])}
                else:
                    r = _find(recs, "costs", n, d, key)
                cells.append(_cell(r, 0 if key in ("calls", "samples") else 2 if key == "busy_s" else 1, scale,
                                   suffix))
            add(f"| `{n}` | " + " | ".join(cells) + " |")
        add("")
    gen_tables = sorted({r["table"] for r in recs if r["table"].startswith("generalise-")})
    for table in gen_tables:
        for d in datasets:
            rows = [r for r in recs if r["table"] == table and r["dataset"] == d]
            if not rows:
                continue
            settings = sorted({r["setting"] for r in rows}, key=lambda s: (isinstance(s, str), s))
            unit = rows[0]["unit"]
            what = {"noise": "accuracy under input noise, std in % of the input RMS",
                    "data": "accuracy trained on a share (%) of the training split",
                    "ood": "OOD detection, trained on digits 0-7, max-softmax AUROC"}.get(table[len("generalise-"):], table)
            n_seeds = max(r["seeds"] for r in rows)
            add(f"**Generalisation, {TITLES[d]}: {what}** ({unit}; labpnn.generalise; {n_seeds} seed(s))")
            add("")
            add("| method | " + " | ".join(str(s) for s in settings) + " |")
            add("|---|" + "---|" * len(settings))
            for n in methods:
                add(f"| `{n}` | " + " | ".join(_cell(_find(recs, table, n, d, s), 3 if unit == "AUROC" else 1)
                                              for s in settings) + " |")
            add("")
    if not gen_tables:
        add("Generalisation tests (input noise, data fractions, OOD): not in this run"
            + (" (quick mode leaves them out)." if not m.generalise else
               " (labpnn.generalise is not on this branch yet)."))
        add("")
    if c.skipped:
        add("Skipped: " + "; ".join(f"`{n}`: {why}" for n, why in c.skipped.items()) + ".")
        add("")
    if c.failed:
        add(f"Failed jobs: {len(c.failed)} (" + "; ".join(f"{f['what']}: {f['error']}" for f in c.failed[:5]) + ").")
        add("")
    add(end)
    return "\n".join(L) + "\n"



def _per(values: dict[str, int], datasets: list[str]) -> str:
    return ", ".join(f"{values[d]} ({TITLES[d]})" for d in datasets)


def write(c: Comparison, command: str, report: Path, json_path: Path, section: str) -> None:
    """Section `section` into `report` (replacing an earlier one of that name, else appended) and
    into json_path (its other sections kept)."""
    body = markdown(c, command, section)
    start, end = markers(section)
    text = report.read_text() if report.exists() else ""
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + body.rstrip("\n") + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + body
    report.write_text(text)
    doc = json.loads(json_path.read_text()) if json_path.exists() else {}
    doc.setdefault("sections", {})[section] = {
        "command": command, "mode": c.mode.name, "seeds": list(c.mode.seeds), "wall_s": c.wall_s, **c.meta,
        "records": c.records,
        "tuning": [{"method": n, "dataset": d, "lr": t["lr"], "tried": [{"lr": lr, "validation_accuracy": a}
                                                                         for lr, a in sorted(t["tried"].items())]}
                   for (n, d), t in sorted(c.tuning.items())],
        "skipped": c.skipped, "failed": c.failed}
    json_path.write_text(json.dumps(doc, indent=1))

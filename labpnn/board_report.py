"""The characterisation report: PNG plots and the summary table (report.md) of a crossbar
characterisation, written by `labpnn characterise crossbar` next to its file."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from labpnn import board_stats  # noqa: E402
from labpnn.board_stats import BoardData  # noqa: E402


def write_report(data: BoardData, folder: str | Path) -> Path:
    """Write the plots and report.md into `folder`; returns report.md's path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    plots = {"conductance_map.png": _conductance_map, "read_noise.png": _read_noise,
             "programming.png": _programming, "drift.png": _drift, "mvm_adc.png": _mvm_adc}
    for name, plot in plots.items():
        fig = plot(data)
        fig.tight_layout()
        fig.savefig(folder / name, dpi=110)
        plt.close(fig)
    rows = board_stats.summary(data)
    lines = [f"# Crossbar characterisation: {data.source}", "", "| quantity | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    faulty = board_stats.linearity(data)["faulty"]
    if faulty:
        lines += ["", "Faulty ADC columns (by measurement):", ""]
        lines += [f"- column {c}: {why}" for c, why in sorted(faulty.items())]
    lines += [""] + [f"![{n[:-4]}]({n})" for n in plots]
    report = folder / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


def _conductance_map(data: BoardData):
    st = data["stuck"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in ((axes[0], "after_g_max", "programmed to g_max"),
                           (axes[1], "after_g_min", "programmed to g_min")):
        im = ax.imshow(st[key] * 1e6, aspect="auto", cmap="viridis", interpolation="nearest")
        ax.set(title=f"conductance read back, {title}", xlabel="column", ylabel="row")
        fig.colorbar(im, ax=ax, label="G (uS)")
    s = board_stats.stuck(data)
    fig.suptitle(f"stuck cells: {s['high']} at g_max, {s['low']} at g_min ({100 * s['fraction']:.2f} %)")
    return fig


def _read_noise(data: BoardData):
    rn = board_stats.read_noise(data)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    g, s, keep = rn["g"][rn["mask"]], rn["s"][rn["mask"]], rn["mask"]
    pick = np.random.default_rng(0).permutation(g.size)[:4000]
    ax.scatter(g[pick] * 1e6, s[pick] * 1e6, s=3, alpha=0.3, label=f"cells ({int(keep.sum())})")
    lv = rn["levels"]
    ax.plot(lv[:, 0] * 1e6, lv[:, 1] * 1e6, "o", color="C3", label="level (geometric mean)")
    grid = np.linspace(0, g.max(), 100)
    ax.plot(grid * 1e6, np.sqrt((rn["rel"] * grid) ** 2 + rn["abs"] ** 2) * 1e6, "k-",
            label=f"fit: rel {rn['rel']:.3f}, abs {rn['abs'] * 1e6:.2f} uS, d2d {rn['d2d']:.2f}")
    ax.set(xlabel="conductance G (uS)", ylabel="read spread (uS)", title="read noise against conductance")
    ax.legend(fontsize=8)
    return fig


def _programming(data: BoardData):
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    mask = data.noise_mask()
    for step, label in (("single_pulse", "one pulse"), ("verify", "write-verify")):
        e = board_stats.programming(data, step)["errors"][mask]
        axes[0].hist(e * 1e6, bins=80, histtype="step", label=f"{label}: RMS {np.sqrt(np.mean(e ** 2)) * 1e6:.2f} uS")
    axes[0].set(xlabel="programmed - target (uS)", ylabel="cells", title="programming error")
    axes[0].legend(fontsize=8)
    lv = board_stats.programming(data)["levels"]
    axes[1].plot(lv[:, 0] * 1e6, 100 * lv[:, 3], "o-")
    axes[1].set(xlabel="target (uS)", ylabel="cells within tolerance (%)",
                title="write-verify yield (PROG:STAT?)")
    return fig


def _drift(data: BoardData):
    dr = board_stats.drift(data)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    targets = data["verify"]["targets"]
    for i, t in enumerate(targets):
        ax.plot(dr["times"], dr["ratio"][:, i], "o-", ms=3, label=f"{t * 1e6:.1f} uS")
    if dr["t0"] is not None:
        grid = np.geomspace(dr["times"].min(), dr["times"].max(), 50)
        ax.plot(grid, np.maximum(grid / dr["t0"], 1) ** -dr["nu"], "k--",
                label=f"fit: nu {dr['nu']:.3f}, t0 {dr['t0']:.1f} s")
    ax.set(xscale="log", xlabel="time after programming (s)", ylabel="G(t) / G(0)", title="drift")
    ax.legend(fontsize=7, ncol=2)
    return fig


def _mvm_adc(data: BoardData):
    lin, adc = board_stats.linearity(data), board_stats.adc_range(data)
    d = data["linearity"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for j in np.linspace(0, d["currents"].shape[1] - 1, 4).astype(int):
        axes[0].plot(d["expected"][:, j] * 1e6, d["currents"][:, j] * 1e6, ".-", label=f"column {j}")
    axes[0].set(xlabel="expected current (uA)", ylabel="measured current (uA)", title="MVM against read voltage")
    axes[0].legend(fontsize=8)
    cols = np.arange(lin["gain"].size)
    bad = np.array(sorted(lin["faulty"]), int)
    axes[1].bar(cols, lin["gain"], color="C0")
    if bad.size:
        axes[1].bar(bad, lin["gain"][bad], color="C3", label="faulty (measured)")
        axes[1].legend(fontsize=8)
    axes[1].set(xlabel="column", ylabel="gain", title="MVM gain per column (ADC health)")
    axes[2].plot(cols, adc["peak"] * 1e6, ".", label="largest |current| measured")
    axes[2].axhline(data.board.get("adc_range", 0) * 1e6, color="k", ls="--", label="CONF:ADC:RANG?")
    axes[2].set(xlabel="column", ylabel="uA", title="ADC clipping (full-voltage sweep)")
    axes[2].legend(fontsize=8)
    return fig

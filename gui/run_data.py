"""What the window shows of one run, Qt-free: fed live by engine events or rebuilt from a run file.

Every view draws from a `RunData`; `changed` names the sections touched since the views last
drew, so a timer can redraw only those, at most a few times a second.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from labpnn.events import KINDS, LOGGED_KINDS, Event
from labpnn.runlog import RunReader

LISTED_KINDS = tuple(k for k in KINDS if k in LOGGED_KINDS)
"""The kinds the events log lists: those the engine writes to the run file. The others (step,
info_plane, measure, frame) arrive many times a second and are drawn, not listed."""
SECTIONS = frozenset({"info_plane", "training", "accuracy", "deployed", "frame", "log", "episodes"})


@dataclass
class Trajectory:
    """One unit's PIB optimisation (one revision): a point per step."""

    steps: list[int] = field(default_factory=list)
    i_xz: list[float] = field(default_factory=list)
    i_yz: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class LogRow:
    time: float
    kind: str
    unit: int | None
    message: str


@dataclass
class RunData:
    units: dict[int, str] = field(default_factory=dict)                  # index -> "unit0 (crossbar)"
    planned: dict[int, int] = field(default_factory=dict)                # index -> planned PIB steps
    trajectories: dict[tuple[int, int], Trajectory] = field(default_factory=dict)  # (unit, revision)
    accuracies: dict[tuple[int | None, str, str], float] = field(default_factory=dict)  # (unit, what, split)
    deployed: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)  # unit -> read-back arrays
    frame: tuple[str, np.ndarray] | None = None                           # (what, 2-D array)
    log: list[LogRow] = field(default_factory=list)
    episodes: list[tuple[int, float]] = field(default_factory=list)      # RL: (episode, return)
    state: str = "idle"
    changed: set[str] = field(default_factory=set)
    _loss: dict[int | None, tuple[int, float]] = field(default_factory=dict, repr=False)  # step event's loss

    @classmethod
    def for_recipe(cls, recipe) -> RunData:
        """Empty, for a live run of `recipe` (the engine names unit i "unit{i}")."""
        return cls(units={i: f"unit{i} ({u.kind})" for i, u in enumerate(recipe.units)},
                   planned={i: recipe.unit_pib(i).steps for i in range(len(recipe.units))},
                   changed=set(SECTIONS))

    # -- live
    def apply(self, ev: Event) -> None:
        """Take in one engine event."""
        d = ev.data
        if ev.kind == "step" and "I_YZ" not in d:  # no labels (unsupervised): no info_plane event follows
            self._point(ev.unit, int(d.get("revision", 0)), int(d["step"]), float(d.get("I_XZ", "nan")),
                        float("nan"), float(d["loss"]))
        elif ev.kind == "step":  # comes just before the step's info_plane event, which draws the point
            self._loss[ev.unit] = (d["step"], float(d["loss"]))
        elif ev.kind == "info_plane":
            step, loss = self._loss.pop(ev.unit, (None, float("nan")))
            self._point(ev.unit, int(d.get("revision", 0)), int(d["step"]), float(d["I_XZ"]), float(d["I_YZ"]),
                        loss if step == d["step"] else float("nan"))
        elif ev.kind == "accuracy":
            self.accuracies[(ev.unit, d["what"], d["split"])] = float(d["value"])
            self.changed.add("accuracy")
        elif ev.kind == "deployed":
            self.deployed[ev.unit] = {k: np.asarray(v) for k, v in d.items() if k != "revision"}
            self.changed.add("deployed")
        elif ev.kind == "frame":
            self.frame = (d.get("what", ""), np.atleast_2d(np.asarray(d["frame"])))
            self.changed.add("frame")
        elif ev.kind == "episode":
            self.episodes.append((int(d["episode"]), float(d["return"])))
            self.changed.add("episodes")
        elif ev.kind == "state":
            self.state = d["state"]
        if ev.kind in LISTED_KINDS:
            self.log.append(LogRow(ev.time, ev.kind, ev.unit, ev.message))
            self.changed.add("log")

    def _point(self, unit: int, revision: int, step: int, i_xz: float, i_yz: float, loss: float) -> None:
        traj = self.trajectories.setdefault((unit, revision), Trajectory())
        if traj.steps and step <= traj.steps[-1]:  # a resumed run redoes steps past its last saved state
            keep = next(i for i, s in enumerate(traj.steps) if s >= step)
            for values in (traj.steps, traj.i_xz, traj.i_yz, traj.loss):
                del values[keep:]
        traj.steps.append(step)
        traj.i_xz.append(i_xz)
        traj.i_yz.append(i_yz)
        traj.loss.append(loss)
        self.changed.update(("info_plane", "training"))

    # -- from a run file
    @classmethod
    def from_reader(cls, reader: RunReader) -> RunData:
        """Everything a run file holds so far (a RunReader, refreshed by the caller)."""
        data = cls(state=reader.state)
        sites = {r["unit"]: r["site"] for r in reader.site_records if r.get("unit") is not None}
        for u in reader.units:
            data.units[u.index] = f"{u.name} ({u.kind}" + (f", site {sites[u.index]})" if u.index in sites else ")")
            data.planned[u.index] = u.layout.steps
            info = u.info_plane
            for rev in np.unique(info["revision"]):
                rows = info[info["revision"] == rev]
                data.trajectories[(u.index, int(rev))] = Trajectory(
                    rows["step"].tolist(), rows["I_XZ"].tolist(), rows["I_YZ"].tolist(), rows["loss"].tolist())
            deployed = u.deployed
            if deployed is not None:
                data.deployed[u.index] = deployed
        for acc in reader.accuracies:  # oldest first: the latest revision wins
            if acc["value"] is not None:
                data.accuracies[(acc["unit"], acc["what"], acc["split"])] = acc["value"]
        data.log = [LogRow(e["time"], e["kind"], e["unit"], e["message"]) for e in reader.events]
        data.episodes = [(e["episode"], e["return"]) for e in reader.episodes]
        data.changed = set(SECTIONS)
        return data

    def name(self, unit: int | None) -> str:
        if unit is None:
            return "readout"
        return self.units.get(unit, f"unit{unit}")

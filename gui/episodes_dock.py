"""Episodes (RL runs): the return of each episode and its running average over the window
that decides "solved" (100 episodes for CartPole-v1), live."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtWidgets import QDockWidget

from labpnn.gui.palette import LEGEND
from labpnn.gui.run_data import RunData

WINDOW = 100  # episodes in the running average (gymnasium's "consecutive trials")


def running_average(returns: np.ndarray, window: int = WINDOW) -> np.ndarray:
    """Mean of the last `window` returns at each episode (fewer at the start)."""
    c = np.cumsum(np.concatenate([[0.0], returns]))
    n = np.arange(1, len(returns) + 1)
    lo = np.maximum(0, n - window)
    return (c[n] - c[lo]) / (n - lo)


class EpisodesDock(QDockWidget):
    sections = {"episodes"}

    def __init__(self, parent=None):
        super().__init__("Episodes", parent)
        self.setObjectName("episodes")
        self.plot = pg.PlotWidget(title=f"Return per episode, and its mean over the last {WINDOW}")
        self.plot.setLabel("bottom", "episode")
        self.plot.setLabel("left", "return")
        self.plot.showGrid(x=True, y=True, alpha=0.2)
        self.plot.addLegend(offset=(10, 10), **LEGEND)
        self.returns = self.plot.plot(pen=pg.mkPen((150, 150, 150), width=1), symbol="o", symbolSize=3,
                                      symbolPen=None, symbolBrush=(150, 150, 150), name="return")
        self.average = self.plot.plot(pen=pg.mkPen((31, 119, 180), width=2.5), name=f"mean of {WINDOW}")
        self.setWidget(self.plot)

    def clear(self) -> None:
        self.returns.setData([], [])
        self.average.setData([], [])

    def render(self, data: RunData) -> None:
        if not data.episodes:
            self.clear()
            return
        episodes, returns = (np.asarray(v, float) for v in zip(*data.episodes))
        self.returns.setData(episodes, returns)
        self.average.setData(episodes, running_average(returns))

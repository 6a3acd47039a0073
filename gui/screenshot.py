"""The screenshots in docs/: the window during a live run on the simulated bench, or the
feature map of a finished run.

    xvfb-run -s "-screen 0 1600x1000x24" python -m labpnn.gui.screenshot docs/img/gui-live-run.png
    xvfb-run -s "-screen 0 1600x1000x24" python -m labpnn.gui.screenshot --run RUN.h5 docs/img/gui-feature-map.png

Starts the recipe in a fresh layout, waits until the last unit has drawn some PIB steps,
saves the screen, aborts the run and exits. With --run: opens that run file, maps its last
unit in the Feature map dock, saves the screen once the map is drawn, and exits.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import shiboken6
from PySide6.QtCore import QSettings, QTimer
from PySide6.QtWidgets import QApplication

from labpnn.bench import Bench
from labpnn.gui.main_window import MainWindow


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labpnn.gui.screenshot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="PNG to write")
    parser.add_argument("--recipe", default="mnist1d-memristor", help="packaged recipe name or file")
    parser.add_argument("--config", help="bench file (default: the twins)")
    parser.add_argument("--steps", type=int, default=40, help="PIB steps of the last unit to wait for")
    parser.add_argument("--run", help="a finished run file: shoot its feature map instead of a live run")
    parser.add_argument("--method", default="auto", help="the feature map's method (with --run)")
    parser.add_argument("--episodes", type=int, default=0,
                        help="RL recipes: episodes to wait for instead (the Episodes dock in front)")
    args = parser.parse_args(argv)

    app = QApplication(sys.argv[:1])
    scratch = Path(tempfile.mkdtemp(prefix="labpnn-screenshot-"))
    bench = Bench.load(args.config)
    window = MainWindow(bench, QSettings(str(scratch / "layout.ini"), QSettings.Format.IniFormat))
    window.show()
    if args.run:
        return _feature_map(app, window, bench, args)
    if Path(args.recipe).is_file():
        window.run_dock.load_file(args.recipe)
    else:
        window.run_dock.load_packaged(args.recipe)
    window.run_dock.output.setText(str(scratch / "run.h5"))
    for name in bench.devices:  # as an operator would: connect and self-test, then start
        window.instruments.request("connect", name)

    started = False

    def look() -> None:
        nonlocal started
        if not started:
            if not any(window.instruments.calls.busy(n) for n in bench.devices):
                window.start_run()
                started = True
                if not window.running():
                    print(f"the run did not start: {window.run_dock.message.text()}", file=sys.stderr)
                    app.exit(1)
            return
        traj = window.data.trajectories.get((len(window.data.units) - 1, 0))
        waiting = (len(window.data.episodes) < args.episodes if args.episodes else
                   traj is None or len(traj.steps) < args.steps)
        if window.running() and waiting:
            return
        poll.stop()
        if args.episodes:
            window.episodes.raise_()
        window.redraw()
        app.processEvents()
        _save(app, window, args.out)
        window.confirm_abort_on_close = lambda: True
        window.close()

    poll = QTimer(interval=250)
    poll.timeout.connect(look)
    poll.start()
    try:
        return app.exec()
    finally:
        shiboken6.delete(window)  # now, while the QApplication lives: not in random order at exit
        bench.close()


def _save(app: QApplication, window: MainWindow, out: str) -> None:
    shot = window.screen().grabWindow(0) if app.platformName() == "xcb" else window.grab()
    shot.save(out)
    print(f"saved {out} ({shot.width()} x {shot.height()})")


def _feature_map(app: QApplication, window: MainWindow, bench: Bench, args) -> int:
    if not window.open_run(args.run):
        return 1
    dock = window.feature_map
    dock.raise_()
    dock.method.setCurrentText(args.method)
    dock.mapped.connect(lambda _: QTimer.singleShot(500, lambda: (_save(app, window, args.out), window.close())))
    dock.compute()
    try:
        return app.exec()
    finally:
        shiboken6.delete(window)
        bench.close()


if __name__ == "__main__":
    sys.exit(main())

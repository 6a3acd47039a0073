"""Spatial light modulator on a display output (HDMI/DVI): `ScreenSLM`, its phase LUT and
frame checks.

A screen SLM is a second monitor. The frames are drawn full-screen, pixel for pixel (no
scaling, high-DPI scaling off), by a separate display process that owns Qt, so the engine
process stays Qt-free. The parent sends frames down the child's stdin (a JSON line, then the
raw pixels); the child paints, reads the pixels back from the screen and answers with their
CRC-32, which `show()` checks against the frame it sent. Run as
`python -m labpnn.drivers.slm CONFIG_JSON` this module is that display process.
"""

from __future__ import annotations

import collections
import json
import os
import queue
import subprocess
import sys
import threading
import time
import zlib
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from labpnn.errors import DeviceError, TransportError
from labpnn.instruments.base import Instrument
from labpnn.instruments.slm import PhaseLUT, SLMGeometry, validate_frames
from labpnn.protocols import Health


def displayed_grey8(frame: np.ndarray) -> np.ndarray:
    """What an 8-bit-per-channel display link shows for a frame: itself (8 bit) or the
    16-bit levels rounded to 8 bits (v / 257, as Qt converts Grayscale16)."""
    if frame.dtype == np.uint8:
        return frame
    return ((frame.astype(np.uint32) + 128) // 257).astype(np.uint8)


class ScreenSLM(SLMGeometry, Instrument):
    """A phase SLM driven as a display: frames shown full-screen on screen `screen`."""

    simulated = False

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        screen: int = Field(0, ge=0, description="index of the screen the SLM is attached to")
        width: int = Field(1920, gt=0)
        height: int = Field(1080, gt=0)
        bit_depth: Literal[8, 16] = 8
        settle_ms: float = Field(20.0, ge=0, description="wait after a frame is on screen: a "
                                 "display frame period plus the liquid crystal's response")
        lut: str | list[float] | None = Field(None, description="grey level -> phase (rad); "
                                              "None: linear 0..2pi")
        fullscreen: bool = Field(True, description="False: a plain window (development)")
        verify: bool = Field(True, description="check every frame read back from the screen")
        timeout_s: float = Field(20.0, gt=0, description="display process start/answer timeout")

    def __init__(self, name: str = "slm", resource: str | None = None, **options: Any):
        super().__init__(name, resource, **options)
        self.lut = PhaseLUT(self.options.bit_depth, self.options.lut)
        self.frame: np.ndarray | None = None
        self._proc: subprocess.Popen | None = None
        self._replies: queue.Queue = queue.Queue()
        self._stderr: collections.deque[str] = collections.deque(maxlen=20)
        self._screen: dict[str, Any] = {}

    @classmethod
    def check_resource(cls, resource: str | None) -> None:
        if resource is not None:
            raise ValueError(f"ScreenSLM takes its screen from the `screen` option; resource "
                             f"must be empty, got {resource!r}")

    @property
    def connected(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def phase_to_grey(self, phase) -> np.ndarray:
        return self.lut.phase_to_grey(phase)

    # -- lifecycle -------------------------------------------------------------------------
    def connect(self) -> None:
        with self._lock:
            if self.connected:
                return
            self._stop_process()  # a display process that died: collect it
            env = dict(os.environ, QT_ENABLE_HIGHDPI_SCALING="0", QT_SCALE_FACTOR="1")
            env.pop("QT_SCREEN_SCALE_FACTORS", None)
            config = self.options.model_dump(include={"screen", "width", "height", "fullscreen"})
            self._replies = queue.Queue()
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "labpnn.drivers.slm", json.dumps(config)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
            threading.Thread(target=self._read_replies, args=(self._proc,), daemon=True).start()
            threading.Thread(target=self._read_stderr, args=(self._proc,), daemon=True).start()
            try:
                ready = self._reply()
                if "error" in ready:
                    raise DeviceError(ready["error"], self.name)
                self._screen = ready["screen"]
                self._show(np.zeros(self.shape, self.lut.dtype))
            except BaseException:
                self._stop_process()
                raise

    def close(self) -> None:
        with self._lock:
            self._stop_process()


    def _stop_process(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.stdin.write(b'{"op": "quit"}\n')
            proc.stdin.close()
            proc.wait(timeout=5)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            stream.close()

    # -- frames ----------------------------------------------------------------------------
    def show(self, frame) -> None:
        """Show one frame (height, width) of grey levels; returns once it is on screen and the
        settle time has passed."""
        with self._lock:
            frame = validate_frames(frame, self.shape, self.bit_depth, f"SLM {self.name!r}")
            if frame.ndim != 2:
                raise ValueError(f"SLM {self.name!r}: show() takes one frame, got a stack {frame.shape}")
            self._require_connected()
            self._show(frame)
            time.sleep(self.settle_s)

    def displayed(self) -> np.ndarray:
        """The pixels now on the SLM's screen, read back (8-bit grey, height x width)."""
        with self._lock:
            self._require_connected()
            reply = self._request({"op": "grab"})
            return np.frombuffer(reply["pixels"], np.uint8).reshape(self.shape)

    def _show(self, frame: np.ndarray) -> None:
        reply = self._request({"op": "show", "dtype": frame.dtype.name}, frame.tobytes())
        expected = zlib.crc32(displayed_grey8(frame).tobytes())
        if self.options.verify and reply["crc32"] != expected:
            raise DeviceError("the frame read back from the screen differs from the frame sent "
                              "(scaling, colour management or another window in the way?)", self.name)
        self.frame = frame

    # -- Device ----------------------------------------------------------------------------
    def identity(self) -> str:
        with self._lock:
            s = self._screen
            return (f"ScreenSLM on screen {self.options.screen} ({s.get('name') or 'unnamed'}, "
                    f"{s.get('width', '?')}x{s.get('height', '?')} px)")

    def reset(self) -> None:
        with self._lock:
            self.show(np.zeros(self.shape, self.lut.dtype))

    def safe_state(self) -> None:
        """A blank (zero) frame; never raises."""
        with self._lock:
            try:
                if self.connected:
                    self._show(np.zeros(self.shape, self.lut.dtype))
            except Exception:  # noqa: BLE001 - the display may be gone; blank is all we can ask
                pass

    def self_test(self) -> Health:
        with self._lock:
            if not self.connected:
                return Health(False, 1, "display process not running")
            h, w = self.shape
            ramp = (np.add.outer(np.arange(h), np.arange(w)) % 2**self.bit_depth).astype(self.lut.dtype)
            previous = self.frame
            try:
                self._show(ramp)
                ok = np.array_equal(self.displayed(), displayed_grey8(ramp))
                if previous is not None:
                    self._show(previous)
            except DeviceError as exc:
                return Health(False, 2, str(exc))
            return Health(ok, 0 if ok else 3, "test ramp displayed pixel-exact" if ok
                          else "test ramp read back differs from the ramp sent")

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"identity": self.identity(), "simulated": False,
                    "settings": self.options.model_dump(), "screen": dict(self._screen)}

    # -- talking to the display process ----------------------------------------------------
    def _require_connected(self) -> None:
        if self._proc is None:
            raise DeviceError("not connected: call connect() first", self.name)
        if self._proc.poll() is not None:
            raise TransportError(f"display process exited (code {self._proc.returncode}): "
                                 + " | ".join(self._stderr), self.name)

    def _request(self, header: dict, payload: bytes = b"") -> dict:
        try:
            self._proc.stdin.write(json.dumps({**header, "nbytes": len(payload)}).encode() + b"\n")
            self._proc.stdin.write(payload)
            self._proc.stdin.flush()
        except (OSError, ValueError) as exc:
            raise TransportError(f"display process unreachable: {exc}", self.name) from None
        reply = self._reply()
        if "error" in reply:
            raise DeviceError(reply["error"], self.name)
        return reply

    def _reply(self) -> dict:
        try:
            reply = self._replies.get(timeout=self.options.timeout_s)
        except queue.Empty:
            self._stop_process()  # a late answer would be taken for the next one's
            raise TransportError(f"display process silent for {self.options.timeout_s} s",
                                 self.name) from None
        if reply is None:
            code = self._proc.wait() if self._proc else None
            raise TransportError(f"display process exited (code {code}): "
                                 + " | ".join(self._stderr), self.name)
        return reply

    def _read_replies(self, proc: subprocess.Popen) -> None:
        try:
            for line in proc.stdout:
                reply = json.loads(line)
                if reply.get("nbytes"):
                    reply["pixels"] = proc.stdout.read(reply["nbytes"])
                self._replies.put(reply)
        except (OSError, ValueError):
            pass
        self._replies.put(None)

    def _read_stderr(self, proc: subprocess.Popen) -> None:
        try:
            for line in proc.stderr:
                self._stderr.append(line.decode(errors="replace").rstrip())
        except (OSError, ValueError):
            pass


# -- the display process --------------------------------------------------------------------
def _display_main(argv: list[str]) -> int:
    """Own the SLM screen: paint the frames read from stdin, answer on stdout (JSON lines)."""
    config = json.loads(argv[0])
    out = sys.stdout.buffer
    sys.stdout = sys.stderr  # stray prints must not corrupt the reply channel

    def reply(message: dict, pixels: bytes = b"") -> None:
        out.write(json.dumps({**message, "nbytes": len(pixels)}).encode() + b"\n" + pixels)
        out.flush()

    from PySide6.QtCore import QObject, QRect, Qt, Signal, Slot
    from PySide6.QtGui import QGuiApplication, QImage, QPainter
    from PySide6.QtWidgets import QApplication, QWidget

    QGuiApplication.setHighDpiScaleFactorRoundingPolicy(Qt.HighDpiScaleFactorRoundingPolicy.PassThrough)
    app = QApplication([sys.argv[0]])
    width, height = config["width"], config["height"]
    screens = QGuiApplication.screens()
    if config["screen"] >= len(screens):
        reply({"error": f"screen {config['screen']} does not exist; found {len(screens)}: "
                        + ", ".join(f"{s.name()} {s.size().width()}x{s.size().height()}" for s in screens)})
        return 2
    screen = screens[config["screen"]]
    dpr = screen.devicePixelRatio()
    screen_px = (round(screen.size().width() * dpr), round(screen.size().height() * dpr))
    if config["fullscreen"] and (screen_px[0] < width or screen_px[1] < height):
        reply({"error": f"screen {config['screen']} ({screen.name()}) is {screen_px[0]}x"
                        f"{screen_px[1]} px, smaller than the {width}x{height} SLM frame"})
        return 2

    class Window(QWidget):
        image: QImage | None = None

        def paintEvent(self, event):  # noqa: N802 (Qt override)
            painter = QPainter(self)
            painter.fillRect(self.rect(), Qt.GlobalColor.black)
            if self.image is not None:
                painter.drawImage(0, 0, self.image)  # device pixels: the image carries the DPR
            painter.end()

    window = Window()
    window.setWindowFlags(Qt.WindowType.FramelessWindowHint | Qt.WindowType.WindowStaysOnTopHint)
    window.setCursor(Qt.CursorShape.BlankCursor)
    window.setScreen(screen)
    window.move(screen.geometry().topLeft())
    if config["fullscreen"]:
        window.showFullScreen()
    else:
        window.resize(round(width / dpr), round(height / dpr))
        window.show()

    def read_back() -> bytes | None:
        """The frame's pixels as now on screen (8-bit grey); None when not all are visible."""
        logical = QRect(0, 0, round(width / dpr), round(height / dpr))
        shot = screen.grabWindow(window.winId(), *logical.getRect())
        if shot.isNull():
            shot = window.grab(logical)
        grey = shot.toImage().convertToFormat(QImage.Format.Format_Grayscale8)
        if grey.width() < width or grey.height() < height:
            return None
        rows = np.frombuffer(grey.constBits(), np.uint8, count=grey.sizeInBytes())
        return rows.reshape(grey.height(), grey.bytesPerLine())[:height, :width].tobytes()

    def handle(message: dict, payload: bytes) -> None:
        if message["op"] == "quit":
            app.quit()
            return
        if message["op"] == "show":
            fmt = (QImage.Format.Format_Grayscale8 if message["dtype"] == "uint8"
                   else QImage.Format.Format_Grayscale16)
            image = QImage(payload, width, height, len(payload) // height, fmt).copy()
            image.setDevicePixelRatio(dpr)
            window.image = image
            window.repaint()
        elif message["op"] != "grab":
            reply({"error": f"unknown display op {message['op']!r}"})
            return
        pixels = read_back()
        if pixels is None:
            reply({"error": f"only part of the {width}x{height} frame is visible on screen "
                            f"{config['screen']}"})
        elif message["op"] == "show":
            reply({"crc32": zlib.crc32(pixels)})
        else:
            reply({"ok": True}, pixels)

    class Inbox(QObject):
        message = Signal(object, object)

        @Slot(object, object)
        def deliver(self, message: dict, payload: bytes) -> None:
            handle(message, payload)

    inbox = Inbox()  # lives in the GUI thread: the reader thread's emits arrive queued
    inbox.message.connect(inbox.deliver)

    def read_stdin() -> None:
        stdin = sys.stdin.buffer
        for line in stdin:
            message = json.loads(line)
            inbox.message.emit(message, stdin.read(message.get("nbytes", 0)))
        inbox.message.emit({"op": "quit"}, b"")

    threading.Thread(target=read_stdin, daemon=True).start()
    app.processEvents()
    reply({"ready": True, "screen": {"name": screen.name(), "width": screen_px[0],
                                     "height": screen_px[1], "device_pixel_ratio": dpr}})
    return app.exec()


if __name__ == "__main__":
    sys.exit(_display_main(sys.argv[1:]))

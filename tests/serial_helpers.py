"""Shared pieces of the serial tests: background programs, peers on ptys."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from otaflash.errors import Cancelled
from otaflash.sim.pty import PtyPort


class Background:
    """A program run for the length of a test, stopped by its own PID after."""

    def __init__(self, argv: Sequence[str], *, cwd: Path | None = None, stdin: Any = None) -> None:
        self.argv = list(argv)
        self.proc = subprocess.Popen(
            self.argv,
            cwd=cwd,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def ready(self) -> dict[str, Any]:
        """The first JSON line a `--json` server prints once it listens."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"{self.argv[3:5]} exited before it was ready: {self.stop()[2]}"
        record: dict[str, Any] = json.loads(line)
        return record

    def wait(self, timeout: float = 60) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, _text(out), _text(err)

    def stop(self) -> tuple[int, str, str]:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            out, err = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        return self.proc.returncode, _text(out), _text(err)


def _text(data: bytes | None) -> str:
    return data.decode(errors="replace") if data else ""


def otaflash_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "otaflash", *args]


def on_tty(argv: Sequence[str], tty_path: str, *, cwd: Path | None = None) -> Background:
    """Runs ``argv`` with a tty as stdin and stdout (how lrzsz talks to a line)."""
    fd = os.open(tty_path, os.O_RDWR | os.O_NOCTTY)
    try:
        proc = subprocess.Popen(list(argv), cwd=cwd, stdin=fd, stdout=fd, stderr=subprocess.PIPE)
    finally:
        os.close(fd)
    background = Background.__new__(Background)
    background.argv = list(argv)
    background.proc = proc
    return background


class Thread:
    """Runs ``target(stop)`` in a thread; ``result()`` re-raises what it raised."""

    def __init__(self, target: Callable[[threading.Event], Any]) -> None:
        self.stop_event = threading.Event()
        self._result: Any = None
        self._error: BaseException | None = None

        def run() -> None:
            try:
                self._result = target(self.stop_event)
            except BaseException as error:
                self._error = error

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def result(self, timeout: float = 60) -> Any:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("the thread did not finish")
        if self._error is not None:
            raise self._error
        return self._result

    def stop(self) -> BaseException | None:
        """Stops it; returns what it raised, other than being cancelled."""
        self.stop_event.set()
        self._thread.join(10)
        if self._thread.is_alive():
            return TimeoutError("the thread did not stop")
        if isinstance(self._error, Cancelled):
            return None
        return self._error


@contextmanager
def pty() -> Iterator[PtyPort]:
    port = PtyPort()
    try:
        yield port
    finally:
        port.close()

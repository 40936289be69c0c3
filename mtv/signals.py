"""Graceful stops: SIGINT (Ctrl-C) and SIGTERM (Slurm's preemption notice, `kill`) ask a run to
stop after the step it is in, so it can write a checkpoint and its metrics before it exits. A
second signal of the same kind acts as it would have without mtv (Ctrl-C twice still stops a
stuck run at once)."""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """While installed, records the first stop signal instead of dying of it."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> StopRequest:
        # Signal handlers can only be set from the main thread (a notebook's trainer in a
        # worker thread simply keeps Python's defaults).
        if threading.current_thread() is threading.main_thread():
            for number in STOP_SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def _handle(self, number: int, frame: FrameType | None) -> None:
        del frame
        self.signal = number
        # The next one is handled as before mtv (KeyboardInterrupt, or termination).
        signal.signal(number, self._previous.get(number, signal.SIG_DFL))

    def restore(self) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal is not None else ""


def ignore_stop_signals(worker_id: int = 0) -> None:
    """For data-loader workers: a Ctrl-C reaches the whole process group, and a worker that died
    of it would take the batch the main process still needs to finish its step. Workers exit
    with their parent anyway."""
    del worker_id
    for number in STOP_SIGNALS:
        signal.signal(number, signal.SIG_IGN)

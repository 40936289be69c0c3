"""Graceful stops: SIGINT (Ctrl-C) and SIGTERM (Slurm's preemption notice, `kill`) ask a run to
stop after the step it is in, so it can write a checkpoint and its metrics before it exits. A
second signal of the same kind acts as it would have without mtv (Ctrl-C twice still stops a
stuck run at once), and a deadline bounds the wait: a step that never ends (a spec too large for
the machine, a hung collective) cannot keep a stopped run alive past it."""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """While installed, records the first stop signal instead of dying of it."""

    def __init__(self, deadline: float | None = None, saved: str = "") -> None:
        """`deadline`: seconds after the first signal at which the process exits at once with
        128 + the signal (None: wait for the step however long); `saved` says, in the exit
        line, what is on disk by then."""
        self.signal: int | None = None
        self.deadline, self.saved = deadline, saved
        self._previous: dict[int, Any] = {}
        self._timer: threading.Timer | None = None

    def install(self) -> StopRequest:
        # Signal handlers can only be set from the main thread (a notebook's trainer in a
        # worker thread simply keeps Python's defaults).
        if threading.current_thread() is threading.main_thread():
            for number in STOP_SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def _handle(self, number: int, frame: FrameType | None) -> None:
        del frame
        first = self.signal is None
        self.signal = number
        # The next one is handled as before mtv (KeyboardInterrupt, or termination).
        signal.signal(number, self._previous.get(number, signal.SIG_DFL))
        if first and self.deadline is not None:
            self._timer = threading.Timer(self.deadline, self._expire, args=(number,))
            self._timer.daemon = True
            self._timer.start()

    def _expire(self, number: int) -> None:
        """The deadline passed with the step still running: nothing can be saved safely from
        another thread mid-step, so the process ends now, as the signal would have ended it."""
        name = signal.Signals(number).name
        sys.stderr.write(
            f"error: stopped by {name}, but the step in progress did not end within "
            f"{self.deadline:g} s (runtime.stop_deadline); exiting now. {self.saved}\n"
        )
        sys.stderr.flush()
        os._exit(128 + number)

    def restore(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
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

"""The child processes of a sweep's jobs (`mtv run`, `mtv eval`): each in a session of its own,
killed with the sweep if the sweep dies, and stopped gracefully, all together, when the sweep
is asked to stop (SIGINT or SIGTERM: Ctrl-C, `scancel`, a preemption).

One `JobProcesses` (`job_processes`) serves a sweep whether it runs one job at a time or several
side by side on worker threads: Python delivers signals to the main thread only, so the main
thread installs the forwarding handler once (`forwarding`) and every thread starts its commands
through `run`, which registers them for it.
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class SweepStopped(RuntimeError):
    """A SIGINT or SIGTERM stopped the sweep: the running jobs were stopped with it, gracefully
    (their checkpoints written), and no further job started. `signal` is the signal's number."""

    def __init__(self, signal_number: int, job: str):
        name = signal.Signals(signal_number).name
        super().__init__(f"stopped by {name} during {job}; the same command resumes the sweep")
        self.signal = signal_number


class JobFailed(RuntimeError):
    """A job's command exited with an error (the message quotes the end of its log)."""


def _prctl() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    if not sys.platform.startswith("linux"):
        return None
    return ctypes.CDLL("libc.so.6", use_errno=True).prctl


# Looked up here, in the parent: a child between fork and exec must not load a library (another
# thread of the sweep may hold the loader's lock at the fork, and the child would wait forever).
_PRCTL = _prctl()
_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """In the child, before exec: ask Linux to kill it when the sweep process (`parent`) dies,
    so a killed sweep never leaves a training run behind that a restarted sweep would race. A
    sweep that died before the request took hold has already left: the child exits at once."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            os._exit(1)


class JobProcesses:
    """The job processes running now and the stop signals received. The first SIGINT or
    SIGTERM is forwarded once to every running job (each stops after its current step with a
    checkpoint) and no command starts after it; a second one is not forwarded again."""

    def __init__(self) -> None:
        # Re-entrant: the handler runs on the main thread, possibly while the main thread itself
        # is inside `run` (one job at a time) holding the lock.
        self._lock = threading.RLock()
        self._running: set[subprocess.Popen[bytes]] = set()
        self._received: list[int] = []
        self._installed = 0
        self._env: dict[str, str] = {}

    @property
    def stopped(self) -> int | None:
        """The first stop signal received while forwarding, if any."""
        return self._received[0] if self._received else None

    def _forward(self, signal_number: int, frame: object) -> None:
        with self._lock:
            if not self._received:
                for process in self._running:
                    process.send_signal(signal_number)
            self._received.append(signal_number)

    @contextmanager
    def forwarding(self, env: Mapping[str, str] | None = None) -> Iterator[JobProcesses]:
        """Forward stop signals to the jobs while inside (main thread only; nested use keeps
        the outer handlers). `env`: variables every command started inside gets (e.g. its
        thread count)."""
        with self._lock:
            nested = self._installed > 0
            if nested:
                self._installed += 1
        if nested:
            try:
                yield self
            finally:
                with self._lock:
                    self._installed -= 1
            return
        previous = {s: signal.signal(s, self._forward) for s in STOP_SIGNALS}
        self._installed, self._received, self._env = 1, [], dict(env or {})
        try:
            yield self
        finally:
            self._installed, self._env = 0, {}
            for number, handler in previous.items():
                signal.signal(number, handler)

    def run(self, command: list[str], log: Path, label: str) -> None:
        """Run `command` to its end, its output appended to `log`. Raises `SweepStopped` when
        a stop was asked for (before it started, or while it ran: it was stopped then), and
        `JobFailed` when it exited with an error."""
        with self.forwarding(), log.open("a") as stream:
            with self._lock:
                if self._received:
                    raise SweepStopped(self._received[0], label)
                stream.write("$ " + " ".join(command) + "\n")
                stream.flush()
                job = subprocess.Popen(
                    command,
                    stdout=stream,
                    stderr=subprocess.STDOUT,
                    preexec_fn=functools.partial(die_with_parent, os.getpid()),
                    start_new_session=True,
                    env={**os.environ, "COLUMNS": "200", **self._env},
                )
                self._running.add(job)
                if self._received:  # arrived on this thread while it started: not forwarded
                    job.send_signal(self._received[0])
            try:
                returncode = job.wait()
            finally:
                with self._lock:
                    self._running.discard(job)
            if self._received:
                raise SweepStopped(self._received[0], label)
        if returncode != 0:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            raise JobFailed(f"`{label}` exited with {returncode}: {' | '.join(tail)}")


job_processes = JobProcesses()

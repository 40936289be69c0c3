"""An exclusive lock on a run directory, so two processes never train into the same one.

The lock is an advisory `flock` on `RUN/.mtv-lock`, which names its holder (pid, host, start
time). The kernel drops a `flock` when its process dies, however it dies, so a lock left by a
killed run is no lock at all: the next run takes it over without being told to. The file stays
behind (removing it while another process waits on it would let two processes hold "the" lock).
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import time
from pathlib import Path
from typing import IO, Any

LOCK_NAME = ".mtv-lock"


class RunLocked(RuntimeError):
    """Another live process holds the run directory."""


def _holder(text: str) -> str:
    try:
        info: dict[str, Any] = json.loads(text)
    except json.JSONDecodeError:
        return "an unknown process"
    return (
        f"pid {info.get('pid', '?')} on host {info.get('host', '?')} "
        f"(`{info.get('command', '?')}`, since {info.get('since', '?')})"
    )


class RunLock:
    """Held from `acquire` until `release` or the end of the process."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / LOCK_NAME
        self._handle: IO[str] | None = None

    def acquire(self, command: str = "mtv run") -> None:
        """Take the lock or raise `RunLocked` naming the process that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 (held while training)
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = _holder(handle.read())
            handle.close()
            raise RunLocked(
                f"{self.path.parent} is in use by {holder}; wait for it to finish, or give "
                "this run another --out"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "host": platform.node(),
                    "command": command,
                    "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                }
            )
        )
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    @property
    def held(self) -> bool:
        return self._handle is not None

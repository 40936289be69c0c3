"""An exclusive lock on a folder mtv writes (a run directory, a label store), so two processes
never write into the same one.

The lock is an advisory `flock` on a lock file (`RUN/.mtv-lock`; `STORE.mtv-lock` beside a label
store, which must exist before the store does), which names its holder (pid, host, start
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
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

LOCK_NAME = ".mtv-lock"


class Locked(RuntimeError):
    """Another live process holds the folder."""


def _holder(text: str) -> str:
    try:
        info: dict[str, Any] = json.loads(text)
    except json.JSONDecodeError:
        return "an unknown process"
    return (
        f"pid {info.get('pid', '?')} on host {info.get('host', '?')} "
        f"(`{info.get('command', '?')}`, since {info.get('since', '?')})"
    )


class ExclusiveLock:
    """Held from `acquire` until `release` or the end of the process."""

    def __init__(self, path: Path, guards: Path, advice: str):
        """`path`: the lock file; `guards`: the folder it protects (named in the refusal);
        `advice`: what the refused user can do."""
        self.path, self.guards, self.advice = path, guards, advice
        self._handle: IO[str] | None = None

    @classmethod
    def for_run(cls, run_dir: Path) -> ExclusiveLock:
        return cls(run_dir / LOCK_NAME, run_dir, "give this run another --out")

    @classmethod
    def for_store(cls, store: Path) -> ExclusiveLock:
        return cls(store.with_name(store.name + LOCK_NAME), store, "give it another output")

    @classmethod
    def for_preparation(cls, root: Path, beside: bool = False) -> ExclusiveLock:
        """Held while a run makes the data files it shares with other runs under `root` (a
        rendered mini-world, its labels, a tokenizer): `ROOT/.mtv-lock`, or `ROOT.mtv-lock`
        `beside` it for a folder that must not exist, or must be empty, until it is made."""
        path = root.with_name(root.name + LOCK_NAME) if beside else root / LOCK_NAME
        return cls(path, root, "let it finish")

    def acquire(
        self, command: str = "mtv run", on_wait: Callable[[str], None] | None = None
    ) -> None:
        """Take the lock. When another process holds it: raise `Locked` naming that process,
        or, given `on_wait`, tell it that process (`on_wait(holder)`) and wait for it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 (held while training)
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = _holder(handle.read())
            if on_wait is None:
                handle.close()
                raise Locked(
                    f"{self.guards} is in use by {holder}; wait for it to finish, or {self.advice}"
                ) from None
            on_wait(holder)
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
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

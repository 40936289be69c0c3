"""The consoles every command prints to, and the one shape of a command-line error."""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable

import typer
from rich.console import Console
from rich.markup import escape

from mtv.specs import SpecError


def _width(stream: object) -> int | None:
    """Rich's width: the terminal's; when piped, 200 columns (rich would assume 80 and fold wide
    tables character by character) unless COLUMNS says otherwise."""
    tty = getattr(stream, "isatty", lambda: False)()
    return None if tty or "COLUMNS" in os.environ else 200


console = Console(width=_width(sys.stdout))
errors = Console(stderr=True, width=_width(sys.stderr))


def report(message: str) -> None:
    """`error: message` on stderr."""
    # Messages quote user input: escape it, or `[x]` in a value would be read as markup.
    errors.print(f"[bold red]error[/]: {escape(message)}", highlight=False, soft_wrap=True)


def fail(message: str | SpecError) -> typer.Exit:
    """Report `message` (every problem of a spec error, one line each); the caller raises the
    returned exit (code 2)."""
    for line in message.problems if isinstance(message, SpecError) else [message]:
        report(str(line))
    return typer.Exit(code=2)


_debug = {"on": os.environ.get("MTV_DEBUG", "") not in ("", "0")}


def set_debug() -> None:
    _debug["on"] = True


def one_line(err: BaseException) -> str:
    """The error's own message on one line; the type only when the message does not speak for
    itself (an empty message, or an exception mtv did not anticipate)."""
    raw = str(err)
    if "Original Traceback" in raw:
        # Re-raised from a DataLoader worker: the worker's own error is the last line,
        # `module.Type: message`.
        last = raw.strip().splitlines()[-1]
        kind, _, message = last.partition(": ")
        return f"{kind.rsplit('.', 1)[-1]}: {message}" if message else last
    text = " ".join(raw.split())
    if isinstance(err, (OSError, ValueError, RuntimeError, KeyError, ImportError)) and text:
        if isinstance(err, OSError) and err.strerror and err.filename:
            return f"{err.filename}: {err.strerror}"
        return text.strip("\"'") if isinstance(err, KeyError) else text
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def run_guarded(command: Callable[[], object]) -> None:
    """Run the command line; an exception that no command handled becomes one line on stderr
    (and exit code 1), the traceback only with --debug or MTV_DEBUG=1. Ctrl-C outside training
    (which stops gracefully by itself) exits with 130 and one line."""
    try:
        command()
    except KeyboardInterrupt:
        if _debug["on"]:
            raise
        errors.print("interrupted", highlight=False)
        sys.exit(130)
    except Exception as err:  # the last resort: whatever it is, the user gets one line
        if _debug["on"]:
            traceback.print_exc()
            sys.exit(1)
        report(f"{one_line(err)} (rerun with --debug for the traceback)")
        sys.exit(1)

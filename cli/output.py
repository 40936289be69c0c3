"""The consoles every command prints to, and the one shape of a command-line error."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape

from mtv.specs import SpecError

console = Console()
errors = Console(stderr=True)


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

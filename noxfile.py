"""Developer sessions: `nox -s tests`, `nox -s lint`, `nox -s notebooks`."""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.sessions = ["lint", "tests"]
# The CPU wheel. On a CUDA machine, run the sessions with `--no-venv` inside an environment that
# already has a CUDA build of torch.
TORCH = "torch==2.13.0"


@nox.session
def tests(session: nox.Session) -> None:
    session.install(TORCH, "-e", ".[test]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def notebooks(session: nox.Session) -> None:
    """Execute every notebook top to bottom (outputs are not written back)."""
    session.install(TORCH, "-e", ".[notebooks]")
    paths = session.posargs or sorted(str(p) for p in Path("notebooks").glob("*.ipynb"))
    if not paths:
        session.error("no notebooks found under notebooks/")
    session.run("jupyter", "execute", *paths)

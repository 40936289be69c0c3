"""Runs shared by the evaluation, analysis and notebook tests: smoke-sized runs of every task set
of the ablation ladder and the synergy pairs, trained once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtv.analysis.runs import train_smoke_ladder


@pytest.fixture(scope="session")
def ladder_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return train_smoke_ladder(tmp_path_factory.mktemp("ladder"), steps=3)

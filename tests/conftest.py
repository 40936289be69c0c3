"""Runs shared by the evaluation, analysis and notebook tests: smoke-sized runs of every task set
of the ablation ladder and the synergy pairs, trained once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtv.analysis.runs import train_smoke_ladder
from tests.helpers import smoke


@pytest.fixture(scope="session")
def ladder_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return train_smoke_ladder(tmp_path_factory.mktemp("ladder"), steps=3)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The smoke experiment's mini-world, rendered and labelled once for the training tests
    (modules with a corpus of their own define a `corpus` fixture that replaces this one)."""
    from mtv.train import Trainer
    from mtv.world.corpus import render_corpus

    source = smoke("unused").data.source
    root = tmp_path_factory.mktemp("smoke-world") / "mini"
    render_corpus(root, source.n_images, size=source.image_size, seed=0)  # type: ignore[union-attr]
    labelling = smoke(str(root), "schedule.steps=1")  # a first run labels the corpus
    Trainer(labelling, root.parent / "label", report=lambda m: None).run()
    return str(root)

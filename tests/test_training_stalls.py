"""Stalls of the VL loss at L0, the loss of logits that ignore the image: L0 against the VL
task's own loss, the stretch finder on planted histories, and the report's naming of a stalled
run (and of none)."""

from __future__ import annotations

import math
from pathlib import Path

import polars as pl
import pytest
import torch

from mtv.analysis.sections import stall_section
from mtv.analysis.training import constant_siglip_loss, longest_stretch_at, vl_stalls
from mtv.specs import spec_to_yaml
from mtv.tasks.vl import siglip_loss
from tests.helpers import tiny_spec


@pytest.mark.parametrize("captions", [4, 64, 1024])
def test_l0_is_the_siglip_loss_of_the_best_constant_logit(captions: int) -> None:
    # Every image and caption the same vector and no scale: each logit is the bias alone, and
    # the bias with sigma(b) = 1/N is the best constant. The task's own loss must equal L0.
    same = torch.nn.functional.normalize(torch.ones(captions, 8), dim=-1)
    bias = torch.tensor(-math.log(captions - 1))
    loss = siglip_loss(same, same, torch.tensor(-30.0), bias)
    assert float(loss) == pytest.approx(constant_siglip_loss(captions), rel=1e-5)
    # and no other constant does better
    for shifted in (bias - 0.3, bias + 0.3):
        assert float(siglip_loss(same, same, torch.tensor(-30.0), shifted)) > float(loss)
    assert constant_siglip_loss(64) == pytest.approx(5.151, abs=1e-3)


def test_a_plateau_with_a_spike_is_one_stretch_when_the_gap_is_bridged() -> None:
    steps = list(range(1, 601))
    losses = [6.0 if s < 100 else 5.15 if s <= 400 else 3.0 for s in steps]
    for s in range(200, 210):  # a spike off the plateau that falls back
        losses[s - 1] = 5.9
    assert longest_stretch_at(steps, losses, 5.151, gap=20) == (100, 400, 291)
    # not bridged: the longer of the two pieces alone
    assert longest_stretch_at(steps, losses, 5.151, gap=0) == (210, 400, 191)
    assert longest_stretch_at(steps, [3.0] * 600, 5.151, gap=20) == (0, 0, 0)


def _run(folder: Path, losses: list[float]) -> str:
    folder.mkdir(parents=True)
    (folder / "spec.yaml").write_text(spec_to_yaml(tiny_spec(["vl"])))  # batch of 4 captions
    steps = list(range(1, len(losses) + 1))
    pl.DataFrame({"step": steps, "loss/vl": losses}).write_parquet(folder / "metrics.parquet")
    return str(folder)


def test_the_report_names_a_stalled_run_and_not_a_learning_one(tmp_path: Path) -> None:
    level = constant_siglip_loss(4)
    stalled = [2.6] * 20 + [level] * 300 + [1.0] * 680
    learning = [2.6 - 1.5 * k / 1000 for k in range(1000)]
    final = pl.DataFrame(
        {
            "experiment": ["vl_depth", "vl"],
            "seed": [1, 1],
            "run": [_run(tmp_path / "a", stalled), _run(tmp_path / "b", learning)],
        }
    )
    stalls = vl_stalls(final)
    flags = dict(zip(stalls["experiment"], stalls["stalled"], strict=True))
    assert flags == {"vl_depth": True, "vl": False}
    text = "\n".join(stall_section(stalls, "x_vl_loss.png"))
    assert "vl_depth seed 1 (steps 21–320, at L0 for 300 of the run's 1000 logged steps)" in text
    assert "vl seed" not in text and "![VL loss per run](x_vl_loss.png)" in text
    calm = "\n".join(stall_section(stalls.filter(pl.col("experiment") == "vl"), None))
    assert "No run sat at L0" in calm


def test_runs_at_two_grid_points_are_named_apart(tmp_path: Path) -> None:
    """A sweep over the warm-up has one experiment at two grid points: the report and the figure
    name the grid point, or two "vl seed 0" would be told apart by nobody."""
    from mtv.analysis.training import plot_vl_losses

    level = constant_siglip_loss(4)
    stalled = [2.6] * 20 + [level] * 300 + [1.0] * 680
    learning = [2.6 - 1.5 * k / 1000 for k in range(1000)]
    final = pl.DataFrame(
        {
            "experiment": ["vl", "vl"],
            "variant": ["schedule.warmup_steps=50", "schedule.warmup_steps=200"],
            "seed": [0, 0],
            "run": [_run(tmp_path / "a", stalled), _run(tmp_path / "b", learning)],
        }
    )
    stalls = vl_stalls(final)
    assert stalls["variant"].to_list() == ["schedule.warmup_steps=50", "schedule.warmup_steps=200"]
    text = "\n".join(stall_section(stalls, None))
    assert "vl (schedule.warmup_steps=50) seed 0 (steps 21–320" in text
    assert "warmup_steps=200) seed" not in text
    figure = plot_vl_losses(final)
    titles = [ax.get_title() for ax in figure.axes if ax.get_title()]
    assert titles == ["vl (schedule.warmup_steps=50)", "vl (schedule.warmup_steps=200)"]

"""The `attributes` task (the positive control for shape and colour): its box pooling and loss
against independent transcriptions, its name lookup, and that it learns planted attributes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from mtv.data.batch import Batch, name_id
from mtv.models.vit import EncoderOutput
from mtv.specs import load_spec
from mtv.specs.model import EncoderSpec
from mtv.tasks.attributes import (
    AttributesTask,
    AttributesTaskSpec,
    attribute_loss,
    box_patch_weights,
)
from mtv.tasks.base import GLOBAL, StepInputs, TaskEnv
from mtv.world.geometry import SHAPE_NAMES
from mtv.world.scene import COLORS, SIZES

PARTS = [["small", "large"], ["red", "blue", "green"], ["cube", "sphere"]]


def test_box_weights_are_the_box_share_of_each_patch() -> None:
    """Against a supersampled count: the fraction of each cell's sample points inside the box."""
    boxes = torch.tensor([[[0.1, 0.2, 0.55, 0.9], [0.0, 0.0, 1.0, 1.0], [0.3, 0.3, 0.3, 0.3]]])
    rows, cols, fine = 4, 5, 200
    weights = box_patch_weights(boxes, (rows, cols))
    assert weights.shape == (1, 3, rows * cols)
    for r_index, box in enumerate(boxes[0].tolist()):
        x0, y0, x1, y1 = box
        for cell in range(rows * cols):
            row, col = divmod(cell, cols)
            xs = (col + (np.arange(fine) + 0.5) / fine) / cols
            ys = (row + (np.arange(fine) + 0.5) / fine) / rows
            inside = ((xs >= x0) & (xs < x1))[None, :] & ((ys >= y0) & (ys < y1))[:, None]
            assert weights[0, r_index, cell].item() == pytest.approx(inside.mean(), abs=0.011)


def test_attribute_loss_matches_transcription() -> None:
    g = torch.Generator().manual_seed(0)
    logits = [torch.randn(5, 3, generator=g, dtype=torch.float64) for _ in range(2)]
    labels = torch.tensor([[0, 1], [2, 0], [1, 1], [0, 0], [2, 1]])
    known = torch.tensor([True, False, True, True, False])
    expected = 0.0
    for part in range(2):
        terms = []
        for i in range(5):
            if known[i]:
                row = logits[part][i].tolist()
                log_z = math.log(sum(math.exp(v) for v in row))
                terms.append(-(row[labels[i, part]] - log_z))
        expected += sum(terms) / len(terms)
    assert attribute_loss(logits, labels, known).item() == pytest.approx(expected, rel=1e-9)
    assert attribute_loss(logits, labels, torch.zeros(5, dtype=torch.bool)).item() == 0.0


def _task(max_regions: int = 2) -> AttributesTask:
    spec = AttributesTaskSpec(
        name_parts=PARTS, classify={"color": 1, "shape": 2}, max_regions=max_regions
    )
    env = TaskEnv(EncoderSpec(width=16, depth=1, heads=2, patch_size=8), 32, 16, 100, 4)
    return AttributesTask(spec, env)


def test_names_are_looked_up_to_their_classes_and_unknown_ones_left_out() -> None:
    task = _task()
    names = ["small red cube", "LARGE  green sphere", "large pink cube", "small blue sphere"]
    ids = torch.tensor([name_id(n) for n in names])
    valid = torch.tensor([True, True, True, False])
    classes, known = task.labels_of(ids, valid)
    assert known.tolist() == [True, True, False, False]
    assert classes[0].tolist() == [0, 0] and classes[1].tolist() == [2, 1]


def _inputs(task: AttributesTask, colors: torch.Tensor, planted: bool, seed: int) -> StepInputs:
    """Images of 4x4 patches with one box each (the left half): its tokens carry the colour's
    one-hot (planted) or noise alone."""
    g = torch.Generator().manual_seed(seed)
    batch = colors.shape[0]
    tokens = 0.1 * torch.randn(batch, 16, 16, generator=g)
    if planted:
        grid = tokens.reshape(batch, 4, 4, 16)
        grid[:, :, :2, :3] += torch.nn.functional.one_hot(colors, 3)[:, None, None, :].float()
    names = [f"small {PARTS[1][c]} cube" for c in colors.tolist()]
    boxes = torch.tensor([[0.0, 0.0, 0.5, 1.0], [0.0, 0.0, 0.0, 0.0]]).repeat(batch, 1, 1)
    data = Batch(
        images=torch.zeros(batch, 3, 32, 32),
        boxes=boxes,
        box_valid=torch.tensor([True, False]).repeat(batch, 1),
        region_name_ids=torch.tensor([[name_id(n), 0] for n in names]),
    )
    encoded = EncoderOutput(tokens=tokens, prenorm=tokens, grid=(4, 4))
    return StepInputs(data, {GLOBAL: encoded}, {}, {}, torch.zeros(()))


@pytest.mark.parametrize("planted", [True, False])
def test_the_task_learns_attributes_its_tokens_carry_and_no_others(planted: bool) -> None:
    torch.manual_seed(0)
    task = _task()
    optimiser = torch.optim.Adam(task.parameters(), lr=0.05)
    for step in range(150):
        colors = torch.randint(0, 3, (32,), generator=torch.Generator().manual_seed(step))
        out = task(_inputs(task, colors, planted, step))
        optimiser.zero_grad()
        out.loss.backward()
        optimiser.step()
    colors = torch.randint(0, 3, (300,), generator=torch.Generator().manual_seed(999))
    logged = task(_inputs(task, colors, planted, 999)).logged
    assert logged["regions"].item() == 300  # the padding slot is not counted
    assert logged["shape_accuracy"].item() == 1.0  # one shape only: learnt from the bias
    if planted:
        assert logged["color_accuracy"].item() > 0.97
    else:
        assert logged["color_accuracy"].item() < 0.5


def test_a_vocabulary_that_matches_no_name_is_reported() -> None:
    task = _task()
    assert task.warnings({"regions": 0.0}) and not task.warnings({"regions": 12.0})


@pytest.mark.parametrize(
    "fields",
    [
        {"classify": {"color": 3}},
        {"classify": {"a": 1, "b": 1}},
        {"name_parts": [["small"], []], "classify": {"a": 0}},
        {"name_parts": [["small", "small"]], "classify": {"a": 0}},
    ],
)
def test_spec_refuses_bad_parts(fields: dict) -> None:
    with pytest.raises(ValidationError):
        AttributesTaskSpec(**{"name_parts": PARTS, "classify": {"color": 1}, **fields})


def test_the_control_experiment_spells_the_world_vocabulary() -> None:
    """The control's name_parts must be the world's own words, in the order names are made
    ("small red cube"), or its loss would quietly see no region at all."""
    spec = load_spec("experiments/control.yaml")
    attributes = next(t for t in spec.tasks if t.kind == "attributes")
    assert attributes.name_parts == [list(SIZES), list(COLORS), list(SHAPE_NAMES)]
    assert attributes.classify == {"color": 1, "shape": 2}
    oracle = spec.data.labels.oracle
    assert oracle.boxes.wrong_name_rate == 0.0 and oracle.depth.noise == 0.0


def test_the_control_trains_end_to_end_on_exact_boxes(corpus: str, tmp_path) -> None:
    """Through the planner, loader and trainer: every region the loader hands over is named from
    the vocabulary (exact labels), and the task's loss and accuracies are logged."""
    import polars as pl

    from mtv.train import Trainer

    spec = load_spec(
        "experiments/control.yaml",
        [
            f"data.source.root={corpus}",
            "data.source.camera_distance=[5.0, 6.5]",  # the test corpus's cameras
            "data.source.n_images=64",
            "data.source.image_size=32",
            "data.views.global_size=32",
            "data.views.local_size=16",
            "data.batch_size=8",
            "data.loader.workers=0",
            "model.size=tiny",
            "schedule.steps=3",
            "schedule.warmup_steps=1",
            "runtime.compile=false",
            "output.log_every=1",
        ],
    )
    Trainer(spec, tmp_path / "run", report=lambda _: None).run()
    metrics = pl.read_parquet(tmp_path / "run" / "metrics.parquet")
    assert metrics["attributes/regions"].min() > 0
    assert metrics["loss/attributes"].is_finite().all()
    assert {"attributes/color_accuracy", "attributes/shape_accuracy"} <= set(metrics.columns)

"""The small-run calibration fields: a batch-aware SigLIP bias, a learning-rate multiplier for
the logit scale and bias, the teacher-momentum schedule, prototype freezing, per-view photometric
augmentation and local-crop flips; and `paper_b16.yaml` keeping the paper's values."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mtv.data.loader import ViewBuilder
from mtv.data.photometric import (
    adjust_brightness,
    adjust_hue,
    augment,
    gaussian_blur,
    grayscale,
    hsv_to_rgb,
    rgb_to_hsv,
    solarize,
)
from mtv.graph import TaskGraph
from mtv.specs import load_spec
from mtv.specs.experiment import PhotometricSpec
from mtv.specs.model import TeacherSpec
from mtv.train.step import TrainStep
from tests.helpers import ALL_TASKS, random_batch, tiny_spec

ROOT = Path(__file__).resolve().parents[1]


def test_batch_aware_bias_matches_the_share_of_positive_pairs() -> None:
    spec = tiny_spec(
        [
            {"kind": "vl", "logit_bias_init": "batch"},
            {"kind": "ground", "logit_bias_init": "batch", "max_regions": 4},
        ],
        data={"labels": {"kinds": ["boxes", "depth"]}, "batch_size": 32},
    )
    graph = TaskGraph(spec)
    vl, ground = graph.student.tasks["vl"].logits, graph.student.tasks["ground"].logits
    assert vl.logit_bias.item() == pytest.approx(-math.log(31))  # 1 positive among 32 columns
    assert ground.logit_bias.item() == pytest.approx(-math.log(32 * 4 - 1))
    # At the prior bias and zero similarity, the mean predicted probability is the share of
    # positives (1/32): that is what the initial loss of SigLIP's -10 misses at this batch.
    assert torch.sigmoid(vl.logit_bias).item() * 31 == pytest.approx(1 - 1 / 32, rel=1e-3)
    fixed = TaskGraph(tiny_spec([{"kind": "vl", "logit_bias_init": -3.0}]))
    assert fixed.student.tasks["vl"].logits.logit_bias.item() == -3.0


def test_logit_parameters_get_their_own_learning_rate(tmp_path: Path) -> None:
    spec = tiny_spec([{"kind": "vl", "logit_lr_scale": 10.0}, "ground"])
    graph = TaskGraph(spec)
    groups = graph.parameter_groups()
    scaled = next(g for g in groups if g["lr_scale"] == 10.0)
    vl = graph.student.tasks["vl"].logits
    assert {id(p) for p in scaled["params"]} == {id(vl.logit_scale), id(vl.logit_bias)}
    assert sum(len(g["params"]) for g in groups) == sum(
        1 for p in graph.student.parameters() if p.requires_grad
    )
    runner = TrainStep(spec, graph, torch.device("cpu"), world=1)
    runner([random_batch(graph)], step=5, lr=2e-4)
    lrs = {g["lr_scale"]: g["lr"] for g in runner.optimizer.param_groups}
    assert lrs[10.0] == pytest.approx(2e-3) and lrs[1.0] == pytest.approx(2e-4)


def test_teacher_momentum_is_fixed_or_a_cosine_ramp() -> None:
    fixed = TeacherSpec(momentum=0.994)
    assert {fixed.momentum_at(s, 100) for s in (0, 50, 99)} == {0.994}
    ramp = TeacherSpec(momentum=0.99, momentum_schedule="cosine", final_momentum=1.0)
    values = [ramp.momentum_at(s, 101) for s in range(101)]
    assert values[0] == pytest.approx(0.99) and values[-1] == pytest.approx(1.0)
    assert values[50] == pytest.approx(0.995)  # the cosine's midpoint
    assert all(a <= b for a, b in itertools.pairwise(values))


def test_the_graph_moves_the_teacher_with_the_scheduled_momentum() -> None:
    spec = tiny_spec(
        ALL_TASKS,
        model={
            "size": "tiny",
            "teacher": {"momentum": 0.9, "momentum_schedule": "cosine", "final_momentum": 1.0},
        },
        schedule={"steps": 11, "warmup_steps": 1},
    )
    graph = TaskGraph(spec)
    with torch.no_grad():
        for p in graph.student.encoder.parameters():
            p.add_(1.0)
    teacher, student = graph.teacher.encoder.pos_embed, graph.student.encoder.pos_embed
    before = teacher.clone()
    graph.after_optimizer_step(step=10)  # the last step: momentum 1, the teacher stays
    torch.testing.assert_close(teacher, before)
    graph.after_optimizer_step(step=0, skipped=torch.tensor(True))  # a skipped step: it stays
    torch.testing.assert_close(teacher, before)
    graph.after_optimizer_step(step=0, skipped=torch.tensor(False))  # momentum 0.9
    torch.testing.assert_close(teacher, 0.9 * before + 0.1 * student)


def test_prototypes_stay_frozen_for_the_first_steps(tmp_path: Path) -> None:
    spec = tiny_spec(
        ["vl", "distill", "masked", "koleo"],
        task_defaults={
            kind: {
                "n_prototypes": 64,
                "hidden_dim": 32,
                "bottleneck_dim": 16,
                "freeze_prototypes_steps": 2,
            }
            for kind in ("distill", "masked")
        },
    )
    graph = TaskGraph(spec)
    runner = TrainStep(spec, graph, torch.device("cpu"), world=1)
    batch = random_batch(graph)

    def train_step(step: int) -> None:
        runner([batch], step, lr=1e-3)

    tasks = graph.student.tasks
    prototypes = {k: tasks[k].head.prototypes for k in ("distill", "masked")}
    start = {k: p.detach().clone() for k, p in prototypes.items()}
    mlp = tasks["distill"].head.mlp[0].weight.detach().clone()
    for step in range(2):
        train_step(step)
    for kind, p in prototypes.items():
        torch.testing.assert_close(p.detach(), start[kind])  # frozen at steps 0 and 1
    assert not torch.equal(tasks["distill"].head.mlp[0].weight, mlp)  # the rest trains
    train_step(2)
    assert all(not torch.equal(p.detach(), start[k]) for k, p in prototypes.items())


# Photometric augmentation ---------------------------------------------------------------------


def test_colour_operations_do_what_they_say() -> None:
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, 8, 8, generator=g)
    torch.testing.assert_close(hsv_to_rgb(rgb_to_hsv(image)), image, atol=1e-5, rtol=0)
    red = torch.tensor([0.8, 0.1, 0.1])[:, None, None].expand(3, 2, 2)
    torch.testing.assert_close(adjust_hue(red, 1 / 3)[:, 0, 0], torch.tensor([0.1, 0.8, 0.1]))
    grey = grayscale(image)
    expected = 0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]
    torch.testing.assert_close(grey[0], expected)
    torch.testing.assert_close(adjust_brightness(image, 0.5), image * 0.5)
    torch.testing.assert_close(solarize(image), torch.where(image >= 0.5, 1 - image, image))
    flat = torch.full((3, 9, 9), 0.3)
    torch.testing.assert_close(gaussian_blur(flat, 1.0), flat)  # a constant stays constant
    spike = torch.zeros(1, 9, 9)
    spike[0, 4, 4] = 1.0
    blurred = gaussian_blur(spike, 1.0)
    assert blurred.sum().item() == pytest.approx(1.0) and blurred[0, 4, 4] < 0.2


def test_augment_with_every_probability_zero_is_the_identity_and_is_seeded() -> None:
    image = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(1))
    off = PhotometricSpec(
        jitter_probability=0, grayscale_probability=0, blur_probability=0, solarize_probability=0
    )
    assert torch.equal(augment(image, off, torch.Generator().manual_seed(0)), image)
    grey = PhotometricSpec(jitter_probability=0, grayscale_probability=1, blur_probability=0)
    out = augment(image, grey, torch.Generator().manual_seed(0))
    assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])
    full = PhotometricSpec(solarize_probability=0.5)
    first = augment(image, full, torch.Generator().manual_seed(3))
    again = augment(image, full, torch.Generator().manual_seed(3))
    assert torch.equal(first, again) and not torch.equal(first, image)
    assert first.min() >= 0 and first.max() <= 1


def test_photometric_augmentation_changes_pixels_not_boxes_or_depth() -> None:
    spec = tiny_spec(ALL_TASKS)
    graph = TaskGraph(spec)
    request = graph.plan.view_request()
    image = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    depth = torch.rand(32, 32)
    labels = {
        "depth": depth,
        "depth_valid": torch.ones(32, 32, dtype=torch.bool),
        "boxes": np.array([[0.1, 0.1, 0.6, 0.7]], dtype=np.float32),
        "names": ["small red cube"],
    }

    def views(**view_fields: object) -> dict:
        data = spec.data.model_copy(
            update={"views": spec.data.views.model_copy(update=view_fields)}
        )
        builder = ViewBuilder(data, request, tokenizer=lambda texts: torch.zeros(len(texts), 4))
        return builder(image, "a caption", labels, torch.Generator().manual_seed(5))

    plain = views()
    jittered = views(
        global_photometric=PhotometricSpec(jitter_probability=1.0, blur_probability=0.0),
        local_photometric=PhotometricSpec(grayscale_probability=1.0),
    )
    for key in ("depth", "depth_valid", "boxes", "box_valid", "crop"):
        assert torch.equal(plain[key], jittered[key]), key
    assert not torch.equal(plain["images"], jittered["images"])
    local = jittered["local_images"]
    assert torch.equal(local[:, 0], local[:, 1])  # greyscale local crops
    assert jittered["images"].min() >= -1 and jittered["images"].max() <= 1


def test_local_flips_leave_the_global_view_alone() -> None:
    spec = tiny_spec(ALL_TASKS)
    graph = TaskGraph(spec)
    request = graph.plan.view_request()
    image = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    labels = {
        "depth": torch.rand(32, 32),
        "depth_valid": torch.ones(32, 32, dtype=torch.bool),
        "boxes": np.zeros((0, 4), np.float32),
        "names": [],
    }
    flips = []
    for seed in range(8):
        data = spec.data.model_copy(
            update={"views": spec.data.views.model_copy(update={"local_hflip": True})}
        )
        builder = ViewBuilder(data, request, tokenizer=lambda texts: torch.zeros(len(texts), 4))
        out = builder(image, "c", labels, torch.Generator().manual_seed(seed))
        flips.append(out["crop"][4].item())
    assert flips == [0.0] * 8  # the global crop is never flipped


# The paper's setting --------------------------------------------------------------------------


def test_paper_b16_keeps_the_papers_values() -> None:
    spec = load_spec(ROOT / "experiments" / "paper_b16.yaml")
    vl = next(t for t in spec.tasks if t.kind == "vl")
    assert vl.logit_bias_init == -10.0 and vl.logit_scale_init == pytest.approx(math.log(10))
    assert vl.logit_lr_scale == 1.0
    teacher = spec.model.teacher
    assert teacher.momentum == 0.994 and teacher.momentum_schedule == "fixed"
    assert spec.optim.lr == 5e-4 and spec.optim.weight_decay == 0.0
    assert spec.schedule.warmup_steps == 1000 and spec.data.batch_size == 4096
    distill = next(t for t in spec.tasks if t.kind == "distill")
    assert distill.n_prototypes == 32768 and distill.n_local_crops == 6
    assert spec.data.labels.oracle.exact

"""The task graph: shared passes, gradient flow, the teacher, compile and precision."""

from __future__ import annotations

import copy
import hashlib
import math
from collections import Counter

import pytest
import torch
from torch import nn

from mtv.graph import GraphError, TaskGraph, plan_graph
from mtv.graph.passes import encode_pass, encode_passes
from mtv.tasks.base import GLOBAL, LOCAL, MASKED, PredictsDepth, ScoresImageText
from tests.helpers import ALL_TASKS, random_batch, tiny_spec

SETS = {
    "vl": ["vl"],
    "vl_ssl": ["vl", "distill", "masked", "koleo"],
    "vl_ground_depth": ["vl", "ground", "depth"],
    "all": ALL_TASKS,
}


def count_calls(module: nn.Module, counter: Counter[str], name: str) -> None:
    forward = module.forward

    def counted(*args: object, **kwargs: object) -> object:
        counter[name] += 1
        return forward(*args, **kwargs)

    module.forward = counted  # type: ignore[method-assign]


@pytest.mark.parametrize(
    ("tasks", "student_passes", "teacher_passes"),
    [
        (SETS["vl"], 1, 0),
        (SETS["vl_ground_depth"], 1, 0),
        # global + masked in one batched call, local crops in another
        (SETS["vl_ssl"], 2, 1),
        (ALL_TASKS, 2, 1),
    ],
)
def test_encoder_runs_once_per_distinct_view(
    tasks: list[str], student_passes: int, teacher_passes: int
) -> None:
    torch.manual_seed(0)
    graph = TaskGraph(tiny_spec(tasks))
    calls: Counter[str] = Counter()
    count_calls(graph.student.encoder, calls, "student")
    if graph.student.text is not None:
        count_calls(graph.student.text, calls, "text")
    if graph.teacher is not None:
        count_calls(graph.teacher.encoder, calls, "teacher")
    graph.step(random_batch(graph))
    assert calls["student"] == student_passes
    assert calls["teacher"] == teacher_passes
    assert calls["text"] == 1  # captions and region names share one text-tower pass


def test_the_batched_clean_and_masked_pass_equals_two_passes() -> None:
    torch.manual_seed(0)
    graph = TaskGraph(tiny_spec(ALL_TASKS))
    batch = random_batch(graph)
    student = graph.student
    with torch.no_grad():
        batched = encode_passes(student.encoder, student.plan.student, batch)
        for view in student.plan.student:
            alone = encode_pass(student.encoder, view, batch)
            torch.testing.assert_close(batched[view.view].tokens, alone.tokens)
            for layer, tap in alone.layers.items():
                torch.testing.assert_close(batched[view.view].layers[layer], tap)
            if view.pooled:
                torch.testing.assert_close(batched[view.view].pooled, alone.pooled)
    assert batch.patch_mask is not None and batch.patch_mask.any()
    assert not torch.allclose(batched["global"].tokens, batched["masked"].tokens)


def test_plan_shares_the_global_pass() -> None:
    plan = plan_graph(tiny_spec(ALL_TASKS))
    by_view = {p.view: p for p in plan.student}
    assert list(by_view) == [GLOBAL, MASKED, LOCAL]
    assert set(by_view[GLOBAL].consumers) == {"vl", "koleo", "ground", "depth"}
    assert by_view[GLOBAL].layers == (1, 2, 3, 4) and by_view[GLOBAL].pooled
    assert not by_view[MASKED].pooled  # iBOT reads patch tokens only
    assert [p.view for p in plan.teacher] == [GLOBAL]
    text = plan.describe()
    assert "student encoder: 3 pass(es)" in text and "EMA teacher" in text


@pytest.mark.parametrize("kind", ALL_TASKS)
def test_every_task_sends_gradient_into_the_encoder(kind: str) -> None:
    torch.manual_seed(0)
    graph = TaskGraph(tiny_spec(ALL_TASKS))
    out = graph.step(random_batch(graph))
    out.losses[kind].backward()
    encoder = graph.student.encoder
    for name in ("patch_embed.weight", "blocks.0.attn.qkv.weight"):
        grad = dict(encoder.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, (kind, name)


NO_IDLE_CASES = {
    **SETS,
    **{kind: [kind] for kind in ALL_TASKS},
    "distill_mean_patch": [{"kind": "distill", "token": "mean_patch"}],
}


# Encoder parts that no task of the set reads, hence frozen.
FROZEN = {"ground": {"pool", "norm"}, "masked": {"pool"}, "depth": {"pool"}}
FROZEN["distill_mean_patch"] = {"pool"}


@pytest.mark.parametrize("case", list(NO_IDLE_CASES))
def test_no_parameter_is_left_without_gradient(case: str) -> None:
    """What DDP requires without find_unused_parameters: every trainable tensor gets a grad,
    whatever the task set (parts no task reads are frozen, not left idle)."""
    torch.manual_seed(0)
    graph = TaskGraph(tiny_spec(NO_IDLE_CASES[case]))
    graph.step(random_batch(graph)).total.backward()
    missing = [n for n, p in graph.student.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    frozen = {n.split(".")[1] for n, p in graph.student.named_parameters() if not p.requires_grad}
    assert frozen == FROZEN.get(case, set())


def test_total_is_the_weighted_sum_and_reports_are_detached() -> None:
    torch.manual_seed(0)
    graph = TaskGraph(tiny_spec(ALL_TASKS))
    out = graph.step(random_batch(graph))
    weights = graph.plan.weights
    expected = sum(weights[k] * loss for k, loss in out.losses.items())
    torch.testing.assert_close(out.total, expected)
    assert weights["masked"] == 2.0 and weights["koleo"] == 0.1
    assert all(torch.isfinite(v) for v in out.losses.values())
    assert all(not v.requires_grad for v in out.logged.values())
    assert {"distill/teacher_entropy", "depth/ssi", "vl/logit_scale"} <= set(out.logged)


def test_other_code_reaches_tasks_through_their_declared_interfaces() -> None:
    """`task_with(interface)` finds the task that implements a protocol, whatever its kind: the
    image-text scorer's logit scale/bias, the depth predictor's head (what evaluation reads), and
    nothing when no task implements one."""
    graph = TaskGraph(tiny_spec(["vl", "ground", "depth"]))
    student = graph.student
    scorer = student.task_with(ScoresImageText)
    assert scorer is student.tasks["vl"]  # not ground, whose logits score regions
    assert scorer.image_text_logits() is student.tasks["vl"].logits
    predictor = student.task_with(PredictsDepth)
    assert predictor is student.tasks["depth"]
    batch = random_batch(graph)
    with torch.no_grad():
        encoded = student.encoder(batch.images, layers=predictor.depth_layers(), pool=False)
        disparity = predictor.predict_depth(encoded.layers, encoded.grid, (20, 24))
    assert disparity.shape == (batch.size, 1, 20, 24)
    vl_only = TaskGraph(tiny_spec(["vl"])).student
    assert vl_only.task_with(PredictsDepth) is None


def test_teacher_temperature_follows_the_step() -> None:
    torch.manual_seed(0)
    graph = TaskGraph(tiny_spec(["distill"]))  # 100 steps, warm-up over 30% = 30 steps
    batch = random_batch(graph)
    temps = [graph.step(batch, s).logged["distill/teacher_temp"].item() for s in (0, 15, 30, 90)]
    assert temps == pytest.approx([0.04, 0.055, 0.07, 0.07])


def test_missing_label_is_refused_before_any_module_is_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = tiny_spec(["vl", "depth"], data={"labels": {"kinds": ["boxes"]}})
    import mtv.graph.task_graph

    def must_not_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("modules were built")

    monkeypatch.setattr(mtv.graph.task_graph, "StudentModel", must_not_build)
    with pytest.raises(GraphError) as info:
        TaskGraph(spec)
    (problem,) = info.value.problems
    assert problem.kind == "depth" and problem.task_index == 1 and "'depth'" in problem.message


def test_conflicts_are_refused() -> None:
    with pytest.raises(GraphError, match="already appears"):
        plan_graph(tiny_spec(["vl", "vl"]))
    with pytest.raises(GraphError, match=r"outside the encoder's 1\.\.4"):
        plan_graph(tiny_spec([{"kind": "depth", "layers": [1, 2, 3, 9]}]))  # type: ignore[list-item]
    with pytest.raises(GraphError, match="not a multiple of the patch size"):
        plan_graph(tiny_spec(["distill"], data={"views": {"local_size": 12}}))
    with pytest.raises(GraphError, match="need at least one masked"):
        plan_graph(tiny_spec([{"kind": "masked", "mask_ratio": 0.01}]))  # type: ignore[list-item]


def test_ema_teacher_update_and_isolation() -> None:
    torch.manual_seed(0)
    graph = TaskGraph(tiny_spec(["vl", "distill", "masked"]))
    assert graph.teacher is not None
    teacher_ids = {id(p) for p in graph.teacher.parameters()}
    assert not teacher_ids & {id(p) for p in graph.student.parameters()}
    assert all(not p.requires_grad for p in graph.teacher.parameters())
    # The teacher mirrors the encoder and both SSL heads, nothing else.
    assert set(graph.teacher.heads) == {"distill", "masked"}
    with torch.no_grad():
        for p in graph.student.parameters():
            p.add_(torch.randn_like(p))
    student = dict(graph.student.named_parameters())
    before = {n: p.clone() for n, p in graph.teacher.named_parameters()}

    def mirror(
        teacher_name: str,
    ) -> str:  # teacher "heads.distill.head.x" <- "tasks.distill.head.x"
        return teacher_name.replace("heads.", "tasks.", 1)

    graph.after_optimizer_step(teacher_momentum=0.9)
    for name, value in graph.teacher.named_parameters():
        torch.testing.assert_close(value, 0.9 * before[name] + 0.1 * student[mirror(name)])
    graph.after_optimizer_step()  # the spec's momentum, 0.994
    for name, value in graph.teacher.named_parameters():
        expected = 0.9 * before[name] + 0.1 * student[mirror(name)]
        torch.testing.assert_close(value, 0.994 * expected + 0.006 * student[mirror(name)])


def test_logit_scales_are_clamped_after_the_optimizer_step() -> None:
    graph = TaskGraph(tiny_spec(["vl", "ground"]))
    with torch.no_grad():
        graph.student.tasks["vl"].logits.logit_scale.fill_(7.0)
        graph.student.tasks["ground"].logits.logit_scale.fill_(9.0)
    graph.after_optimizer_step()
    limit = math.log(100.0)
    for kind in ("vl", "ground"):
        assert graph.student.tasks[kind].logits.logit_scale.item() == pytest.approx(limit)


def test_state_dict_round_trip_covers_teacher_and_centers() -> None:
    torch.manual_seed(0)
    graph = TaskGraph(tiny_spec(ALL_TASKS))
    batch = random_batch(graph)
    graph.step(batch, 1)  # moves the centers
    graph.after_optimizer_step(teacher_momentum=0.5)
    state = graph.state_dict()
    torch.manual_seed(1)
    again = TaskGraph(tiny_spec(ALL_TASKS))
    again.load_state_dict(state)
    for kind in ("distill", "masked"):
        center = graph.student.tasks[kind].centering.center
        assert center.abs().sum() > 0
        torch.testing.assert_close(again.student.tasks[kind].centering.center, center)
    expected, restored = graph.step(batch, 2).losses, again.step(batch, 2).losses
    for kind, loss in expected.items():
        torch.testing.assert_close(restored[kind], loss)


def test_views_reach_the_right_encoder_calls() -> None:
    """Student: the global crop twice in one call (the first half unmasked, the second with the
    batch's mask), local crops; teacher: the unmasked global crop only."""
    torch.manual_seed(0)
    graph = TaskGraph(tiny_spec(ALL_TASKS))
    batch = random_batch(graph)
    seen: list[tuple[str, tuple[int, ...], bool]] = []

    def spy(name: str, module: nn.Module) -> None:
        forward = module.forward

        def wrapped(images, mask=None, layers=(), pool=True):  # type: ignore[no-untyped-def]
            if mask is not None:
                assert not mask[:4].any() and torch.equal(mask[4:], batch.patch_mask)
                assert torch.equal(images[:4], images[4:])
            seen.append((name, tuple(images.shape), mask is not None))
            return forward(images, mask=mask, layers=layers, pool=pool)

        module.forward = wrapped  # type: ignore[method-assign]

    spy("student", graph.student.encoder)
    assert graph.teacher is not None
    spy("teacher", graph.teacher.encoder)
    graph.step(batch)
    assert sorted(seen) == sorted(
        [
            ("teacher", (4, 3, 32, 32), False),
            ("student", (8, 3, 32, 32), True),
            ("student", (4 * 6, 3, 16, 16), False),
        ]
    )


def test_padding_regions_may_hold_nan() -> None:
    torch.manual_seed(0)
    graph = TaskGraph(tiny_spec(["ground"]))
    batch = random_batch(graph)
    assert batch.boxes is not None and batch.box_valid is not None
    assert (~batch.box_valid).any()
    clean = graph.step(batch).losses["ground"]
    batch.boxes = torch.where(batch.box_valid[..., None], batch.boxes, torch.nan)
    poisoned = graph.step(batch)
    torch.testing.assert_close(poisoned.losses["ground"], clean)
    poisoned.total.backward()
    assert all(
        torch.isfinite(p.grad).all() for p in graph.student.parameters() if p.grad is not None
    )


def test_student_and_teacher_compile_to_one_graph_each() -> None:
    """fullgraph=True fails on any graph break; two steps with different step values must reuse
    the one graph (schedules are tensors, not Python numbers)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()  # reset() keeps the counts of graphs compiled by earlier tests
    torch.manual_seed(0)
    graph = TaskGraph(tiny_spec(ALL_TASKS))
    batch = random_batch(graph)
    reference = copy.deepcopy(graph)
    graph.wrap_student(lambda m: torch.compile(m, backend="eager", fullgraph=True))
    graph.wrap_teacher(lambda f: torch.compile(f, backend="eager", fullgraph=True))
    for step in (3, 4):
        eager = reference.step(batch, step)
        compiled = graph.step(batch, step)
        for kind in ALL_TASKS:
            torch.testing.assert_close(
                compiled.losses[kind], eager.losses[kind], atol=1e-5, rtol=1e-4
            )
    compiled.total.backward()
    assert graph.student.encoder.patch_embed.weight.grad is not None
    assert counters["stats"]["unique_graphs"] == 2  # one student graph, one teacher graph
    assert not counters["graph_break"]


def test_depth_head_and_losses_stay_fp32_under_bf16_autocast() -> None:
    torch.manual_seed(0)
    graph = TaskGraph(tiny_spec(ALL_TASKS))
    batch = random_batch(graph)
    dtypes: dict[str, torch.dtype] = {}

    def record(name: str):
        def hook(module: nn.Module, args: object, output: torch.Tensor) -> None:
            dtypes[name] = output.dtype

        return hook

    for name, module in graph.student.tasks["depth"].head.named_modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            module.register_forward_hook(record(f"depth.{name}"))
    graph.student.encoder.blocks[0].register_forward_hook(record("encoder.block0"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = graph.step(batch)
    assert dtypes.pop("encoder.block0") == torch.bfloat16  # autocast really was on
    assert dtypes and set(dtypes.values()) == {torch.float32}
    assert all(loss.dtype == torch.float32 for loss in out.losses.values())
    out.total.backward()


def test_name_ids_are_stable_and_normalised() -> None:
    from mtv.data.batch import name_id

    assert name_id("Small  Red cube") == name_id("small red cube") == name_id(" small red cube ")
    assert name_id("small red cube") != name_id("small red cone")
    # A fixed value: ids must agree across processes, runs and machines (no salted hash()).
    digest = hashlib.blake2b(b"cube", digest_size=8).digest()
    assert name_id("cube") == int.from_bytes(digest, "little", signed=True)

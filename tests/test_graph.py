"""The task graph: shared passes, gradient flow, the teacher, compile and precision."""

from __future__ import annotations

import copy
from collections import Counter

import pytest
import torch
from torch import nn

from mtv.graph import GraphError, TaskGraph, plan_graph
from mtv.tasks.base import GLOBAL, LOCAL, MASKED
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
        (SETS["vl_ssl"], 3, 1),
        (ALL_TASKS, 3, 1),
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
    assert all(not v.requires_grad for v in out.report.values())
    assert {"distill/teacher_entropy", "depth/ssi", "vl/logit_scale"} <= set(out.report)


def test_teacher_temperature_follows_the_step() -> None:
    torch.manual_seed(0)
    graph = TaskGraph(tiny_spec(["distill"]))  # 100 steps, warm-up over 30% = 30 steps
    batch = random_batch(graph)
    temps = [graph.step(batch, s).report["distill/teacher_temp"].item() for s in (0, 15, 30, 90)]
    assert temps == pytest.approx([0.04, 0.055, 0.07, 0.07])


def test_missing_label_is_refused_before_any_module_is_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = tiny_spec(["vl", "depth"], data={"labels": {"kinds": ["boxes"]}})
    import mtv.graph

    def must_not_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("modules were built")

    monkeypatch.setattr(mtv.graph, "StudentModel", must_not_build)
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
    # Move the student, then check θ_t <- m θ_t + (1 - m) θ_s on every pair.
    with torch.no_grad():
        for p in graph.student.parameters():
            p.add_(torch.randn_like(p))
    before = [(t.clone(), s.clone()) for t, s in graph.teacher_parameter_pairs()]
    graph.update_teacher(momentum=0.9)
    pairs = list(graph.teacher_parameter_pairs())
    assert len(pairs) == len(before) == len(list(graph.teacher.parameters()))
    for (t_before, s), (t_after, _) in zip(before, pairs, strict=True):
        torch.testing.assert_close(t_after, 0.9 * t_before + 0.1 * s)
    # The teacher mirrors the encoder and both SSL heads, nothing else.
    assert set(graph.teacher.heads) == {"distill", "masked"}


def test_step_runs_under_torch_compile() -> None:
    torch.manual_seed(0)
    graph = TaskGraph(tiny_spec(ALL_TASKS))
    batch = random_batch(graph)
    reference = copy.deepcopy(graph)
    eager = reference.step(batch, 3)
    compiled_step = torch.compile(graph.step, backend="eager", fullgraph=False)
    compiled = compiled_step(batch, 3)
    for kind in ALL_TASKS:
        torch.testing.assert_close(compiled.losses[kind], eager.losses[kind], atol=1e-5, rtol=1e-4)
    compiled.total.backward()
    assert graph.student.encoder.patch_embed.weight.grad is not None


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

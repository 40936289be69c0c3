"""`optim.weighting`: uniform (the paper's fixed weights) and uncertainty weighting (Kendall et
al. 2018), against an independent transcription of the formula, and in the training step."""

from __future__ import annotations

import math
from pathlib import Path

import polars as pl
import pytest
import torch

from mtv.graph import TaskGraph
from mtv.tasks.weighting import LossWeighting
from mtv.train import Trainer
from tests.helpers import ALL_TASKS, random_batch, smoke, tiny_spec

KINDS = ["vl", "distill", "koleo"]
WEIGHTS = {"vl": 1.0, "distill": 2.0, "koleo": 0.1}
LOSSES = {"vl": torch.tensor(2.0), "distill": torch.tensor(3.0), "koleo": torch.tensor(-0.5)}


def test_uniform_is_the_fixed_weighted_sum_and_adds_no_state() -> None:
    weighting = LossWeighting(KINDS, WEIGHTS, "uniform")
    total, report = weighting(LOSSES)
    assert float(total) == pytest.approx(2.0 + 6.0 - 0.05)
    assert report == {} and not list(weighting.parameters()) and not weighting.state_dict()


def test_uncertainty_matches_the_formula_and_leaves_unbounded_losses_fixed() -> None:
    weighting = LossWeighting(KINDS, WEIGHTS, "uncertainty", {"koleo": False})
    assert weighting.learned == ["vl", "distill"]  # KoLeo's loss can be negative
    with torch.no_grad():
        weighting.log_variance.copy_(torch.tensor([0.3, -0.2]))
    total, report = weighting(LOSSES)
    # L = sum_k w_k exp(-s_k) L_k + s_k over the learned tasks, w_k L_k for the others.
    expected = 1.0 * math.exp(-0.3) * 2.0 + 0.3 + 2.0 * math.exp(0.2) * 3.0 - 0.2 + 0.1 * -0.5
    assert float(total.detach()) == pytest.approx(expected, rel=1e-6)
    assert float(report["weight/vl"]) == pytest.approx(math.exp(-0.3))
    assert float(report["weight/distill"]) == pytest.approx(2.0 * math.exp(0.2))
    assert "weight/koleo" not in report


def test_learned_log_variances_settle_at_the_log_of_the_weighted_loss() -> None:
    """d/ds (exp(-s) w L + s) = 0 at s = log(w L): a task with a large loss is weighted down."""
    weighting = LossWeighting(["a", "b"], {"a": 1.0, "b": 1.0}, "uncertainty")
    losses = {"a": torch.tensor(4.0), "b": torch.tensor(0.25)}
    optimizer = torch.optim.SGD(weighting.parameters(), lr=0.2)
    for _ in range(300):
        optimizer.zero_grad()
        weighting(losses)[0].backward()
        optimizer.step()
    assert weighting.log_variance.tolist() == pytest.approx(
        [math.log(4.0), math.log(0.25)], abs=1e-3
    )


def test_the_graph_step_uses_the_weighting_and_the_optimiser_trains_it() -> None:
    torch.manual_seed(0)
    spec = tiny_spec(ALL_TASKS, optim={"weighting": "uncertainty"})
    graph = TaskGraph(spec)
    names = [n for n, _ in graph.student.named_parameters()]
    assert "weighting.log_variance" in names
    out = graph.step(random_batch(graph), 0)
    weighting = graph.student.weighting
    log_variance = dict(zip(weighting.learned, weighting.log_variance.detach(), strict=True))
    assert set(log_variance) == set(ALL_TASKS) - {"koleo"}
    losses = {k: float(v.detach()) for k, v in out.losses.items()}
    expected = sum(
        spec_weight * (math.exp(-float(log_variance[k])) * losses[k]) + float(log_variance[k])
        if k in log_variance
        else spec_weight * losses[k]
        for k, spec_weight in graph.plan.weights.items()
    )
    assert float(out.total.detach()) == pytest.approx(expected, rel=1e-5)
    out.total.backward()
    grad = graph.student.weighting.log_variance.grad
    assert grad is not None and bool((grad != 0).all())


def test_training_logs_the_effective_weights_and_the_objective(corpus: str, tmp_path: Path) -> None:
    spec = smoke(
        corpus, "optim.weighting=uncertainty", "schedule.steps=4", "runtime.precision=fp32"
    )
    Trainer(spec, tmp_path / "run", report=lambda m: None).run()
    rows = pl.read_parquet(tmp_path / "run" / "metrics.parquet")
    learned = [k for k in ALL_TASKS if k != "koleo"]
    for kind in learned:
        assert rows[f"weight/{kind}"].is_finite().all()
    # The logged total is the objective the step minimised: w exp(-s) L + s summed (s from the
    # effective weight: s = log(w / weight)), KoLeo at its fixed weight.
    weights = {t.kind: t.weight for t in spec.tasks}
    last = rows.row(-1, named=True)
    objective = (
        sum(
            last[f"weight/{k}"] * last[f"loss/{k}"] + math.log(weights[k] / last[f"weight/{k}"])
            for k in learned
        )
        + weights["koleo"] * last["loss/koleo"]
    )
    assert last["loss"] == pytest.approx(objective, rel=1e-4)
    # The weights moved away from where they started (1 and the tasks' own weights).
    first = rows.row(0, named=True)
    assert any(last[f"weight/{k}"] != first[f"weight/{k}"] for k in learned)


def pcgrad_literal(gradients: list[torch.Tensor]) -> torch.Tensor:
    """PCGrad (Yu et al. 2020, Algorithm 1) for two tasks, written out: each gradient loses its
    component along the other where they conflict (negative dot product); the results add."""
    a, b = gradients
    a_pc = a - (a @ b) / (b @ b) * b if a @ b < 0 else a
    b_pc = b - (b @ a) / (a @ a) * a if b @ a < 0 else b
    return a_pc + b_pc


@pytest.mark.parametrize("conflict", [True, False])
def test_pcgrad_steps_along_the_projected_gradients(conflict: bool) -> None:
    """Losses linear in a shared feature: the gradient the weighted total hands the feature is
    the sum of the projected task gradients (and the plain sum without conflict)."""
    g = torch.Generator().manual_seed(1)
    a = torch.randn(6, generator=g, dtype=torch.float64)
    b = torch.randn(6, generator=g, dtype=torch.float64)
    b = b - (a @ b) / (a @ a) * a + (-0.7 if conflict else 0.7) * a  # a . b of a chosen sign
    feature = torch.zeros(6, dtype=torch.float64, requires_grad=True)
    hidden = feature * 1.0  # the encoder's output: not a leaf
    weighting = LossWeighting(["a", "b"], {"a": 1.0, "b": 2.0}, "pcgrad")
    total, report = weighting({"a": a @ hidden, "b": 0.5 * (b @ hidden)}, [hidden], [feature])
    total.backward()
    expected = pcgrad_literal([a, b])  # task b's weight 2 times its loss 0.5 b.x: gradient b
    assert feature.grad is not None
    torch.testing.assert_close(feature.grad, expected.to(feature.grad.dtype), rtol=1e-5, atol=1e-6)
    if not conflict:
        assert report["weight/a"].item() == pytest.approx(1.0)
        assert report["weight/b"].item() == pytest.approx(2.0)


def test_pcgrad_projects_the_encoder_and_leaves_each_head_its_own_gradient() -> None:
    """Two tasks with a head each on a shared encoder `feature -> hidden`: the encoder gets the
    projected sum (Algorithm 1), each head exactly its own task's gradient, and the step's loss
    keeps the value of the plain weighted sum."""
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(5, generator=g, dtype=torch.float64), torch.randn(5, generator=g)
    b = (b.double() - (a @ b.double()) / (a @ a) * a - 0.9 * a).double()  # they conflict
    feature = torch.randn(5, generator=g, dtype=torch.float64).requires_grad_()
    heads = {k: torch.tensor(1.5, dtype=torch.float64, requires_grad=True) for k in "ab"}
    hidden = feature * 1.0
    losses = {"a": heads["a"] * (a @ hidden), "b": heads["b"] * (b @ hidden)}
    weighting = LossWeighting(["a", "b"], {"a": 1.0, "b": 0.5}, "pcgrad")
    total, report = weighting(losses, [hidden], [feature])
    assert float(total.detach()) == pytest.approx(float((losses["a"] + 0.5 * losses["b"]).detach()))
    total.backward()
    expected = pcgrad_literal([1.5 * a, 0.5 * 1.5 * b])
    torch.testing.assert_close(feature.grad, expected)
    assert report["weighting/conflicts"].item() == 1
    assert report["weight/b"].item() > 0.5  # b's encoder gradient gained a multiple of a's
    # the heads: d(w_k L_k)/d head_k, not scaled by the projection's weights
    assert heads["a"].grad.item() == pytest.approx(float(a @ feature.detach()))
    assert heads["b"].grad.item() == pytest.approx(0.5 * float(b @ feature.detach()))


def test_pcgrad_in_the_graph_step_sees_every_tasks_gradient_on_the_encoder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The full task set, clean and masked views in one batched pass: every task's gradient
    reaches the last block the Gramian is taken on and the outputs the weights act at."""
    from mtv.tasks import weighting as weighting_module

    seen: dict[str, object] = {}

    def spy(*args: object) -> tuple[list[list[torch.Tensor]], torch.Tensor]:
        seen["at_outputs"], seen["rows"] = weighting_module_task_gradients(*args)
        return seen["at_outputs"], seen["rows"]  # type: ignore[return-value]

    weighting_module_task_gradients = weighting_module.task_gradients
    monkeypatch.setattr(weighting_module, "task_gradients", spy)
    torch.manual_seed(0)
    graph = TaskGraph(tiny_spec(ALL_TASKS, optim={"weighting": "pcgrad"}))
    out = graph.step(random_batch(graph), 0)
    kinds = list(graph.student.tasks)
    rows, at_outputs = seen["rows"], seen["at_outputs"]
    for kind, row, grads in zip(kinds, rows, at_outputs, strict=True):  # type: ignore[call-overload]
        assert float(row.norm()) > 0, f"{kind}: no gradient on the last block"
        assert sum(float(g.norm()) for g in grads) > 0, f"{kind}: no gradient at the outputs"
    weights = {k: float(out.logged[f"weight/{k}"]) for k in ALL_TASKS}
    # every task keeps at least its own gradient (a projection only adds multiples of others)
    assert all(weights[k] >= graph.plan.weights[k] * (1 - 1e-6) for k in ALL_TASKS)
    # the step's loss is the plain weighted sum: the projection acts on gradients only
    expected = sum(graph.plan.weights[k] * float(out.losses[k].detach()) for k in ALL_TASKS)
    assert float(out.total.detach()) == pytest.approx(expected, rel=1e-5)
    out.total.backward()
    assert graph.student.encoder.patch_embed.weight.grad is not None


def test_a_pcgrad_run_logs_each_task_weight(corpus: str, tmp_path: Path) -> None:
    spec = smoke(corpus, "optim.weighting=pcgrad", "schedule.steps=2", "runtime.precision=fp32")
    Trainer(spec, tmp_path / "run", report=lambda m: None).run()
    rows = pl.read_parquet(tmp_path / "run" / "metrics.parquet")
    weights = {t.kind: t.weight for t in spec.tasks}
    for kind, weight in weights.items():
        assert (rows[f"weight/{kind}"] >= weight * (1 - 1e-6)).all()

"""Multi-process equivalence of the losses that talk across ranks: 2 gloo CPU processes (spawned
once for the module, running every case of tests/dist_workers.py) against 1-process references
computed here on the concatenated batch."""

from __future__ import annotations

import time

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from mtv.graph import TaskGraph
from mtv.graph.passes import encode_pass, encode_passes
from mtv.runtime.distributed import is_distributed
from mtv.tasks import REGION_TEXT, StepInputs
from mtv.tasks.base import GLOBAL
from mtv.tasks.ground import region_text_loss
from mtv.tasks.ssl_heads import Centering
from tests import dist_workers as w
from tests.helpers import random_batch

JOIN_TIMEOUT_S = 120.0
ATOL, RTOL = 1e-5, 1e-4


class RankResults(list):
    """Each rank's {case: result}; a short repr keeps failure reports free of tensor dumps."""

    def __repr__(self) -> str:
        return f"<{len(self)} ranks, cases: {[sorted(r) for r in self]}>"


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> RankResults:
    """Spawn WORLD_SIZE gloo processes once; return each rank's {case: result} (cases after a
    failure are missing and "error" holds the traceback; tests report it via `result`)."""
    tmp = tmp_path_factory.mktemp("dist")
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(
            target=w.run_worker,
            args=(r, w.WORLD_SIZE, str(tmp / "pg_init"), str(tmp)),
            daemon=True,
        )
        for r in range(w.WORLD_SIZE)
    ]
    for p in procs:
        p.start()
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(5)
    out = RankResults()
    for r, p in enumerate(procs):
        path = tmp / f"rank{r}.pt"
        try:
            res = torch.load(path, weights_only=False) if path.exists() else {}
        except Exception as error:  # a rank killed while saving
            res = {"error": f"rank {r}: unreadable results ({error!r})"}
        if r in hung:
            res.setdefault("error", f"rank {r} did not finish within {JOIN_TIMEOUT_S:.0f} s")
        elif p.exitcode != 0:
            res.setdefault("error", f"rank {r} exited with code {p.exitcode}")
        out.append(res)
    return out


def result(ranks: list[dict[str, object]], case: str) -> list[dict]:
    """The case's result on every rank, or a failure carrying the workers' tracebacks."""
    if all(case in r for r in ranks):
        return [r[case] for r in ranks]  # type: ignore[misc]
    errors = "\n".join(
        str(r.get("error", f"rank {i}: no error recorded")) for i, r in enumerate(ranks)
    )
    pytest.fail(f"case {case!r} did not run on every rank:\n{errors}")


def reference_loss_and_grads(tasks: list[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    assert not is_distributed()
    graph = w.make_graph(tasks)
    out = graph.step(random_batch(graph, batch_size=w.GLOBAL_BATCH, seed=w.SEED))
    out.total.backward()
    return out.total.detach(), w.grads_of(graph.student)


def assert_grads_close(
    got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], who: str
) -> None:
    assert got.keys() == want.keys(), f"{who}: parameters with gradients differ"
    for name, g in want.items():
        torch.testing.assert_close(
            got[name], g, atol=ATOL, rtol=RTOL, msg=lambda m, n=name: f"{who} {n}: {m}"
        )


def grad_norm(grads: dict[str, torch.Tensor], prefix: str) -> float:
    return sum(float(g.norm()) for n, g in grads.items() if n.startswith(prefix))


def test_vl_loss_and_grads_on_two_ranks_equal_one_process(ranks):
    per_rank = result(ranks, "vl")
    ref_loss, ref_grads = reference_loss_and_grads(["vl"])

    losses = torch.stack([r["loss"] for r in per_rank])
    torch.testing.assert_close(losses.mean(), ref_loss, atol=ATOL, rtol=RTOL)
    # The ranks' halves really are different sub-problems.
    assert not torch.allclose(losses[0], losses[1])

    # Every trainable parameter gets a gradient, and some of it is not zero in each part (text
    # tower grads only reach the other rank's captions through the autograd gather).
    assert len(ref_grads) == sum(1 for _ in w.make_graph(["vl"]).student.parameters())
    for prefix in ("encoder.", "text.", "tasks.vl."):
        assert grad_norm(ref_grads, prefix) > 0, prefix
    for r, res in enumerate(per_rank):
        assert_grads_close(res["grads"], ref_grads, f"rank {r}")


def test_vl_grads_differ_without_autograd_gather(ranks):
    """Negative control: splicing the local rows into a plain gather keeps the forward (same
    losses) but loses the other rank's gradient into this rank's captions."""
    per_rank = result(ranks, "vl_local_grad_gather")
    ref_loss, ref_grads = reference_loss_and_grads(["vl"])

    losses = torch.stack([r["loss"] for r in per_rank])
    torch.testing.assert_close(losses.mean(), ref_loss, atol=ATOL, rtol=RTOL)
    text = [n for n in ref_grads if n.startswith("text.")]
    for r, res in enumerate(per_rank):
        grads = res["grads"]
        assert any(
            not torch.allclose(grads[n], ref_grads[n], atol=ATOL, rtol=RTOL) for n in text
        ), f"rank {r}: text grads match even without the autograd gather"


def test_distill_and_masked_centering_equal_on_one_and_two_ranks(ranks):
    per_rank = result(ranks, "centering")

    graph = w.make_graph(["distill", "masked"])
    batches = [w.centering_batch(graph, seed=w.SEED + s) for s in range(w.CENTERING_STEPS)]
    reference: list[dict[str, torch.Tensor]] = []
    for step, batch in enumerate(batches):
        with torch.no_grad():
            graph.step(batch, step)
        reference.append(
            {k: graph.student.tasks[k].centering.center.clone() for k in ("distill", "masked")}
        )

    for step, want in enumerate(reference):
        for kind, center in want.items():
            assert center.abs().sum() > 0, f"{kind} centre did not move from zero"
            for r, res in enumerate(per_rank):
                torch.testing.assert_close(
                    res["centers"][step][kind],
                    center,
                    atol=1e-6,
                    rtol=1e-5,
                    msg=lambda m, r=r, k=kind, s=step: f"rank {r} {k} step {s}: {m}",
                )


def test_centering_control_uneven_split_is_not_a_mean_of_means():
    """The split and masks the centering test uses make the weighted global mean differ from an
    average of per-rank centres, so that test would catch a plain mean of means."""
    graph = w.make_graph(["distill", "masked"])
    batch = w.centering_batch(graph, seed=w.SEED)
    task = graph.student.tasks["masked"]
    with torch.no_grad():
        out = graph.teacher.encoder(batch.images)
        tokens, weights = task.select(out.tokens, batch.patch_mask)
        scores = graph.teacher.heads["masked"]["head"](tokens)
    n_prototypes = scores.shape[-1]
    whole = Centering(n_prototypes, momentum=0.0)
    whole.update(scores.flatten(0, 1), weights.flatten())
    per_rank = []
    for r in range(w.WORLD_SIZE):
        start, stop = w.rank_rows(r, w.CENTERING_SPLIT)
        part = Centering(n_prototypes, momentum=0.0)
        part.update(scores[start:stop].flatten(0, 1), weights[start:stop].flatten())
        per_rank.append(part.center)
    assert not torch.allclose(torch.stack(per_rank).mean(0), whole.center, atol=1e-6, rtol=1e-5)


def ground_reference(graph: TaskGraph) -> torch.Tensor:
    """The per-rank ground losses, computed in one process on the whole batch: each rank's
    regions against every rank's names, normalised by that rank's own valid regions."""
    batch = random_batch(graph, batch_size=w.GLOBAL_BATCH, seed=w.SEED)
    student = graph.student
    task = student.tasks["ground"]
    (view,) = [p for p in graph.plan.student if p.view == GLOBAL]
    features = encode_pass(student.encoder, view, batch)
    texts = student.encode_texts(batch)[REGION_TEXT]
    regions = F.normalize(task.prompter(features.prenorm, batch.boxes).flatten(0, 1), dim=-1)
    names_emb = F.normalize(texts.flatten(0, 1), dim=-1)
    valid, names = batch.box_valid.flatten(), batch.region_name_ids.flatten()
    n = regions.shape[0] // w.WORLD_SIZE
    losses = []
    for r in range(w.WORLD_SIZE):
        rows = slice(r * n, (r + 1) * n)
        losses.append(
            region_text_loss(
                regions[rows],
                names_emb,
                valid[rows],
                valid,
                names[rows],
                names,
                task.logits.scale(),
                task.logits.logit_bias,
                offset=r * n,
                mask_identical_names=task.spec.mask_identical_names,
            )
        )
    return torch.stack(losses)


def test_ground_grads_flow_on_two_ranks(ranks):
    per_rank = result(ranks, "ground")

    for r, res in enumerate(per_rank):
        grads = res["grads"]
        assert all(torch.isfinite(g).all() for g in grads.values()), f"rank {r}"
        for prefix in (
            "encoder.blocks.",
            "text.",
            "tasks.ground.prompter.",
            "tasks.ground.logits.",
        ):
            assert grad_norm(grads, prefix) > 0, f"rank {r} {prefix}"
    assert_grads_close(per_rank[1]["grads"], per_rank[0]["grads"], "rank 1 vs rank 0")

    # Stronger than "flows": each rank's loss, and the DDP-averaged gradient, are those of the
    # per-rank-normalised losses computed in one process.
    graph = w.make_graph(["ground"])
    want = ground_reference(graph)
    got = torch.stack([r["loss"] for r in per_rank])
    torch.testing.assert_close(got, want.detach(), atol=ATOL, rtol=RTOL)
    want.mean().backward()
    ref_grads = w.grads_of(graph.student)
    for r, res in enumerate(per_rank):
        assert_grads_close(res["grads"], ref_grads, f"rank {r}")


def test_compiled_step_has_no_graph_break_on_two_ranks(ranks):
    for rank, res in enumerate(result(ranks, "compiled")):
        assert res["unique_graphs"] == 2, f"rank {rank}: expected one student + one teacher graph"
        for step in res["losses"]:
            for kind, (got, want) in step.items():
                torch.testing.assert_close(
                    got, want, atol=ATOL, rtol=RTOL, msg=f"rank {rank} {kind}"
                )


def test_pcgrad_weights_come_from_the_gramian_of_both_ranks(ranks):
    """Both ranks weight the tasks alike, and as one process does from the tasks' gradients
    on the last block's parameters over the whole batch (each rank alone would see only its
    half)."""
    from torchjd.aggregation import PCGradWeighting

    from mtv.tasks.weighting import task_gradients

    per_rank = result(ranks, "pcgrad")
    assert per_rank[0]["weights"] == per_rank[1]["weights"]
    graph = w.make_graph(w.PCGRAD_TASKS, optim={"weighting": "pcgrad"})
    whole = random_batch(graph, batch_size=w.GLOBAL_BATCH, seed=w.SEED)
    student = graph.student
    features = encode_passes(student.encoder, graph.plan.student, whole)
    inputs = StepInputs(whole, features, student.encode_texts(whole), {}, torch.zeros(()))
    weighted = [
        graph.plan.weights[kind] * student.tasks[kind](inputs).loss for kind in w.PCGRAD_TASKS
    ]
    _, jacobian = task_gradients(
        weighted, student.shared_outputs(features), list(student.encoder.blocks[-1].parameters())
    )
    jacobian = jacobian.double()
    gramians = [jacobian @ jacobian.T]
    weights = PCGradWeighting()(sum(gramians).double())
    expected = {
        k: float(c) * graph.plan.weights[k] for k, c in zip(w.PCGRAD_TASKS, weights, strict=True)
    }
    for kind, value in expected.items():
        assert per_rank[0]["weights"][kind] == pytest.approx(value, rel=1e-4), kind

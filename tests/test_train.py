"""`mtv run`: a smoke run through the CLI, exact resume after kill -9, DDP equals one process,
compiled equals eager, planted NaNs named and skipped, incompatible resumes refused."""

from __future__ import annotations

import multiprocessing as mp
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import torch
from mtv_cli.main import app
from typer.testing import CliRunner

from mtv.runs.checkpoint import load_checkpoint
from mtv.specs import load_run_spec, load_spec
from mtv.train import NonFiniteLoss, Trainer, TrainingError, latest_checkpoint
from tests import train_workers
from tests.helpers import smoke

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "experiments" / "smoke.yaml"
runner = CliRunner()


def test_smoke_run_through_the_cli(tmp_path: Path) -> None:
    """From nothing: renders and labels the mini-world, trains, writes the run directory."""
    data, out = tmp_path / "mini", tmp_path / "run"
    result = runner.invoke(
        app, ["run", str(SMOKE), "--set", f"data.source.root={data}", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "finished 5 steps" in result.output and str(out / "metrics.parquet") in result.output
    assert (data / "world.json").is_file()
    # The protocol's expert-like noisy labels have a store of their own, named by the noise.
    spec = load_spec(SMOKE)
    assert not spec.data.labels.oracle.exact
    assert (data / spec.data.labels.oracle.store_name()).is_dir()
    assert "labelling the mini-world with the noisy oracle" in result.output
    metrics = pl.read_parquet(out / "metrics.parquet")
    assert metrics["step"].to_list() == [1, 2, 3, 4, 5]  # as the console and step-5 number them
    for column in (
        "loss",
        "lr",
        "grad_norm",
        "images_per_s",
        "data_wait_fraction",
        "loss/vl",
        "loss/depth",
        "distill/teacher_entropy",
    ):
        assert column in metrics.columns and metrics[column].is_finite().all()
    assert (out / "spec.yaml").is_file() and (out / "environment.json").is_file()
    assert latest_checkpoint(out).name == "step-00000005"
    again = runner.invoke(
        app, ["run", str(SMOKE), "--set", f"data.source.root={data}", "--out", str(out)]
    )
    assert again.exit_code == 2 and "--resume" in again.output  # nothing overwritten


def test_kill_9_then_resume_repeats_the_same_losses(corpus: str, tmp_path: Path) -> None:
    sets = [
        f"data.source.root={corpus}",
        "schedule.steps=12",
        "output.checkpoint_every=3",
        "data.loader.workers=0",
        "runtime.precision=fp32",
    ]
    base = [sys.executable, "-c", "from mtv_cli.main import entry; entry()", "run", str(SMOKE)]
    for s in sets:
        base += ["--set", s]
    whole = subprocess.run(
        [*base, "--out", str(tmp_path / "whole")], capture_output=True, text=True, timeout=600
    )
    assert whole.returncode == 0, whole.stdout + whole.stderr
    killed = subprocess.Popen(
        [*base, "--out", str(tmp_path / "killed")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while time.time() < deadline and killed.poll() is None:
        found = latest_checkpoint(tmp_path / "killed")
        if found is not None and found.name >= "step-00000006":
            break
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    assert killed.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    resumed = subprocess.run(
        [*base, "--out", str(tmp_path / "killed"), "--resume"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resumed" in resumed.stdout
    a = pl.read_parquet(tmp_path / "whole" / "metrics.parquet")
    b = pl.read_parquet(tmp_path / "killed" / "metrics.parquet")
    assert a["step"].to_list() == b["step"].to_list() == list(range(1, 13))
    for column in [c for c in a.columns if c.startswith("loss")]:
        assert (a[column] - b[column]).abs().max() <= 1e-6, column


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_equal_one_process_on_the_same_global_batch(
    corpus: str, tmp_path: Path
) -> None:
    Trainer(smoke(corpus, "schedule.steps=1"), tmp_path / "prep", report=lambda m: None)  # labels
    single = train_workers.first_step(corpus, str(tmp_path / "one"))
    context = mp.get_context("spawn")
    port = _free_port()
    procs = [
        context.Process(
            target=train_workers.worker,
            args=(r, 2, corpus, str(tmp_path / "two"), port, str(tmp_path)),
        )
        for r in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
        assert p.exitcode == 0
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for name in ("loss/vl", "loss/distill", "loss/masked", "loss/depth"):
        mean = sum(r["row"][name] for r in ranks) / 2
        assert mean == pytest.approx(single["row"][name], rel=1e-5, abs=1e-6), name
    assert ranks[0]["row"]["loss/vl"] != ranks[1]["row"]["loss/vl"]
    # fp32 sums in another order (other batch shapes, threads) round differently; where a
    # gradient is a near-cancellation (e.g. the depth output bias: the SSI loss ignores shifts)
    # that rounding shows, so the tolerance is relative to the largest gradient.
    scale = max(float(g.abs().max()) for g in single["grads"].values())
    for name, grad in single["grads"].items():
        for r in ranks:
            torch.testing.assert_close(
                r["grads"][name],
                grad,
                atol=1e-4 * scale,
                rtol=1e-3,
                msg=lambda m, n=name: f"{n}: {m}",
            )


def test_compiled_and_eager_steps_agree(corpus: str, tmp_path: Path) -> None:
    rows = {}
    for mode in ("false", "true"):
        spec = smoke(
            corpus,
            "schedule.steps=2",
            f"runtime.compile={mode}",
            "runtime.compile_backend=aot_eager",
            "runtime.precision=fp32",
        )
        trainer = Trainer(spec, tmp_path / mode, report=lambda m: None)
        rows[mode] = []
        for _ in range(2):
            trainer.train_step()
            trainer.step += 1
        rows[mode] = trainer.read_rows()
    for eager, compiled in zip(rows["false"], rows["true"], strict=True):
        for key in [k for k in eager if k.startswith("loss")]:
            assert compiled[key] == pytest.approx(eager[key], rel=1e-4, abs=1e-5), key


def test_planted_nan_is_named_skipped_and_stops_the_run(corpus: str, tmp_path: Path) -> None:
    spec = smoke(corpus, "schedule.steps=10", "runtime.nonfinite_patience=2")
    messages: list[str] = []
    trainer = Trainer(spec, tmp_path / "run", report=messages.append)
    depth = trainer.graph.student.tasks["depth"]
    original = depth.forward

    def poisoned(inputs):  # type: ignore[no-untyped-def]
        out = original(inputs)
        if trainer.step >= 2:
            out.loss = out.loss * torch.nan
        return out

    depth.forward = poisoned  # type: ignore[method-assign]
    before = [p.detach().clone() for p in trainer.stepper.params]
    with pytest.raises(NonFiniteLoss, match="depth"):
        trainer.run()
    # named with the 1-based numbers of the console and metrics.parquet
    assert any("step 3: non-finite loss in depth; step skipped (1/2)" in m for m in messages)
    assert trainer.step == 4  # steps 3 and 4 were bad; the run stopped at the second
    rows = trainer.metrics.rows
    assert [r["skipped"] for r in rows] == [False, False, True, True]
    # skipped steps left the weights as they were after step 1: compare with a clean run of
    # the same spec stopped after two steps
    reference = Trainer(spec, tmp_path / "ref", report=lambda m: None)
    for _ in range(2):
        reference.train_step()
        reference.step += 1
    for p, q in zip(trainer.stepper.params, reference.stepper.params, strict=True):
        torch.testing.assert_close(p, q)
    assert any(not torch.equal(p, b) for p, b in zip(trainer.stepper.params, before, strict=True))
    # the optimiser's moments did not move either (the fused AdamW's found_inf skip)
    for group, ref in zip(
        trainer.stepper.optimizer.state.values(),
        reference.stepper.optimizer.state.values(),
        strict=True,
    ):
        torch.testing.assert_close(group["exp_avg"], ref["exp_avg"])
        assert int(group["step"]) == int(ref["step"]) == 2


def test_a_resume_with_another_task_list_is_refused(corpus: str, tmp_path: Path) -> None:
    Trainer(smoke(corpus, "schedule.steps=2"), tmp_path / "run", report=lambda m: None).run()
    changed = smoke(corpus, "schedule.steps=4", "tasks=[vl, distill, masked, koleo, depth]")
    with pytest.raises(TrainingError, match=r"--resume: the spec differs .*tasks"):
        Trainer(changed, tmp_path / "run", resume=True, report=lambda m: None)
    # a longer schedule is not a difference that matters: it resumes, saying what the
    # recomputed schedule does to the learning rate (it jumped silently)
    said: list[str] = []
    longer = Trainer(
        smoke(corpus, "schedule.steps=4"), tmp_path / "run", resume=True, report=said.append
    )
    assert longer.step == 2
    (jump,) = [m for m in said if "learning rate jumps" in m]
    assert jump.startswith("warning: resuming at step 2 with schedule.steps 2 -> 4"), jump
    assert longer.run().steps == 4
    said.clear()
    Trainer(smoke(corpus, "schedule.steps=4"), tmp_path / "run", resume=True, report=said.append)
    assert not [m for m in said if "learning rate" in m]  # the same schedule: nothing to say


def test_a_run_that_stored_relative_paths_resumes_and_reads_back(
    corpus: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs written before specs stored their paths absolute hold the data root relative to the
    folder they were started from: from that folder they resume (the spec now resolves the same
    root absolute) and read back (`load_run_spec`) with the root where it was."""
    run = tmp_path / "run"
    Trainer(smoke(corpus, "schedule.steps=2"), run, report=lambda m: None).run()
    monkeypatch.chdir(Path(corpus).parent)
    relative = Path(corpus).name
    checkpoint = latest_checkpoint(run)
    state = load_checkpoint(checkpoint)
    assert state["critical"]["data.source"]["root"] == corpus  # absolute today
    state["critical"]["data.source"]["root"] = relative  # as an older run wrote it
    torch.save(state, checkpoint / "state.pt")
    written = (run / "spec.yaml").read_text()
    (run / "spec.yaml").write_text(written.replace(f"root: {corpus}", f"root: {relative}"))
    assert load_run_spec(run).data.source.root == corpus  # the working folder, not the run's
    monkeypatch.chdir(tmp_path)  # from elsewhere the relative root names another folder
    with pytest.raises(TrainingError, match=r"--resume: the spec differs .*data.source"):
        Trainer(smoke(corpus, "schedule.steps=3"), run, resume=True, report=lambda m: None)
    monkeypatch.chdir(Path(corpus).parent)
    resumed = Trainer(smoke(corpus, "schedule.steps=3"), run, resume=True, report=lambda m: None)
    assert resumed.step == 2 and resumed.run().steps == 3


def test_gradient_probe_records_task_norms_and_cosines(corpus: str, tmp_path: Path) -> None:
    spec = smoke(corpus, "schedule.steps=2", "runtime.grad_probe_every=2")
    trainer = Trainer(spec, tmp_path / "run", report=lambda m: None)
    trainer.run()
    rows = trainer.metrics.rows
    kinds = [t.kind for t in spec.tasks]
    probed = rows[0]
    for kind in kinds:
        assert probed[f"grad_norm/{kind}"] > 0
    cosines = [v for k, v in probed.items() if k.startswith("grad_cos/")]
    assert len(cosines) == len(kinds) * (len(kinds) - 1) // 2
    assert all(-1.0 <= c <= 1.0 for c in cosines)
    assert not any(k.startswith("grad_cos/") for k in rows[1])  # step 1 is not probed


def test_accumulation_gives_the_full_batch_gradient(corpus: str, tmp_path: Path) -> None:
    """Two micro-batches of 4 = one batch of 8, for a loss that is a mean over images (depth;
    contrastive and centred losses see other negatives / centers per micro-batch by design)."""
    grads = {}
    for accumulate in (1, 2):
        spec = smoke(
            corpus,
            "tasks=[depth]",
            f"optim.accumulate={accumulate}",
            "optim.grad_clip=null",
            "runtime.precision=fp32",
            "schedule.steps=1",
        )
        trainer = Trainer(spec, tmp_path / f"a{accumulate}", report=lambda m: None)
        trainer.train_step()
        grads[accumulate] = {
            n: p.grad.clone()
            for n, p in trainer.graph.student.named_parameters()
            if p.grad is not None
        }
    scale = max(float(g.abs().max()) for g in grads[1].values())
    for name, grad in grads[1].items():
        torch.testing.assert_close(grads[2][name], grad, atol=1e-4 * scale, rtol=1e-3)


def test_a_grounding_task_without_boxes_says_it_trains_nothing(corpus: str, tmp_path: Path) -> None:
    """Labels in which every box is missing (a tagger that names nothing, an expert that finds
    nothing) train a grounding loss of exactly 0: the run says so at its log steps."""
    messages: list[str] = []
    boxes = "data.labels.oracle.boxes"
    spec = smoke(
        corpus,
        "schedule.steps=2",
        "tasks=[vl, ground]",
        f"{boxes}.miss_rate=1.0",
        f"{boxes}.false_rate=0.0",
    )
    Trainer(spec, tmp_path / "run", report=messages.append).run()
    rows = pl.read_parquet(tmp_path / "run" / "metrics.parquet")
    assert rows["loss/ground"].to_list() == [0.0, 0.0] and rows["ground/regions"].sum() == 0
    assert sum("ground has no box in this step's batch" in m for m in messages) == 2, messages


def test_collapse_is_reported(corpus: str, tmp_path: Path) -> None:
    messages: list[str] = []
    trainer = Trainer(smoke(corpus, "schedule.steps=1"), tmp_path / "run", report=messages.append)
    trainer._warnings(
        {"step": 50, "distill/teacher_entropy": 5.54, "masked/teacher_entropy": 0.001}
    )
    assert any(
        "distill teacher entropy 5.540 is near ln K = 5.545 (uniform collapse)" in m
        for m in messages
    )
    assert any("masked teacher entropy 0.0010 is near 0 (one-hot collapse)" in m for m in messages)

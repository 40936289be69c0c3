"""`output.loggers`: TensorBoard, W&B (offline) and MLflow hold the numbers of metrics.parquet and
eval/<suite>.parquet at the same steps, read back with each library's own reader; a resume goes
on in the same tracker runs; a missing package is one clear error before anything is written."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import polars as pl
import pytest
from mtv_cli.main import app
from typer.testing import CliRunner

from mtv.specs.loading import SpecError
from mtv.train import Trainer, TrainingError
from mtv.train.loggers import MLFLOW_TOTALS, scalars
from tests.helpers import smoke

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "experiments" / "smoke.yaml"
LOSSES = ("loss", "loss/vl", "loss/depth", "loss/distill")
EVAL = "eval/mini/retrieval/"


@pytest.fixture
def tracker_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No user settings for the trackers, and their per-user folders under tmp_path."""
    for name in ("WANDB_MODE", "WANDB_PROJECT", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)
    # The MLflow logger sets this one for its file store; set-then-delete makes pytest remove it
    # again afterwards, whether or not it was set before.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "false")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home"))


def tensorboard_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def tensorboard_images(run: Path, tag: str) -> list[tuple[int, int, int]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    return [(e.step, e.width, e.height) for e in events.Images(tag)]


def wandb_records(path: Path) -> list:  # type: ignore[type-arg]
    """The records of an offline run's `.wandb` file: a 7-byte header, then a LevelDB-style log
    (32 KiB blocks of chunks: 4-byte checksum, 2-byte length, 1-byte type; full / first /
    middle / last) whose records are `wandb_internal_pb2.Record` protobufs. wandb has no public
    reader for it offline (its own reader is in the Go core)."""
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    position, pending, records = 7, b"", []
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a chunk header: padding
            position += block - position % block
            continue
        length, kind = (
            int.from_bytes(data[position + 4 : position + 6], "little"),
            data[position + 6],
        )
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind == 0:  # zero-filled tail of a file still open
            break
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def wandb_history(path: Path) -> tuple[str, list[tuple[int, dict[str, float]]]]:
    """An offline run's id and its history rows (step, {key: value}), in order."""
    run_id, rows = "", []
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run_id = record.run.run_id
        elif kind == "history":
            items = {
                item.key or "/".join(item.nested_key): json.loads(item.value_json)
                for item in record.history.item
            }
            rows.append((record.history.step.num, {k: v for k, v in items.items() if k[0] != "_"}))
    return run_id, rows


def close(a: float, b: float) -> bool:
    """Equal up to TensorBoard's float32 (relative 1e-6)."""
    return abs(a - b) <= 1e-6 * max(abs(a), abs(b), 1e-12)


@pytest.mark.slow
def test_every_tracker_holds_the_metrics_and_a_resume_continues_them(
    corpus: str, tmp_path: Path, tracker_env: None
) -> None:
    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    run = tmp_path / "run"
    sets = [
        "output.loggers=[parquet, tensorboard, wandb, mlflow]",
        "schedule.steps=5",
        "output.checkpoint_every=3",
        "output.keep_last=2",
        "runtime.precision=fp32",
        "eval.every_steps=3",
        "eval.scenes=4",
        "eval.only=[retrieval]",
    ]
    messages: list[str] = []
    Trainer(smoke(corpus, *sets), run, report=messages.append).run()
    assert not [m for m in messages if "warning" in m], messages
    wandb_id = (run / "wandb-id.txt").read_text().strip()
    mlflow_id = (run / "mlflow-run-id.txt").read_text().strip()
    # The evaluation at step 3 also drew the depth / patch-PCA figure, into TensorBoard.
    [(step, width, height)] = tensorboard_images(run, "eval/depth_and_pca")
    assert step == 3 and width > 100 and height > 100

    # As if killed after logging step 5 but before checkpoint 5: the resume repeats 4 and 5.
    shutil.rmtree(run / "checkpoints" / "step-00000005")
    Trainer(smoke(corpus, *sets), run, resume=True, report=messages.append).run()
    assert not [m for m in messages if "warning" in m], messages
    assert (run / "wandb-id.txt").read_text().strip() == wandb_id
    assert (run / "mlflow-run-id.txt").read_text().strip() == mlflow_id

    metrics = pl.read_parquet(run / "metrics.parquet")
    assert metrics["step"].to_list() == [1, 2, 3, 4, 5]
    expected = {name: dict(zip(metrics["step"], metrics[name], strict=True)) for name in LOSSES}
    evals = pl.read_parquet(run / "eval" / "mini.parquet")
    assert evals["step"].unique().to_list() == [3]
    expected_eval = {EVAL + m: v for m, v in evals.select("metric", "value").rows()}
    assert len(expected_eval) >= 2

    # TensorBoard: one value per step (the resume's purge hid the first run's 4 and 5), and the
    # evaluation at the checkpoint's step still there.
    board = tensorboard_scalars(run)
    for name, values in expected.items():
        assert [step for step, _ in board[name]] == [1, 2, 3, 4, 5], name
        assert all(close(v, values[s]) for s, v in board[name]), name
    for key in ("lr", "grad_norm", "images_per_s", "data_wait_fraction", "distill/teacher_entropy"):
        assert [step for step, _ in board[key]] == [1, 2, 3, 4, 5], key
        assert all(close(v, metrics[key][s - 1]) for s, v in board[key]), key
    for key, value in expected_eval.items():
        [(step, logged)] = board[key]
        assert step == 3 and close(logged, value), key

    # W&B: two offline runs with one id; the first has steps 1-5 and the evaluation at 3, the
    # resumed one steps 4 and 5.
    files = sorted((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 2
    first, second = (wandb_history(path) for path in files)
    assert first[0] == second[0] == wandb_id
    for rows, steps in ((first[1], [1, 2, 3, 4, 5]), (second[1], [4, 5])):
        assert [step for step, _ in rows] == steps
        for step, values in rows:
            for name in LOSSES:
                assert close(values[name], expected[name][step]), (name, step)
    [at_3] = [values for step, values in first[1] if step == 3]
    assert {k: v for k, v in at_3.items() if k.startswith("eval/")} == pytest.approx(expected_eval)

    # MLflow: one run, in RUN/mlruns; the resume appended steps 4 and 5 again (the same values:
    # the resume is exact), and the run's params are the spec's. The total loss is `loss/total`
    # there (its file store cannot have a metric `loss` beside the folder of `loss/<task>`).
    client = MlflowClient((run / "mlruns").resolve().as_uri())
    mlflow_run = client.get_run(mlflow_id)
    assert mlflow_run.info.status == "FINISHED" and mlflow_run.info.run_name == "smoke"
    assert mlflow_run.data.params["optim.lr"] == str(smoke(corpus).optim.lr)
    assert mlflow_run.data.params["tasks.0.kind"] == "vl"
    for name, values in expected.items():
        key = MLFLOW_TOTALS.get(name, name)
        history = [(m.step, m.value) for m in client.get_metric_history(mlflow_id, key)]
        assert sorted({step for step, _ in history}) == [1, 2, 3, 4, 5], name
        assert all(close(v, values[s]) for s, v in history), name
    for key, value in expected_eval.items():
        [metric] = client.get_metric_history(mlflow_id, key)
        assert metric.step == 3 and close(metric.value, value), key
    [experiment] = [e for e in client.search_experiments() if e.name == "mtv"]
    assert len(client.search_runs([experiment.experiment_id])) == 1


def test_logger_names_are_checked_and_parquet_is_always_on(corpus: str) -> None:
    with pytest.raises(SpecError, match="neptune") as err:
        smoke(corpus, "output.loggers=[parquet, neptune]")
    assert "tensorboard" in str(err.value)  # the known names are listed
    assert smoke(corpus).output.loggers == ["parquet"]
    spec = smoke(corpus, "output.loggers=[wandb, tensorboard, wandb]")
    assert spec.output.loggers == ["parquet", "wandb", "tensorboard"]


def test_a_missing_tracker_package_is_one_clear_error_before_the_run_starts(
    corpus: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` now fails
    run = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"pip install 'mtv\[wandb\]'"):
        Trainer(smoke(corpus, "output.loggers=[wandb]"), run)
    assert not run.exists()  # refused before the run directory was touched
    result = CliRunner().invoke(
        app,
        [
            *("run", str(SMOKE), "--out", str(run)),
            *(
                "--set",
                f"data.source.root={corpus}",
                "--set",
                "output.loggers=[tensorboard, wandb]",
            ),
        ],
    )
    assert result.exit_code == 2, result.output
    assert "mtv[wandb]" in result.output and "Traceback" not in result.output
    assert not run.exists()


def test_only_finite_numbers_are_logged() -> None:
    row = {"step": 3, "loss": 1.5, "lr": 1e-4, "skipped": False, "nonfinite": "", "x": float("nan")}
    assert scalars(row) == {"loss": 1.5, "lr": 1e-4}

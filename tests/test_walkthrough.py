"""The README's own-data walkthrough, command by command, on real photos (scikit-image's): a
folder with Hugging Face `metadata.jsonl`, Parquet files with image bytes, and tar shards ->
`mtv label` with (tiny, local) Depth Anything V2 and OWLv2 -> an experiment of five lines ->
`mtv run` -> `mtv eval --suite source` on held-out photos -> `mtv export` -> transformers."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from mtv_cli.main import app
from PIL import Image
from typer.testing import CliRunner

from tests.tiny_hf import build_tiny_depth_anything, build_tiny_owlv2

os.environ.setdefault("HF_HUB_OFFLINE", "1")
skimage_data = pytest.importorskip("skimage.data")
transformers = pytest.importorskip("transformers")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
# (scikit-image photo, what a caption would call it)
PHOTOS = [
    ("astronaut", "astronaut"),
    ("coffee", "coffee"),
    ("chelsea", "cat"),
    ("rocket", "rocket"),
    ("immunohistochemistry", "tissue"),
    ("colorwheel", "wheel"),
    ("camera", "camera"),
    ("coins", "coins"),
    ("clock", "clock"),
    ("horse", "horse"),
]


def _variants() -> list[tuple[np.ndarray, str, str]]:
    """Each photo four ways (whole, flipped, two crops): (pixels, name, caption)."""
    out = []
    for name, noun in PHOTOS:
        image = np.asarray(Image.fromarray(getattr(skimage_data, name)()).convert("RGB"))
        h, w = image.shape[:2]
        views = {
            "whole": image,
            "flip": image[:, ::-1],
            "left": image[:, : w * 2 // 3],
            "top": image[: h * 2 // 3],
        }
        for view, pixels in views.items():
            out.append((np.ascontiguousarray(pixels), f"{name}-{view}", f"a photo of a {noun}"))
    return out


def _jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _write(form: str, root: Path, items: list[tuple[np.ndarray, str, str]]) -> str:
    """The photos in one of the three forms; returns what a spec's source names."""
    root.mkdir(parents=True)
    if form == "folder":
        with open(root / "metadata.jsonl", "w") as rows:
            for pixels, name, caption in items:
                (root / f"{name}.jpg").write_bytes(_jpeg(pixels))
                rows.write(json.dumps({"file_name": f"{name}.jpg", "text": caption}) + "\n")
        return f"{{kind: folder, root: {root}}}"
    if form == "parquet":
        table = pa.table(
            {
                "key": [name for _, name, _ in items],
                "jpg": [_jpeg(pixels) for pixels, _, _ in items],
                "caption": [caption for _, _, caption in items],
            }
        )
        pq.write_table(table, root / "part-00000.parquet", row_group_size=8)
        return f"{{kind: parquet, urls: [{root / 'part-00000.parquet'}]}}"
    with tarfile.open(root / "shard-0000.tar", "w") as tar:
        for pixels, name, caption in items:
            for extension, data in (("jpg", _jpeg(pixels)), ("txt", caption.encode())):
                info = tarfile.TarInfo(f"{name}.{extension}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return f"{{kind: shards, urls: [{root / 'shard-0000.tar'}]}}"


@pytest.fixture(scope="module")
def experts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("experts")
    return build_tiny_depth_anything(base / "da2"), build_tiny_owlv2(base / "owlv2")


def _ok(arguments: list[str]) -> str:
    result = runner.invoke(app, arguments, env={"COLUMNS": "200"})
    assert result.exit_code == 0, (arguments, result.output, result.exception)
    return result.output


@pytest.mark.slow
@pytest.mark.parametrize("form", ["folder", "parquet", "shards"])
def test_own_photos_from_labels_to_transformers(
    form: str, experts: tuple[Path, Path], tmp_path: Path
) -> None:
    photos = _variants()
    # held out: one crop of every photo (ten classes, one image each)
    train = [p for p in photos if not p[1].endswith("-top")]
    held_out = [p for p in photos if p[1].endswith("-top")]
    source = _write(form, tmp_path / "photos", train)
    held = _write("folder", tmp_path / "held-out", held_out)
    da2, owl = experts

    # 1. pseudo-labels: depth and boxes by the experts, names by the caption tagger
    for name, data in (("labels", source), ("held-out-labels", held)):
        (tmp_path / f"{name}.yaml").write_text(
            f"source: {data}\n"
            f"output: {tmp_path / name}.zarr\n"
            f"depth: {{kind: depth_anything, model: {da2}}}\n"
            f"boxes: {{kind: owlv2, model: {owl}, threshold: 0.0}}\n"
            "resolution: 32\n"
        )
        _ok(["label", str(tmp_path / f"{name}.yaml")])
        assert "ok" in _ok(["label", "check", f"{tmp_path / name}.zarr"])

    # 2. an experiment of five lines
    experiment = tmp_path / "mine.yaml"
    experiment.write_text(
        f"extends: {ROOT / 'experiments' / 'vl_ssl_depth.yaml'}\n"
        "name: my_photos\n"
        "data:\n"
        f"  source: {source}\n"
        f"  labels: {{store: {tmp_path / 'labels.zarr'}}}\n"
    )
    assert "ok" in _ok(["spec", "validate", str(experiment)])

    # 3. train (a smoke-sized schedule for the test)
    run = tmp_path / "run"
    small = ["schedule.steps=2", "schedule.warmup_steps=1", "data.batch_size=8"]
    small += ["data.loader.workers=0"]
    _ok(["run", str(experiment), "--out", str(run), *(a for s in small for a in ("--set", s))])

    # 4. evaluate on the held-out photos
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(noun for _, noun in PHOTOS) + "\n")
    output = _ok(
        ["eval", str(run), "--suite", "source", "--data", str(tmp_path / "held-out"),
         "--classes", str(classes), "--labels", f"{tmp_path / 'held-out-labels'}.zarr"]
    )  # fmt: skip
    results = pl.read_parquet(run / "eval" / "source.parquet")
    measured = set(zip(results["evaluator"], results["metric"], strict=True))
    assert {("retrieval", "i2t_r1"), ("zero_shot", "top1"), ("relative_depth", "rank_corr")} <= (
        measured
    )
    assert results["random_init"].is_not_null().all() and "random init" in output
    zero_shot = results.filter(pl.col("evaluator") == "zero_shot")
    top1 = zero_shot.filter(pl.col("metric") == "top1")["trivial"][0]
    # every held-out caption names exactly one of the ten classes
    assert zero_shot.filter(pl.col("metric") == "named_share")["value"][0] == 1.0
    assert top1 == pytest.approx(1 / 10)  # the held-out photos: ten classes, equally many

    # 4b. the depth-and-features notebook shows these photos and their pseudo-depth
    if form == "folder":
        _notebook_shows_own_data(tmp_path)

    # 5. export, and load it with transformers
    _ok(["export", str(run), str(tmp_path / "export")])
    model = transformers.SiglipModel.from_pretrained(tmp_path / "export")
    processor = transformers.AutoProcessor.from_pretrained(tmp_path / "export")
    inputs = processor(
        text=["a photo of a cat"],
        images=[Image.fromarray(held_out[0][0])],
        padding="max_length",
        return_tensors="pt",
    )
    assert model(**inputs).logits_per_image.shape == (1, 1)


def _notebook_shows_own_data(runs: Path) -> None:
    import nbformat
    from nbclient import NotebookClient

    path = ROOT / "notebooks" / "depth_and_features.ipynb"
    notebook = nbformat.read(path, as_version=4)
    os.environ["MTV_RUNS"] = str(runs)  # the kernel inherits the environment
    try:
        NotebookClient(
            notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": ROOT}}
        ).execute()
    finally:
        del os.environ["MTV_RUNS"]
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    printed = " ".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "the run's own data (folder)" in printed and "pseudo-disparity" in printed
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 2  # depth panel + PCA grid

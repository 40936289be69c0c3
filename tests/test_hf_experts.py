"""Depth Anything V2 and OWLv2 experts on tiny random-initialised checkpoints, fully offline.

The checkpoints are built from configs and written with `save_pretrained` (tests/tiny_hf.py), then
loaded through the constructors users call. Reference results are computed here directly with the
processor and model, independently of the experts' own post-processing.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers / huggingface_hub import

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mtv.label.base import BoxLabel, LabelInput
from mtv.label.hf import DepthAnythingExpert, ExpertLoadError, Owlv2Expert
from tests.tiny_hf import build_tiny_depth_anything, build_tiny_owlv2

transformers = pytest.importorskip("transformers")


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may reach the network: hub offline mode, and any IP connection attempt fails."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    real_connect = socket.socket.connect

    def guarded(self: socket.socket, address: object) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise AssertionError(f"network access attempted: {address!r}")
        real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


@pytest.fixture(scope="module")
def da_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(build_tiny_depth_anything(tmp_path_factory.mktemp("tiny-da2")))


@pytest.fixture(scope="module")
def owl_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(build_tiny_owlv2(tmp_path_factory.mktemp("tiny-owlv2")))


@pytest.fixture(scope="module")
def depth(da_dir: str) -> DepthAnythingExpert:
    return DepthAnythingExpert(da_dir)


@pytest.fixture(scope="module")
def owl(owl_dir: str) -> Owlv2Expert:
    # threshold 0: every box of the random model is a candidate, so all code paths see boxes.
    return Owlv2Expert(owl_dir, threshold=0.0, max_boxes=16)


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth random image (a few blobs), so resizing and detection see structure."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    img = np.zeros((height, width, 3))
    for _ in range(4):
        cy, cx, r = rng.uniform(0, 1, 3)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (0.02 + 0.05 * r))
        img += blob[..., None] * rng.uniform(0, 255, 3)
    return np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)


def _inp(height: int, width: int, seed: int = 0) -> LabelInput:
    return LabelInput(key=f"img{seed}", image=_image(height, width, seed), caption="a scene")


def test_experts_load_from_saved_dirs(depth: DepthAnythingExpert, owl: Owlv2Expert) -> None:
    assert type(depth.model).__name__ == "DepthAnythingForDepthEstimation"
    assert type(owl.model).__name__ == "Owlv2ForObjectDetection"
    assert not depth.model.training and not owl.model.training
    d, o = depth.info(), owl.info()
    assert d.name == "depth_anything_v2" and o.name == "owlv2"
    for info in (d, o):
        assert transformers.__version__ in info.version
        assert info.settings["model"] and info.settings["dtype"] == "float32"
    assert d.settings["input_size"] == {"height": 28, "width": 28}
    assert o.settings["input_size"] == {"height": 64, "width": 64}
    assert o.settings["threshold"] == 0.0 and o.settings["max_boxes"] == 16


def test_depth_keeps_original_resolution(depth: DepthAnythingExpert) -> None:
    shapes = [(48, 80), (60, 60), (90, 30), (48, 80)]
    labels = depth.predict([_inp(h, w, seed=i) for i, (h, w) in enumerate(shapes)])
    assert len(labels) == len(shapes)
    for label, shape in zip(labels, shapes, strict=True):
        assert label.disparity.shape == shape
        assert label.disparity.dtype == np.float32
        assert np.isfinite(label.disparity).all()
        assert label.valid is None
    # Different images give different maps: outputs are not mixed up or broadcast.
    assert not np.allclose(labels[0].disparity, labels[3].disparity)


def test_depth_is_model_disparity_not_inverted(depth: DepthAnythingExpert) -> None:
    x = _inp(48, 80, seed=3)
    (label,) = depth.predict([x])
    with torch.inference_mode():
        pixels = depth.processor(images=x.image, return_tensors="pt")["pixel_values"]
        raw = depth.model(pixel_values=pixels).predicted_depth  # (1, h, w), DA2: disparity
    assert raw.shape[-2:] != (48, 80)  # the model ran at its own size, so resizing is exercised
    expected = F.interpolate(raw[:, None], size=(48, 80), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(label.disparity, expected[0, 0].numpy(), rtol=1e-5, atol=1e-6)
    # An inverted (1/d or max-d) map would anti-correlate with the model's output.
    assert np.corrcoef(label.disparity.ravel(), expected.ravel().numpy())[0, 1] > 0.999


def test_depth_batching_does_not_change_results(da_dir: str, depth: DepthAnythingExpert) -> None:
    inputs = [_inp(48, 80, 0), _inp(48, 80, 1), _inp(64, 40, 2)]
    one_by_one = DepthAnythingExpert(da_dir, batch_size=1).predict(inputs)
    together = depth.predict(inputs)
    for a, b in zip(one_by_one, together, strict=True):
        np.testing.assert_allclose(a.disparity, b.disparity, rtol=1e-4, atol=1e-5)


def test_depth_bfloat16_gives_float32(da_dir: str) -> None:
    expert = DepthAnythingExpert(da_dir, dtype="bfloat16")
    assert expert.model.dtype == torch.bfloat16
    (label,) = expert.predict([_inp(48, 80)])
    assert label.disparity.dtype == np.float32 and label.disparity.shape == (48, 80)
    assert np.isfinite(label.disparity).all()


def _reference_boxes(
    owl: Owlv2Expert, image: np.ndarray, queries: list[str]
) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
    """Pixel boxes of the original image, computed directly: processor, model, post-processing
    with the padded square as target size, clip to the image, drop empty, sort by score.

    Also returns the model's raw normalised boxes (fractions of the padded square)."""
    height, width = image.shape[:2]
    side = max(height, width)
    with torch.inference_mode():
        enc = owl.processor(text=[queries], images=[image], return_tensors="pt")
        outputs = owl.model(**enc)
        (square,) = owl.processor.image_processor.post_process_object_detection(
            outputs, threshold=0.0, target_sizes=[(side, side)]
        )
        (raw,) = owl.processor.image_processor.post_process_object_detection(
            outputs, threshold=0.0, target_sizes=None
        )
    boxes = square["boxes"].numpy().astype(np.float64)
    boxes = np.clip(boxes, 0, [width, height, width, height])
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    scores = square["scores"].numpy()[keep]
    order = np.argsort(-scores, kind="stable")
    names = [queries[int(j)] for j in square["labels"].numpy()[keep][order]]
    return boxes[keep][order], scores[order], names, raw["boxes"].numpy()


@pytest.mark.parametrize("shape", [(48, 80), (80, 48)])
def test_owl_undoes_square_padding(owl: Owlv2Expert, shape: tuple[int, int]) -> None:
    height, width = shape
    image = _image(height, width, seed=5)
    queries = ["small red cube", "cat"]
    (label,) = owl.predict([LabelInput("k", image, "")], [queries])
    ref_px, ref_scores, ref_names, raw = _reference_boxes(owl, image, queries)

    # Some of the 16 grid boxes lie wholly in the padding: they must be gone.
    assert 0 < len(label.boxes) == len(ref_px) < len(raw)
    assert label.boxes.dtype == np.float32
    assert (label.boxes >= 0).all() and (label.boxes <= 1).all()
    assert (label.boxes[:, 2] > label.boxes[:, 0]).all()
    assert (label.boxes[:, 3] > label.boxes[:, 1]).all()
    scale = np.array([width, height, width, height])
    np.testing.assert_allclose(label.boxes * scale, ref_px, atol=1e-3)
    np.testing.assert_allclose(label.scores, ref_scores, rtol=1e-5)
    assert label.names == ref_names
    assert list(label.scores) == sorted(label.scores, reverse=True)

    # The trap: reading the model's normalised boxes as fractions of the original image (as
    # if no padding had happened) gives other boxes for a non-square image.
    naive = np.clip(raw, 0, 1)
    naive = naive[(naive[:, 2] > naive[:, 0]) & (naive[:, 3] > naive[:, 1])]
    assert len(naive) != len(label.boxes) or not np.allclose(
        np.sort(naive, axis=0), np.sort(label.boxes, axis=0), atol=1e-2
    )


def test_owl_names_come_from_each_images_queries(owl: Owlv2Expert) -> None:
    a, b = _inp(48, 80, 1), _inp(70, 50, 2)
    queries = [["cat"], ["small red cube", "cup", "person"]]
    together = owl.predict([a, b], queries)
    assert set(together[0].names) == {"cat"}
    assert set(together[1].names) <= set(queries[1]) and together[1].names
    # Image a's query list is padded to three in the batch; the padding queries must not
    # change its boxes or lend them a name.
    (alone,) = owl.predict([a], [["cat"]])
    np.testing.assert_allclose(together[0].boxes, alone.boxes, atol=1e-5)
    np.testing.assert_allclose(together[0].scores, alone.scores, rtol=1e-4)
    assert together[0].names == alone.names


def test_owl_image_without_queries_gets_empty_label(owl: Owlv2Expert) -> None:
    labels = owl.predict([_inp(48, 80, 0), _inp(48, 80, 1)], [[], ["cat"]])
    assert isinstance(labels[0], BoxLabel)
    assert labels[0].boxes.shape == (0, 4) and labels[0].names == [] and len(labels[0].scores) == 0
    assert len(labels[1].boxes) > 0
    blank = owl.predict([_inp(30, 30)], [["  ", ""]])[0]
    assert blank.boxes.shape == (0, 4)
    with pytest.raises(ValueError, match="query lists"):
        owl.predict([_inp(30, 30)], [])


def test_owl_threshold_max_boxes_and_long_queries(owl_dir: str) -> None:
    x = _inp(48, 80, 7)
    capped = Owlv2Expert(owl_dir, threshold=0.0, max_boxes=3).predict([x], [["cat", "cup"]])[0]
    assert len(capped.boxes) == 3
    full = Owlv2Expert(owl_dir, threshold=0.0, max_boxes=16).predict([x], [["cat", "cup"]])[0]
    np.testing.assert_allclose(capped.scores, full.scores[:3])
    cut = float(np.median(full.scores))
    strict = Owlv2Expert(owl_dir, threshold=cut).predict([x], [["cat", "cup"]])[0]
    assert len(strict.boxes) < len(full.boxes) and (strict.scores > cut).all()
    # Longer than the text tower's 16 positions: truncated, not a crash; the name is kept whole.
    long = "a small red cube standing on the left of a blue sphere near the window"
    (label,) = Owlv2Expert(owl_dir, threshold=0.0).predict([x], [[long]])
    assert label.names and set(label.names) == {long}


def test_missing_weights_raise_a_clear_error(tmp_path: Path, da_dir: str) -> None:
    missing = tmp_path / "no-such-model"
    for cls in (DepthAnythingExpert, Owlv2Expert):
        with pytest.raises(ExpertLoadError) as err:
            cls(str(missing))
        assert str(missing) in str(err.value) and "local" in str(err.value)
    with pytest.raises(ExpertLoadError, match="nobody/not-cached-anywhere") as err:
        DepthAnythingExpert("nobody/not-cached-anywhere")
    assert "huggingface-cli download" in str(err.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ExpertLoadError, match="local"):
        Owlv2Expert(str(empty))
    with pytest.raises(ExpertLoadError):  # a depth checkpoint is not an OWLv2 checkpoint
        Owlv2Expert(da_dir)
    with pytest.raises(ValueError, match="dtype"):
        DepthAnythingExpert(da_dir, dtype="float64")


def test_loads_a_hugging_face_cache_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, da_dir: str
) -> None:
    """A model id resolves from the local hub cache (snapshot layout), offline, with its commit."""
    import huggingface_hub.constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--tiny-org--tiny-da2"
    shutil.copytree(da_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    expert = DepthAnythingExpert("tiny-org/tiny-da2")
    assert f"commit {commit}" in expert.info().version
    assert expert.info().settings["model"] == "tiny-org/tiny-da2"
    (label,) = expert.predict([_inp(48, 80)])
    assert label.disparity.shape == (48, 80)


def test_metric_depth_checkpoint_is_refused(tmp_path: Path, da_dir: str) -> None:
    metric = tmp_path / "metric"
    shutil.copytree(da_dir, metric)
    config = json.loads((metric / "config.json").read_text())
    config["depth_estimation_type"] = "metric"
    (metric / "config.json").write_text(json.dumps(config))
    with pytest.raises(ExpertLoadError, match="relative"):
        DepthAnythingExpert(str(metric))


def test_network_is_blocked() -> None:
    with pytest.raises(AssertionError, match="network"):
        socket.create_connection(("127.0.0.1", 9), timeout=1)


def test_real_photos_from_scikit_image(depth: DepthAnythingExpert, owl: Owlv2Expert) -> None:
    data = pytest.importorskip("skimage.data")
    photos = {"astronaut": data.astronaut(), "coffee": data.coffee(), "chelsea": data.chelsea()}
    inputs = [LabelInput(k, np.ascontiguousarray(v[..., :3]), k) for k, v in photos.items()]
    assert any(x.image.shape[0] != x.image.shape[1] for x in inputs)
    depths = depth.predict(inputs)
    boxes = owl.predict(inputs, [["person"], ["cup", "coffee"], ["cat"]])
    for x, d, b, names in zip(
        inputs, depths, boxes, [{"person"}, {"cup", "coffee"}, {"cat"}], strict=True
    ):
        assert d.disparity.shape == x.image.shape[:2] and d.disparity.dtype == np.float32
        assert np.isfinite(d.disparity).all() and d.disparity.std() > 0
        assert 0 < len(b.boxes) <= 16 and set(b.names) <= names
        assert (b.boxes >= 0).all() and (b.boxes <= 1).all() and np.isfinite(b.boxes).all()
        assert ((b.scores >= 0) & (b.scores <= 1)).all()

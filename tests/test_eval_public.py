"""Public-benchmark adapters: each test writes a tiny fixture in the benchmark's own on-disk
format, checks what the reader makes of it (shapes, labels, geometry through the resize and
centre crop, the ignore label), and runs the suite end to end.

A planted model reads a palette colour per 8x8 patch and a colour word per text, so fixtures
that paint the answer in colours must score perfectly through the real evaluators, and the
same model with its texts shifted, or with constant features, must fail; a tiny real model
checks that every suite runs on a FrozenModel.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import h5py
import numpy as np
import polars as pl
import pytest
import scipy.io
import torch
import torch.nn.functional as F
from PIL import Image

from mtv.eval import load_data, measure, suite_names
from mtv.eval.formats import (
    BenchmarkFormatError,
    SquareCrop,
    read_ade20k,
    read_coco_karpathy,
    read_image_folder,
    subset,
)
from mtv.eval.model import Features, FrozenModel
from mtv.eval.nyuv2 import read_nyuv2
from mtv.eval.spair import read_spair
from mtv.graph import TaskGraph
from mtv.models.tokenizer import TextTokenizer
from mtv.specs import EvalSpec
from tests.helpers import tiny_spec

SIZE, GRID = 32, 4  # the planted model's input size and patch grid (8-pixel patches)
COLOURS = ["black", "red", "green", "yellow", "blue", "magenta", "cyan", "white"]
PALETTE = np.array([[(i >> b & 1) * 255 for b in range(3)] for i in range(8)], dtype=np.uint8)
rng = np.random.default_rng(0)


def painted(codes: np.ndarray, cell: int, noise: int = 12) -> np.ndarray:
    """An image of palette colours, `cell` pixels per entry of `codes` (rows, cols)."""
    image = PALETTE[np.kron(codes, np.ones((cell, cell), dtype=np.int64))].astype(np.int16)
    image += rng.integers(-noise, noise + 1, image.shape, dtype=np.int16)
    return image.clip(0, 255).astype(np.uint8)


def save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # 4:4:4 JPEG: chroma subsampling would bleed the 8-pixel colour cells into each other.
    Image.fromarray(array).save(path, quality=95, subsampling=0)


def run_public_suite(
    model: object,
    name: str,
    path: Path,
    only: list[str] | None = None,
    limit: int | None = None,
) -> pl.DataFrame:
    """The public suite `name` read from `path` and measured on `model`, as `mtv eval` does."""
    settings = EvalSpec(suite=name, data=str(path), only=only or [], limit=limit)
    return measure(model, settings, load_data(settings, model))


class PlantedModel:
    """Duck-types FrozenModel: each patch's feature is the one-hot of its nearest palette colour,
    each text's the one-hot of the first colour word in it (shifted by `shift`)."""

    size = SIZE
    has_text = True

    def __init__(self, shift: int = 0, constant: bool = False, disparity_of: list | None = None):
        self.shift, self.constant, self.disparity_of = shift, constant, disparity_of

    @staticmethod
    def codes(images: np.ndarray, grid: int) -> torch.Tensor:
        x = torch.from_numpy(images).float().permute(0, 3, 1, 2)
        mean = F.adaptive_avg_pool2d(x, grid).permute(0, 2, 3, 1)
        return torch.cdist(mean.reshape(-1, 3), torch.from_numpy(PALETTE).float()).argmin(1)

    def images(self, images: np.ndarray) -> Features:
        patches = F.one_hot(self.codes(images, GRID), 8).float().reshape(-1, GRID, GRID, 8)
        if self.constant:
            patches = torch.ones_like(patches)
        return Features(patches.mean((1, 2)), patches)

    def texts(self, texts: list[str]) -> torch.Tensor:
        words = [re.search(r"\b(" + "|".join(COLOURS) + r")\b", t) for t in texts]
        index = [(COLOURS.index(w.group(1)) + self.shift) % 8 for w in words]  # type: ignore[union-attr]
        return F.one_hot(torch.tensor(index), 8).float()

    @property
    def has_depth_head(self) -> bool:
        return self.disparity_of is not None

    def disparity(self, images: np.ndarray) -> torch.Tensor:
        codes = self.codes(images, images.shape[1]).reshape(images.shape[:3])
        return torch.tensor(self.disparity_of)[codes]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The probes train on a few hundred tiny rows: with the CPU shared, torch's intra-op
    thread pool only adds waits (seconds a probe instead of a fraction of one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_model() -> FrozenModel:
    spec = tiny_spec(["vl", "depth"])
    words = [f"a photo of a {c} thing on the floor" for c in COLOURS]
    tokenizer = TextTokenizer.train(words, vocab_size=300, context_length=16)
    return FrozenModel(spec, TaskGraph(spec), tokenizer, step=0)


def check_rows(frame: pl.DataFrame, expected: dict[str, set[str]]) -> dict[str, float]:
    assert frame.columns == [
        "evaluator",
        "metric",
        "value",
        "trivial",
        "higher_is_better",
        "version",
    ]
    assert frame["value"].is_finite().all()
    # Every public evaluator knows its trivial predictor's score on the same data.
    assert frame["trivial"].is_not_null().all() and frame["trivial"].is_finite().all()
    found: dict[str, set[str]] = {}
    for evaluator, metric in frame.select("evaluator", "metric").iter_rows():
        found.setdefault(evaluator, set()).add(metric)
    assert found == expected
    return {m: v for _, m, v, *_ in frame.iter_rows()}


# ImageNet-style class folders ----------------------------------------------------------------

WNIDS = {"n01000003": 1, "n01000001": 2, "n01000004": 4, "n01000002": 3}  # folder -> colour


def write_image_folder(root: Path, names: str | None) -> None:
    for n, (wnid, colour) in enumerate(WNIDS.items()):
        folder = root / "val" / (wnid if names else COLOURS[colour])
        for i, (w, h) in enumerate([(40, 30), (30, 50)]):
            image = painted(np.full((1, 1), colour), 1)[0, 0] * np.ones((h, w, 1), np.uint8)
            suffix = ".JPEG" if (n + i) % 2 else ".png"
            save(image, folder / f"{wnid}_{i}{suffix}")
    ordered = [f"{COLOURS[WNIDS[w]]}, other {w}" for w in sorted(WNIDS)]
    if names == "LOC_synset_mapping.txt":  # "wnid name, synonym" lines, in any order
        lines = [f"{w} {COLOURS[c]}, hue {c}" for w, c in reversed(WNIDS.items())]
        (root / names).write_text("\n".join(lines) + "\n")
    elif names == "classnames.txt":  # one name per line, in folder order
        (root / names).write_text("\n".join(ordered))
    elif names == "classnames.json":  # ImageNet's class index: {"0": [wnid, name]}
        index = {str(i): [w, COLOURS[WNIDS[w]]] for i, w in enumerate(WNIDS)}
        (root / names).write_text(json.dumps(index))


@pytest.mark.parametrize(
    "names", ["LOC_synset_mapping.txt", "classnames.txt", "classnames.json", None]
)
def test_image_folder_reader_names_classes_and_labels_images(tmp_path: Path, names) -> None:
    write_image_folder(tmp_path, names)
    data = read_image_folder(tmp_path, SIZE)
    colours = [c for w, c in sorted(WNIDS.items())] if names else sorted(WNIDS.values())
    colours = colours if names else sorted(WNIDS.values(), key=lambda c: COLOURS[c])
    assert data.class_names == [COLOURS[c] for c in colours]
    assert data.images.shape == (8, SIZE, SIZE, 3) and data.images.dtype == np.uint8
    assert data.labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    seen = PlantedModel.codes(data.images, 1).tolist()
    assert [data.class_names[label] for label in data.labels] == [COLOURS[c] for c in seen]
    assert read_image_folder(tmp_path, SIZE, limit=4).labels.tolist() == [0, 1, 2, 3]


def test_zero_shot_suite_on_planted_and_shifted_texts(tmp_path: Path, tiny_model) -> None:
    write_image_folder(tmp_path, "LOC_synset_mapping.txt")
    right = check_rows(
        run_public_suite(PlantedModel(), "imagenet_folder", tmp_path),
        {"zero_shot": {"top1", "top5"}},
    )
    assert right == {"top1": 1.0, "top5": 1.0}
    wrong = run_public_suite(PlantedModel(shift=1), "imagenet_folder", tmp_path)
    # no class keeps its own text: only ties (images whose colour no text has) can hit
    assert wrong.filter(pl.col("metric") == "top1")["value"][0] <= 0.25
    real = run_public_suite(tiny_model, "imagenet_folder", tmp_path, limit=6)
    assert 0 <= check_rows(real, {"zero_shot": {"top1", "top5"}})["top1"] <= 1


# COCO captions, Karpathy split ----------------------------------------------------------------


def write_coco(root: Path, drop: str | None = None) -> Path:
    splits = ["train", "test", "val", "test", "test", "restval", "test"]
    images = []
    for i, split in enumerate(splits):
        colour = 1 + i % 7
        filename = f"COCO_val2014_{i:012d}.jpg"
        save(painted(np.full((6, 8), colour), 6), root / "val2014" / filename)
        n = 6 if i == 1 else 5  # a few COCO images have more than 5 captions
        sentences = [
            {"raw": f"A {COLOURS[colour]} thing, take {j}.", "tokens": []} for j in range(n)
        ]
        entry = {"filepath": "val2014", "filename": filename, "cocoid": i, "split": split}
        images.append({**entry, "sentences": sentences})
    if drop:
        del images[3][drop]
    path = root / "dataset_coco.json"
    path.write_text(json.dumps({"images": images, "dataset": "coco"}))
    return path


def test_coco_reader_keeps_the_test_split_with_five_captions_each(tmp_path: Path) -> None:
    write_coco(tmp_path)
    data = read_coco_karpathy(tmp_path, SIZE)
    assert data.images.shape == (4, SIZE, SIZE, 3)
    assert data.caption_image.tolist() == np.repeat(np.arange(4), 5).tolist()
    assert data.captions[:2] == ["A green thing, take 0.", "A green thing, take 1."]
    assert data.captions[5].startswith("A blue thing")  # image 3 (split index 1 of test)
    assert len(read_coco_karpathy(tmp_path / "dataset_coco.json", SIZE, limit=2).captions) == 10


def test_retrieval_suite_on_planted_and_shifted_texts(tmp_path: Path, tiny_model) -> None:
    write_coco(tmp_path)
    metrics = {"i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5"}
    right = check_rows(
        run_public_suite(PlantedModel(), "coco_karpathy", tmp_path), {"retrieval": metrics}
    )
    assert right["i2t_r1"] == 1.0 and right["t2i_r1"] == 1.0
    wrong = check_rows(
        run_public_suite(PlantedModel(shift=3), "coco_karpathy", tmp_path), {"retrieval": metrics}
    )
    # a caption whose colour no image has ties, and may hit by the tie's order: at most chance
    assert wrong["i2t_r1"] == 0.0 and wrong["t2i_r1"] <= 0.25
    check_rows(run_public_suite(tiny_model, "coco_karpathy", tmp_path), {"retrieval": metrics})


@pytest.mark.parametrize(
    ("drop", "message"),
    [("sentences", "images[3] has no 'sentences'"), ("split", "images[3] has no 'split'")],
)
def test_coco_format_errors_name_file_and_entry(tmp_path: Path, drop: str, message: str) -> None:
    path = write_coco(tmp_path, drop=drop)
    with pytest.raises(BenchmarkFormatError, match=re.escape(f"{path}: {message}")):
        read_coco_karpathy(path, SIZE)


# ADE20k -------------------------------------------------------------------------------------


def write_ade20k(root: Path, n: int = 6) -> Path:
    """64x64 images of 16-pixel cells (8-pixel patches at SIZE); cell class v in 0..7 is
    painted colour v, class 0 being ADE's 'other' (ignored)."""
    base = root / "ADEChallengeData2016"
    for split, prefix in [("training", "ADE_train"), ("validation", "ADE_val")]:
        for i in range(n):
            codes = rng.integers(0, 8, (4, 4))
            name = f"{prefix}_{i:08d}"
            save(painted(codes, 16), base / "images" / split / f"{name}.jpg")
            mask = np.kron(codes, np.ones((16, 16), np.int64)).astype(np.uint8)
            (base / "annotations" / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(base / "annotations" / split / f"{name}.png")
    return base


def test_ade20k_reader_keeps_the_ignore_label_through_the_crop(tmp_path: Path) -> None:
    base = tmp_path / "ADEChallengeData2016"
    mask = np.zeros((48, 64), np.uint8)  # (H, W): rows 0..11 'other', then classes 1..4 by column
    mask[12:] = np.repeat(np.arange(1, 5), 16)[None]
    save(PALETTE[mask], base / "images" / "validation" / "ADE_val_00000001.jpg")
    (base / "annotations" / "validation").mkdir(parents=True)
    Image.fromarray(mask).save(base / "annotations" / "validation" / "ADE_val_00000001.png")
    data = read_ade20k(tmp_path, SIZE)  # the parent of ADEChallengeData2016 is fine too
    assert data.images.shape == (1, SIZE, SIZE, 3) and data.masks.shape == (1, SIZE, SIZE)
    assert data.n_classes == 150 and data.ignore_index == -1
    assert (data.masks[0, :8] == -1).all() and (data.masks[0, 8:] >= 0).all()  # 12 * 32/48 rows
    # width 64 -> 43, crop from column 5: class 1 (columns 0..15) keeps columns 0..5
    assert data.masks[0, 8:, 0].tolist() == [0] * 24 and data.masks[0, 8, -1] == 3
    assert set(np.unique(data.masks[0, 8:])) == {0, 1, 2, 3}


def test_segmentation_suite_on_planted_and_constant_features(tmp_path: Path, tiny_model) -> None:
    root = write_ade20k(tmp_path)
    right = check_rows(run_public_suite(PlantedModel(), "ade20k", root), {"segmentation": {"miou"}})
    assert right["miou"] > 0.99
    wrong = run_public_suite(PlantedModel(constant=True), "ade20k", root)
    assert wrong["value"][0] < 0.3
    check_rows(run_public_suite(tiny_model, "ade20k", root, limit=3), {"segmentation": {"miou"}})


def test_ade20k_missing_annotation_is_named(tmp_path: Path) -> None:
    base = write_ade20k(tmp_path, n=2)
    missing = base / "annotations" / "validation" / "ADE_val_00000001.png"
    missing.unlink()
    with pytest.raises(BenchmarkFormatError, match=re.escape(f"{missing}: image file not found")):
        run_public_suite(PlantedModel(), "ade20k", base)


# NYUv2 --------------------------------------------------------------------------------------

LEVELS = [1.0, 2.0, 3.0, 4.0]  # depth (metres) painted as colours 1..4


def nyu_frames(n: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """(N, 32, 48, 3) rgb, (N, 32, 48) depth in 8-row bands; frame i has an invalid pixel at
    (0, 8 + i), which tells frames apart."""
    bands = (np.arange(4)[None] + np.arange(n)[:, None]) % 4  # (N, 4) level of each band
    depth = np.asarray(LEVELS, np.float32)[np.repeat(bands, 8, axis=1)][..., None].repeat(48, 2)
    rgb = PALETTE[1 + np.repeat(bands, 8, axis=1)][:, :, None].repeat(48, 2)
    for i in range(n):
        depth[i, 0, 8 + i] = 0.0
    return rgb, depth


def write_nyuv2(root: Path, version: str) -> Path:
    rgb, depth = nyu_frames()
    root.mkdir(parents=True, exist_ok=True)
    path = root / "nyu_depth_v2_labeled.mat"
    if version == "7.3":  # HDF5 after MATLAB's 512-byte header; h5py sees arrays transposed
        with h5py.File(path, "w", userblock_size=512) as f:
            f["images"] = rgb.transpose(0, 3, 2, 1)  # (N, 3, W, H)
            f["depths"] = depth.transpose(0, 2, 1)  # (N, W, H)
        with path.open("r+b") as f:
            f.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: test HDF5 schema 1.00 .")
    else:  # MATLAB's own order, as loadmat returns it
        scipy.io.savemat(
            path, {"images": rgb.transpose(1, 2, 3, 0), "depths": depth.transpose(1, 2, 0)}
        )
    scipy.io.savemat(
        root / "splits.mat",
        {"trainNdxs": np.array([[1], [2], [3], [4]]), "testNdxs": np.array([[5], [6]])},
    )
    return path


@pytest.mark.parametrize("version", ["7.3", "5"])
def test_nyuv2_reader_orients_frames_and_takes_the_split(tmp_path: Path, version: str) -> None:
    write_nyuv2(tmp_path, version)
    rgb, depth = nyu_frames()
    test = read_nyuv2(tmp_path, SIZE)
    # 48x32 frames: no resize, the centre crop keeps columns 8..39
    assert np.array_equal(test.images, rgb[4:, :, 8:40])
    assert np.array_equal(test.depth, depth[4:, :, 8:40])
    assert not test.valid[0, 0, 4] and not test.valid[1, 0, 5] and test.valid.sum() == 2 * 1024 - 2
    train = read_nyuv2(tmp_path / "nyu_depth_v2_labeled.mat", SIZE, "train", limit=2)
    assert np.array_equal(train.depth, depth[[0, 3], :, 8:40])


def test_nyuv2_without_a_split_file_warns_and_other_errors(tmp_path: Path) -> None:
    path = write_nyuv2(tmp_path, "7.3")
    (tmp_path / "splits.mat").unlink()
    with pytest.warns(UserWarning, match="not the standard split"):
        assert len(read_nyuv2(path, SIZE).depth) == 3  # round(6 * 654 / 1449)
    (tmp_path / "splits.json").write_text(json.dumps({"train": [1, 2], "test": [7]}))
    with pytest.raises(BenchmarkFormatError, match=re.escape(f"{path}: test index 7 outside 1..6")):
        read_nyuv2(path, SIZE)
    with h5py.File(path, "a") as f:
        del f["depths"]
    with pytest.raises(BenchmarkFormatError, match=re.escape(f"{path}: no 'depths' dataset")):
        read_nyuv2(path, SIZE)


def test_depth_suites_on_planted_and_constant_features(tmp_path: Path, tiny_model) -> None:
    root = tmp_path / "nyu"
    write_nyuv2(root, "7.3")
    expected = {"depth_probe": {"rmse", "absrel"}, "relative_depth": {"absrel", "delta1"}}
    disparity = [1.0] + [1 / d for d in LEVELS] + [1.0] * 3  # colour -> true disparity
    right = run_public_suite(PlantedModel(disparity_of=disparity), "nyuv2", root)
    check_rows(right, expected)
    values = {(e, m): v for e, m, v, *_ in right.iter_rows()}
    assert values["depth_probe", "rmse"] < 0.2 and values["depth_probe", "absrel"] < 0.1
    assert values["relative_depth", "absrel"] < 1e-4 and values["relative_depth", "delta1"] == 1
    wrong = run_public_suite(PlantedModel(constant=True), "nyuv2", root)
    check_rows(wrong, {"depth_probe": {"rmse", "absrel"}})  # no depth head: no relative depth
    assert wrong["value"][0] > 0.8  # depth std over the bands is 1.1
    check_rows(run_public_suite(tiny_model, "nyuv2", root), expected)


# SPair-71k ----------------------------------------------------------------------------------


def write_spair(root: Path) -> None:
    """a.jpg (48x32): colours 1..3 in 8-pixel cells inside the centre crop, colour 4 in the
    left margin that the crop cuts; b.jpg (64x64, halved by the resize): the same colours in
    16-pixel cells elsewhere."""
    a, b = np.zeros((4, 6), np.int64), np.zeros((4, 4), np.int64)
    a_cells, b_cells = [(2, 0), (3, 1), (4, 3), (0, 2)], [(2, 3), (1, 2), (3, 1), (2, 1)]
    for colour, (col, row) in enumerate(a_cells, start=1):
        a[row, col] = colour
    for colour, (col, row) in enumerate(b_cells, start=1):
        b[row, col] = colour
    save(painted(a, 8), root / "JPEGImages" / "cat" / "a.jpg")
    save(painted(b, 16), root / "JPEGImages" / "cat" / "b.jpg")
    a_kps = [[8 * c + 4, 8 * r + 4] for c, r in a_cells]
    b_kps = [[16 * c + 8, 16 * r + 8] for c, r in b_cells]
    pairs = {
        "000001-a-b:cat": ("a.jpg", "b.jpg", a_kps, b_kps, [0, 0, 63, 63]),
        "000002-b-a:cat": ("b.jpg", "a.jpg", b_kps, a_kps, [8, 0, 40, 32]),
    }
    folder = root / "PairAnnotation" / "test"
    folder.mkdir(parents=True)
    for name, (src, trg, src_kps, trg_kps, box) in pairs.items():
        pair = {
            "src_imname": src,
            "trg_imname": trg,
            "category": "cat",
            "src_kps": src_kps,
            "trg_kps": trg_kps,
            "src_bndbox": [0, 0, 10, 10],
            "trg_bndbox": box,
        }
        (folder / f"{name}.json").write_text(json.dumps(pair))


def test_spair_reader_maps_keypoints_through_the_crop(tmp_path: Path) -> None:
    write_spair(tmp_path)
    data = read_spair(tmp_path, SIZE)
    assert data.images.shape == (2, SIZE, SIZE, 3) and data.alpha == 0.1  # each image once
    first, second = data.pairs
    assert (first.source, first.target, second.source, second.target) == (0, 1, 1, 0)
    # a: columns shift by the 8-pixel margin, the 4th point (x = 4) is cropped out; b: halved
    assert first.source_xy.tolist() == [[12, 4], [20, 12], [28, 28]]
    assert first.target_xy.tolist() == [[20, 28], [12, 20], [28, 12]]
    assert first.threshold == pytest.approx(0.1 * 63 / 2)
    assert second.threshold == pytest.approx(0.1 * 32)
    assert second.target_xy.tolist() == first.source_xy.tolist()
    xy, inside = SquareCrop(48, 32, SIZE).points(np.array([[4.0, 4.0], [47.0, 0.0]]))
    assert xy.tolist() == [[-4, 4], [39, 0]] and not inside.any()


def test_correspondence_suite_on_planted_and_constant_features(tmp_path: Path, tiny_model) -> None:
    write_spair(tmp_path)
    metric = {"semantic_correspondence": {"pck@0.1"}}
    assert check_rows(run_public_suite(PlantedModel(), "spair", tmp_path), metric) == {
        "pck@0.1": 1.0
    }
    wrong = check_rows(run_public_suite(PlantedModel(constant=True), "spair", tmp_path), metric)
    assert wrong["pck@0.1"] == 0.0  # every match lands on the first patch, where no point is
    check_rows(run_public_suite(tiny_model, "spair", tmp_path, limit=1), metric)


def test_spair_missing_keys_and_bad_images_are_named(tmp_path: Path) -> None:
    write_spair(tmp_path)
    first = tmp_path / "PairAnnotation" / "test" / "000001-a-b:cat.json"
    pair = json.loads(first.read_text())
    first.write_text(json.dumps({k: v for k, v in pair.items() if k != "trg_kps"}))
    with pytest.raises(BenchmarkFormatError, match=re.escape(f"{first}: missing 'trg_kps'")):
        read_spair(tmp_path, SIZE)
    first.write_text(json.dumps({**pair, "src_kps": [[1, 2], [3]]}))
    with pytest.raises(BenchmarkFormatError, match=re.escape(f"{first}: 'src_kps' is not a list")):
        read_spair(tmp_path, SIZE)
    first.write_text(json.dumps(pair))
    image = tmp_path / "JPEGImages" / "cat" / "a.jpg"
    image.write_bytes(b"not a jpeg")
    with pytest.raises(BenchmarkFormatError, match=re.escape(f"{image}: not a readable image")):
        read_spair(tmp_path, SIZE)


# The registry -------------------------------------------------------------------------------


def test_registry_names_and_argument_errors(tmp_path: Path) -> None:
    assert set(suite_names()) - {"mini", "source"} == {
        "imagenet_folder",
        "coco_karpathy",
        "ade20k",
        "nyuv2",
        "spair",
        "navi",
    }
    with pytest.raises(ValueError, match=r"eval\.suite: unknown suite 'coco'"):
        run_public_suite(PlantedModel(), "coco", tmp_path)
    with pytest.raises(
        ValueError, match=r"unknown evaluator\(s\) \['zero_shot'\] for suite 'spair'"
    ):
        run_public_suite(PlantedModel(), "spair", tmp_path, only=["zero_shot"])
    with pytest.raises(BenchmarkFormatError, match=re.escape(f"{tmp_path / 'val'}: not a dir")):
        run_public_suite(PlantedModel(), "imagenet_folder", tmp_path)
    assert subset(10, 4).tolist() == [0, 3, 6, 9] and subset(3, 5).tolist() == [0, 1, 2]

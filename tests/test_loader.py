"""The loader: crops move boxes and depth with the image (checked against ground truth sliced
independently), labels joined by key whatever the shard order, undecodable images skipped and
counted, exact resume, disjoint ranks, and the real-photo path end to end."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mtv.data import TarShardSource
from mtv.data.batch import name_id
from mtv.data.loader import BatchStream, EpochSampler, TooManyBadSamples, build_stream
from mtv.data.store import LabelStore
from mtv.data.views import Crop, crop_boxes, crop_image, crop_map, sample_crop
from mtv.graph import TaskGraph, plan_graph
from mtv.label import run_labelling
from mtv.models.tokenizer import load_or_train_tokenizer
from mtv.specs import ExperimentSpec
from mtv.specs.label import LabelSpec
from mtv.world.corpus import GroundTruth, render_corpus

SIZE = 32


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("loader")
    corpus = render_corpus(root / "corpus", 48, size=SIZE, views=1, seed=11, shard_size=16)
    labels = LabelSpec.model_validate(
        {
            "source": {"kind": "miniworld", "root": str(root / "corpus")},
            "output": str(root / "labels.zarr"),
            "resolution": SIZE,
            "chunk_size": 16,
        }
    )
    store, _ = run_labelling(labels)
    truth = GroundTruth(corpus.groundtruth)
    return {"corpus": corpus, "store": store, "truth": truth, "root": root}


def experiment(**data: object) -> ExperimentSpec:
    return ExperimentSpec.model_validate(
        {
            "name": "t",
            "model": {"size": "tiny", "text": {"context_length": 16}},
            "data": {
                "labels": {"kinds": ["boxes", "depth"]},
                "views": {"global_size": SIZE, "local_size": 16},
                "batch_size": 8,
                "loader": {"workers": 0},
                **data,
            },
            "task_defaults": {
                k: {"n_prototypes": 32, "hidden_dim": 16, "bottleneck_dim": 8}
                for k in ("distill", "masked")
            },
            "tasks": ["vl", "distill", "masked", "koleo", "ground", "depth"],
        }
    )


def stream_for(
    world: dict, spec: ExperimentSpec, shards: list[str] | None = None, **kw
) -> BatchStream:
    source = TarShardSource(shards or world["corpus"].shards)
    truth = world["truth"]
    tokenizer = load_or_train_tokenizer(
        world["root"] / "tokenizer.json", lambda: truth._captions, 1024, 16
    )
    plan = plan_graph(spec)
    return build_stream(spec.data, plan.view_request(), source, world["store"], tokenizer, **kw)


def normalised_disparity(depth: np.ndarray) -> np.ndarray:
    disparity = np.where(np.isfinite(depth), 1 / depth, 0.0)
    return (disparity - disparity.min()) / (disparity.max() - disparity.min())


def tight_boxes(instance: np.ndarray) -> dict[int, np.ndarray]:
    out = {}
    for i in np.unique(instance[instance > 0]):
        rows, cols = np.nonzero(instance == i)
        out[int(i)] = np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], np.float32)
    return out


# ------------------------------------------------------------------ crop geometry, independently


@pytest.mark.parametrize("flip", [False, True])
def test_a_pixel_aligned_crop_equals_slicing(flip: bool) -> None:
    """A crop of exactly `size` pixels: image, map and boxes equal plain slicing (and flipping)."""
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, 40, 48, generator=g)
    crop = Crop(8 / 48, 4 / 40, 32 / 48, 28 / 40, flip)  # 24 x 24 pixels
    expected = image[:, 4:28, 8:32]
    expected = expected.flip(-1) if flip else expected
    torch.testing.assert_close(crop_image(image, crop, 24), expected)
    depth = torch.rand(40, 48, generator=g)
    valid = torch.rand(40, 48, generator=g) > 0.1
    values, mask = crop_map(depth, valid, crop, 24)
    want_mask = valid[4:28, 8:32].flip(-1) if flip else valid[4:28, 8:32]
    want = torch.where(valid, depth, 0.0)[4:28, 8:32]
    want = want.flip(-1) if flip else want
    assert torch.equal(mask, want_mask)
    torch.testing.assert_close(values[mask], want[mask])
    boxes = np.array([[10, 6, 20, 12], [4, 0, 14, 10], [40, 30, 47, 39]], np.float32) / [
        48,
        40,
        48,
        40,
    ]
    kept, keep = crop_boxes(boxes, crop, min_visibility=0.25)
    assert keep.tolist() == [True, True, False]  # box 2 is 36% inside; box 3 is outside
    first = np.array([10 - 8, 6 - 4, 20 - 8, 12 - 4], np.float32) / 24
    if flip:
        first = np.array([1 - first[2], first[1], 1 - first[0], first[3]])
    np.testing.assert_allclose(kept[0], first, atol=1e-6)
    np.testing.assert_allclose(
        kept[1], [0, 0, 6 / 24, 6 / 24] if not flip else [18 / 24, 0, 1, 6 / 24], atol=1e-6
    )


def test_sampled_crops_respect_scale_and_aspect() -> None:
    g = torch.Generator().manual_seed(1)
    for _ in range(200):
        crop = sample_crop((60, 80), (0.2, 0.6), (0.75, 4 / 3), g)
        area = crop.width * crop.height
        ratio = (crop.width * 80) / (crop.height * 60)
        assert 0.18 <= area <= 0.62 and 0.7 <= ratio <= 1.4
        assert 0 <= crop.x0 < crop.x1 <= 1 and 0 <= crop.y0 < crop.y1 <= 1
        assert (crop.x0 * 80) == round(crop.x0 * 80)  # snapped to whole pixels


# ------------------------------------------------------------------ the loader on real files


def test_batches_carry_what_the_graph_needs_and_train(world: dict) -> None:
    spec = experiment()
    batch, info = next(stream_for(world, spec))
    assert batch.images.shape == (8, 3, SIZE, SIZE) and batch.local_images.shape == (
        8,
        6,
        3,
        16,
        16,
    )
    assert batch.patch_mask.shape == (8, 16) and (batch.patch_mask.sum(1) == 8).all()
    assert batch.boxes.shape == (8, 4, 4) and batch.region_name_index.shape == (8, 4)
    assert batch.region_names.shape[1] == 16 and batch.region_names.shape[0] <= 8 * 4
    assert batch.depth.shape == (8, 1, SIZE, SIZE) and len(set(info.keys)) == 8
    torch.manual_seed(0)
    out = TaskGraph(spec).step(batch)
    assert all(torch.isfinite(v) for v in out.losses.values())
    out.total.backward()


def test_random_crops_move_boxes_and_depth_with_the_image(world: dict) -> None:
    """Compare each row with the ground truth cut by the row's own crop, computed here."""
    spec = experiment(views={"global_size": SIZE, "local_size": 16, "global_scale": [0.3, 0.8]})
    stream = stream_for(world, spec)
    truth: GroundTruth = world["truth"]
    checked = 0
    for _ in range(3):
        batch, info = next(stream)
        for row, key in enumerate(info.keys):
            x0, y0, x1, y1, _ = (info.crops[row] * SIZE).round().int().tolist()
            record = truth[key]
            # depth: the normalised disparity map, sliced and resized independently
            disparity = torch.from_numpy(normalised_disparity(record.depth).astype(np.float32))
            expected = F.interpolate(
                disparity[y0:y1, x0:x1][None, None],
                size=(SIZE, SIZE),
                mode="bilinear",
                align_corners=False,
            )[0, 0]
            # float16 storage bounds the error
            torch.testing.assert_close(batch.depth[row, 0], expected, atol=2e-3, rtol=0)
            # boxes: objects wholly inside the crop have their tight box, in crop coordinates
            inside = {
                i: b
                for i, b in tight_boxes(record.instance).items()
                if b[0] >= x0 and b[1] >= y0 and b[2] <= x1 and b[3] <= y1
            }
            names = {
                record.names[j]: int(record.box_instances[j]) for j in range(len(record.names))
            }
            for slot in torch.nonzero(batch.box_valid[row]).flatten().tolist():
                name_ids = batch.region_name_ids[row, slot]
                name = next(n for n in names if name_id(n) == name_ids)
                instance = names[name]
                if instance in inside:
                    box = inside[instance]
                    want = (box - [x0, y0, x0, y0]) / [x1 - x0, y1 - y0, x1 - x0, y1 - y0]
                    np.testing.assert_allclose(batch.boxes[row, slot].numpy(), want, atol=1e-5)
                    checked += 1
    assert checked > 10


def test_labels_are_joined_by_key_whatever_the_shard_order(world: dict) -> None:
    full = {"global_size": SIZE, "local_size": 16, "global_scale": [1.0, 1.0], "aspect": [1.0, 1.0]}
    spec = experiment(views=full, loader={"workers": 0, "seed": 3})
    shards = world["corpus"].shards
    rows: dict[str, dict] = {}
    for order in (shards, shards[::-1]):
        batch, info = next(stream_for(world, spec, shards=order))
        truth: GroundTruth = world["truth"]
        for row, key in enumerate(info.keys):
            record = truth[key]
            # the image is the key's image, and so are its depth and boxes
            disparity = normalised_disparity(record.depth)
            np.testing.assert_allclose(batch.depth[row, 0].numpy(), disparity, atol=2e-3)
            count = int(batch.box_valid[row].sum())
            assert count == min(4, len(record.names))
            for slot in range(count):
                assert any(
                    np.allclose(batch.boxes[row, slot].numpy(), b, atol=1e-6) for b in record.boxes
                )
            rows.setdefault(key, {}).setdefault("images", []).append(batch.images[row])
    for seen in rows.values():
        for image in seen["images"][1:]:
            torch.testing.assert_close(image, seen["images"][0])


def test_state_dict_resumes_at_the_next_batch(world: dict) -> None:
    spec = experiment()
    first = stream_for(world, spec)
    for _ in range(2):
        next(first)
    state = first.state_dict()
    expected, expected_info = next(first)
    second = stream_for(world, spec)
    second.load_state_dict(state)
    got, got_info = next(second)
    assert got_info.keys == expected_info.keys
    torch.testing.assert_close(got.images, expected.images)
    torch.testing.assert_close(got.local_images, expected.local_images)


def test_ranks_see_disjoint_samples() -> None:
    seen = []
    for rank in range(3):
        sampler = EpochSampler(31, rank, 3, seed=5)
        it = iter(sampler)
        seen.append({next(it)[0] for _ in range(10)})
    assert all(len(s) == 10 for s in seen)
    assert not (seen[0] & seen[1] or seen[1] & seen[2] or seen[0] & seen[2])


def _jpeg(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def test_truncated_jpeg_is_skipped_counted_and_stops_the_run_above_the_limit(
    world: dict, tmp_path: Path
) -> None:
    """A shard whose third image is a truncated JPEG: the loader replaces it, reports its key,
    and a zero tolerance stops the run with a message naming it."""
    truth: GroundTruth = world["truth"]
    shard = tmp_path / "jpeg.tar"
    with tarfile.open(shard, "w") as tar:
        for i, key in enumerate(truth.keys[:16]):
            image = np.full((SIZE, SIZE, 3), i * 10, np.uint8)
            payload = _jpeg(image)
            if i == 2:
                payload = payload[: len(payload) // 2]
            for name, data in (
                (f"{key}.jpg", payload),
                (f"{key}.txt", truth[key].caption.encode()),
            ):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    spec = experiment(loader={"workers": 0, "max_bad_fraction": 0.5})
    skipped: list[str] = []
    stream = stream_for(world, spec, shards=[str(shard)], keys=truth.keys[:16])
    stream.on_skip = lambda key, reason: skipped.append(key)
    for _ in range(2):
        next(stream)
    assert skipped == [truth.keys[2]] and stream.bad == 1 and stream.seen == 17
    strict = stream_for(
        world,
        experiment(loader={"workers": 0, "max_bad_fraction": 0.0}),
        shards=[str(shard)],
        keys=truth.keys[:16],
    )
    with pytest.raises(TooManyBadSamples, match=truth.keys[2]):
        for _ in range(2):
            next(strict)


def test_real_photos_through_source_labelling_and_loader(tmp_path: Path) -> None:
    """scikit-image's photos in a shard, labelled by the tiny Depth Anything / OWLv2 experts
    (through the paths users take), then loaded into training views."""
    skimage_data = pytest.importorskip("skimage.data")
    from tests.tiny_hf import build_tiny_depth_anything, build_tiny_owlv2

    photos = {
        "astronaut": (skimage_data.astronaut(), "an astronaut with a flag"),
        "coffee": (skimage_data.coffee(), "a cup of coffee on a saucer"),
        "chelsea": (skimage_data.chelsea(), "a cat lying on a red cloth"),
        "rocket": (skimage_data.rocket(), "a rocket on a launch pad"),
    }
    shard = tmp_path / "photos.tar"
    with tarfile.open(shard, "w") as tar:
        for key, (image, caption) in photos.items():
            for name, data in ((f"{key}.jpg", _jpeg(image)), (f"{key}.txt", caption.encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    depth_model = build_tiny_depth_anything(tmp_path / "da2")
    owl_model = build_tiny_owlv2(tmp_path / "owl")
    labels = LabelSpec.model_validate(
        {
            "source": {"kind": "shards", "urls": [str(shard)]},
            "output": str(tmp_path / "labels.zarr"),
            "depth": {"kind": "depth_anything", "model": str(depth_model)},
            "boxes": {"kind": "owlv2", "model": str(owl_model), "threshold": 0.0, "max_boxes": 3},
            "resolution": 24,
            "chunk_size": 2,
            "batch_size": 2,
        }
    )
    store, stats = run_labelling(labels)
    assert stats.images == 4 and store.complete
    assert all(store.boxes(k).names for k in photos)  # threshold 0: every photo gets boxes
    for key in photos:
        depth, valid = store.depth(key)
        assert depth.shape == (24, 24) and valid.all() and depth.min() >= 0 and depth.max() <= 1
    spec = experiment(batch_size=4)
    tokenizer = load_or_train_tokenizer(
        tmp_path / "tok.json", lambda: [c for _, c in photos.values()], 1024, 16
    )
    plan = plan_graph(spec)
    stream = build_stream(
        spec.data,
        plan.view_request(),
        TarShardSource([str(shard)]),
        LabelStore.open(tmp_path / "labels.zarr"),
        tokenizer,
    )
    batch, info = next(stream)
    assert sorted(info.keys) == sorted(photos) and batch.images.shape == (4, 3, SIZE, SIZE)
    assert batch.box_valid.any(dim=1).all() and torch.isfinite(batch.depth).all()

"""The mini-world: determinism, and ground truth that agrees with geometry checked independently
of the renderer (back-projection, sphere surfaces, multi-view reprojection, tight boxes)."""

from __future__ import annotations

import io
import json
import math
import os
import re
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from mtv_cli.main import app
from PIL import Image
from typer.testing import CliRunner

from mtv.world import geometry
from mtv.world.captions import plural
from mtv.world.corpus import GroundTruth, WorldCorpus, keys_of, render_corpus
from mtv.world.render import CLASS_NAMES, KEYPOINT_IDS, RenderedView, render_views
from mtv.world.scene import COLORS, SIZES, sample_scene

SIZE = 64


@pytest.fixture(scope="module")
def views() -> list[RenderedView]:
    scenes = [sample_scene(7, i, views=2) for i in range(24)]
    return render_views([(s, v) for s in scenes for v in range(2)], SIZE)


def backproject(view: RenderedView) -> np.ndarray:
    """(H, W, 3) world points of every pixel from its depth and camera (NaN for the sky)."""
    k, pose = view.intrinsics.astype(np.float64), view.world_to_camera.astype(np.float64)
    v, u = np.mgrid[0:SIZE, 0:SIZE] + 0.5
    z = np.where(np.isfinite(view.depth), view.depth, 0.0).astype(np.float64)
    camera = np.stack([(u - k[0, 2]) / k[0, 0] * z, (v - k[1, 2]) / k[1, 1] * z, z], -1)
    rotation, translation = pose[:3, :3], pose[:3, 3]
    points = (camera - translation) @ rotation  # R^T (x - t) for row vectors
    points[~np.isfinite(view.depth)] = np.nan
    return points


def project(points: np.ndarray, view: RenderedView) -> tuple[np.ndarray, np.ndarray]:
    pose, k = view.world_to_camera.astype(np.float64), view.intrinsics.astype(np.float64)
    camera = points @ pose[:3, :3].T + pose[:3, 3]
    pixels = camera[..., :2] / camera[..., 2:] * np.diag(k)[:2] + k[:2, 2]
    return pixels, camera[..., 2]


def test_vocabulary_is_rich_enough() -> None:
    assert len(geometry.SHAPE_NAMES) >= 6 and len(COLORS) >= 8 and len(SIZES) >= 2
    assert CLASS_NAMES[:2] == ("sky", "floor")


def test_scenes_and_images_are_deterministic() -> None:
    assert sample_scene(3, 11, 2) == sample_scene(3, 11, 2)
    assert sample_scene(3, 11) != sample_scene(3, 12) and sample_scene(3, 11) != sample_scene(4, 11)
    a = render_views([(sample_scene(3, 11, 2), 1)], SIZE)[0]
    b = render_views([(sample_scene(3, 11, 2), 1), (sample_scene(0, 0), 0)], SIZE)[0]
    assert np.array_equal(a.rgb, b.rgb) and np.array_equal(a.depth, b.depth)
    assert a.caption == b.caption and a.names == b.names


def test_floor_pixels_lie_on_the_floor_and_sky_has_no_depth(views: list[RenderedView]) -> None:
    for view in views:
        points = backproject(view)
        floor = view.semantic == 1
        assert np.abs(points[floor][:, 1]).max() < 1e-3
        sky = view.semantic == 0
        assert np.isinf(view.depth[sky]).all() and np.isfinite(view.depth[~sky]).all()
        assert (view.disparity[sky] == 0).all()
        assert ((view.instance > 0) == (view.semantic >= 2)).all()


def test_object_pixels_lie_on_their_object(views: list[RenderedView]) -> None:
    """Spheres: exactly on the sphere surface; other shapes: inside their bounding sphere and
    above the floor."""
    checked_spheres = 0
    for view in views:
        scene = sample_scene(7, view.scene_index, 2)
        points = backproject(view)
        for i, obj in enumerate(scene.objects):
            mask = view.instance == i + 1
            if not mask.any():
                continue
            height, radius = geometry.BOUNDS[obj.shape]
            centre = np.array([obj.x, height * obj.scale, obj.z])
            distance = np.linalg.norm(points[mask] - centre, axis=-1)
            assert distance.max() <= radius * obj.scale + 1e-3
            assert points[mask][:, 1].min() > -1e-3
            assert CLASS_NAMES[int(view.semantic[mask][0])] == obj.shape
            if obj.shape == "sphere":
                centre = np.array([obj.x, obj.scale, obj.z])
                surface = np.linalg.norm(points[mask] - centre, axis=-1)
                np.testing.assert_allclose(surface, obj.scale, atol=1e-3)
                checked_spheres += 1
    assert checked_spheres > 0


def test_multi_view_reprojection_lands_on_the_same_object(views: list[RenderedView]) -> None:
    matched = total = 0
    for first, second in zip(views[0::2], views[1::2], strict=True):
        points = backproject(first)
        # Interior pixels: a pixel on an object's outline may reproject onto its neighbour.
        padded = np.pad(first.instance, 1, mode="edge")
        shifts = [
            padded[1 + dy : 1 + dy + SIZE, 1 + dx : 1 + dx + SIZE]
            for dy in (-1, 0, 1)
            for dx in (-1, 0, 1)
        ]
        interior = np.all([s == first.instance for s in shifts], axis=0)
        mask = (first.instance > 0) & interior
        pixels, z = project(points[mask], second)
        inside = (pixels >= 0).all(-1) & (pixels < SIZE).all(-1) & (z > 0)
        cols, rows = pixels[inside].astype(int).T
        seen = np.abs(second.depth[rows, cols] - z[inside]) < 0.01 * z[inside]  # not occluded
        total += int(seen.sum())
        matched += int(
            (second.instance[rows, cols][seen] == first.instance[mask][inside][seen]).sum()
        )
    assert total > 1000 and matched / total > 0.995


def test_boxes_are_the_tight_boxes_of_visible_pixels(views: list[RenderedView]) -> None:
    for view in views:
        scene = sample_scene(7, view.scene_index, 2)
        expected = {}
        for i in range(len(scene.objects)):
            rows, cols = np.nonzero(view.instance == i + 1)
            if len(rows) >= 4:
                expected[i + 1] = [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
        assert sorted(view.box_instances.tolist()) == sorted(expected)
        for box, instance, name in zip(view.boxes, view.box_instances, view.names, strict=True):
            np.testing.assert_allclose(box * SIZE, expected[instance], atol=1e-4)
            assert name == scene.objects[instance - 1].name


def test_visible_keypoints_fall_on_their_object(views: list[RenderedView]) -> None:
    visible = 0
    for view in views:
        boxes = dict(zip(view.box_instances.tolist(), view.boxes * SIZE, strict=True))
        for instance, kp_id, x, y, seen in view.keypoints:
            shape = sample_scene(7, view.scene_index, 2).objects[int(instance) - 1].shape
            assert KEYPOINT_IDS[int(kp_id)][0] == shape
            if seen:
                visible += 1
                x0, y0, x1, y1 = boxes[int(instance)]
                assert x0 - 1.5 <= x <= x1 + 1.5 and y0 - 1.5 <= y <= y1 + 1.5
    assert visible > 20


def test_captions_mention_what_is_visible_and_nothing_else(views: list[RenderedView]) -> None:
    for view in views:
        words = set(re.findall(r"[a-z]+", view.caption.lower()))
        for name in view.names:
            _, color, shape = name.split()
            assert color in words and (shape in words or plural(shape) in words), view.caption
        shown = {name.split()[1] for name in view.names}
        assert words & set(COLORS) <= shown, view.caption
    assert len({v.caption for v in views}) == len(views)


def test_corpus_on_disk_matches_a_fresh_render(tmp_path: Path) -> None:
    corpus = render_corpus(tmp_path / "world", 6, size=32, views=2, seed=5, shard_size=5)
    assert len(corpus.shards) == 3 and corpus.manifest["images"] == 12
    assert WorldCorpus.open(tmp_path / "world").manifest == corpus.manifest
    truth = GroundTruth(corpus.groundtruth)
    assert truth.keys == keys_of(6, 2)
    members: dict[str, dict[str, bytes]] = {}
    for shard in corpus.shards:
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                members.setdefault(key, {})[ext] = tar.extractfile(member).read()  # type: ignore[union-attr]
    assert sorted(members) == truth.keys
    fresh = render_views([(sample_scene(5, 4, 2), 1)], 32)[0]
    record = truth[fresh.key]
    rgb = np.asarray(Image.open(io.BytesIO(members[fresh.key]["png"])))
    assert np.array_equal(rgb, fresh.rgb)
    assert members[fresh.key]["txt"].decode() == fresh.caption == record.caption
    assert json.loads(members[fresh.key]["json"])["scene"] == 4
    np.testing.assert_array_equal(record.depth, fresh.depth)
    np.testing.assert_array_equal(record.instance, fresh.instance)
    np.testing.assert_array_equal(record.boxes, fresh.boxes)
    assert record.names == fresh.names
    np.testing.assert_array_equal(record.keypoints, fresh.keypoints)
    np.testing.assert_allclose(record.world_to_camera, fresh.world_to_camera)
    with pytest.raises(KeyError, match="no ground truth"):
        truth["nope"]


def test_cli_renders_and_refuses_to_overwrite(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "w"
    result = runner.invoke(app, ["world", "render", str(out), "--n", "4", "--size", "32"])
    assert result.exit_code == 0, result.output
    assert "wrote 4 images" in result.output
    again = runner.invoke(app, ["world", "render", str(out), "--n", "2"])
    assert again.exit_code == 2 and "--overwrite" in again.output
    assert WorldCorpus.open(out).manifest["images"] == 4  # nothing was lost
    with pytest.raises(FileNotFoundError, match="not a complete mini-world corpus"):
        WorldCorpus.open(tmp_path)
    assert math.isfinite(float(WorldCorpus.open(out).manifest["seconds"]))


def test_closer_cameras_show_the_same_scene_larger() -> None:
    """`camera_distance` moves only the cameras: objects, floor and light stay, the cameras
    stand in the range, and objects cover more pixels (what shape needs to be seen)."""
    near = (3.0, 4.0)
    default = [sample_scene(7, i) for i in range(32)]
    close = [sample_scene(7, i, camera_distance=near) for i in range(32)]
    for a, b in zip(default, close, strict=True):
        assert (
            a.objects == b.objects and a.floor == b.floor and a.light_direction == b.light_direction
        )
        assert a.cameras[0].fov_degrees == b.cameras[0].fov_degrees
        target = np.array(b.cameras[0].target)
        assert (
            near[0] - 1.0 < np.linalg.norm(np.array(b.cameras[0].position) - target) < near[1] + 1.0
        )
        assert 5.0 <= math.dist(a.cameras[0].position, (0, 0, 0)) <= 6.5
        assert 3.0 <= math.dist(b.cameras[0].position, (0, 0, 0)) <= 4.0

    def median_pixels(scenes: list) -> float:
        views = render_views([(s, 0) for s in scenes], 32)
        counts = [(v.instance == i).sum() for v in views for i in np.unique(v.instance) if i > 0]
        return float(np.median(counts))

    assert median_pixels(close) > 1.5 * median_pixels(default)


def test_corpus_records_its_camera_range_and_training_refuses_another(tmp_path: Path) -> None:
    from mtv.specs import load_spec
    from mtv.specs.experiment import DEFAULT_CAMERA_DISTANCE
    from mtv.train import DataPreparationError, prepare_data
    from mtv.world.scene import CAMERA_DISTANCE

    assert tuple(DEFAULT_CAMERA_DISTANCE) == CAMERA_DISTANCE  # the spec's copy of the default
    root = tmp_path / "world"
    corpus = render_corpus(root, 4, size=32, camera_distance=(3.0, 4.0))
    assert corpus.manifest["camera_distance"] == [3.0, 4.0]
    assert GroundTruth(corpus.groundtruth).root.attrs["camera_distance"] == [3.0, 4.0]
    spec = load_spec(
        "experiments/smoke.yaml",
        [f"data.source.root={root}", "data.source.n_images=4", "data.source.image_size=32"],
    )
    with pytest.raises(DataPreparationError, match=r"camera_distance.*\[3\.0, 4\.0\]"):
        prepare_data(spec, report=lambda _: None)


def test_spec_refuses_a_camera_range_that_is_inverted_or_too_close() -> None:
    from pydantic import ValidationError

    from mtv.specs.experiment import MiniWorldSourceSpec

    assert MiniWorldSourceSpec(camera_distance=(3.0, 4.0)).camera_distance == (3.0, 4.0)
    for bad in [(4.0, 3.0), (1.0, 3.0)]:
        with pytest.raises(ValidationError, match="near <= far"):
            MiniWorldSourceSpec(camera_distance=bad)


def test_runs_started_side_by_side_wait_for_the_one_preparing_their_shared_data(
    tmp_path: Path,
) -> None:
    """Two runs of a parallel sweep on a fresh mini-world: while one renders and labels it, the
    other waits (it neither fails on the label store's lock nor renders into the same folder),
    then goes on."""
    import threading

    from mtv.data.lock import ExclusiveLock
    from mtv.specs import load_spec
    from mtv.train import prepare_data

    root = tmp_path / "world"
    spec = load_spec(
        "experiments/smoke.yaml",
        [
            f"data.source.root={root}",
            "data.source.n_images=4",
            "data.source.image_size=32",
            "tasks=[vl, depth]",
        ],
    )
    first = ExclusiveLock.for_preparation(root, beside=True)
    first.acquire("mtv run (preparing its data)")  # the first run, busy preparing
    said: list[str] = []
    prepared: list[object] = []
    second = threading.Thread(target=lambda: prepared.append(prepare_data(spec, said.append)))
    second.start()
    deadline = time.monotonic() + 60
    while not said:
        assert time.monotonic() < deadline, "the second run neither waited nor said so"
        time.sleep(0.05)
    assert said[0].startswith(f"waiting for pid {os.getpid()}") and str(root) in said[0]
    time.sleep(0.5)
    assert not root.exists() and not prepared  # it waits: it renders nothing meanwhile
    first.release()
    second.join(timeout=120)
    assert prepared, "the second run did not go on once the first had finished"
    assert any(line.startswith("rendering the mini-world") for line in said[1:])
    assert any(line.startswith("labelling the mini-world") for line in said[1:])


def test_the_preparation_lock_of_a_users_folder_lies_inside_its_data_root(tmp_path: Path) -> None:
    """Only a mini-world, which must not exist until rendered, has its lock beside it; a run on
    one's own photos leaves no lock file next to the output folder (the repository's root)."""
    from mtv.specs import load_spec
    from mtv.train import prepare_data

    photos = tmp_path / "photos"
    photos.mkdir()
    rows = []
    for i in range(4):
        Image.fromarray(np.full((32, 32, 3), 60 * i, np.uint8)).save(photos / f"{i}.png")
        rows.append(json.dumps({"file": f"{i}.png", "caption": f"a grey square number {i}"}))
    (photos / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    spec = load_spec(
        "experiments/smoke.yaml",
        [
            f"data.source={{kind: folder, root: {photos}}}",
            "tasks=[vl]",
            "data.labels.kinds=[]",
            f"output.root={tmp_path / 'runs'}",
        ],
    )
    prepare_data(spec, report=lambda _: None)
    assert (tmp_path / "runs" / ".mtv-lock").is_file()
    assert not (tmp_path / "runs.mtv-lock").exists()

"""The NAVI adapter: a tiny NAVI-format fixture of boxes whose images, depth and masks are
ray-cast exactly from cameras built here, so that the reader's ground-truth correspondences
can be checked against the scene itself (where a point of one view must land in the other,
which points the other view cannot see), and the suite against a model whose patch features
are the 3D surface coordinates painted into the images (recall ~1) or carry nothing (the
random-match level).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.spatial.transform import Rotation

from mtv.eval.formats import BenchmarkFormatError
from mtv.eval.model import Features, FrozenModel
from mtv.eval.navi import DEPTH_SCALE, quaternion_matrix, read_navi, rotation_angle
from mtv.graph import TaskGraph
from tests.helpers import tiny_spec
from tests.test_eval_public import check_rows, run_public_suite

SIZE, PATCH = 64, 4  # the coordinate model's input size and patch side: a 16 x 16 grid
HEIGHT, WIDTH, FOCAL = 120, 160, 150.0  # annotation image_size and focal length (pixels)
DISTANCE, ELEVATION = 600.0, 30.0  # mm from the object's centre; degrees above it
YAWS = (25.0, 65.0, 130.0)  # the multiview cameras; 25 <-> 130 see opposite sides
HALF = {"cube": np.array([100.0, 100.0, 100.0]), "slab": np.array([120.0, 60.0, 80.0])}
LOW, SPAN = 40.0, 215.0  # surface colour = LOW + SPAN * (position / half + 1) / 2; background 0


def camera(yaw: float, elevation: float = ELEVATION) -> tuple[np.ndarray, np.ndarray]:
    """Object-to-camera (R, t) of a camera at `yaw` around the vertical (y) axis looking at
    the origin: rows of R are the camera's right, down and forward axes (OpenCV)."""
    a, e = np.radians(yaw), np.radians(elevation)
    centre = DISTANCE * np.array([np.sin(a) * np.cos(e), np.sin(e), np.cos(a) * np.cos(e)])
    forward = -centre / np.linalg.norm(centre)
    right = np.cross(forward, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    rotation = np.stack([right, down, forward])
    return rotation, -rotation @ centre


def matrix_quaternion(r: np.ndarray) -> list[float]:
    """[w, x, y, z] of a rotation matrix (scipy's conversion, scalar last, reordered)."""
    x, y, z, w = Rotation.from_matrix(r).as_quat()
    return [float(w), float(x), float(y), float(z)]


def cast(rotation, translation, xy: np.ndarray, half: np.ndarray):
    """Rays through camera pixels xy (K, 2) against the box |p| <= half: hit, camera z, point."""
    direction = np.concatenate([(xy - (WIDTH / 2, HEIGHT / 2)) / FOCAL, np.ones((len(xy), 1))], 1)
    d = direction @ rotation  # R^T d: object frame; z along the ray is the parameter itself
    origin = -rotation.T @ translation
    with np.errstate(divide="ignore", invalid="ignore"):
        near, far = (-half - origin) / d, (half - origin) / d
    enter = np.nanmax(np.minimum(near, far), axis=1)
    leave = np.nanmin(np.maximum(near, far), axis=1)
    hit = (leave >= enter) & (enter > 0)
    return hit, enter, origin + enter[:, None] * d


def colour(points: np.ndarray, half: np.ndarray) -> np.ndarray:
    return LOW + SPAN * (points / half + 1) / 2


def write_view(folder: Path, name: str, yaw: float, half: np.ndarray, scale: float = 1.0) -> dict:
    """images/<name>.jpg, depth/<name>.png, masks/<name>.png of the box seen from `yaw`; with a
    `scale` the image and depth are Probe3D's `downsampled_` copies at that scale instead."""
    rotation, translation = camera(yaw)
    w, h = round(WIDTH * scale), round(HEIGHT * scale)
    files = {}
    for kind, (fw, fh) in {"image": (w, h), "depth": (w, h), "mask": (WIDTH, HEIGHT)}.items():
        cols, rows = np.meshgrid(np.arange(fw) + 0.5, np.arange(fh) + 0.5)
        xy = np.stack([cols.ravel() * WIDTH / fw, rows.ravel() * HEIGHT / fh], 1)
        hit, z, points = cast(rotation, translation, xy, half)
        if kind == "image":
            rgb = np.where(hit[:, None], colour(points, half), 0).round().astype(np.uint8)
            files[kind] = Image.fromarray(rgb.reshape(fh, fw, 3))
        elif kind == "depth":
            raw = np.where(hit, np.round(DEPTH_SCALE / np.where(hit, z, 1)), 0).astype(np.uint16)
            files[kind] = Image.fromarray(raw.reshape(fh, fw))
        else:
            files[kind] = Image.fromarray((hit * 255).astype(np.uint8).reshape(fh, fw))
    prefix = "downsampled_" if scale != 1.0 else ""
    for kind, sub, suffix in (("image", "images", "jpg"), ("depth", "depth", "png")):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        files[kind].save(folder / sub / f"{prefix}{name}.{suffix}", quality=95, subsampling=0)
    (folder / "masks").mkdir(exist_ok=True)
    files["mask"].save(folder / "masks" / f"{name}.png")
    return {
        "object_id": folder.parent.name,
        "camera": {
            "q": matrix_quaternion(rotation),
            "t": translation.tolist(),
            "focal_length": FOCAL,
            "camera_model": "test",
        },
        "filename": f"{name}.jpg",
        "image_size": [HEIGHT, WIDTH],
        "scene_name": folder.name,
        "split": "val",
        "occluded": False,
    }


def write_navi(root: Path) -> Path:
    """cube/multiview_00 (v1.0 naming, full size), slab/multiview-00-pixel_5 (v1.5 naming,
    half-size downsampled_ images and depth), each 3 views at YAWS; cube/wild_set, 2 views."""
    scenes = [
        ("cube", "multiview_00", YAWS, 1.0),
        ("slab", "multiview-00-pixel_5", YAWS, 0.5),
        ("cube", "wild_set", (10.0, 70.0), 1.0),
    ]
    for obj, scene, yaws, scale in scenes:
        folder = root / obj / scene
        entries = [
            write_view(folder, f"{i:03d}", yaw, HALF[obj], scale) for i, yaw in enumerate(yaws)
        ]
        (folder / "annotations.json").write_text(json.dumps(entries))
    # A phone photo stored sideways with an EXIF orientation (6: rotate 90 degrees clockwise
    # to display), as some NAVI images are: the annotations describe the displayed image.
    upright = root / "cube" / "wild_set" / "images" / "001.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    sideways = Image.open(upright).transpose(Image.Transpose.ROTATE_90)
    sideways.save(upright, quality=95, subsampling=0, exif=exif)
    (root / "cube" / "3d_scan").mkdir()  # present in NAVI, never read
    return root


@pytest.fixture(scope="module")
def navi(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_navi(tmp_path_factory.mktemp("navi"))


def test_quaternions_follow_navi_and_rotations_compose() -> None:
    # [cos 45, 0, 0, sin 45]: 90 degrees about z takes x to y (Hamilton, active)
    turn = quaternion_matrix(np.array([np.sqrt(0.5), 0, 0, np.sqrt(0.5)]))
    assert np.allclose(turn @ [1, 0, 0], [0, 1, 0])
    assert np.allclose(quaternion_matrix(np.array([2.0, 0, 0, 0])), np.eye(3))  # normalised
    first, second = camera(25.0)[0], camera(130.0)[0]
    assert np.allclose(quaternion_matrix(np.array(matrix_quaternion(first))), first)
    assert rotation_angle(first, camera(25.0, elevation=60.0)[0]) == pytest.approx(30.0)
    assert rotation_angle(first, second) == pytest.approx(rotation_angle(second, first))


def _camera_of(view) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rotation, translation, half) the fixture built a view's image with."""
    obj, scene, file = view.name.split("/")
    yaws = (10.0, 70.0) if scene == "wild_set" else YAWS
    return (*camera(yaws[int(file[:3])]), HALF[obj])


def _on_camera_pixels(data, index: int) -> tuple[float, int]:
    """Mean colour error of a crop against the box ray-cast through the reader's map from
    crop to camera pixels, over pixels whose neighbours all see the box (away from edges)."""
    centres = np.arange(SIZE) + 0.5
    grid = np.stack([c.ravel() for c in np.meshgrid(centres, centres)], axis=1)
    view = data.views[index]
    rotation, translation, half = _camera_of(view)
    inner = np.ones(len(grid), bool)
    for step in ((-1, -1), (1, 1), (-1, 1), (1, -1)):
        inner &= cast(rotation, translation, view.from_crop(grid + step), half)[0]
    hit, _, points = cast(rotation, translation, view.from_crop(grid), half)
    pixels = data.images[index].reshape(-1, 3).astype(np.float64)
    inner &= hit
    return float(np.abs(pixels - colour(points, half))[inner].mean()), int(inner.sum())


def _clear(rotation, translation, xy: np.ndarray, half: np.ndarray, margin: float) -> np.ndarray:
    """Whether the rays through points xy and `margin` camera pixels around them all meet the
    same face of the box (away from its silhouette and edges in this view)."""

    def face(points: np.ndarray) -> np.ndarray:  # +-(axis + 1) of the face a point is on
        axis = np.abs(points / half).argmax(1)
        return (axis + 1) * np.sign(points[np.arange(len(points)), axis])

    centre = face(cast(rotation, translation, xy, half)[2])
    clear = np.ones(len(xy), bool)
    for step in ((-1, -1), (1, 1), (-1, 1), (1, -1)):
        hit, _, around = cast(rotation, translation, xy + margin * np.array(step), half)
        clear &= hit & (face(around) == centre)
    return clear


@pytest.mark.parametrize("object_crop", [True, False])
def test_reader_correspondences_follow_the_scene(navi: Path, object_crop: bool) -> None:
    data = read_navi(navi, SIZE, points=16, object_crop=object_crop)
    assert data.images.shape == (6, SIZE, SIZE, 3) and len(data.views) == 6
    assert [p.scene for p in data.pairs] == ["cube/multiview_00"] * 3 + [
        "slab/multiview-00-pixel_5"
    ] * 3  # one pair a view, wild_set left out
    for index in range(6):  # the crops show what the reader's camera maps say they show
        error, pixels = _on_camera_pixels(data, index)
        assert error < 2.2 and pixels > (1500 if object_crop else 500)
    occluded_somewhere = False
    for pair in data.pairs:
        source, target = data.views[pair.source], data.views[pair.target]
        (ra, ta, half), (rb, tb, _) = _camera_of(source), _camera_of(target)
        assert pair.rotation == pytest.approx(rotation_angle(ra, rb), abs=1e-3)
        assert len(pair.source_xy) > 10 and pair.source_xy.shape == pair.target_xy.shape
        # every source point is on the box; projected into the target it lands where the
        # reader says, within a tenth of a pixel (depth-pixel centres: no slope error)
        hit, _, points = cast(ra, ta, source.from_crop(pair.source_xy.astype(np.float64)), half)
        assert hit.all()
        moved = points @ rb.T + tb
        landing = moved[:, :2] / moved[:, 2:] * FOCAL + (WIDTH / 2, HEIGHT / 2)
        error = np.linalg.norm(target.to_crop(landing) - pair.target_xy, axis=1)
        assert error.max() < 0.1
        # the target sees them: its own ray meets the box there, except within a depth pixel
        # and a half of a box edge (a depth map cannot tell the two faces apart there)
        _, _, seen = cast(rb, tb, landing, half)
        behind = np.linalg.norm(seen - points, axis=1) > 1.0
        edge = np.sort(half - np.abs(points), axis=1)[:, 1]
        depth_pixel = moved[:, 2] / FOCAL * (2 if pair.scene.startswith("slab") else 1)
        assert (edge[behind] < 1.5 * depth_pixel[behind]).all()
        # and nothing the target sees is dropped: every grid point on the box whose true
        # landing the target sees, clear of the crops' borders and of the faces' edges in
        # both views, is kept (as the depth pixel nearest to it)
        centres = (np.arange(16) + 0.5) * SIZE / 16
        grid = np.stack([c.ravel() for c in np.meshgrid(centres, centres)], axis=1)
        on, _, grid_points = cast(ra, ta, source.from_crop(grid), half)
        moved = grid_points @ rb.T + tb
        lands = moved[:, :2] / moved[:, 2:] * FOCAL + (WIDTH / 2, HEIGHT / 2)
        _, _, first_hit = cast(rb, tb, lands, half)
        crop = target.to_crop(lands)
        margin = 3.0 if pair.scene.startswith("slab") else 1.5  # camera pixels: 1.5 depth pixels
        visible = on & (np.linalg.norm(first_hit - grid_points, axis=1) < 1.0)
        visible &= ((crop >= 2) & (crop < SIZE - 2)).all(1)
        visible &= _clear(ra, ta, source.from_crop(grid), half, margin)
        visible &= _clear(rb, tb, lands, half, margin)
        hidden = on & (np.linalg.norm(first_hit - grid_points, axis=1) > 20.0)
        occluded_somewhere |= hidden.sum() > 10
        kept = {tuple(p) for p in np.floor(pair.source_xy / (SIZE / 16)).astype(int)}
        cells = np.floor(grid / (SIZE / 16)).astype(int)
        assert visible.sum() > (20 if object_crop else 5)
        assert all(tuple(c) in kept for c in cells[visible])
        assert not any(tuple(c) in kept for c in cells[hidden])
    assert occluded_somewhere  # 25 <-> 130 degrees: faces seen by one camera only


def test_reader_scenes_limit_and_pairing(navi: Path) -> None:
    wild = read_navi(navi, SIZE, collection="wild_set", points=8)
    assert [(p.source, p.target) for p in wild.pairs] == [(0, 1), (1, 0)]  # the only partner
    assert wild.pairs[0].rotation == pytest.approx(rotation_angle(camera(10)[0], camera(70)[0]))
    assert [v.name for v in wild.views] == ["cube/wild_set/000.jpg", "cube/wild_set/001.jpg"]
    assert _on_camera_pixels(wild, 1)[0] < 2.2  # turned upright by its EXIF orientation
    two = read_navi(navi, SIZE, limit=2, points=8)
    assert [p.scene for p in two.pairs] == ["cube/multiview_00", "slab/multiview-00-pixel_5"]
    assert len(read_navi(navi, SIZE, max_angle=50.0, points=8).pairs) == 4  # only 25 <-> 65
    again = read_navi(navi, SIZE, points=8)
    assert [(p.source, p.target) for p in again.pairs] == [
        (p.source, p.target) for p in read_navi(navi, SIZE, points=8).pairs
    ]


class CoordinateModel:
    """Duck-types FrozenModel at SIZE with PATCH-pixel patches: a patch's feature is a smooth
    (Gaussian bump) code of the 3D surface point its box pixels paint, so the nearest feature
    is the nearest surface point; `kind` "random" draws features, "constant" repeats one."""

    size = SIZE

    def __init__(self, kind: str = "coordinates"):
        self.kind = kind

    def images(self, images: np.ndarray) -> Features:
        x = torch.from_numpy(images).float().permute(0, 3, 1, 2)
        box = (x.sum(1, keepdim=True) > 1.5 * LOW).float()  # not the black background
        total = F.avg_pool2d(x * box, PATCH)
        share = F.avg_pool2d(box, PATCH)
        position = ((total / share.clamp(min=1e-6) - LOW) / SPAN).permute(0, 2, 3, 1)
        anchors = torch.linspace(0, 1, 9)
        anchors = torch.stack(torch.meshgrid(anchors, anchors, anchors, indexing="ij"), -1)
        distance = (position[..., None, :] - anchors.reshape(-1, 3)).square().sum(-1)
        patches = torch.exp(-distance / (2 * 0.1**2)) * (share > 0).float().permute(0, 2, 3, 1)
        if self.kind == "random":
            generator = torch.Generator().manual_seed(0)
            patches = torch.randn((*patches.shape[:3], 32), generator=generator)
        elif self.kind == "constant":
            patches = torch.ones_like(patches)
        return Features(patches.mean((1, 2)), patches)


def metrics(size: int) -> set[str]:
    """The fixture's rows at a model size: its pairs are 40 or 52 degrees apart (30-60 bin)
    and 105 degrees (90-120), none 0-30 or 60-90."""
    recall = [f"recall@{size / d:g}px" for d in (16, 8, 4)]
    return {*recall, f"{recall[1]}_30-60deg", f"{recall[1]}_90-120deg"}


METRICS = metrics(SIZE)


def test_suite_on_coordinate_random_and_constant_features(navi: Path) -> None:
    expected = {"geometric_correspondence": METRICS}
    right = run_public_suite(CoordinateModel(), "navi", navi)
    found = check_rows(right, expected)
    assert found["recall@16px"] > 0.97 and found["recall@8px"] > 0.9
    assert found["recall@4px"] > 0.5  # within a patch of the truth needs the patch itself
    trivial = {m: t for _, m, _, t, *_ in right.iter_rows()}
    assert all(trivial[m] < 0.3 for m in METRICS)
    # the bins average the pairs whose rotation falls in them, as the overall row all pairs
    angles = np.array([p.rotation for p in read_navi(navi, SIZE).pairs])
    middle = angles < 60
    assert found["recall@8px"] == pytest.approx(
        (
            middle.sum() * found["recall@8px_30-60deg"]
            + (~middle).sum() * found["recall@8px_90-120deg"]
        )
        / len(angles)
    )
    drawn = check_rows(run_public_suite(CoordinateModel("random"), "navi", navi), expected)
    assert all(abs(drawn[m] - trivial[m]) < 0.05 for m in METRICS)
    same = check_rows(run_public_suite(CoordinateModel("constant"), "navi", navi), expected)
    # every match is the first patch, in a corner of the crop, where the box rarely is
    assert all(same[m] <= trivial[m] for m in METRICS)


def test_suite_runs_on_a_frozen_model(navi: Path) -> None:
    spec = tiny_spec(["vl", "depth"])
    model = FrozenModel(spec, TaskGraph(spec), None, step=0)
    frame = run_public_suite(model, "navi", navi)
    found = check_rows(frame, {"geometric_correspondence": metrics(model.size)})
    assert all(0 <= v <= 1 for v in found.values())


def _annotations(root: Path) -> tuple[Path, list]:
    path = root / "cube" / "multiview_00" / "annotations.json"
    return path, json.loads(path.read_text())


def test_malformed_layouts_are_named(navi: Path, tmp_path: Path) -> None:
    root = tmp_path / "navi"
    shutil.copytree(navi, root)
    path, entries = _annotations(root)
    cases = []
    bad = json.loads(json.dumps(entries))
    bad[1]["camera"]["q"] = [1.0, 0.0, 0.0]
    cases.append((bad, "[1].camera.q is 3 values, expected 4 numbers [qw, qx, qy, qz]"))
    bad = json.loads(json.dumps(entries))
    del bad[0]["camera"]["focal_length"]
    cases.append((bad, "[0] has no 'camera.focal_length'"))
    bad = json.loads(json.dumps(entries))
    bad[2]["image_size"] = [120]
    cases.append((bad, "[2].image_size is 1 values, expected 2 numbers [height, width]"))
    cases.append(({"images": entries}, "expected a list of per-image annotations"))
    for content, message in cases:
        path.write_text(json.dumps(content))
        with pytest.raises(BenchmarkFormatError, match=re.escape(f"{path}: {message}")):
            read_navi(root, SIZE)
    path.unlink()
    with pytest.raises(BenchmarkFormatError, match=re.escape(f"{path}: file not found")):
        read_navi(root, SIZE)
    path.write_text(json.dumps(entries))
    depth = root / "cube" / "multiview_00" / "depth" / "001.png"
    raw = Image.open(depth)
    depth.unlink()
    message = f"{depth}: depth file not found (annotations.json: 001.jpg)"
    with pytest.raises(BenchmarkFormatError, match=re.escape(message)):
        read_navi(root, SIZE)
    Image.fromarray((np.asarray(raw) // 8).astype(np.uint8)).save(depth)  # 8-bit: not NAVI's
    message = f"{depth}: expected a 16-bit single-channel depth PNG, got mode L"
    with pytest.raises(BenchmarkFormatError, match=re.escape(message)):
        read_navi(root, SIZE)
    raw.save(depth)
    image = root / "slab" / "multiview-00-pixel_5" / "images" / "downsampled_002.jpg"
    Image.new("RGB", (60, 80)).save(image)  # portrait: the EXIF rotation not applied
    message = f"{image}: 60x80 pixels do not fit image_size [120, 160]"
    with pytest.raises(BenchmarkFormatError, match=re.escape(message)):
        read_navi(root, SIZE)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BenchmarkFormatError, match="no NAVI scenes"):
        read_navi(empty, SIZE)

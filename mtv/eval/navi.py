"""NAVI (Jampani et al., NeurIPS 2023) scenes as image pairs with ground-truth geometric
correspondences, for the `navi` suite: Probe3D's geometric correspondence (El Banani et al.,
"Probing the 3D Awareness of Visual Foundation Models", CVPR 2024).

Layout (google/navi README.md): `<root>/<object_id>/<scene>/{annotations.json, images/, depth/,
masks/}`, scenes `multiview_XX...` / `multiview-XX-<camera>` (v1.0 / v1.5) and `wild_set`.
annotations.json lists one entry per image: `filename` (under images/; its depth and mask are
`<stem>.png` under depth/ and masks/), `camera.q` [qw, qx, qy, qz], `camera.t` [tx, ty, tz],
`camera.focal_length` (pixels) and `image_size` [height, width].

Conventions, and where they come from:
- Pose: X_cam = R(q) X_obj + t, R(q) the (Hamilton) rotation matrix of the unit quaternion: the
  object-to-camera matrix translate(t) @ rotation(q) of google/navi `data_util.py`
  (`camera_matrices_from_annotation`, what the scan is rendered with) and of Probe3D
  `evals/datasets/utils.py`, whose pairs use Rt_1 @ Rt_0^-1 (mbanani/probe3d `datasets/navi.py`).
- Camera: x right, y down, z forward; focal length in pixels of `image_size`, principal point
  at its centre (w/2, h/2): google/navi `transformations.py` (`gl_projection_matrix_from_
  intrinsics`: clip w = z) with cx, cy = w//2, h//2 (`data_util.py`) and the tutorial notebook's
  unflipped NDC-to-pixel mapping; Probe3D's `get_grid` ("right, down, into-camera"). Pixel
  (i, j) covers [i, i+1) x [j, j+1) (Probe3D's grid of centres at +0.5, as `SquareCrop`).
- Depth PNG: uint16 disparity, depth = 65535 * 10 / value millimetres (0: no depth), along the
  optical axis (z), in the unit of `t`: google/navi `data_util.py` (`decode_depth`), the
  notebook (compares it with camera-frame z), Probe3D (`read_depth`, depth / 1000 and t / 1000
  for metres; unprojection K^-1 [u, v, 1] * depth).
- Images are EXIF-transposed (`data_util.read_image`; Probe3D `resize_navi.py`). A file whose
  size differs from `image_size` (a downsampled copy) scales the camera with it, and Probe3D's
  `downsampled_<name>` copies are read instead of the originals when present.

Protocol (mbanani/probe3d `evals/datasets/navi.py`, `evaluate_navi_correspondence.py`):
- Pairs: each view is paired with one other view of its scene, drawn uniformly (seeded) among
  those more than 0 and at most `max_angle` (120) degrees of relative camera rotation away
  (`generate_instance_pairs`; numpy draws, so not Probe3D's very pairs). Probe3D evaluates its
  "test" split, which its NAVI class maps to the `wild_set` collections (same object, other
  backgrounds and poses; pose math identical: both cameras are relative to the object);
  `collection="wild_set"` reads those, the default reads the multiview scenes.
- Crop: each image is cut to the square around its object's mask box, kept inside the image
  (Probe3D's `bbox_crop`, there on depth > 0), and resized to `size` (`SquareCrop`); with
  `object_crop=False`, the whole image's centre square as the other readers.
- Ground truth (ours: Probe3D instead scores the 3D error of its top-1000 ratio-test matches):
  a `points` x `points` grid over A's crop, each point snapped to the centre of its depth pixel
  (so a slanted surface does not move it along the ray), kept on A's mask and depth;
  unprojected with that depth and A's camera, moved into B's, projected, and kept when it
  lands inside B's image and crop, on B's mask, with a depth within `depth_tolerance`
  (relative) of the range of B's (up to 4) valid depth pixels around it. Anything else is
  occluded or out of view; within about a depth pixel of an edge a depth map cannot tell.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageOps

from mtv.eval.formats import (
    BenchmarkFormatError,
    SquareCrop,
    open_image,
    read_json,
    stack_images,
    subset,
)

DEPTH_SCALE = 65535 * 10.0  # depth (mm) = DEPTH_SCALE / PNG value (google/navi decode_depth)
DOWNSAMPLED = "downsampled_"  # Probe3D's resized copies beside the originals
MIN_ANGLE = 1e-3  # degrees: Probe3D pairs views more than 0 apart (float-safe)


@dataclass
class NaviView:
    """One image's camera, and the map from its camera pixels to the S x S crop."""

    name: str  # <object>/<scene>/<filename>
    rotation: np.ndarray  # (3, 3) object -> camera
    translation: np.ndarray  # (3,) millimetres
    focal: float  # pixels of image_size
    principal: np.ndarray  # (2,) (cx, cy) pixels of image_size
    image_size: tuple[int, int]  # (height, width) of the annotation
    scale: np.ndarray  # (2,) crop_xy = camera_xy * scale + offset
    offset: np.ndarray  # (2,)

    def to_crop(self, xy: np.ndarray) -> np.ndarray:
        return xy * self.scale + self.offset

    def from_crop(self, xy: np.ndarray) -> np.ndarray:
        return (xy - self.offset) / self.scale


@dataclass
class ViewPair:
    source: int  # index into ViewPairSet.images / views
    target: int
    source_xy: np.ndarray  # (K, 2) float32 (x, y) in the S x S source crop
    target_xy: np.ndarray  # (K, 2) where each lands in the target crop
    rotation: float  # relative camera rotation, degrees
    scene: str  # <object>/<scene>


@dataclass
class ViewPairSet:
    images: np.ndarray  # (M, S, S, 3) uint8, each view once
    views: list[NaviView]
    pairs: list[ViewPair]


def quaternion_matrix(q: np.ndarray) -> np.ndarray:
    """The rotation matrix of a quaternion [w, x, y, z] (normalised first)."""
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def rotation_angle(a: np.ndarray, b: np.ndarray) -> float:
    """Degrees of the rotation b @ a.T between two camera orientations."""
    cosine = (np.trace(b @ a.T) - 1) / 2
    return float(np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0))))


@dataclass
class _Entry:
    """A parsed annotations.json entry: camera and file names, nothing read yet."""

    scene: Path
    filename: str
    rotation: np.ndarray
    translation: np.ndarray
    focal: float
    image_size: tuple[int, int]


def _vector(path: Path, i: int, value: Any, field: str, length: int, what: str) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError):
        array = np.zeros(0)
    if array.shape != (length,) or not np.isfinite(array).all():
        wrong_length = isinstance(value, list) and len(value) != length
        found = f"{len(value)} values" if wrong_length else repr(value)
        raise BenchmarkFormatError(
            f"{path}: [{i}].{field} is {found}, expected {length} numbers {what}"
        )
    return array


def _parse(path: Path, i: int, entry: Any) -> _Entry:
    if not isinstance(entry, dict):
        raise BenchmarkFormatError(f"{path}: [{i}] is not an object")
    camera = entry.get("camera")
    for field, value in [
        ("filename", entry.get("filename")),
        ("image_size", entry.get("image_size")),
        ("camera", camera),
        *((f"camera.{k}", (camera or {}).get(k)) for k in ("q", "t", "focal_length")),
    ]:
        if value is None:
            raise BenchmarkFormatError(f"{path}: [{i}] has no {field!r}")
    q = _vector(path, i, camera["q"], "camera.q", 4, "[qw, qx, qy, qz]")
    if np.linalg.norm(q) < 1e-8:
        raise BenchmarkFormatError(f"{path}: [{i}].camera.q is zero, not a rotation")
    t = _vector(path, i, camera["t"], "camera.t", 3, "[tx, ty, tz]")
    focal = camera["focal_length"]
    if isinstance(focal, bool) or not isinstance(focal, int | float) or not 0 < focal < np.inf:
        raise BenchmarkFormatError(
            f"{path}: [{i}].camera.focal_length is {focal!r}, expected a positive number (pixels)"
        )
    size = _vector(path, i, entry["image_size"], "image_size", 2, "[height, width]")
    if (size < 1).any():
        raise BenchmarkFormatError(f"{path}: [{i}].image_size {size.tolist()} is not positive")
    height, width = (int(v) for v in size)
    rotation = quaternion_matrix(q)
    return _Entry(path.parent, str(entry["filename"]), rotation, t, float(focal), (height, width))


def _scenes(root: Path, collection: str) -> list[tuple[str, list[_Entry]]]:
    if not root.is_dir():
        raise BenchmarkFormatError(
            f"{root}: not a directory (expected NAVI's <object_id>/ folders)"
        )
    pattern = "multiview*" if collection == "multiview" else "wild_set"
    folders = sorted(p for p in root.glob(f"*/{pattern}") if p.is_dir())
    if not folders:
        raise BenchmarkFormatError(f"{root}: no NAVI scenes (expected <object_id>/{pattern}/)")
    scenes = []
    for folder in folders:
        path = folder / "annotations.json"
        raw = read_json(path)
        if not isinstance(raw, list):
            raise BenchmarkFormatError(f"{path}: expected a list of per-image annotations")
        entries = sorted((_parse(path, i, e) for i, e in enumerate(raw)), key=lambda e: e.filename)
        scenes.append((f"{folder.parent.name}/{folder.name}", entries))
    return scenes


def _pairs(
    scenes: list[tuple[str, list[_Entry]]], max_angle: float, seed: int
) -> list[tuple[int, int, int, float]]:
    """(scene, view a, view b, angle): each view with one partner drawn uniformly among the
    other views of its scene more than 0 and at most `max_angle` degrees away (Probe3D's
    pairing, with numpy's generator: the same rule, not Probe3D's torch draws)."""
    rng = np.random.default_rng(seed)
    out = []
    for s, (_, entries) in enumerate(scenes):
        for a, first in enumerate(entries):
            angles = np.array([rotation_angle(first.rotation, e.rotation) for e in entries])
            angles[a] = 0.0  # rounding can leave a view a hair away from itself
            eligible = np.flatnonzero((angles > MIN_ANGLE) & (angles <= max_angle))
            if len(eligible):
                b = int(rng.choice(eligible))
                out.append((s, a, b, float(angles[b])))
    return out


def _file(folder: Path, name: str) -> Path:
    smaller = folder / f"{DOWNSAMPLED}{name}"
    return smaller if smaller.is_file() else folder / name


def _read(path: Path, what: str, filename: str) -> Image.Image:
    if not path.is_file():
        raise BenchmarkFormatError(f"{path}: {what} file not found (annotations.json: {filename})")
    return ImageOps.exif_transpose(open_image(path))


def _check_aspect(path: Path, image: Image.Image, entry: _Entry) -> None:
    height, width = entry.image_size
    if abs(image.width / image.height - width / height) > 0.01 * width / height:
        raise BenchmarkFormatError(
            f"{path}: {image.width}x{image.height} pixels do not fit image_size "
            f"[{height}, {width}] of {entry.scene / 'annotations.json'}"
        )


@dataclass
class _Loaded:
    """A view read from disk: its crop, camera, and depth (raw PNG values) and mask."""

    image: np.ndarray
    view: NaviView
    depth: np.ndarray  # (Hd, Wd) uint16, 0 = no depth
    mask: np.ndarray  # (Hm, Wm) bool

    def lookup(self, map_: np.ndarray, xy: np.ndarray) -> np.ndarray:
        """Values of a map at camera-pixel points (nearest pixel; any map resolution)."""
        height, width = self.view.image_size
        rows, cols = map_.shape
        c = np.clip((xy[:, 0] * cols / width).astype(np.int64), 0, cols - 1)
        r = np.clip((xy[:, 1] * rows / height).astype(np.int64), 0, rows - 1)
        return map_[r, c]

    def snap(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The centres (camera pixels) of the depth pixels containing the points, and their
        depth: a point is unprojected where its depth was measured, so that a slanted surface
        does not shift it by up to half a depth pixel along the ray."""
        height, width = self.view.image_size
        rows, cols = self.depth.shape
        c = np.clip(np.floor(xy[:, 0] * cols / width), 0, cols - 1).astype(np.int64)
        r = np.clip(np.floor(xy[:, 1] * rows / height), 0, rows - 1).astype(np.int64)
        centres = np.stack([(c + 0.5) * width / cols, (r + 0.5) * height / rows], axis=1)
        return centres, _decode(self.depth[r, c])

    def depth_bounds(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The least and greatest valid depth of the (up to 4) depth pixels whose centres
        surround each point: where the surface is smooth its depth at the point lies between
        (inf, -inf where none is valid)."""
        height, width = self.view.image_size
        rows, cols = self.depth.shape
        c = np.floor(xy[:, 0] * cols / width - 0.5).astype(np.int64)
        r = np.floor(xy[:, 1] * rows / height - 0.5).astype(np.int64)
        values = np.stack(
            [
                _decode(self.depth[np.clip(r + dr, 0, rows - 1), np.clip(c + dc, 0, cols - 1)])
                for dr in (0, 1)
                for dc in (0, 1)
            ],
            axis=1,
        )
        missing = np.isnan(values)
        return np.where(missing, np.inf, values).min(1), np.where(missing, -np.inf, values).max(1)


def _decode(raw: np.ndarray) -> np.ndarray:
    """NAVI depth PNG values -> millimetres (NaN where 0: no depth)."""
    raw = raw.astype(np.float64)
    return np.where(raw > 0, DEPTH_SCALE / np.maximum(raw, 1), np.nan)


def _window(mask: np.ndarray, width: int, height: int, object_crop: bool) -> tuple[int, ...]:
    """(left, top, right, bottom) in image pixels: the square around the mask's box, inside the
    image (Probe3D's bbox_crop), or the whole image."""
    rows, cols = np.nonzero(mask)
    if not object_crop or not len(rows):
        return 0, 0, width, height
    sy, sx = height / mask.shape[0], width / mask.shape[1]
    x0, x1 = cols.min() * sx, (cols.max() + 1) * sx
    y0, y1 = rows.min() * sy, (rows.max() + 1) * sy
    side = int(min(max(1, round(max(x1 - x0, y1 - y0))), width, height))
    left = int(np.clip(round((x0 + x1 - side) / 2), 0, width - side))
    top = int(np.clip(round((y0 + y1 - side) / 2), 0, height - side))
    return left, top, left + side, top + side


def _load(entry: _Entry, name: str, size: int, object_crop: bool) -> _Loaded:
    stem = Path(entry.filename).stem
    image_path = _file(entry.scene / "images", entry.filename)
    depth_path = _file(entry.scene / "depth", f"{stem}.png")
    mask_path = entry.scene / "masks" / f"{stem}.png"
    image = _read(image_path, "image", entry.filename)
    depth_image = _read(depth_path, "depth", entry.filename)
    if depth_image.mode not in ("I;16", "I;16B", "I;16L", "I"):
        raise BenchmarkFormatError(
            f"{depth_path}: expected a 16-bit single-channel depth PNG, got mode {depth_image.mode}"
        )
    mask_image = _read(mask_path, "mask", entry.filename)
    for path, item in ((image_path, image), (depth_path, depth_image), (mask_path, mask_image)):
        _check_aspect(path, item, entry)
    depth = np.asarray(depth_image)
    if depth.min() < 0 or depth.max() > 65535:  # mode I holds 32 bits
        raise BenchmarkFormatError(f"{depth_path}: depth values outside 0..65535 (uint16)")
    depth = depth.astype(np.uint16)
    gray = np.asarray(mask_image.convert("L"))
    mask = gray > (127 if gray.max() > 1 else 0)  # 0/255 or 0/1 masks
    left, top, right, bottom = _window(mask, image.width, image.height, object_crop)
    crop = SquareCrop(right - left, bottom - top, size)
    resized = np.array(crop.resized, dtype=np.float64)
    box = np.array(crop.box[:2], dtype=np.float64)
    height, width = entry.image_size
    per_pixel = (
        np.array([image.width / width, image.height / height])
        * resized
        / (right - left, bottom - top)
    )
    view = NaviView(
        name=name,
        rotation=entry.rotation,
        translation=entry.translation,
        focal=entry.focal,
        principal=np.array([width / 2, height / 2]),
        image_size=entry.image_size,
        scale=per_pixel,
        offset=-np.array([left, top]) * resized / (right - left, bottom - top) - box,
    )
    pixels = crop.image(image.crop((left, top, right, bottom)))
    return _Loaded(pixels, view, depth, mask)


def _correspondences(
    first: _Loaded, second: _Loaded, size: int, points: int, depth_tolerance: float
) -> tuple[np.ndarray, np.ndarray]:
    """(source_xy, target_xy) in crop pixels: the first view's depth pixels nearest to a
    `points` x `points` grid over its crop that are on the object, and where they land in the
    second crop; points the second view does not see (occluded, outside its image or crop)
    dropped."""
    centres = (np.arange(points) + 0.5) * size / points
    xs, ys = np.meshgrid(centres, centres)
    a, b = first.view, second.view
    xy, z = first.snap(a.from_crop(np.stack([xs.ravel(), ys.ravel()], axis=1)))
    source = a.to_crop(xy)
    on = (z > 0) & first.lookup(first.mask, xy) & ((source >= 0) & (source < size)).all(1)
    # Depth coarser than the grid snaps several grid points to one pixel: keep it once.
    _, once = np.unique(xy[on], axis=0, return_index=True)
    keep = np.flatnonzero(on)[np.sort(once)]
    xy, z, source = xy[keep], z[keep], source[keep]
    camera = np.concatenate([(xy - a.principal) / a.focal * z[:, None], z[:, None]], axis=1)
    world = (camera - a.translation) @ a.rotation  # R^T (X - t), row-wise
    moved = world @ b.rotation.T + b.translation
    depth = moved[:, 2]
    ahead = depth > 1e-6
    target = moved[:, :2] / np.where(ahead, depth, 1.0)[:, None] * b.focal + b.principal
    height, width = b.image_size
    seen = ahead & ((target >= 0) & (target < (width, height))).all(1)
    seen[seen] &= second.lookup(second.mask, target[seen])
    low, high = second.depth_bounds(target[seen])
    near = depth[seen]
    seen[seen] &= (near >= low * (1 - depth_tolerance)) & (near <= high * (1 + depth_tolerance))
    target_crop = b.to_crop(target)
    seen &= ((target_crop >= 0) & (target_crop < size)).all(1)
    return source[seen].astype(np.float32), target_crop[seen].astype(np.float32)


def read_navi(
    root: str | Path,
    size: int,
    limit: int | None = None,
    collection: Literal["multiview", "wild_set"] = "multiview",
    points: int = 32,
    max_angle: float = 120.0,
    depth_tolerance: float = 0.01,
    object_crop: bool = True,
    seed: int = 8,
) -> ViewPairSet:
    """NAVI pairs with ground-truth correspondences (see the module docstring): one pair per
    view of every `collection` scene, `limit` of them evenly spaced over the sorted pairs. Only
    the views of the kept pairs are read, one scene at a time."""
    scenes = _scenes(Path(root), collection)
    chosen = _pairs(scenes, max_angle, seed)
    chosen = [chosen[i] for i in subset(len(chosen), limit).tolist()] if chosen else []
    images: list[np.ndarray] = []
    views: list[NaviView] = []
    pairs: list[ViewPair] = []
    index: dict[tuple[int, int], int] = {}
    loaded: dict[int, _Loaded] = {}  # the current scene's views
    current = -1
    for s, a, b, angle in chosen:
        if s != current:
            current, loaded = s, {}
        scene, entries = scenes[s]
        for v in (a, b):
            if v not in loaded:
                loaded[v] = _load(entries[v], f"{scene}/{entries[v].filename}", size, object_crop)
            if (s, v) not in index:
                index[s, v] = len(images)
                images.append(loaded[v].image)
                views.append(loaded[v].view)
        source_xy, target_xy = _correspondences(loaded[a], loaded[b], size, points, depth_tolerance)
        pairs.append(ViewPair(index[s, a], index[s, b], source_xy, target_xy, angle, scene))
    return ViewPairSet(stack_images(images, size), views, pairs)


def pair_batches(
    data: ViewPairSet, pairs_per_batch: int
) -> Iterator[tuple[np.ndarray, list[ViewPair]]]:
    """Consecutive pairs in batches, with the distinct images they use (sorted indices), so
    that features are held for a batch of images at a time."""
    for start in range(0, len(data.pairs), pairs_per_batch):
        batch = data.pairs[start : start + pairs_per_batch]
        yield np.unique([i for p in batch for i in (p.source, p.target)]), batch

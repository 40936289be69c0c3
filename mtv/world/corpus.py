"""A rendered mini-world corpus on disk: image-text tar shards in the format users bring
(KEY.png + KEY.txt + KEY.json) and a Zarr ground-truth store that evaluation and the oracle
expert read by key. `MTV_CORPUS.json`, written first, marks the folder as mtv's (what
`--overwrite` may delete); `world.json`, written last, marks the corpus complete."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from PIL import Image

from mtv.data.shard_index import scan_shard, write_sidecar
from mtv.world import geometry
from mtv.world.render import CLASS_NAMES, KEYPOINT_IDS, RenderedView, render_views, sample_key
from mtv.world.scene import CAMERA_DISTANCE, COLORS, FLOORS, MATERIALS, SIZES, sample_scene

MANIFEST = "world.json"
MARKER = "MTV_CORPUS.json"  # proof that mtv rendered the folder: what --overwrite may delete
WRITTEN_BY = "mtv world render"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class WorldCorpus:
    root: Path
    manifest: dict

    @property
    def shards(self) -> list[str]:
        return [str(self.root / name) for name in self.manifest["shards"]]

    @property
    def groundtruth(self) -> Path:
        return self.root / "groundtruth.zarr"

    @classmethod
    def open(cls, root: str | Path) -> WorldCorpus:
        root = Path(root)
        path = root / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(
                f"{root} is not a complete mini-world corpus ({MANIFEST} is missing; an "
                "interrupted render leaves none): render it again with `mtv world render`"
            )
        return cls(root, json.loads(path.read_text()))


def _close_shard(tar: tarfile.TarFile, path: Path) -> None:
    """Close a finished shard and write its sidecar index (`SHARD.tar.idx.json`), so that sources
    list it without scanning it."""
    tar.close()
    write_sidecar(scan_shard(str(path)))


def _tar_member(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    info.mtime = 0  # deterministic archives: the same seed gives the same bytes
    tar.addfile(info, io.BytesIO(payload))


def _png(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def _sample_json(view: RenderedView, seed: int) -> bytes:
    meta = {
        "width": view.rgb.shape[1],
        "height": view.rgb.shape[0],
        "source": "mtv-miniworld",
        "seed": seed,
        "scene": view.scene_index,
        "view": view.view,
        "intrinsics": view.intrinsics.round(6).tolist(),
        "world_to_camera": view.world_to_camera.round(6).tolist(),
    }
    return json.dumps(meta).encode()


def _batches(
    n_scenes: int, views: int, seed: int, batch: int, camera_distance: tuple[float, float]
) -> Iterator[list[tuple]]:
    items: list[tuple] = []
    for index in range(n_scenes):
        scene = sample_scene(seed, index, views, camera_distance=camera_distance)
        items += [(scene, v) for v in range(views)]
        if len(items) >= batch:
            yield items
            items = []
    if items:
        yield items


class _GroundTruthWriter:
    def __init__(self, path: Path, count: int, size: int, chunk: int):
        self.root = zarr.open_group(str(path), mode="w")
        spatial = {"shape": (count, size, size), "chunks": (chunk, size, size)}
        self.depth = self.root.create_array("depth", dtype="float32", **spatial)
        self.instance = self.root.create_array("instance", dtype="uint8", **spatial)
        self.semantic = self.root.create_array("semantic", dtype="uint8", **spatial)
        self.intrinsics = self.root.create_array(
            "intrinsics", shape=(count, 3, 3), chunks=(chunk, 3, 3), dtype="float32"
        )
        self.pose = self.root.create_array(
            "world_to_camera", shape=(count, 4, 4), chunks=(chunk, 4, 4), dtype="float32"
        )
        self.count = count
        self.rows: dict[str, list] = {k: [] for k in ("keys", "captions", "scene", "view")}
        self.boxes: list[np.ndarray] = []
        self.box_names: list[str] = []
        self.box_instances: list[np.ndarray] = []
        self.keypoints: list[np.ndarray] = []
        self.written = 0

    def add(self, views: list[RenderedView]) -> None:
        start, stop = self.written, self.written + len(views)
        self.depth[start:stop] = np.stack([v.depth for v in views])
        self.instance[start:stop] = np.stack([v.instance for v in views])
        self.semantic[start:stop] = np.stack([v.semantic for v in views])
        self.intrinsics[start:stop] = np.stack([v.intrinsics for v in views])
        self.pose[start:stop] = np.stack([v.world_to_camera for v in views])
        for v in views:
            self.rows["keys"].append(v.key)
            self.rows["captions"].append(v.caption)
            self.rows["scene"].append(v.scene_index)
            self.rows["view"].append(v.view)
            self.boxes.append(v.boxes)
            self.box_names += v.names
            self.box_instances.append(v.box_instances)
            self.keypoints.append(v.keypoints)
        self.written = stop

    @staticmethod
    def _strings(group: zarr.Group, name: str, values: list[str]) -> None:
        # Variable-length UTF-8 (the Zarr v3 string type), not numpy's fixed-width unicode.
        array = group.create_array(name, shape=(len(values),), dtype=str)
        if values:
            array[:] = np.asarray(values, dtype=object)

    def _ragged(self, name: str, parts: list[np.ndarray], width: int) -> None:
        values = np.concatenate(parts) if parts else np.zeros((0, width), np.float32)
        offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)
        group = self.root.create_group(name)
        group.create_array("values", data=values.astype(np.float32).reshape(-1, width))
        group.create_array("offsets", data=offsets)

    def close(self, attrs: dict) -> None:
        for name in ("keys", "captions"):
            self._strings(self.root, name, self.rows[name])
        for name in ("scene", "view"):
            self.root.create_array(name, data=np.asarray(self.rows[name], dtype=np.int64))
        self._ragged("boxes", self.boxes, 4)
        self._strings(self.root["boxes"], "names", self.box_names)
        instances = np.concatenate(self.box_instances) if self.box_instances else np.zeros(0)
        self.root["boxes"].create_array("instance", data=instances.astype(np.int32))
        self._ragged("keypoints", self.keypoints, 5)
        self.root.attrs.update(attrs)


def _marker(out: Path) -> dict | None:
    """What `out`'s marker says wrote it, or None: no marker, a link, or not mtv's JSON."""
    path = out / MARKER
    if path.is_symlink() or not path.is_file():
        return None
    try:
        marker = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("written_by") != WRITTEN_BY:
        return None
    return marker


def prepare_output(out: Path, overwrite: bool) -> None:
    """Refuse to write into a non-empty folder unless asked to replace it; even then, only a
    folder whose marker (`MTV_CORPUS.json`) proves mtv rendered it is deleted, whatever the
    names of its entries, so a folder of the user's own shards or stores is never lost."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            raise FileExistsError(
                f"{out} exists and is not empty; refusing to replace it (use --overwrite)"
            )
        if out.is_symlink() or not out.is_dir() or _marker(out) is None:
            raise FileExistsError(
                f"{out}: not deleted: it has no {MARKER}, so mtv did not write it (corpora "
                "rendered before mtv wrote that marker have none either); remove it yourself or "
                "choose another folder"
            )
        shutil.rmtree(out)


def _write_marker(out: Path, marker: dict) -> None:
    """Written atomically into the empty folder before anything else, so every folder mtv
    renders into (an interrupted render too) is one `--overwrite` may replace."""
    partial = out / f".{MARKER}.partial"
    partial.write_text(json.dumps(marker, indent=1))
    partial.replace(out / MARKER)


def render_corpus(
    out: str | Path,
    n_scenes: int,
    size: int = 64,
    views: int = 1,
    seed: int = 0,
    shard_size: int = 1000,
    batch: int = 128,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
    camera_distance: tuple[float, float] = CAMERA_DISTANCE,
) -> WorldCorpus:
    """Render `n_scenes` scenes x `views` cameras (at distances drawn from `camera_distance`)
    into `out`. Refuses a non-empty `out` unless `overwrite` (nothing already there is lost by
    accident)."""
    out = Path(out)
    prepare_output(out, overwrite)
    count = n_scenes * views
    out.mkdir(parents=True, exist_ok=True)
    _write_marker(
        out,
        {"written_by": WRITTEN_BY, "format": 1, "seed": seed, "n_images": count, "size": size},
    )
    (out / "shards").mkdir()
    started = time.time()
    writer = _GroundTruthWriter(out / "groundtruth.zarr", count, size, chunk=min(256, count))
    shards: list[str] = []
    tar: tarfile.TarFile | None = None
    in_shard = 0
    for items in _batches(n_scenes, views, seed, batch, camera_distance):
        rendered = render_views(items, size)
        writer.add(rendered)
        for view in rendered:
            if tar is None or in_shard == shard_size:
                if tar is not None:
                    _close_shard(tar, out / shards[-1])
                shards.append(f"shards/world-{len(shards):06d}.tar")
                # Closed when the shard is full, or after the last batch.
                tar = tarfile.open(out / shards[-1], "w")  # noqa: SIM115
                in_shard = 0
            _tar_member(tar, f"{view.key}.png", _png(view.rgb))
            _tar_member(tar, f"{view.key}.txt", view.caption.encode())
            _tar_member(tar, f"{view.key}.json", _sample_json(view, seed))
            in_shard += 1
        if progress is not None:
            progress(len(rendered))
    if tar is not None:
        _close_shard(tar, out / shards[-1])
    manifest = {
        "format": "mtv-miniworld",
        "version": FORMAT_VERSION,
        "seed": seed,
        "scenes": n_scenes,
        "views": views,
        "size": size,
        "camera_distance": list(camera_distance),
        "images": count,
        "shards": shards,
        "seconds": round(time.time() - started, 3),
        "vocabulary": {
            "shapes": list(geometry.SHAPE_NAMES),
            "colors": list(COLORS),
            "sizes": list(SIZES),
            "materials": list(MATERIALS),
            "floors": list(FLOORS),
            "classes": list(CLASS_NAMES),
            "keypoints": [f"{shape}/{name}" for shape, name in KEYPOINT_IDS],
        },
    }
    writer.close(
        {
            "depth": "camera z-depth in scene units; inf where the sky is seen",
            "boxes": "xyxy normalised to [0, 1] of the image; ragged: values[offsets[i]:"
            "offsets[i + 1]] belong to keys[i]",
            "keypoints": "rows of (instance, keypoint id, x px, y px, visible)",
            "camera": "world_to_camera with OpenCV axes (x right, y down, z forward); "
            "intrinsics in pixels, pixel centres at +0.5",
            **{
                k: manifest[k]
                for k in ("seed", "scenes", "views", "size", "camera_distance", "vocabulary")
            },
        }
    )
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return WorldCorpus(out, manifest)


def keys_of(n_scenes: int, views: int) -> list[str]:
    """The keys a corpus of n_scenes x views holds, in order."""
    return [sample_key(i, v) for i in range(n_scenes) for v in range(views)]


@dataclass
class GroundTruthRecord:
    key: str
    caption: str
    depth: np.ndarray  # (H, W) camera z-depth, inf for the sky
    instance: np.ndarray  # (H, W)
    semantic: np.ndarray  # (H, W)
    boxes: np.ndarray  # (n, 4) xyxy in [0, 1]
    names: list[str]
    box_instances: np.ndarray  # (n,)
    keypoints: np.ndarray  # (p, 5)
    intrinsics: np.ndarray  # (3, 3)
    world_to_camera: np.ndarray  # (4, 4)
    scene: int
    view: int


class GroundTruth:
    """Read access by key to a corpus's ground-truth store (O(1) per key). The small ragged
    arrays are read once; dense maps are read a Zarr chunk at a time and the last few chunks are
    kept, so reading keys in order decodes each chunk once."""

    def __init__(self, path: str | Path, cached_chunks: int = 4):
        self.path = Path(path)
        self.root = zarr.open_group(str(path), mode="r")
        self.keys: list[str] = [str(k) for k in self.root["keys"][:]]
        self.index = {key: i for i, key in enumerate(self.keys)}
        self._box_offsets = self.root["boxes/offsets"][:]
        self._kp_offsets = self.root["keypoints/offsets"][:]
        self._names = [str(n) for n in self.root["boxes/names"][:]]
        self._boxes = self.root["boxes/values"][:]
        self._box_instances = self.root["boxes/instance"][:]
        self._keypoints = self.root["keypoints/values"][:]
        self._captions = [str(c) for c in self.root["captions"][:]]
        self._small = {
            name: self.root[name][:] for name in ("intrinsics", "world_to_camera", "scene", "view")
        }
        self._cache: dict[tuple[str, int], np.ndarray] = {}
        self._cached_chunks = cached_chunks

    def _row(self, key: str) -> int:
        if key not in self.index:
            raise KeyError(f"no ground truth for key {key!r} in {self.path}")
        return self.index[key]

    def dense(self, name: str, key: str) -> np.ndarray:
        """One image's `depth`, `instance` or `semantic` map."""
        i = self._row(key)
        array = self.root[name]
        length = array.chunks[0]
        chunk = i // length
        if (name, chunk) not in self._cache:
            if len(self._cache) >= self._cached_chunks:
                self._cache.pop(next(iter(self._cache)))
            self._cache[(name, chunk)] = array[chunk * length : (chunk + 1) * length]
        return self._cache[(name, chunk)][i - chunk * length]

    def boxes(self, key: str) -> tuple[np.ndarray, list[str]]:
        i = self._row(key)
        b0, b1 = self._box_offsets[i], self._box_offsets[i + 1]
        return self._boxes[b0:b1], self._names[b0:b1]

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: str) -> bool:
        return key in self.index

    def __getitem__(self, key: str) -> GroundTruthRecord:
        i = self._row(key)
        b0, b1 = self._box_offsets[i], self._box_offsets[i + 1]
        k0, k1 = self._kp_offsets[i], self._kp_offsets[i + 1]
        return GroundTruthRecord(
            key=key,
            caption=self._captions[i],
            depth=self.dense("depth", key),
            instance=self.dense("instance", key),
            semantic=self.dense("semantic", key),
            boxes=self._boxes[b0:b1],
            names=self._names[b0:b1],
            box_instances=self._box_instances[b0:b1],
            keypoints=self._keypoints[k0:k1],
            intrinsics=self._small["intrinsics"][i],
            world_to_camera=self._small["world_to_camera"][i],
            scene=int(self._small["scene"][i]),
            view=int(self._small["view"][i]),
        )

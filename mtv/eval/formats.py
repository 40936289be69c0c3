"""Readers of public benchmark formats, for `mtv eval` on data the user has locally.

Every reader returns images as uint8 (N, S, S, 3) at the square size `S` the caller passes (the
model's input size): the shorter side is resized to S (bicubic, antialiased when shrinking) and
the centre square kept. Labels follow the same geometry: masks by nearest neighbour, depth by a
valid-weighted box average (so invalid zeros never blur into valid depth), keypoints and boxes
through the same scale and offset, keypoints falling outside the crop dropped.

`limit` keeps an evenly spaced subset of the (sorted) samples rather than the first ones, so a
quick run still covers every class folder and category. Bad or missing input raises one
`BenchmarkFormatError` naming the file and what is wrong with it.

NYUv2's labelled `.mat` (`mtv.eval.nyuv2`) and SPair-71k's keypoint pairs (`mtv.eval.spair`)
have modules of their own that share the helpers defined here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = frozenset({".jpeg", ".jpg", ".png", ".bmp", ".webp"})
CLASSNAME_FILES = ("classnames.txt", "LOC_synset_mapping.txt", "classnames.json")
IGNORE_INDEX = -1
ADE20K_CLASSES = 150


T = TypeVar("T")


@dataclass
class TrainTest(Generic[T]):
    """A benchmark's two splits: probes fit on `train` and are scored on `test`."""

    train: T
    test: T


class BenchmarkFormatError(ValueError):
    """The data on disk is not in the format a reader expects (the message names the file)."""


@dataclass
class ClassificationSet:
    images: np.ndarray  # (N, S, S, 3) uint8
    labels: np.ndarray  # (N,) int64 index into class_names
    class_names: list[str]
    files: list[Path]


@dataclass
class CaptionSet:
    images: np.ndarray  # (N, S, S, 3) uint8
    captions: list[str]  # (T,)
    caption_image: np.ndarray  # (T,) int64: the image each caption describes


@dataclass
class SegmentationSet:
    images: np.ndarray  # (N, S, S, 3) uint8
    masks: np.ndarray  # (N, S, S) int64 class in [0, n_classes), or ignore_index
    n_classes: int
    ignore_index: int = IGNORE_INDEX


@dataclass
class DepthSet:
    images: np.ndarray  # (N, S, S, 3) uint8
    depth: np.ndarray  # (N, S, S) float32 metres; 0 where there is no valid measurement

    @property
    def valid(self) -> np.ndarray:
        return self.depth > 0


@dataclass
class KeypointPair:
    source: int  # index into KeypointPairSet.images
    target: int
    source_xy: np.ndarray  # (K, 2) float32 (x, y) pixels in the S x S source image
    target_xy: np.ndarray  # (K, 2) the corresponding points in the target image
    threshold: float  # PCK radius in target pixels: alpha * max side of the target box
    category: str


@dataclass
class KeypointPairSet:
    images: np.ndarray  # (M, S, S, 3) uint8, each distinct image once
    pairs: list[KeypointPair]
    alpha: float


@dataclass(frozen=True)
class SquareCrop:
    """Resize the shorter side of a (width, height) image to `size`, then keep the centre."""

    width: int
    height: int
    size: int

    @property
    def resized(self) -> tuple[int, int]:
        scale = self.size / min(self.width, self.height)
        return (
            max(self.size, round(self.width * scale)),
            max(self.size, round(self.height * scale)),
        )

    @property
    def box(self) -> tuple[int, int, int, int]:
        w, h = self.resized
        left, top = (w - self.size) // 2, (h - self.size) // 2
        return left, top, left + self.size, top + self.size

    def _apply(self, image: Image.Image, resample: Image.Resampling) -> np.ndarray:
        return np.asarray(image.resize(self.resized, resample).crop(self.box))

    def image(self, image: Image.Image) -> np.ndarray:
        return self._apply(image.convert("RGB"), Image.Resampling.BICUBIC)

    def mask(self, mask: np.ndarray) -> np.ndarray:
        """Nearest neighbour: class ids (and the ignore value) are never mixed."""
        out = self._apply(Image.fromarray(mask.astype(np.int32)), Image.Resampling.NEAREST)
        return out.astype(np.int64)

    def depth(self, depth: np.ndarray) -> np.ndarray:
        """Box average over valid (> 0, finite) pixels only; output pixels that cover any invalid
        input are marked invalid (0) rather than given a partial average."""
        valid = np.isfinite(depth) & (depth > 0)
        total = self._apply(Image.fromarray(np.where(valid, depth, 0).astype(np.float32)), _BOX)
        share = self._apply(Image.fromarray(valid.astype(np.float32)), _BOX)
        return np.where(share > 0.999, total / np.maximum(share, 1e-6), 0).astype(np.float32)

    def points(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(K, 2) (x, y) -> mapped points and a mask of those inside the crop."""
        w, h = self.resized
        left, top, _, _ = self.box
        scale = np.array([w / self.width, h / self.height], dtype=np.float64)
        mapped = np.asarray(xy, dtype=np.float64).reshape(-1, 2) * scale - (left, top)
        inside = ((mapped >= 0) & (mapped < self.size)).all(axis=1)
        return mapped.astype(np.float32), inside

    def lengths(self, width: float, height: float) -> tuple[float, float]:
        w, h = self.resized
        return width * w / self.width, height * h / self.height


_BOX = Image.Resampling.BOX


def subset(n: int, limit: int | None) -> np.ndarray:
    """Indices of at most `limit` of n samples, evenly spaced (all of them without a limit)."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    if limit is None or limit >= n:
        return np.arange(n)
    # Steps of (n - 1) / (limit - 1) >= 1 round to distinct indices.
    return np.linspace(0, n - 1, limit).round().astype(np.int64)


def open_image(path: Path) -> Image.Image:
    if not path.is_file():
        raise BenchmarkFormatError(f"{path}: image file not found")
    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError) as err:
        raise BenchmarkFormatError(f"{path}: not a readable image ({err})") from err
    return image


def load_square(path: Path, size: int) -> np.ndarray:
    image = open_image(path)
    return SquareCrop(image.width, image.height, size).image(image)


def read_json(path: Path) -> Any:
    if not path.is_file():
        raise BenchmarkFormatError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BenchmarkFormatError(f"{path}: not valid JSON ({err})") from err


def stack_images(images: Sequence[np.ndarray], size: int) -> np.ndarray:
    return np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)


# ImageNet-style class folders ----------------------------------------------------------------


def _read_class_names(path: Path, classes: list[str]) -> list[str]:
    """Names for the class folders from a mapping file: text lines `wnid name, synonym, ...`
    (LOC_synset_mapping.txt) or one name per line in folder order; JSON {folder: name or
    [names]}, ImageNet's {"0": [wnid, name]}, or a list in folder order. The first synonym is
    the class name."""
    mapping: dict[str, str] = {}
    ordered: list[str] | None = None
    if path.suffix == ".json":
        raw = read_json(path)
        if isinstance(raw, list):
            ordered = [str(r[0] if isinstance(r, list) else r) for r in raw]
        elif isinstance(raw, dict):
            for key, value in raw.items():
                if isinstance(value, list) and len(value) == 2 and value[0] in classes:
                    mapping[str(value[0])] = str(value[1])
                else:
                    mapping[str(key)] = str(value[0] if isinstance(value, list) else value)
        else:
            raise BenchmarkFormatError(f"{path}: expected a JSON object or list of class names")
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise BenchmarkFormatError(f"{path}: not UTF-8 text ({err})") from err
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        pairs = [ln.split(maxsplit=1) for ln in lines]
        if any(p[0] in classes for p in pairs):
            mapping = {p[0]: p[1] if len(p) > 1 else p[0] for p in pairs}
        else:
            ordered = lines
    if ordered is not None:
        if len(ordered) != len(classes):
            raise BenchmarkFormatError(
                f"{path}: {len(ordered)} class names for {len(classes)} class folders"
            )
        names = ordered
    else:
        missing = [c for c in classes if c not in mapping]
        if missing:
            raise BenchmarkFormatError(f"{path}: no name for class folder(s) {missing[:5]}")
        names = [mapping[c] for c in classes]
    return [name.split(",")[0].strip() for name in names]


def read_image_folder(
    root: str | Path, size: int, split: str = "val", limit: int | None = None
) -> ClassificationSet:
    """`root/<split>/<class folder>/*.JPEG|png`; classes are the sorted folder names (as
    torchvision's ImageFolder), named by the first of CLASSNAME_FILES found in `root` or the
    split folder, else by the folder name with underscores as spaces."""
    root = Path(root)
    folder = root / split
    if not folder.is_dir():
        raise BenchmarkFormatError(f"{folder}: not a directory (expected <root>/{split}/<class>/)")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    files, labels = [], []
    for label, name in enumerate(classes):
        found = sorted(p for p in (folder / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        files += found
        labels += [label] * len(found)
    if not files:
        raise BenchmarkFormatError(f"{folder}: no images in class sub-folders")
    names_file = next(
        (d / f for f in CLASSNAME_FILES for d in (root, folder) if (d / f).is_file()), None
    )
    if names_file is None:
        class_names = [c.replace("_", " ") for c in classes]
    else:
        class_names = _read_class_names(names_file, classes)
    keep = subset(len(files), limit)
    return ClassificationSet(
        images=stack_images([load_square(files[i], size) for i in keep], size),
        labels=np.asarray(labels, dtype=np.int64)[keep],
        class_names=class_names,
        files=[files[i] for i in keep],
    )


# COCO / Flickr30k captions, Karpathy split ---------------------------------------------------


def read_coco_karpathy(
    path: str | Path,
    size: int,
    split: str = "test",
    limit: int | None = None,
    image_root: str | Path | None = None,
    captions_per_image: int = 5,
) -> CaptionSet:
    """Karpathy's `dataset_coco.json` (or a directory holding it): the images of `split`, each
    with its first `captions_per_image` `raw` sentences (COCO's retrieval protocol uses 5; the
    few images with 6-7 are cut). Image files are `image_root/<filepath>/<filename>`, image_root
    defaulting to the JSON's directory (`filepath` may be absent, as in dataset_flickr30k.json)."""
    path = Path(path)
    if path.is_dir():
        path = path / "dataset_coco.json"
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise BenchmarkFormatError(f"{path}: expected an object with an 'images' list")
    root = Path(image_root) if image_root is not None else path.parent
    chosen = []
    for i, entry in enumerate(data["images"]):
        if not isinstance(entry, dict) or "split" not in entry:
            raise BenchmarkFormatError(f"{path}: images[{i}] has no 'split'")
        if entry["split"] == split:
            chosen.append(i)
    if not chosen:
        splits = sorted({str(e["split"]) for e in data["images"]})
        raise BenchmarkFormatError(f"{path}: no images with split {split!r} (found {splits})")
    images, captions, caption_image = [], [], []
    for n, i in enumerate(np.asarray(chosen)[subset(len(chosen), limit)].tolist()):
        entry = data["images"][i]
        for key in ("filename", "sentences"):
            if key not in entry:
                raise BenchmarkFormatError(f"{path}: images[{i}] has no {key!r}")
        sentences = entry["sentences"]
        if not isinstance(sentences, list) or not sentences:
            raise BenchmarkFormatError(f"{path}: images[{i}] has no sentences")
        for j, sentence in enumerate(sentences[:captions_per_image]):
            if not isinstance(sentence, dict) or not isinstance(sentence.get("raw"), str):
                raise BenchmarkFormatError(f"{path}: images[{i}].sentences[{j}] has no 'raw'")
            captions.append(sentence["raw"].strip())
            caption_image.append(n)
        file = root / str(entry.get("filepath", "")) / str(entry["filename"])
        if not file.is_file():
            raise BenchmarkFormatError(f"{path}: images[{i}]: image file {file} not found")
        images.append(load_square(file, size))
    return CaptionSet(
        stack_images(images, size), captions, np.asarray(caption_image, dtype=np.int64)
    )


# ADE20k (SceneParsing / ADEChallengeData2016) ------------------------------------------------


def read_ade20k(
    root: str | Path, size: int, split: str = "validation", limit: int | None = None
) -> SegmentationSet:
    """`root/images/<split>/*.jpg` with `root/annotations/<split>/<same stem>.png` holding 0 =
    other/ignore and 1..150 the classes. Masks become 0..149 with 0 -> IGNORE_INDEX (the usual
    'reduce zero label'), so class k of objectInfo150 is index k - 1."""
    root = Path(root)
    if not (root / "images").is_dir() and (root / "ADEChallengeData2016").is_dir():
        root = root / "ADEChallengeData2016"
    folder = root / "images" / split
    if not folder.is_dir():
        raise BenchmarkFormatError(f"{folder}: not a directory (expected ADEChallengeData2016)")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise BenchmarkFormatError(f"{folder}: no images")
    images, masks = [], []
    for i in subset(len(files), limit).tolist():
        annotation = root / "annotations" / split / f"{files[i].stem}.png"
        label = open_image(annotation)
        if label.mode not in ("L", "P", "I", "I;16"):
            raise BenchmarkFormatError(
                f"{annotation}: expected a single-channel class-index PNG, got mode {label.mode}"
            )
        values = np.asarray(label).astype(np.int64)
        if values.max() > ADE20K_CLASSES:
            raise BenchmarkFormatError(
                f"{annotation}: class {values.max()} out of range 0..{ADE20K_CLASSES}"
            )
        image = open_image(files[i])
        if image.size != label.size:
            raise BenchmarkFormatError(
                f"{annotation}: size {label.size} differs from its image's {image.size}"
            )
        crop = SquareCrop(image.width, image.height, size)
        images.append(crop.image(image))
        masks.append(crop.mask(np.where(values == 0, IGNORE_INDEX, values - 1)))
    empty = np.zeros((0, size, size), np.int64)
    return SegmentationSet(
        stack_images(images, size), np.stack(masks) if masks else empty, ADE20K_CLASSES
    )

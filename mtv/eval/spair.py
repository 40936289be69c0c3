"""SPair-71k semantic keypoint pairs (`SPair-71k/`: `PairAnnotation/<split>/*.json` and
`JPEGImages/<category>/*.jpg`), read into a `KeypointPairSet` at a square size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mtv.eval.formats import (
    BenchmarkFormatError,
    KeypointPair,
    KeypointPairSet,
    SquareCrop,
    open_image,
    read_json,
    stack_images,
    subset,
)


def _numbers(path: Path, pair: dict[str, Any], key: str, shape: str) -> np.ndarray:
    """pair[key] as float64 of the given shape ("K,2": points, "4": a box)."""
    try:
        values = np.asarray(pair[key], dtype=np.float64)
    except (ValueError, TypeError):  # ragged lists, strings
        values = np.zeros(0)
    ok = values.shape == (4,) if shape == "4" else values.ndim == 2 and values.shape[1] == 2
    if not ok:
        what = "[x0, y0, x1, y1]" if shape == "4" else "a list of [x, y] points"
        raise BenchmarkFormatError(f"{path}: {key!r} is not {what}")
    return values


def read_spair(
    root: str | Path,
    size: int,
    split: str = "test",
    limit: int | None = None,
    alpha: float = 0.1,
) -> KeypointPairSet:
    """SPair-71k: `root/PairAnnotation/<split>/*.json` (src_imname, trg_imname, category,
    src_kps, trg_kps as [[x, y], ...] in corresponding order, trg_bndbox [x0, y0, x1, y1]) with
    images `root/JPEGImages/<category>/<imname>`. Both images of a pair go through the square
    crop; a keypoint pair is kept when both points stay inside. The PCK radius is SPair's:
    alpha * max(width, height) of the target's box, measured after the resize."""
    root = Path(root)
    folder = root / "PairAnnotation" / split
    if not folder.is_dir():
        raise BenchmarkFormatError(f"{folder}: not a directory (expected SPair-71k layout)")
    files = sorted(folder.glob("*.json"))
    if not files:
        raise BenchmarkFormatError(f"{folder}: no pair annotations (*.json)")
    index: dict[Path, int] = {}
    images: list[np.ndarray] = []
    crops: list[SquareCrop] = []

    def load(file: Path) -> int:
        if file not in index:
            image = open_image(file)
            crops.append(SquareCrop(image.width, image.height, size))
            images.append(crops[-1].image(image))
            index[file] = len(images) - 1
        return index[file]

    pairs = []
    for i in subset(len(files), limit).tolist():
        path = files[i]
        pair = read_json(path)
        required = ("src_imname", "trg_imname", "category", "src_kps", "trg_kps", "trg_bndbox")
        missing = [k for k in required if not isinstance(pair, dict) or k not in pair]
        if missing:
            raise BenchmarkFormatError(f"{path}: missing {', '.join(map(repr, missing))}")
        source_xy = _numbers(path, pair, "src_kps", "K,2")
        target_xy = _numbers(path, pair, "trg_kps", "K,2")
        if len(source_xy) != len(target_xy):
            raise BenchmarkFormatError(
                f"{path}: {len(source_xy)} src_kps but {len(target_xy)} trg_kps"
            )
        box = _numbers(path, pair, "trg_bndbox", "4")
        category = str(pair["category"])
        source = load(root / "JPEGImages" / category / str(pair["src_imname"]))
        target = load(root / "JPEGImages" / category / str(pair["trg_imname"]))
        source_xy, source_in = crops[source].points(source_xy)
        target_xy, target_in = crops[target].points(target_xy)
        keep = source_in & target_in
        width, height = crops[target].lengths(box[2] - box[0], box[3] - box[1])
        pairs.append(
            KeypointPair(
                source,
                target,
                source_xy[keep],
                target_xy[keep],
                float(alpha * max(width, height)),
                category,
            )
        )
    return KeypointPairSet(stack_images(images, size), pairs, alpha)

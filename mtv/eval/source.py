"""The `source` suite's data: any image-caption data the user has (a folder, Parquet files with
image bytes, tar shards), held out from training, measured the way the mini suite measures its
scenes (evaluators in `mtv/eval/evaluators/`, registered for the suite `source`):

- retrieval (captions): image <-> caption R@1/R@5 in fixed galleries of 100;
- zero_shot (`eval.classes`): prompt-averaged class texts; an image's class is the one class its
  caption names;
- relative_depth (`eval.labels` with depth): the run's depth head against the store's pseudo-depth.

Images are resized whole to the model's input (as the label store's maps cover the whole image).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mtv.data.sources import UnusableSample, decode_image, open_source
from mtv.data.store import LabelStore
from mtv.specs.experiment import (
    FolderSourceSpec,
    ParquetSourceSpec,
    ShardsSourceSpec,
    SourceSpec,
)


def source_spec_of(path: str) -> SourceSpec:
    """The source a path names: `.tar` shards (brace patterns allowed), `.parquet` files, or a
    folder (its captions file found as `FolderSource` finds it)."""
    lowered = path.lower()
    if lowered.endswith(".tar"):
        return ShardsSourceSpec(urls=[path])
    if lowered.endswith(".parquet"):
        return ParquetSourceSpec(urls=[path])
    return FolderSourceSpec(root=path)


def read_classes(path: str) -> list[str]:
    """Class names, one per line (blank lines and `#` comments ignored)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    names = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    if len(names) < 2:
        raise ValueError(f"eval.classes: {path} names {len(names)} class(es); zero-shot needs 2+")
    return names


@dataclass
class SourceData:
    keys: list[str]
    images: np.ndarray  # (N, S, S, 3) uint8, whole images resized
    captions: list[str]
    class_names: list[str]  # `eval.classes` (zero_shot), or none
    depth: np.ndarray | None  # (N, S, S) pseudo-disparity from the label store
    depth_valid: np.ndarray | None

    @classmethod
    def read(
        cls, path: str, size: int, classes: str | None, labels: str | None, limit: int | None
    ) -> SourceData:
        source: Any = open_source(source_spec_of(path))
        store = LabelStore.open(labels) if labels else None
        if store is not None and "depth" not in store.attrs["kinds"]:
            raise ValueError(f"eval.labels: {labels} has no depth maps")
        keys, images, captions, depth, valid = [], [], [], [], []
        for key in source.keys()[:limit]:
            try:
                sample = source.get(key)
                image = decode_image(sample)
            except UnusableSample:
                continue  # the suite measures what can be read; the count is in `samples`
            keys.append(key)
            images.append(np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC)))
            captions.append(sample.caption)
            if store is not None:
                disparity, mask = store.depth(key)  # KeyError names a key the store lacks
                depth.append(_resize(disparity, size, Image.BILINEAR))
                valid.append(_resize(mask.astype(np.float32), size, Image.NEAREST) > 0.5)
        if len(keys) < 2:
            raise ValueError(f"eval.data: {path} has {len(keys)} readable sample(s); need 2+")
        return cls(
            keys,
            np.stack(images),
            captions,
            read_classes(classes) if classes else [],
            np.stack(depth) if store is not None else None,
            np.stack(valid) if store is not None else None,
        )


def _resize(array: np.ndarray, size: int, method: Image.Resampling) -> np.ndarray:
    return np.asarray(Image.fromarray(array.astype(np.float32)).resize((size, size), method))

"""The `source` suite: any image-caption data the user has (a folder, Parquet files with image
bytes, tar shards), held out from training, measured the way the mini suite measures its scenes.

- retrieval (captions): image <-> caption R@1/R@5 in fixed galleries of `GALLERY` (or all);
- zero_shot (`eval.classes`): prompt-averaged class texts; an image's class is the one class its
  caption names;
- relative_depth (`eval.labels` with depth): the run's depth head against the store's pseudo-depth.

Images are resized whole to the model's input (as the label store's maps cover the whole image).
Reference points as everywhere: chance (k / gallery, the majority class) or a constant depth,
and the random-init model (added by `run_suite`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from PIL import Image

from mtv.data.sources import UnusableSample, decode_image, open_source
from mtv.data.store import LabelStore
from mtv.eval.metrics import (
    Score,
    Scores,
    fit_affine,
    result_rows,
    retrieval_recall,
    zero_shot_accuracy,
)
from mtv.eval.model import FrozenModel, class_embeddings
from mtv.specs.experiment import (
    FolderSourceSpec,
    ParquetSourceSpec,
    ShardsSourceSpec,
    SourceSpec,
)

GALLERY = 100
TEMPLATES = ("a photo of a {}.", "a photo of the {}.", "an image of a {}.", "a picture of a {}.")


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


def named_class(caption: str, patterns: list[re.Pattern[str]]) -> int:
    """The index of the one class a caption names (as a whole word), or -1 (none or several)."""
    found = [i for i, pattern in enumerate(patterns) if pattern.search(caption)]
    return found[0] if len(found) == 1 else -1


@dataclass
class SourceData:
    keys: list[str]
    images: np.ndarray  # (N, S, S, 3) uint8, whole images resized
    captions: list[str]
    class_names: list[str]
    classes: np.ndarray  # (N,) class index per image, -1 where the caption names none or several
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
        names = read_classes(classes) if classes else []
        patterns = [re.compile(rf"\b{re.escape(n)}\b", re.IGNORECASE) for n in names]
        labelled = np.asarray([named_class(c, patterns) for c in captions], dtype=np.int64)
        return cls(
            keys,
            np.stack(images),
            captions,
            names,
            labelled,
            np.stack(depth) if store is not None else None,
            np.stack(valid) if store is not None else None,
        )


def _resize(array: np.ndarray, size: int, method: Image.Resampling) -> np.ndarray:
    return np.asarray(Image.fromarray(array.astype(np.float32)).resize((size, size), method))


def retrieval(model: FrozenModel, data: SourceData, pooled: torch.Tensor) -> Scores:
    """Image <-> caption recall in fixed galleries (samples 0-99, 100-199, ...), averaged."""
    text = model.texts(data.captions)
    size = min(GALLERY, len(data.keys))
    recalls: dict[str, list[float]] = {}
    for start in range(0, len(data.keys) - size + 1, size):
        block = slice(start, start + size)
        for name, value in retrieval_recall(pooled[block], text[block], torch.arange(size)).items():
            recalls.setdefault(name, []).append(value)
    return {
        name: Score(float(np.mean(values)), min(1.0, int(name.rsplit("r", 1)[1]) / size))
        for name, values in recalls.items()
    }


def zero_shot(model: FrozenModel, data: SourceData, pooled: torch.Tensor) -> Scores:
    """Images whose caption names exactly one class, classified among all classes by
    prompt-averaged class texts. Trivial: the share of the most common class."""
    chosen = np.flatnonzero(data.classes >= 0)
    if len(chosen) < 2:
        raise ValueError(
            f"zero_shot: only {len(chosen)} caption(s) name exactly one of the "
            f"{len(data.class_names)} classes; name classes the captions use"
        )
    labels = torch.from_numpy(data.classes[chosen])
    texts = class_embeddings(model, data.class_names, TEMPLATES)
    accuracy = zero_shot_accuracy(pooled[chosen], texts, labels, (1,))
    majority = float(np.bincount(data.classes[chosen]).max() / len(chosen))
    return {"top1": Score(accuracy["top1"], majority)}


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ranks_a, ranks_b = a.argsort().argsort().float(), b.argsort().argsort().float()
    ranks_a, ranks_b = ranks_a - ranks_a.mean(), ranks_b - ranks_b.mean()
    denominator = (ranks_a.norm() * ranks_b.norm()).clamp(min=1e-12)
    return float((ranks_a * ranks_b).sum() / denominator)


def relative_depth(model: FrozenModel, data: SourceData, pooled: torch.Tensor) -> Scores:
    """Agreement of the run's depth head with the store's pseudo-disparity, per image over its
    valid pixels: the rank correlation (scale-free; a constant map scores 0), and the mean
    absolute error after least-squares scale and shift (a constant map: the maps' spread)."""
    del pooled
    if not model.has_depth_head or data.depth is None or data.depth_valid is None:
        return {}
    prediction = model.disparity(data.images)
    correlations, errors, constant = [], [], []
    targets, masks = torch.from_numpy(data.depth), torch.from_numpy(data.depth_valid)
    aligned = fit_affine(prediction, targets, masks)
    for pred, fitted, target, mask in zip(prediction, aligned, targets, masks, strict=True):
        if mask.sum() < 2:
            continue
        t = target[mask].double()
        correlations.append(_spearman(pred[mask].double(), t))
        errors.append(float((fitted[mask].double() - t).abs().mean()))
        constant.append(float((t - t.mean()).abs().mean()))
    return {
        "rank_corr": Score(float(np.mean(correlations)), 0.0),
        "aligned_mae": Score(float(np.mean(errors)), float(np.mean(constant))),
    }


EVALUATORS = {"retrieval": retrieval, "zero_shot": zero_shot, "relative_depth": relative_depth}


def run_source_suite(
    model: FrozenModel, data: SourceData, only: list[str] | None = None
) -> pl.DataFrame:
    """Rows of the chosen evaluators (those whose inputs exist: captions always, classes and
    depth when given; the text evaluators need a text tower)."""
    unknown = sorted(set(only or []) - set(EVALUATORS))
    if unknown:
        raise ValueError(f"unknown evaluator(s) {unknown}; known: {', '.join(EVALUATORS)}")
    chosen = only or [
        name
        for name, needed in (
            ("retrieval", True),
            ("zero_shot", bool(data.class_names)),
            ("relative_depth", data.depth is not None),
        )
        if needed
    ]
    if not model.has_text:
        chosen = [name for name in chosen if name not in ("retrieval", "zero_shot")]
    pooled = model.images(data.images).pooled
    return result_rows({name: EVALUATORS[name](model, data, pooled) for name in chosen})

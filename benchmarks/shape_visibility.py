"""Can the mini suite's shape labels be read from its images at all? A linear probe (the suite's
own `classifier_probe_accuracy`, same scenes, same train/test halves as `pooled_probe`) of raw
pixels: the whole image as the encoder sees it, and the object's own box resized to 16 x 16.
If the box's pixels carry shape and the whole image's do not, the labels and the probe work and
shape is a question of the encoder finding and describing a 1-4 patch object:

    python benchmarks/shape_visibility.py [--scenes 500] [--out benchmarks/results]

Writes shape_visibility.md and shape_visibility.parquet.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F

from mtv.eval.mini import COLOR_NAMES, MiniData
from mtv.eval.probes import classifier_probe_accuracy
from mtv.specs import load_spec
from mtv.world.geometry import SHAPE_NAMES

from common import ROOT, machine

BOX_SIZE = 16  # pixels a side of the resized object box


def _images(data: MiniData) -> torch.Tensor:
    # RenderedView.rgb is uint8
    return torch.as_tensor(data.single_images, dtype=torch.float32).permute(0, 3, 1, 2) / 255


def whole_image(data: MiniData) -> torch.Tensor:
    """Every pixel of the image (N, 3 H W)."""
    return _images(data).flatten(1)


def object_box(data: MiniData) -> torch.Tensor:
    """The object's box, resized to BOX_SIZE x BOX_SIZE (N, 3 BOX_SIZE^2): what a model that
    has found the object could describe."""
    images = _images(data)
    size = images.shape[-1]
    crops = []
    for view, image in zip(data.singles, images, strict=True):
        x0, y0, x1, y1 = (np.asarray(view.boxes[0]) * size).tolist()
        left, top = int(x0), int(y0)
        right, bottom = max(math.ceil(x1), left + 1), max(math.ceil(y1), top + 1)
        crop = image[None, :, top:bottom, left:right]
        crops.append(F.interpolate(crop, size=(BOX_SIZE, BOX_SIZE), mode="bilinear")[0])
    return torch.stack(crops).flatten(1)


REPRESENTATIONS: dict[str, Callable[[MiniData], torch.Tensor]] = {
    "whole image, pixels": whole_image,
    f"object box, pixels ({BOX_SIZE} x {BOX_SIZE})": object_box,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scenes", type=int, default=500)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    size = load_spec(ROOT / "experiments" / "base.yaml").data.source.image_size  # type: ignore[union-attr]
    data = MiniData.render(args.scenes, size)
    n = len(data.singles)
    train, test = slice(0, n // 2), slice(n // 2, n)
    rows = []
    for name, represent in REPRESENTATIONS.items():
        features = represent(data)
        for attribute, classes in (("shape", SHAPE_NAMES), ("color", COLOR_NAMES)):
            labels = data.single_labels(attribute)
            score = classifier_probe_accuracy(
                features[train], labels[train], features[test], labels[test], len(classes)
            )
            tested = n - n // 2
            rows.append(
                {
                    "representation": name,
                    "attribute": attribute,
                    "accuracy": score.value,
                    # binomial standard error of an accuracy over the test half
                    "se": math.sqrt(score.value * (1 - score.value) / tested),
                    "trivial": score.trivial,
                    "test_scenes": tested,
                }
            )
            print(rows[-1], flush=True)
    table = pl.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    table.write_parquet(args.out / "shape_visibility.parquet")
    lines = [
        "# Can shape be read from the mini suite's images?\n",
        f"Machine: {machine()}. The `mini` suite's single-object scenes ({n} of {args.scenes} "
        f"with their object in view, {size} px, the suite's seeds), split in halves as "
        "`pooled_probe` does; the suite's linear probe on raw pixels instead of an encoder's "
        "pooled embedding. Accuracy ± binomial SE over the test half; trivial: the majority "
        "class. Command: `python benchmarks/shape_visibility.py`.\n",
        "| pixels | shape (7) | colour (10) |",
        "|---|---:|---:|",
    ]
    for name in REPRESENTATIONS:
        cells = []
        for attribute in ("shape", "color"):
            row = table.filter(
                (pl.col("representation") == name) & (pl.col("attribute") == attribute)
            ).row(0, named=True)
            cells.append(f"{row['accuracy']:.3f} ± {row['se']:.3f} (trivial {row['trivial']:.3f})")
        lines.append(f"| {name} | {' | '.join(cells)} |")
    (args.out / "shape_visibility.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out / 'shape_visibility.md'}")


if __name__ == "__main__":
    main()

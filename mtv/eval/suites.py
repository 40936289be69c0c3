"""The one table of evaluation suites: where each suite's held-out data comes from. Its
evaluators live in `mtv/eval/evaluators/` (one evaluator type a module, registered for the
suites whose data it reads).

| suite | reads (`eval.data`) | evaluators |
|---|---|---|
| mini | nothing: renders held-out mini-world scenes | every mini evaluator |
| source | the user's held-out image-caption data | retrieval, zero_shot, relative_depth |
| imagenet_folder | `<path>/val/<class>/*` | zero_shot (top-1/top-5) |
| coco_karpathy | `dataset_coco.json`, test split | retrieval (5 captions an image) |
| ade20k | ADEChallengeData2016 | segmentation (linear probe, mIoU) |
| nyuv2 | `nyu_depth_v2_labeled.mat` | depth_probe, relative_depth |
| spair | SPair-71k, test pairs | semantic_correspondence (PCK@0.1 of the box) |
| navi | NAVI multiview scenes | geometric_correspondence (recall@px, by rotation) |

Public formats are read at the model's input size (images resized and centre-cropped, see
`mtv.eval.formats`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from mtv.eval.contract import Suite, register_suite
from mtv.eval.formats import TrainTest, read_ade20k, read_coco_karpathy, read_image_folder
from mtv.eval.mini import MiniData, mini_camera_distance, mini_size
from mtv.eval.navi import read_navi
from mtv.eval.nyuv2 import read_nyuv2
from mtv.eval.source import SourceData
from mtv.eval.spair import read_spair
from mtv.specs.experiment import EvalSpec


def _mini(settings: EvalSpec, model: Any) -> MiniData:
    return MiniData.render(settings.scenes, mini_size(model), mini_camera_distance(model))


def _source(settings: EvalSpec, model: Any) -> SourceData:
    assert settings.data is not None  # check_settings refuses the suite without data
    return SourceData.read(
        settings.data, model.size, settings.classes, settings.labels, settings.limit
    )


def _public(read: Callable[..., Any], *split: str) -> Callable[[EvalSpec, Any], Any]:
    """A suite's loader from a format reader `read(path, size, [split,] limit)`."""

    def load(settings: EvalSpec, model: Any) -> Any:
        assert settings.data is not None  # check_settings refuses the suite without data
        return read(Path(settings.data), model.size, *split, settings.limit)

    return load


def _train_test(read: Callable[..., Any], train: str, test: str) -> Callable[[EvalSpec, Any], Any]:
    """A suite's loader of two splits (probes fit on `train`, score on `test`)."""
    first, second = _public(read, train), _public(read, test)
    return lambda settings, model: TrainTest(first(settings, model), second(settings, model))


for suite in (
    Suite("mini", "held-out mini-world scenes with exact ground truth", _mini),
    Suite(
        "source",
        "held-out image-caption data of your own: retrieval, zero-shot, relative depth",
        _source,
        reads="held-out image-text data (a folder, .parquet or .tar)",
    ),
    Suite(
        "imagenet_folder",
        "ImageNet-style class folders (val split): zero-shot top-1/top-5",
        _public(read_image_folder, "val"),
        reads="a benchmark",
    ),
    Suite(
        "coco_karpathy",
        "COCO captions, Karpathy test split: image<->text retrieval R@1/R@5",
        _public(read_coco_karpathy, "test"),
        reads="a benchmark",
    ),
    Suite(
        "ade20k",
        "ADE20k (ADEChallengeData2016): linear segmentation probe, mIoU",
        _train_test(read_ade20k, "training", "validation"),
        reads="a benchmark",
    ),
    Suite(
        "nyuv2",
        "NYU Depth v2 labelled set: depth-bin probe (RMSE, AbsRel), zero-shot relative depth",
        _train_test(read_nyuv2, "train", "test"),
        reads="a benchmark",
    ),
    Suite(
        "spair",
        "SPair-71k test pairs: semantic correspondence PCK@0.1 (target box)",
        _public(read_spair, "test"),
        reads="a benchmark",
    ),
    Suite(
        "navi",
        "NAVI multiview pairs: geometric correspondence recall@px, by relative rotation",
        _public(read_navi),
        reads="a benchmark",
    ),
):
    register_suite(suite)

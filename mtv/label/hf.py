"""Depth Anything V2 and OWLv2 experts through Hugging Face `transformers`, never over the network.

Weights come from a local directory (as written by `save_pretrained` or `huggingface-cli download
--local-dir`) or from the Hugging Face cache, always with `local_files_only=True`: labelling runs
on machines without network, and a silent download in the middle of a job is never wanted.

Both experts return labels in the coordinates of the *original* image: depth is resized back to
(H, W), and OWLv2's square padding is undone before its boxes are normalised.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mtv.label.base import (
    BoxExpert,
    BoxLabel,
    DepthExpert,
    DepthLabel,
    ExpertInfo,
    LabelInput,
    Tagger,
)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ExpertLoadError(Exception):
    """An expert's weights or processor could not be loaded from local files."""


def _torch_dtype(dtype: str) -> torch.dtype:
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    return _DTYPES[dtype]


def _load(model: str, what: str, processor_cls: str, model_cls: str, dtype: str) -> tuple[Any, Any]:
    """Load a processor and a model (transformers class names) from `model`, local files only.

    Any failure (not a directory, not in the cache, wrong architecture, missing weights) becomes an
    ExpertLoadError that names the path or id and says how to make the weights local.
    """
    torch_dtype = _torch_dtype(dtype)
    try:
        import transformers
    except ImportError as err:
        raise ExpertLoadError(
            f"the {what} expert needs the `transformers` package: pip install 'transformers>=5'"
        ) from err
    source = Path(model).expanduser()
    name = str(source) if source.is_dir() else model
    try:
        processor = getattr(transformers, processor_cls).from_pretrained(
            name, local_files_only=True
        )
        network = getattr(transformers, model_cls).from_pretrained(
            name, local_files_only=True, dtype=torch_dtype
        )
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ExpertLoadError(
            f"could not load the {what} expert from {model!r}: it is neither a complete local "
            "model directory nor a model in the local Hugging Face cache (weights must be local; "
            f"nothing is downloaded). On a machine with network run `huggingface-cli download "
            f"{model} --local-dir DIR` (or `hf download`), copy DIR here and pass its path. "
            f"Cause: {type(err).__name__}: {err}"
        ) from err
    return processor, network


def _version(model: Any, source: str) -> str:
    """transformers version, the checkpoint's name and, when it came from the hub cache, the
    snapshot commit it resolved to (so a store names the exact weights)."""
    import transformers

    parts = [f"transformers {transformers.__version__}", str(model.config.name_or_path)]
    commit = getattr(model.config, "_commit_hash", None)
    if not commit and not Path(source).expanduser().is_dir():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(source, "config.json")
        # Cache layout: models--ORG--NAME/snapshots/<commit>/config.json
        if isinstance(cached, str) and Path(cached).parent.parent.name == "snapshots":
            commit = Path(cached).parent.name
    if commit:
        parts.append(f"commit {commit}")
    return "; ".join(parts)


def _chunks(indices: list[int], size: int | None) -> list[list[int]]:
    step = size or len(indices) or 1
    return [indices[i : i + step] for i in range(0, len(indices), step)]


class DepthAnythingExpert(DepthExpert):
    """Depth Anything V2 (`DepthAnythingForDepthEstimation`): relative disparity per image.

    Depth Anything V2's relative models predict affine-invariant disparity (larger = nearer), which
    is exactly what the store holds: the output is kept as it is, never inverted.
    """

    def __init__(
        self,
        model: str,
        device: str = "cpu",
        batch_size: int | None = None,
        dtype: str = "float32",
    ) -> None:
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
        self.model_id = model
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.dtype = dtype
        self.processor, self.model = _load(
            model, "depth", "AutoImageProcessor", "AutoModelForDepthEstimation", dtype
        )
        # The store holds relative disparity: a metric checkpoint (Depth-Anything-V2-Metric-*)
        # predicts depth in metres, and another architecture may predict anything.
        config = self.model.config
        kind = getattr(config, "depth_estimation_type", None)
        if config.model_type != "depth_anything" or kind != "relative":
            raise ExpertLoadError(
                f"{model!r} is a {config.model_type!r} model with depth_estimation_type={kind!r}; "
                "the depth expert needs a relative Depth Anything (V2) checkpoint, whose output "
                "is relative disparity"
            )
        self.model.to(self.device).eval()

    def info(self) -> ExpertInfo:
        p = self.processor
        return ExpertInfo(
            name="depth_anything_v2",
            version=_version(self.model, self.model_id),
            settings={
                "model": self.model_id,
                "input_size": dict(p.size) if p.size is not None else None,
                "keep_aspect_ratio": bool(getattr(p, "keep_aspect_ratio", False)),
                "ensure_multiple_of": int(getattr(p, "ensure_multiple_of", 1) or 1),
                "dtype": self.dtype,
                "output": "relative disparity",
            },
        )

    @torch.inference_mode()
    def predict(self, inputs: Sequence[LabelInput]) -> list[DepthLabel]:
        # The DA2 processor keeps the aspect ratio, so images of different shapes give different
        # tensor sizes: preprocess one by one, then batch the images whose tensors match.
        # channels_last is stated, not guessed: a 3-pixel-high image would otherwise be ambiguous.
        pixels = [
            self.processor(images=x.image, return_tensors="pt", input_data_format="channels_last")[
                "pixel_values"
            ][0]
            for x in inputs
        ]
        by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, p in enumerate(pixels):
            by_shape[tuple(p.shape)].append(i)
        out: list[DepthLabel | None] = [None] * len(inputs)
        for group in by_shape.values():
            for chunk in _chunks(group, self.batch_size):
                batch = torch.stack([pixels[i] for i in chunk]).to(self.device, self.model.dtype)
                pred = self.model(pixel_values=batch).predicted_depth.float()  # (b, h, w)
                for row, i in zip(pred, chunk, strict=True):
                    height, width = inputs[i].image.shape[:2]
                    full = F.interpolate(
                        row[None, None], size=(height, width), mode="bilinear", align_corners=False
                    )[0, 0]
                    out[i] = DepthLabel(disparity=full.cpu().numpy().astype(np.float32))
        return [label for label in out if label is not None]


class Owlv2Expert(BoxExpert):
    """OWLv2 open-vocabulary detection, queried with each image's entity names.

    The processor pads every image at the bottom and right to a square of side max(H, W) before
    resizing, so the model's normalised boxes are fractions of that square, not of the image.
    They are mapped back here: times the square side, divided by W (x) and H (y), clipped to
    [0, 1], and boxes left with no area (wholly inside the padding) are dropped.
    """

    def __init__(
        self,
        model: str,
        device: str = "cpu",
        threshold: float = 0.1,
        max_boxes: int = 16,
        batch_size: int | None = None,
        dtype: str = "float32",
    ) -> None:
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
        if max_boxes < 1:
            raise ValueError(f"max_boxes must be >= 1, got {max_boxes}")
        self.model_id = model
        self.device = torch.device(device)
        self.threshold = float(threshold)
        self.max_boxes = int(max_boxes)
        self.batch_size = batch_size
        self.dtype = dtype
        self.processor, self.model = _load(
            model, "box", "Owlv2Processor", "Owlv2ForObjectDetection", dtype
        )
        self.model.to(self.device).eval()
        # The text tower has a fixed number of positions (16 in the released models): longer
        # entity names are truncated instead of crashing the labelling job.
        self.max_text_len = int(self.model.config.text_config.max_position_embeddings)

    def info(self) -> ExpertInfo:
        size = self.processor.image_processor.size
        return ExpertInfo(
            name="owlv2",
            version=_version(self.model, self.model_id),
            settings={
                "model": self.model_id,
                "input_size": dict(size) if size is not None else None,
                "threshold": self.threshold,
                "max_boxes": self.max_boxes,
                "dtype": self.dtype,
                "boxes": "xyxy normalised to the original image (square padding undone)",
            },
        )

    @torch.inference_mode()
    def predict(
        self, inputs: Sequence[LabelInput], queries: Sequence[Sequence[str]]
    ) -> list[BoxLabel]:
        if len(inputs) != len(queries):
            raise ValueError(f"{len(inputs)} inputs but {len(queries)} query lists")
        names = [list(dict.fromkeys(q.strip() for q in qs if q.strip())) for qs in queries]
        out = [BoxLabel(np.zeros((0, 4)), [], np.zeros(0)) for _ in inputs]
        todo = [i for i, n in enumerate(names) if n]
        for chunk in _chunks(todo, self.batch_size):
            for i, label in zip(chunk, self._detect(inputs, names, chunk), strict=True):
                out[i] = label
        return out

    def _detect(
        self, inputs: Sequence[LabelInput], names: list[list[str]], chunk: list[int]
    ) -> list[BoxLabel]:
        enc = self.processor(
            text=[names[i] for i in chunk],
            images=[inputs[i].image for i in chunk],
            return_tensors="pt",
            input_data_format="channels_last",
            truncation=True,
            max_length=self.max_text_len,
        )
        enc = {k: v.to(self.device) for k, v in enc.items()}
        enc["pixel_values"] = enc["pixel_values"].to(self.model.dtype)
        outputs = self.model(**enc)
        # The processor pads each image's query list to the longest in the batch with " ", and
        # the model does not mask those (its mask tests the first token, always <|startoftext|>):
        # give padding queries the lowest logit so no box is ever labelled with one.
        logits = outputs.logits.float().clone()
        for row, i in enumerate(chunk):
            logits[row, :, len(names[i]) :] = torch.finfo(logits.dtype).min
        outputs.logits = logits
        outputs.pred_boxes = outputs.pred_boxes.float()
        # target_sizes=None keeps boxes as fractions of the padded square, whatever a given
        # transformers version does with target sizes; the padding is undone below.
        results = self.processor.image_processor.post_process_object_detection(
            outputs=outputs, threshold=self.threshold, target_sizes=None
        )
        return [
            self._to_label(res, inputs[i].image.shape[:2], names[i])
            for res, i in zip(results, chunk, strict=True)
        ]

    def _to_label(self, res: dict[str, Any], hw: tuple[int, int], names: list[str]) -> BoxLabel:
        height, width = hw
        side = float(max(height, width))
        boxes = res["boxes"].cpu().double().numpy().reshape(-1, 4) * side
        boxes /= np.array([width, height, width, height], dtype=np.float64)
        boxes = np.clip(boxes, 0.0, 1.0)
        scores = res["scores"].cpu().float().numpy()
        labels = res["labels"].cpu().numpy()
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        order = np.argsort(-scores, kind="stable")[: self.max_boxes]
        return BoxLabel(
            boxes=boxes[order].astype(np.float32),
            names=[names[int(j)] for j in labels[order]],
            scores=scores[order],
        )


class SiglipTagger(Tagger):
    """Zero-shot image tagging with a SigLIP-format model (as RAM++ tags images for OWLv2 in the
    paper; RAM++ does not install here): every tag of a vocabulary is scored by the model's
    sigmoid image-text probability, and the tags at or above `threshold` (at most `max_tags`,
    most probable first) are the image's entity names. `mtv export` writes such a model."""

    def __init__(
        self,
        model: str,
        vocabulary: Sequence[str],
        threshold: float = 0.3,
        max_tags: int = 8,
        template: str = "a photo of a {}.",
        device: str = "cpu",
        dtype: str = "float32",
    ):
        if not vocabulary:
            raise ValueError("the SigLIP tagger needs a non-empty tag vocabulary")
        self.source, self.vocabulary = model, list(vocabulary)
        self.threshold, self.max_tags, self.template = threshold, max_tags, template
        self.device = torch.device(device)
        self.processor, self.network = _load(
            model, "SigLIP tagger", "AutoProcessor", "SiglipModel", dtype
        )
        self.network.to(self.device).eval()
        prompts = [template.format(tag) for tag in self.vocabulary]
        text = self.processor(
            text=prompts, padding="max_length", truncation=True, return_tensors="pt"
        )
        with torch.no_grad():
            ids = text["input_ids"].to(self.device)
            features = _pooled(self.network.get_text_features(input_ids=ids))
        self.text = F.normalize(features.float(), dim=-1)

    def info(self) -> ExpertInfo:
        settings = {
            "threshold": self.threshold,
            "max_tags": self.max_tags,
            "template": self.template,
            "vocabulary": len(self.vocabulary),
        }
        return ExpertInfo("siglip_tagger", _version(self.network, self.source), settings)

    @torch.no_grad()
    def probabilities(self, inputs: Sequence[LabelInput]) -> torch.Tensor:
        """(len(inputs), len(vocabulary)) sigmoid probabilities, as SiglipModel computes them."""
        pixels = self.processor(images=[item.image for item in inputs], return_tensors="pt")
        pixels = pixels["pixel_values"].to(self.device, self.network.dtype)
        features = _pooled(self.network.get_image_features(pixel_values=pixels))
        image = F.normalize(features.float(), dim=-1)
        logits = image @ self.text.T * self.network.logit_scale.exp().float()
        return torch.sigmoid(logits + self.network.logit_bias.float()).cpu()

    def tags(self, inputs: Sequence[LabelInput]) -> list[list[str]]:
        out = []
        for row in self.probabilities(inputs):
            order = row.argsort(descending=True)[: self.max_tags]
            out.append([self.vocabulary[i] for i in order.tolist() if row[i] >= self.threshold])
        return out


def _pooled(output: Any) -> torch.Tensor:
    """The embedding of `get_*_features`: a tensor, or (newer transformers) an output object."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output

"""Export a run's towers as a Hugging Face SigLIP directory, so that `transformers.SiglipModel`
(or `SiglipVisionModel`) loads them and returns mtv's embeddings and logits. It reads trained
runs (`mtv.runs.restore`); the tensor mapping itself is `mtv.models.hf_siglip`, which the model
layer uses to load SigLIP checkpoints."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mtv.models.hf_siglip import require_safetensors, siglip_config, siglip_tensors
from mtv.models.text import TextTransformer
from mtv.models.tokenizer import EOS, PAD, UNK, TextTokenizer
from mtv.models.vit import VisionTransformer
from mtv.runs.restore import load_trained_run
from mtv.tasks.base import ScoresImageText


def _write_json(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


def _write_tokenizer(tokenizer: TextTokenizer, out: Path) -> tuple[list[Path], list[str]]:
    """tokenizer.json + tokenizer_config.json: with `padding="max_length", truncation=True`,
    `PreTrainedTokenizerFast` gives mtv's rows (tokens, EOS, padding to the context length)."""
    from tokenizers import Tokenizer, processors

    length = tokenizer.context_length
    raw = Tokenizer.from_str(tokenizer.tokenizer.to_str())  # a copy: the run's stays as it is
    eos = processors.TemplateProcessing(
        single=f"$A {EOS}", special_tokens=[(EOS, tokenizer.eos_id)]
    )
    notes = []
    if raw.post_processor is not None:  # a user's tokenizer.json: keep its tokens, then EOS
        eos = processors.Sequence([raw.post_processor, eos])
        # mtv cuts the post-processed ids, then appends EOS; tokenizers keeps all added tokens.
        notes.append("the tokenizer has a post-processor: texts cut at the context length differ")
    raw.post_processor = eos
    # For `tokenizers` users: transformers resets these on every call (hence padding="max_length").
    raw.enable_truncation(length)
    raw.enable_padding(length=length, pad_id=tokenizer.pad_id, pad_token=PAD)
    raw.save(str(out / "tokenizer.json"))
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": length,
        "pad_token": PAD,
        "eos_token": EOS,
        "padding_side": "right",
        "truncation_side": "right",
        # mtv's text tower attends to padding: an attention mask would change the embedding.
        "model_input_names": ["input_ids"],
        "clean_up_tokenization_spaces": False,
    }
    if tokenizer.tokenizer.token_to_id(UNK) is not None:
        config["unk_token"] = UNK
    return [out / "tokenizer.json", _write_json(out / "tokenizer_config.json", config)], notes


@dataclass
class ExportResult:
    out: Path
    architecture: str  # SiglipModel or SiglipVisionModel
    files: list[Path]
    notes: list[str] = field(default_factory=list)  # what a user of the export must know
    checkpoint: Path | None = None
    step: int | None = None


def export_siglip(
    out: str | Path,
    encoder: VisionTransformer,
    text: TextTransformer | None = None,
    logits: nn.Module | None = None,
    tokenizer: TextTokenizer | None = None,
    image_size: int | None = None,
) -> ExportResult:
    """Write `encoder` (and `text`, the vl task's `logits` = LogitScaleBias, `tokenizer`) as a
    Hugging Face directory: SiglipModel with a text tower, else SiglipVisionModel. `image_size`
    is the resolution the image processor resizes to (default: the encoder's)."""
    st = require_safetensors()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = siglip_config(encoder, text, tokenizer)
    notes: list[str] = []
    tensors = siglip_tensors(encoder, text, logits if text is not None else None)
    if text is not None and logits is None:
        # SiglipModel needs a scale and bias; without a vl task nothing calibrated them.
        tensors |= {
            "logit_scale": torch.tensor([math.log(10.0)]),
            "logit_bias": torch.tensor([-10.0]),
        }
        notes.append("no vl task: logit_scale/logit_bias are SigLIP's initial log 10 and -10")
    st.save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    files = [out / "model.safetensors", _write_json(out / "config.json", config)]
    size = image_size or encoder.spec.image_size
    if size != encoder.spec.image_size:
        notes.append(
            f"mtv runs this encoder at {size} px, its positions are for {encoder.spec.image_size}: "
            "pass interpolate_pos_encoding=True (same bicubic resize as mtv)"
        )
    processor = {
        "image_processor_type": "SiglipImageProcessor",
        "do_resize": True,
        "size": {"height": size, "width": size},
        "resample": 2,  # bilinear, as mtv's evaluation resizes (mtv also antialiases)
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,  # with the rescale: x / 127.5 - 1, as mtv feeds pixels
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "do_convert_rgb": True,
    }
    files.append(_write_json(out / "preprocessor_config.json", processor))
    if tokenizer is not None:
        written, tokenizer_notes = _write_tokenizer(tokenizer, out)
        files += written
        notes += tokenizer_notes
    return ExportResult(out, config["architectures"][0], files, notes)


def export_run(
    source: str | Path,
    out: str | Path,
    tokenizer: str | Path | None = None,
    overwrite: bool = False,
) -> ExportResult:
    """Export the student of a run (latest checkpoint) or of one checkpoint; the tokenizer is the
    run's (found as `FrozenModel.from_run` finds it) unless `tokenizer` names a file. A non-empty
    `out` is refused unless `overwrite` (which replaces the files an export writes, no others)."""
    target = Path(out)
    if target.exists() and (not target.is_dir() or any(target.iterdir())) and not overwrite:
        raise FileExistsError(
            f"{target} exists and is not empty; pass --overwrite to replace the exported files "
            "in it, or choose another folder"
        )
    run = load_trained_run(source, tokenizer)
    graph, student, text_tokenizer = run.graph, run.graph.student, run.tokenizer
    scorer = student.task_with(ScoresImageText)
    logits = scorer.image_text_logits() if scorer is not None else None
    size = graph.plan.env.global_size
    result = export_siglip(out, student.encoder, student.text, logits, text_tokenizer, size)
    if not graph.plan.uses_pool:
        result.notes.append("no task of the run reads the MAP head: its weights are untrained")
    result.checkpoint, result.step = run.checkpoint, run.step
    return result

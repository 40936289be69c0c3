"""Hugging Face SigLIP interop: export a run's towers so that `transformers.SiglipModel` loads them
and returns mtv's embeddings and logits, and initialise mtv modules from a SigLIP checkpoint.

mtv's encoder and text tower have SigLIP's layout (conv patch embedding, learned positions,
pre-norm blocks with tanh-GELU MLPs, final LayerNorm, MAP head; a text tower pooled at the last
position without an attention mask, then projected), so the mapping is tensor for tensor except
for three packings, written as data in `_rules`: mtv's fused `qkv` is SigLIP's q/k/v projections,
the MAP pool's `q` + `kv` is `nn.MultiheadAttention`'s `in_proj`, and position tables and the
logit scale/bias differ only by a singleton axis. Configs are plain JSON and weights safetensors,
so nothing here imports `transformers`; `safetensors` comes with the `hf` extra.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from mtv.models.text import TextTransformer
from mtv.models.tokenizer import EOS, PAD, UNK, TextTokenizer
from mtv.models.vit import VisionTransformer
from mtv.specs.model import TransformerSpec

if TYPE_CHECKING:
    from mtv.graph import StudentModel

HF_EXTRA = "pip install 'mtv[hf]'"
ACTIVATION = "gelu_pytorch_tanh"  # mtv's Mlp: F.gelu(approximate="tanh")
# model_type -> the prefix its tensors take inside a SiglipModel
_PREFIX = {"siglip": "", "siglip_vision_model": "vision_model.", "siglip_text_model": "text_model."}
# transformers' defaults for the fields checked on import: published configs (e.g.
# google/siglip-base-patch16-224) leave them out.
_DEFAULTS = {"num_attention_heads": 12, "hidden_act": ACTIVATION, "layer_norm_eps": 1e-6}


@dataclass(frozen=True)
class Rule:
    """mtv tensors `mtv` (names within their module), each passed through `view` and concatenated
    along dim 0, are the SigLIP tensors `hf`, cut into equal slices along dim 0."""

    mtv: tuple[str, ...]
    hf: tuple[str, ...]
    view: Callable[[Tensor], Tensor] | None = None


def _drop_batch_axis(t: Tensor) -> Tensor:
    return t[0]  # (1, N, D) position table -> nn.Embedding's (N, D)


def _as_vector(t: Tensor) -> Tensor:
    return t.reshape(1)  # a scalar parameter -> SiglipModel's (1,)


_BLOCK = (  # (mtv, SigLIP) module names in one transformer block; each has a weight and a bias
    ("norm1", ("layer_norm1",)),
    ("attn.qkv", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
    ("attn.proj", ("self_attn.out_proj",)),
    ("norm2", ("layer_norm2",)),
    ("mlp.fc1", ("mlp.fc1",)),
    ("mlp.fc2", ("mlp.fc2",)),
)
_VISION = (
    ("patch_embed", ("embeddings.patch_embedding",)),
    ("norm", ("post_layernorm",)),
    ("pool.attn.proj", ("head.attention.out_proj",)),
    ("pool.norm", ("head.layernorm",)),
    ("pool.mlp.fc1", ("head.mlp.fc1",)),
    ("pool.mlp.fc2", ("head.mlp.fc2",)),
)
_TEXT = (("norm", ("final_layer_norm",)), ("head", ("head",)))


def _linear(mtv: str, hf: tuple[str, ...], prefix: str) -> list[Rule]:
    return [
        Rule((f"{mtv}.{kind}",), tuple(f"{prefix}{h}.{kind}" for h in hf))
        for kind in ("weight", "bias")
    ]


def _blocks(depth: int, prefix: str) -> list[Rule]:
    return [
        rule
        for i in range(depth)
        for mtv, hf in _BLOCK
        for rule in _linear(f"blocks.{i}.{mtv}", hf, f"{prefix}encoder.layers.{i}.")
    ]


def _rules(part: str, depth: int = 0, head: bool = True) -> list[Rule]:
    """The mapping of one part: 'vision' (a VisionTransformer), 'text' (a TextTransformer) or
    'logits' (a LogitScaleBias); `head=False` leaves out the MAP pool."""
    if part == "logits":
        return [Rule((n,), (n,), _as_vector) for n in ("logit_scale", "logit_bias")]
    if part == "text":
        p = "text_model."
        rules = [
            Rule(("token_embed.weight",), (f"{p}embeddings.token_embedding.weight",)),
            Rule(("pos_embed",), (f"{p}embeddings.position_embedding.weight",), _drop_batch_axis),
        ]
        return rules + _blocks(depth, p) + [r for m, h in _TEXT for r in _linear(m, h, p)]
    p = "vision_model."
    rules = [Rule(("pos_embed",), (f"{p}embeddings.position_embedding.weight",), _drop_batch_axis)]
    rules += _blocks(depth, p)
    rules += [r for m, h in _VISION if head or not m.startswith("pool") for r in _linear(m, h, p)]
    if head:
        rules.append(Rule(("pool.probe",), (f"{p}head.probe",)))
        # nn.MultiheadAttention packs the query, key and value projections as one in_proj.
        for kind in ("weight", "bias"):
            names = (f"pool.attn.q.{kind}", f"pool.attn.kv.{kind}")
            rules.append(Rule(names, (f"{p}head.attention.in_proj_{kind}",)))
    return rules


def _parts(
    encoder: VisionTransformer | None,
    text: TextTransformer | None,
    logits: nn.Module | None,
    head: bool = True,
) -> list[tuple[nn.Module, list[Rule]]]:
    parts: list[tuple[nn.Module, list[Rule]]] = []
    if encoder is not None:
        parts.append((encoder, _rules("vision", encoder.spec.depth, head)))
    if text is not None:
        parts.append((text, _rules("text", text.spec.depth)))
    if logits is not None:
        parts.append((logits, _rules("logits")))
    return parts


def _convert(parts: list[tuple[nn.Module, list[Rule]]], device: str) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for module, rules in parts:
        params = dict(module.named_parameters())
        for rule in rules:
            pieces = [params[n].detach().to(device) for n in rule.mtv]
            pieces = [rule.view(t) if rule.view else t for t in pieces]
            whole = torch.cat(pieces) if len(pieces) > 1 else pieces[0]
            for name, chunk in zip(rule.hf, whole.chunk(len(rule.hf)), strict=True):
                # Own storage per tensor: safetensors refuses tensors that share memory.
                out[name] = chunk.float().contiguous().clone()
    return out


def siglip_tensors(
    encoder: VisionTransformer | None,
    text: TextTransformer | None = None,
    logits: nn.Module | None = None,
) -> dict[str, Tensor]:
    """mtv's weights under SigLIP's names, in fp32 on the CPU. `logits` is the vl task's
    LogitScaleBias (anything with `logit_scale` and `logit_bias` parameters)."""
    return _convert(_parts(encoder, text, logits), "cpu")


def _tower_config(spec: TransformerSpec) -> dict[str, Any]:
    return {
        "hidden_size": spec.width,
        "intermediate_size": int(spec.width * spec.mlp_ratio),  # as mtv's Block sizes its Mlp
        "num_hidden_layers": spec.depth,
        "num_attention_heads": spec.heads,
        "hidden_act": ACTIVATION,
        "layer_norm_eps": spec.layer_norm_eps,
        "attention_dropout": 0.0,
    }


def siglip_config(
    encoder: VisionTransformer,
    text: TextTransformer | None = None,
    tokenizer: TextTokenizer | None = None,
) -> dict[str, Any]:
    """config.json of a SiglipModel (or of a SiglipVisionModel when there is no text tower)."""
    e = encoder.spec
    vision = {"model_type": "siglip_vision_model", **_tower_config(e), "num_channels": 3}
    vision |= {"image_size": e.image_size, "patch_size": e.patch_size, "vision_use_head": True}
    if text is None:
        return {"architectures": ["SiglipVisionModel"], **vision}
    text_config = {"model_type": "siglip_text_model", **_tower_config(text.spec)}
    text_config |= {
        "vocab_size": text.spec.vocab_size,
        "max_position_embeddings": text.spec.context_length,
        "projection_size": text.head.out_features,
        "pad_token_id": tokenizer.pad_id if tokenizer else None,
        "bos_token_id": None,  # mtv's rows start with the first word
        "eos_token_id": tokenizer.eos_id if tokenizer else None,
    }
    return {
        "architectures": ["SiglipModel"],
        "model_type": "siglip",
        "text_config": text_config,
        "vision_config": vision,
    }


def _require_safetensors() -> Any:
    try:
        import safetensors.torch
    except ImportError:
        raise ImportError(f"Hugging Face SigLIP files need safetensors: {HF_EXTRA}") from None
    return safetensors.torch


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
    st = _require_safetensors()
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
    # Imported here: mtv.graph imports this module (model.init_from).
    from mtv.train.restore import load_trained_run

    run = load_trained_run(source, tokenizer)
    graph, student, text_tokenizer = run.graph, run.graph.student, run.tokenizer
    logits = getattr(getattr(student.tasks, "vl", None), "logits", None)  # the vl task's
    size = graph.plan.env.global_size
    result = export_siglip(out, student.encoder, student.text, logits, text_tokenizer, size)
    if not graph.plan.uses_pool:
        result.notes.append("no task of the run reads the MAP head: its weights are untrained")
    result.checkpoint, result.step = run.checkpoint, run.step
    return result


def read_hf_siglip(path: str | Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The config and tensors of a local SigLIP directory (SiglipModel, SiglipVisionModel or
    SiglipTextModel), tensor names always prefixed as in SiglipModel."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: not a Hugging Face checkpoint directory (no config.json)")
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    model_type = config.get("model_type")
    if model_type not in _PREFIX:
        raise ValueError(f"{path}: model_type {model_type!r} is not SigLIP ({', '.join(_PREFIX)})")
    files: list[Path] = []
    for name in ("model.safetensors", "pytorch_model.bin"):
        index = path / f"{name}.index.json"  # a sharded checkpoint
        if not files and (path / name).is_file():
            files = [path / name]
        elif not files and index.is_file():
            shards = json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()
            files = [path / s for s in sorted(set(shards))]
    if not files:
        raise FileNotFoundError(f"{path}: no model.safetensors or pytorch_model.bin")
    tensors: dict[str, Tensor] = {}
    for file in files:
        if file.suffix == ".safetensors":
            tensors.update(_require_safetensors().load_file(str(file)))
        else:
            tensors.update(torch.load(file, map_location="cpu", weights_only=True))
    # A standalone tower saves its names without the SiglipModel prefix (transformers 5).
    prefix = _PREFIX[model_type]
    if prefix:
        tensors = {k if k.startswith(prefix) else prefix + k: v for k, v in tensors.items()}
    return config, tensors


def _hf_tower(config: dict[str, Any], tower: str) -> dict[str, Any]:
    own = (
        config
        if config.get("model_type") == f"siglip_{tower}_model"
        else config.get(f"{tower}_config")
    )
    return {**_DEFAULTS, "vision_use_head": True, **(own or {})}


@dataclass
class LoadReport:
    path: Path
    loaded: list[str]  # parts initialised: encoder, MAP head, text tower, logit scale/bias
    tensors: int
    notes: list[str] = field(default_factory=list)


def load_hf_siglip(
    path: str | Path,
    target: StudentModel | VisionTransformer,
    text: TextTransformer | None = None,
) -> LoadReport:
    """Initialise mtv modules from a local SigLIP checkpoint: the encoder (MAP head included when
    the checkpoint has one) and, when both sides have them, the text tower and the vl task's
    logit scale/bias. `target` is a StudentModel or an encoder (then `text` is the text tower).
    Everything is checked before anything is copied: any mismatch raises one ValueError naming
    the tensors and both shapes (or the config field)."""
    config, tensors = read_hf_siglip(path)
    encoder: VisionTransformer = getattr(target, "encoder", target)  # type: ignore[assignment]
    if not isinstance(encoder, VisionTransformer):
        raise TypeError(f"cannot load SigLIP weights into {type(target).__name__}")
    text = getattr(target, "text", text)
    logits = getattr(getattr(getattr(target, "tasks", None), "vl", None), "logits", None)
    has = {p: any(k.startswith(f"{p}_model.") for k in tensors) for p in ("vision", "text")}
    if not has["vision"]:
        raise ValueError(f"{path}: the checkpoint has no vision_model weights")
    vision = _hf_tower(config, "vision")
    head = bool(vision["vision_use_head"])
    notes = [] if head else ["the checkpoint has no MAP head: the pool keeps its initialisation"]
    modules = {"vision": encoder, "text": text if has["text"] else None}
    if text is not None and not has["text"]:
        notes.append("the checkpoint has no text tower: the text tower keeps its initialisation")
    if text is None and has["text"]:
        notes.append("the model has no text tower: the checkpoint's is not used")
    if logits is not None and "logit_scale" not in tensors:
        logits = None
    problems = []
    for tower, module in modules.items():  # what the shapes cannot show
        if module is None:
            continue
        spec, hf = module.spec, _hf_tower(config, tower)
        ours = dict(
            num_attention_heads=spec.heads,
            hidden_act=ACTIVATION,
            layer_norm_eps=spec.layer_norm_eps,
        )
        problems += [
            f"{tower}_config.{k}: checkpoint {hf[k]!r}, model {v!r}"
            for k, v in ours.items()
            if hf[k] != v
        ]
    parts = _parts(encoder, modules["text"], logits, head)  # type: ignore[arg-type]
    expected = {name: tuple(t.shape) for name, t in _convert(parts, "meta").items()}
    for name, shape in expected.items():
        if name not in tensors:
            problems.append(f"{name}: missing from the checkpoint (model {shape})")
        elif tuple(tensors[name].shape) != shape:
            problems.append(f"{name}: checkpoint {tuple(tensors[name].shape)}, model {shape}")
    loaded_prefixes = tuple(f"{t}_model." for t, m in modules.items() if m is not None)
    extra = sorted(
        k
        for k in tensors
        if k.startswith(loaded_prefixes) and k not in expected and not k.endswith("position_ids")
    )
    problems += [f"{k}: in the checkpoint, not in the model (is it deeper?)" for k in extra]
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ValueError(f"{path} does not fit this model: {'; '.join(problems[:5])}{more}")
    with torch.no_grad():
        for module, rules in parts:
            params = dict(module.named_parameters())
            for rule in rules:
                whole = torch.cat([tensors[n] for n in rule.hf])
                targets = [params[n] for n in rule.mtv]
                sizes = [(rule.view(t) if rule.view else t).shape[0] for t in targets]
                for param, chunk in zip(targets, whole.split(sizes), strict=True):
                    param.copy_(chunk.reshape(param.shape))
    loaded = ["encoder"] + (["MAP head"] if head else [])
    loaded += ["text tower"] if modules["text"] is not None else []
    loaded += ["logit scale/bias"] if logits is not None else []
    return LoadReport(Path(path), loaded, len(expected), notes)

"""Hugging Face SigLIP interop at the model level: the tensor mapping and configs between mtv's
towers and `transformers.SiglipModel`, and initialising mtv modules from a SigLIP checkpoint
(`model.init_from`). Writing a trained run as a SigLIP directory is `mtv.runs.export`, above
the graph.

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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mtv.models.text import TextTransformer
from mtv.models.tokenizer import TextTokenizer
from mtv.models.vit import VisionTransformer
from mtv.specs.model import TransformerSpec

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


def require_safetensors() -> Any:
    try:
        import safetensors.torch
    except ImportError:
        raise ImportError(f"Hugging Face SigLIP files need safetensors: {HF_EXTRA}") from None
    return safetensors.torch


def _shard_files(index: Path) -> list[Path]:
    """The files a sharded checkpoint's index names: plain file names in the checkpoint's own
    folder. A name that leads elsewhere (`../../etc/passwd`, an absolute path, a link out) is
    refused, naming the index, before anything is opened."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        names = sorted({str(name) for name in weight_map.values()})
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"{index}: not a sharded checkpoint index ({err})") from None
    folder = index.parent.resolve()
    files = []
    for name in names:
        file = (index.parent / name).resolve()
        if Path(name).is_absolute() or file.parent != folder:
            raise ValueError(
                f"{index}: weight_map names {name!r}, which is not a file beside the index"
            )
        files.append(index.parent / name)
    return files


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
            files = _shard_files(index)
    if not files:
        raise FileNotFoundError(f"{path}: no model.safetensors or pytorch_model.bin")
    tensors: dict[str, Tensor] = {}
    for file in files:
        if file.suffix == ".safetensors":
            tensors.update(require_safetensors().load_file(str(file)))
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
    encoder: VisionTransformer,
    text: TextTransformer | None = None,
    logits: nn.Module | None = None,
) -> LoadReport:
    """Initialise mtv modules from a local SigLIP checkpoint: `encoder` (MAP head included when
    the checkpoint has one) and, when both sides have them, the `text` tower and the `logits`
    (the image-text task's LogitScaleBias, `ScoresImageText.image_text_logits()`).
    Everything is checked before anything is copied: any mismatch raises one ValueError naming
    the tensors and both shapes (or the config field)."""
    config, tensors = read_hf_siglip(path)
    if not isinstance(encoder, VisionTransformer):
        raise TypeError(f"cannot load SigLIP weights into {type(encoder).__name__}")
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

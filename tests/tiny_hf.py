"""Tiny random-initialised Depth Anything V2 and OWLv2 checkpoints, built offline from configs.

Each builder writes a directory exactly like `save_pretrained` (model + processor) would for a
released checkpoint, so tests load it through the very code path users take. Weights are seeded,
so two builds give the same model. Nothing is downloaded: the CLIP tokenizer is made from a
byte-level vocabulary written here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

# Queries the tiny tokenizer has whole-word merges for; any other text still tokenizes, one
# byte-level character per token, like a real BPE meets an unseen word.
TINY_WORDS = ("small", "red", "cube", "blue", "sphere", "cat", "cup", "person", "coffee")


def _byte_alphabet() -> list[str]:
    """GPT-2/CLIP byte-to-unicode table, in CLIP's vocabulary order ("!" first, id 0).

    The 188 printable bytes stand for themselves; the others map to chr(256 + k).
    """
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    rest = [b for b in range(256) if b not in keep]
    return [chr(b) for b in keep] + [chr(256 + k) for k in range(len(rest))]


def _tiny_clip_tokenizer(max_length: int) -> object:
    """A CLIP tokenizer over every byte (with and without the end-of-word mark) plus TINY_WORDS.

    <|endoftext|> gets the highest id, as in CLIP: the OWLv2 text tower pools at the argmax id.
    """
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {}
    for ch in _byte_alphabet():
        vocab.setdefault(ch, len(vocab))
    for ch in _byte_alphabet():
        vocab.setdefault(ch + "</w>", len(vocab))
    merges: list[tuple[str, str]] = []
    for word in TINY_WORDS:
        # Merge left to right: "c u b e</w>" -> "cu b e</w>" -> "cub e</w>" -> "cube</w>".
        pieces = [*word[:-1], word[-1] + "</w>"]
        left = pieces[0]
        for right in pieces[1:]:
            merges.append((left, right))
            left = left + right
            vocab.setdefault(left, len(vocab))
    merges = list(dict.fromkeys(merges))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        pad_token="!",  # id 0, as in the released OWL-ViT/OWLv2 tokenizers
        model_max_length=max_length,
    )


def build_tiny_owlv2(path: str | Path, image_size: int = 64, seed: int = 0) -> Path:
    """Save a tiny `Owlv2ForObjectDetection` and its `Owlv2Processor` to `path`; return it."""
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2Processor
    from transformers.utils import is_torchvision_available

    path = Path(path)
    max_length = 16  # the released models' text length
    tokenizer = _tiny_clip_tokenizer(max_length)
    vocab_size = len(tokenizer)
    config = Owlv2Config(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": max_length,
            "pad_token_id": 0,
            "bos_token_id": vocab_size - 2,
            "eos_token_id": vocab_size - 1,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": image_size,
            "patch_size": 16,
        },
        projection_dim=32,
    )
    torch.manual_seed(seed)
    model = Owlv2ForObjectDetection(config).eval()
    # The default init of the detection heads (std ~1) saturates the box sigmoid: every box is
    # the whole image or a sliver on its edge. Small weights leave boxes near OWLv2's per-patch
    # prior (one cell of the grid over the padded square, jittered) and scores spread over (0, 1),
    # which is what the padding tests need to be meaningful.
    with torch.no_grad():
        for head in (model.box_head, model.class_head):
            for layer in head.modules():
                if isinstance(layer, torch.nn.Linear):
                    layer.weight.normal_(0.0, 0.2)
                    layer.bias.zero_()
    # Without torchvision transformers serves the PIL backend anyway; naming it avoids a fallback
    # warning. The saved config loads with whichever backend the user has.
    if is_torchvision_available():
        from transformers import Owlv2ImageProcessor as ImageProcessor
    else:
        from transformers import Owlv2ImageProcessorPil as ImageProcessor
    image_processor = ImageProcessor(size={"height": image_size, "width": image_size})
    processor = Owlv2Processor(image_processor=image_processor, tokenizer=tokenizer)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


# Backbone and neck sizes: "tiny" for tests, "base" as Depth Anything V2 Base (ViT-B/14 DINOv2
# tapped at layers 3, 6, 9, 12; DPT neck 96-768, fusion 128), for measuring a real expert's cost.
_DA2_SIZES: dict[str, dict[str, Any]] = {
    "tiny": {
        "backbone": {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2},
        "mlp_ratio": 2,
        "out_indices": [1, 2, 3, 4],
        "neck": {
            "reassemble_hidden_size": 32,
            "neck_hidden_sizes": [8, 16, 16, 32],
            "fusion_hidden_size": 16,
            "head_hidden_size": 8,
        },
    },
    "base": {
        "backbone": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12},
        "mlp_ratio": 4,
        "out_indices": [3, 6, 9, 12],
        "neck": {
            "reassemble_hidden_size": 768,
            "neck_hidden_sizes": [96, 192, 384, 768],
            "fusion_hidden_size": 128,
            "head_hidden_size": 32,
        },
    },
}


def build_tiny_depth_anything(
    path: str | Path, input_size: int = 28, seed: int = 0, size: str = "tiny"
) -> Path:
    """Save a random-initialised `DepthAnythingForDepthEstimation` (DINOv2 backbone) and its
    processor: tiny by default, or `size="base"` for Depth Anything V2 Base's shapes.

    The processor is configured like Depth Anything V2's (keep the aspect ratio, sides a multiple
    of the patch size 14, bicubic, ImageNet normalisation), at `input_size` instead of 518.
    """
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config
    from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    from transformers.utils import is_torchvision_available

    path = Path(path)
    shape = _DA2_SIZES[size]
    backbone = Dinov2Config(
        image_size=input_size,
        patch_size=14,
        **shape["backbone"],
        mlp_ratio=shape["mlp_ratio"],
        # The DPT-style neck reads four feature maps.
        out_indices=shape["out_indices"],
        reshape_hidden_states=False,
        apply_layernorm=True,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone,
        patch_size=14,
        reassemble_factors=[4, 2, 1, 0.5],
        **shape["neck"],
        depth_estimation_type="relative",
    )
    torch.manual_seed(seed)
    model = DepthAnythingForDepthEstimation(config).eval()
    # With std-0.02 convolutions the tiny head's output is ~1e-8 and mostly zeroed by its final
    # ReLU. PyTorch's default (fan-in scaled) init and a positive last bias give a disparity map
    # of order 1 that varies over the image, so "not inverted" and resizing checks have teeth.
    with torch.no_grad():
        for layer in [*model.neck.modules(), *model.head.modules()]:
            if isinstance(layer, torch.nn.Conv2d | torch.nn.ConvTranspose2d):
                layer.reset_parameters()
        model.head.conv3.bias.fill_(1.0)
    kwargs = {
        "size": {"height": input_size, "width": input_size},
        "keep_aspect_ratio": True,
        "ensure_multiple_of": 14,
        "do_pad": False,
        "image_mean": IMAGENET_DEFAULT_MEAN,
        "image_std": IMAGENET_DEFAULT_STD,
        "resample": 3,  # bicubic, as Depth Anything V2 ships
    }
    if is_torchvision_available():
        from transformers import DPTImageProcessor as ImageProcessor
    else:
        from transformers import DPTImageProcessorPil as ImageProcessor
    processor = ImageProcessor(**kwargs)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path

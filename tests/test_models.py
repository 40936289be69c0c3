"""The encoder, text tower, tokenizer and the parameter budget of the paper's B/16 setting."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mtv.graph import count_parameters
from mtv.graph.experiment import load_experiment
from mtv.models import TextTokenizer, TextTransformer, VisionTransformer
from mtv.specs import EncoderSpec, ExperimentSpec, TextSpec, load_spec
from mtv.specs.model import model_presets

ROOT = Path(__file__).resolve().parents[1]
TINY = EncoderSpec(image_size=32, patch_size=8, width=32, depth=4, heads=2)

# Paper, Table 1: trainable parameters of ViT-B/16 per task set (teacher excluded).
TABLE_1 = {
    "[vl]": 203.2e6,
    "[vl, distill, masked, koleo]": 232.6e6,
    "[vl, distill, masked, koleo, ground]": 239.7e6,
    "[vl, distill, masked, koleo, ground, depth]": 250.3e6,
}


@pytest.mark.parametrize(("tasks", "paper"), TABLE_1.items())
def test_paper_b16_parameter_counts_match_table_1(tasks: str, paper: float) -> None:
    experiment = load_experiment(ROOT / "experiments" / "paper_b16.yaml", [f"tasks={tasks}"])
    total = sum(experiment.parameter_counts().values())
    assert abs(total - paper) / paper < 0.03, (tasks, total)


def test_b16_towers_have_siglip_b16_sizes() -> None:
    # transformers' SiglipModel(SiglipConfig()) (SigLIP B/16-224) has these exact counts.
    counts = count_parameters(load_spec(ROOT / "experiments" / "paper_b16.yaml", ["tasks=[vl]"]))
    assert counts["encoder"] == 92_884_224
    assert counts["text"] == 110_271_744


@pytest.mark.parametrize("size", list(model_presets()))
def test_every_named_size_builds(size: str) -> None:
    spec = ExperimentSpec.model_validate({"name": "x", "tasks": ["vl"], "model": {"size": size}})
    assert count_parameters(spec)["encoder"] > 0


def test_encoder_outputs_and_intermediate_layers() -> None:
    torch.manual_seed(0)
    encoder = VisionTransformer(TINY)
    out = encoder(torch.randn(2, 3, 32, 32), layers=(1, 3, 4))
    assert out.tokens.shape == (2, 16, 32) and out.prenorm.shape == (2, 16, 32)
    assert out.pooled is not None and out.pooled.shape == (2, 32)
    assert sorted(out.layers) == [1, 3, 4] and out.grid == (4, 4)
    torch.testing.assert_close(out.layers[4], out.tokens)
    torch.testing.assert_close(out.tokens, encoder.norm(out.prenorm))
    # Taps are normed: zero mean, unit variance over channels.
    torch.testing.assert_close(out.layers[1].mean(-1), torch.zeros(2, 16), atol=1e-5, rtol=0)
    assert encoder(torch.randn(2, 3, 32, 32), pool=False).pooled is None


def test_other_input_sizes_interpolate_positions() -> None:
    encoder = VisionTransformer(TINY)
    assert encoder(torch.randn(2, 3, 16, 24)).tokens.shape == (2, 6, 32)
    torch.testing.assert_close(encoder.position_embedding(4, 4), encoder.pos_embed)
    table = encoder.position_embedding(8, 8).reshape(8, 8, -1)
    original = encoder.pos_embed.reshape(4, 4, -1)
    # Upsampling keeps the table's range and layout: the corner stays near the corner value.
    assert (table[0, 0] - original[0, 0]).abs().mean() < (table[0, 0] - original[3, 3]).abs().mean()
    with pytest.raises(ValueError, match="multiple of the patch size"):
        encoder(torch.randn(1, 3, 30, 32))


def test_mask_token_replaces_masked_patches() -> None:
    torch.manual_seed(0)
    encoder = VisionTransformer(TINY, mask_token=True)
    with torch.no_grad():
        encoder.mask_token.normal_()
    images = torch.randn(2, 3, 32, 32)
    none = torch.zeros(2, 16, dtype=torch.bool)
    torch.testing.assert_close(encoder(images, mask=none).tokens, encoder(images).tokens)
    mask = none.clone()
    mask[:, :8] = True
    masked = encoder(images, mask=mask)
    assert not torch.allclose(masked.tokens, encoder(images).tokens)
    # Masked patches no longer see their pixels: changing them changes nothing.
    other = images.clone()
    other[:, :, :16] = torch.randn_like(other[:, :, :16])  # rows 0-1 of the 4x4 grid = patches 0-7
    torch.testing.assert_close(encoder(other, mask=mask).tokens, masked.tokens)
    with pytest.raises(ValueError, match="without a mask token"):
        VisionTransformer(TINY)(images, mask=mask)


def test_text_tower_pools_last_position() -> None:
    torch.manual_seed(0)
    spec = TextSpec(vocab_size=50, context_length=8, width=32, depth=2, heads=2)
    tower = TextTransformer(spec, embed_dim=24)
    ids = torch.randint(0, 50, (3, 8))
    out = tower(ids)
    assert out.shape == (3, 24)
    changed = ids.clone()
    changed[0, 0] = (ids[0, 0] + 1) % 50
    # Bidirectional attention: the first token reaches the pooled last position.
    assert not torch.allclose(tower(changed)[0], out[0])
    torch.testing.assert_close(tower(changed)[1:], out[1:])
    with pytest.raises(ValueError, match="exceed the context length"):
        tower(torch.zeros(1, 9, dtype=torch.long))


CAPTIONS = [
    "a small red cube left of a large blue sphere",
    "two green cones on a wooden floor",
    "a shiny yellow torus behind a purple cylinder",
    "three matte pyramids in front of a grey wall",
] * 20


def test_tokenizer_trains_offline_and_round_trips(tmp_path: Path) -> None:
    tokenizer = TextTokenizer.train(CAPTIONS, vocab_size=300, context_length=12)
    assert tokenizer.vocab_size <= 300
    ids = tokenizer(["A small red cube", "two green cones on a wooden floor " * 5])
    assert ids.shape == (2, 12) and ids.dtype == torch.long
    first = ids[0].tolist()
    end = first.index(tokenizer.eos_id)
    assert all(i == tokenizer.pad_id for i in first[end + 1 :])  # padded after the EOS
    assert ids[1, -1] == tokenizer.eos_id  # a long text is cut, keeping its EOS last
    assert tokenizer.decode(ids[0]) == "a small red cube"  # lowercased
    tokenizer.save(tmp_path / "tok" / "tokenizer.json")
    again = TextTokenizer.from_file(tmp_path / "tok" / "tokenizer.json", context_length=12)
    torch.testing.assert_close(again(["a shiny torus"]), tokenizer(["a shiny torus"]))
    with pytest.raises(FileNotFoundError, match="tokenizer file not found"):
        TextTokenizer.from_file(tmp_path / "missing.json", context_length=12)

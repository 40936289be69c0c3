"""Hugging Face SigLIP export and import: a tiny run with perturbed random weights is exported,
loaded through transformers exactly as users load it, and compared with mtv's own outputs; the
export initialises a fresh graph through `model.init_from`; mismatches and bad paths are refused
clearly. Everything is built from configs, offline."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers / huggingface_hub import

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mtv_cli.main import app
from typer.testing import CliRunner

from mtv.graph import TaskGraph
from mtv.models.hf_siglip import load_hf_siglip
from mtv.models.tokenizer import TextTokenizer
from mtv.models.vit import VisionTransformer
from mtv.runs.checkpoint import save_checkpoint
from mtv.runs.export import export_run, export_siglip
from mtv.specs import load_spec, spec_to_yaml
from mtv.train.prepare import _tokenizer_path
from tests.helpers import tiny_spec

transformers = pytest.importorskip("transformers")
runner = CliRunner()
CAPTIONS = ["a red cube left of a blue sphere", "two green cones", "a shiny yellow prism"]
TEXTS = [
    *CAPTIONS,
    "A RED Cube",  # the tokenizer lowercases (NFKC + lowercase normaliser)
    "ｆｕｌｌ width",
    "a blue sphere " * 12,  # cut at the context length, EOS kept last
    "an unseen zebra </s> word",  # the EOS token inside a text stays one special token
]


def _spec(tmp: Path, tasks: list[str], **model: object):
    tokenizer = {"path": str(tmp / "tokenizer.json")}
    return tiny_spec(tasks, model={"size": "tiny", "tokenizer": tokenizer, **model})


def _perturb(module: torch.nn.Module, seed: int) -> None:
    """Move every weight off its initialisation (unit LayerNorms, zero biases): a swapped or
    transposed tensor in the mapping would then change the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory as the trainer leaves it: spec.yaml, a checkpoint, the tokenizer."""
    run_dir = tmp_path_factory.mktemp("run")
    spec = _spec(run_dir, ["vl", "distill"])
    TextTokenizer.train(CAPTIONS * 20, 400, spec.model.text.context_length).save(
        run_dir / "tokenizer.json"
    )
    torch.manual_seed(0)
    graph = TaskGraph(spec)
    _perturb(graph.student, seed=1)
    with torch.no_grad():
        graph.student.tasks["vl"].logits.logit_scale.fill_(2.5)
        graph.student.tasks["vl"].logits.logit_bias.fill_(-3.0)
    (run_dir / "spec.yaml").write_text(spec_to_yaml(spec))
    save_checkpoint(run_dir, 7, {"step": 7, "graph": graph.state_dict()}, keep_last=1)
    return run_dir


@pytest.fixture(scope="module")
def exported(run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TaskGraph]:
    out = tmp_path_factory.mktemp("export")
    result = export_run(run, out)
    assert result.architecture == "SiglipModel" and result.step == 7 and not result.notes
    graph = TaskGraph(_spec(run, ["vl", "distill"]), pretrained=False)
    graph.load_state_dict(torch.load(result.checkpoint / "state.pt")["graph"])
    graph.student.eval()
    return out, graph


def test_siglip_model_gives_mtv_embeddings_and_logits(
    run: Path, exported: tuple[Path, TaskGraph]
) -> None:
    out, graph = exported
    model, info = transformers.SiglipModel.from_pretrained(out, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    model.eval()
    student = graph.student
    tokenizer = TextTokenizer.from_file(run / "tokenizer.json", 16)
    ids = tokenizer(TEXTS)
    pixels = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        image, text = student.encoder(pixels).pooled, student.text(ids)
        hf_image = model.get_image_features(pixel_values=pixels).pooler_output
        hf_text = model.get_text_features(input_ids=ids).pooler_output
        logits = model(input_ids=ids, pixel_values=pixels).logits_per_image
        # Another resolution: both resize the position table bicubically.
        big = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(3)) * 2 - 1
        hf_big = model.get_image_features(pixel_values=big, interpolate_pos_encoding=True)
        big_diff = (student.encoder(big).pooled - hf_big.pooler_output).abs().max()
    scale_bias = student.tasks["vl"].logits
    ours = F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T
    ours = ours * scale_bias.scale().exp() + scale_bias.logit_bias
    assert image.abs().max() > 0.1 and text.abs().max() > 0.1  # not a degenerate comparison
    torch.testing.assert_close(hf_image, image, atol=1e-5, rtol=0)
    torch.testing.assert_close(hf_text, text, atol=1e-5, rtol=0)
    torch.testing.assert_close(logits, ours, atol=1e-4, rtol=0)
    assert big_diff < 1e-5
    assert logits.std() > 0.1  # the scale and bias made it through: logits are not all alike


def test_tokenizer_and_image_processor_give_mtv_inputs(
    run: Path, exported: tuple[Path, TaskGraph]
) -> None:
    out, _ = exported
    ours = TextTokenizer.from_file(run / "tokenizer.json", 16)
    for cls in (transformers.AutoTokenizer, transformers.PreTrainedTokenizerFast):
        hf = cls.from_pretrained(out)
        batch = hf(TEXTS, padding="max_length", truncation=True, return_tensors="pt")
        assert list(batch) == ["input_ids"]  # no attention mask: mtv's tower attends to padding
        assert torch.equal(batch["input_ids"], ours(TEXTS))
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    processor = transformers.AutoImageProcessor.from_pretrained(out)
    pixels = processor(images=list(images), return_tensors="pt")["pixel_values"]
    expected = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1  # FrozenModel's
    torch.testing.assert_close(pixels, expected, atol=1e-6, rtol=0)


def test_an_exported_tokenizer_read_back_by_mtv_gives_the_runs_rows(
    run: Path, exported: tuple[Path, TaskGraph]
) -> None:
    """`model.init_from` runs tokenize with the export's tokenizer.json, which pads, truncates
    and appends EOS for transformers: mtv must undo that and get the exporting run's rows."""
    out, _ = exported
    ours = TextTokenizer.from_file(run / "tokenizer.json", 16)
    again = TextTokenizer.from_file(out / "tokenizer.json", 16)
    assert torch.equal(again(TEXTS), ours(TEXTS))
    spec = load_spec(run / "spec.yaml", [f"model.init_from={out}", "model.tokenizer.path=null"])
    assert _tokenizer_path(spec, None, run, lambda m: None) == out / "tokenizer.json"


def test_init_from_loads_the_export_into_student_and_teacher(
    exported: tuple[Path, TaskGraph],
) -> None:
    out, source = exported
    torch.manual_seed(5)
    graph = TaskGraph(_spec(out, ["vl", "distill", "masked"], init_from=str(out)))
    ours, theirs = graph.student, source.student
    for part in ("encoder", "text"):
        mine, reference = getattr(ours, part).state_dict(), getattr(theirs, part).state_dict()
        for name, tensor in reference.items():
            assert torch.equal(mine[name], tensor), f"{part}.{name}"
    assert torch.equal(ours.tasks["vl"].logits.logit_scale, torch.tensor(2.5))
    assert torch.equal(ours.tasks["vl"].logits.logit_bias, torch.tensor(-3.0))
    # The teacher copied the loaded student (iBOT's mask token is not in SigLIP: stays as built).
    assert graph.teacher is not None
    assert torch.equal(graph.teacher.encoder.pos_embed, theirs.encoder.pos_embed)
    assert torch.equal(
        graph.teacher.encoder.blocks[0].attn.qkv.weight, theirs.encoder.blocks[0].attn.qkv.weight
    )


@pytest.mark.parametrize(
    ("encoder", "message"),
    [
        (
            {"width": 32},
            "vision_model.embeddings.position_embedding.weight: checkpoint (16, 64), "
            "model (16, 32)",
        ),
        ({"heads": 4}, "vision_config.num_attention_heads: checkpoint 2, model 4"),
        ({"depth": 3}, "vision_model.encoder.layers.3.layer_norm1.weight: in the checkpoint"),
    ],
)
def test_init_from_a_checkpoint_of_another_shape_is_one_clear_error(
    exported: tuple[Path, TaskGraph], encoder: dict[str, int], message: str
) -> None:
    out, _ = exported
    spec = _spec(out, ["vl"], encoder=encoder, init_from=str(out))
    with pytest.raises(ValueError, match="does not fit this model") as err:
        TaskGraph(spec)
    assert message in str(err.value)


def test_init_from_a_missing_directory_names_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        TaskGraph(_spec(tmp_path, ["vl"], init_from=str(tmp_path / "nowhere")))


def test_vision_only_export_loads_as_siglip_vision_model(tmp_path: Path) -> None:
    spec = _spec(tmp_path, ["distill"])
    torch.manual_seed(0)
    encoder = VisionTransformer(spec.model.encoder).eval()
    _perturb(encoder, seed=4)
    result = export_siglip(tmp_path / "out", encoder)
    assert result.architecture == "SiglipVisionModel"
    assert not (tmp_path / "out" / "tokenizer.json").exists()
    model, info = transformers.SiglipVisionModel.from_pretrained(
        tmp_path / "out", output_loading_info=True
    )
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    pixels = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(6)) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(
            model.eval()(pixel_values=pixels).pooler_output,
            encoder(pixels).pooled,
            atol=1e-5,
            rtol=0,
        )
    fresh = VisionTransformer(spec.model.encoder)
    report = load_hf_siglip(tmp_path / "out", fresh)
    assert report.loaded == ["encoder", "MAP head"]
    for name, tensor in encoder.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], tensor), name


def test_export_cli_writes_the_directory_and_refuses_bad_input(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = next((run / "checkpoints").iterdir()) / "state.pt"  # a checkpoint file works too
    result = runner.invoke(app, ["export", str(state), "--format", "hf-siglip", str(tmp_path)])
    assert result.exit_code == 0, result.output
    for name in ("model.safetensors", "config.json", "tokenizer.json", "preprocessor_config.json"):
        assert (tmp_path / name).is_file() and name in result.output
    result = runner.invoke(app, ["export", str(tmp_path / "none"), str(tmp_path / "x")])
    assert result.exit_code == 2 and "neither a run directory" in result.output
    result = runner.invoke(app, ["export", str(run), "--format", "onnx", str(tmp_path / "x")])
    assert result.exit_code == 2 and "unknown format 'onnx'" in result.output
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)  # as if mtv[hf] were missing
    result = runner.invoke(app, ["export", str(run), str(tmp_path / "y")])
    assert result.exit_code == 2 and "pip install 'mtv[hf]'" in result.output


def test_a_siglip_export_tags_images_zero_shot(exported: tuple[Path, TaskGraph]) -> None:
    """The SigLIP tagger's probabilities are SiglipModel's own sigmoid(logits_per_image), and its
    tags the most probable ones above the threshold."""
    from mtv.label.base import LabelInput
    from mtv.label.hf import SiglipTagger

    out, _ = exported
    vocabulary = ["cube", "sphere", "red ball", "tree", "car"]
    images = np.random.default_rng(1).integers(0, 256, (3, 40, 40, 3), dtype=np.uint8)
    inputs = [LabelInput(f"k{i}", image, "") for i, image in enumerate(images)]
    tagger = SiglipTagger(str(out), vocabulary, threshold=0.0, max_tags=3)
    probabilities = tagger.probabilities(inputs)
    model = transformers.SiglipModel.from_pretrained(out)
    processor = transformers.AutoProcessor.from_pretrained(out)
    batch = processor(
        text=[f"a photo of a {t}." for t in vocabulary],
        images=list(images),
        padding="max_length",
        truncation=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        expected = torch.sigmoid(model(**batch).logits_per_image)
    torch.testing.assert_close(probabilities, expected, atol=1e-5, rtol=1e-4)
    tags = tagger.tags(inputs)
    for row, names in zip(expected, tags, strict=True):
        assert names == [vocabulary[i] for i in row.argsort(descending=True)[:3].tolist()]
    assert SiglipTagger(str(out), vocabulary, threshold=1.0).tags(inputs) == [[], [], []]
    assert tagger.info().name == "siglip_tagger"


def test_a_labelling_job_can_tag_with_a_siglip_model(
    exported: tuple[Path, TaskGraph], tmp_path: Path
) -> None:
    from mtv.label.hf import SiglipTagger
    from mtv.label.pipeline import LabelSpecError, build_experts
    from mtv.specs.label import LabelSpec

    out, _ = exported
    vocabulary = tmp_path / "tags.txt"
    vocabulary.write_text("# things\ncube\n\nsphere\n")
    job = {
        "source": {"kind": "folder", "root": str(tmp_path)},
        "output": str(tmp_path / "labels.zarr"),
        "depth": None,
        "boxes": None,
        "tagger": {"kind": "siglip", "model": str(out), "vocabulary": str(vocabulary)},
    }
    _, _, tagger = build_experts(LabelSpec.model_validate(job), None)
    assert isinstance(tagger, SiglipTagger) and tagger.vocabulary == ["cube", "sphere"]
    job["tagger"]["vocabulary"] = str(tmp_path / "missing.txt")  # type: ignore[index]
    with pytest.raises(LabelSpecError, match=r"tagger\.vocabulary: cannot read"):
        build_experts(LabelSpec.model_validate(job), None)

"""Experiment specs: YAML loading, `extends:`, `--set` overrides, presets and error messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mtv.graph.experiment import load_experiment
from mtv.specs import (
    ExperimentSpec,
    SpecError,
    experiment_json_schema,
    load_spec,
    resolve_spec,
    spec_to_yaml,
)
from mtv.tasks.distill import DistillTaskSpec

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((ROOT / "experiments").glob("*.yaml"))
LADDER = {
    "vl": ["vl"],
    "vl_ssl": ["vl", "distill", "masked", "koleo"],
    "vl_ground": ["vl", "ground"],
    "vl_depth": ["vl", "depth"],
    "vl_ssl_ground": ["vl", "distill", "masked", "koleo", "ground"],
    "vl_ssl_depth": ["vl", "distill", "masked", "koleo", "depth"],
    "vl_ground_depth": ["vl", "ground", "depth"],
    "vl_ssl_ground_depth": ["vl", "distill", "masked", "koleo", "ground", "depth"],
}


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(path: Path, overrides: tuple[str, ...] = ()) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_experiment(path, overrides)
    return [str(p) for p in info.value.problems]


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_every_experiment_validates_and_plans(path: Path) -> None:
    experiment = load_experiment(path)
    assert experiment.spec.name
    assert experiment.plan.student


def test_ladder_and_synergy_files_carry_their_task_sets() -> None:
    for name, kinds in LADDER.items():
        spec = load_spec(ROOT / "experiments" / f"{name}.yaml")
        assert spec.name == name
        assert spec.task_kinds() == kinds
    smoke = load_spec(ROOT / "experiments" / "smoke.yaml")
    assert smoke.task_kinds() == LADDER["vl_ssl_ground_depth"]


def test_extends_merges_mappings_and_replaces_lists() -> None:
    spec = load_spec(ROOT / "experiments" / "vl_ssl_depth.yaml")
    base = load_spec(ROOT / "experiments" / "base.yaml")
    assert spec.data == base.data and spec.model == base.model
    assert spec.task_kinds() == ["vl", "distill", "masked", "koleo", "depth"]
    # task_defaults from the base file size every distill/masked head of the extending files
    distill = next(t for t in spec.tasks if isinstance(t, DistillTaskSpec))
    assert distill.n_prototypes == 1024 and distill.hidden_dim == 256
    # ... and fields not in the defaults keep the paper's values
    assert distill.student_temp == 0.1 and distill.teacher_temp_start == 0.04
    assert distill.teacher_temp == 0.04  # the protocol's calibration (paper: 0.07)
    smoke = load_spec(ROOT / "experiments" / "smoke.yaml")
    # a nested mapping merges key by key: the smoke file sets the size, the base the kind
    assert smoke.data.source.kind == "miniworld" and smoke.data.source.image_size == 32
    assert smoke.data.source.n_images == 64 and smoke.data.source.seed == 0


def test_paper_defaults() -> None:
    spec = ExperimentSpec.model_validate({"name": "x", "tasks": ["vl", "masked", "koleo"]})
    vl, masked, koleo = spec.tasks
    assert vl.logit_scale_init == pytest.approx(2.302585, abs=1e-6)
    assert vl.logit_bias_init == -10
    assert masked.weight == 2.0 and masked.mask_ratio == 0.5 and masked.n_prototypes == 32768
    assert koleo.weight == 0.1
    assert spec.optim.lr == 5e-4 and spec.optim.weight_decay == 0.0
    assert spec.schedule.warmup_steps == 1000
    assert spec.model.teacher.momentum == 0.994


def test_size_preset_with_overrides() -> None:
    spec = ExperimentSpec.model_validate(
        {"name": "x", "tasks": ["vl"], "model": {"size": "B/16", "encoder": {"image_size": 256}}}
    )
    assert spec.model.encoder.width == 768 and spec.model.encoder.image_size == 256
    assert spec.model.text.vocab_size == 32000
    large = ExperimentSpec.model_validate({"name": "x", "tasks": ["vl"], "model": {"size": "L/16"}})
    assert (large.model.encoder.width, large.model.encoder.depth) == (1024, 24)


def test_overrides_by_path_index_and_task_kind() -> None:
    path = ROOT / "experiments" / "vl_ssl.yaml"
    spec = load_spec(
        path,
        [
            "optim.lr=1e-3",
            "tasks.distill.n_prototypes=128",
            "tasks.0.weight=0.5",
            "model.encoder.image_size=128",
            "runtime.compile=false",
        ],
    )
    assert spec.optim.lr == 1e-3
    assert spec.tasks[1].n_prototypes == 128
    assert spec.tasks[0].weight == 0.5
    assert spec.model.encoder.image_size == 128 and spec.model.encoder.width == 128
    assert spec.runtime.compile is False
    replaced = load_spec(path, ["tasks=[vl, depth]"])
    assert replaced.task_kinds() == ["vl", "depth"]


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("optim.lr", "expected KEY=VALUE"),
        ("tasks.ground.weight=1", "no item of kind 'ground'"),
        ("tasks.9.weight=1", "index 9 is out of range"),
        ("optim.lr.x=1", "is not a mapping"),
    ],
)
def test_bad_overrides_name_the_argument(override: str, expected: str) -> None:
    problems = problems_of(ROOT / "experiments" / "vl_ssl.yaml", (override,))
    assert len(problems) == 1
    assert problems[0].startswith(f"--set {override}") and expected in problems[0]


def test_misspelt_key_names_file_field_and_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, "x.yaml", "name: x\ntasks: [vl]\noptim: {lrr: 0.1}\n")
    assert problems_of(path) == [f"{path}: optim.lrr: unknown field 'lrr'; did you mean 'lr'?"]


def test_misspelt_key_inside_a_task(tmp_path: Path) -> None:
    path = write(tmp_path, "x.yaml", "name: x\ntasks: [vl, {kind: distill, n_protoypes: 5}]\n")
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}: tasks[1].n_protoypes: unknown field")
    assert "did you mean 'n_prototypes'" in problem


def test_wrong_type(tmp_path: Path) -> None:
    path = write(tmp_path, "x.yaml", "name: x\ntasks: [vl]\ndata: {batch_size: many}\n")
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}: data.batch_size: ") and "'many'" in problem


def test_unknown_task_kind(tmp_path: Path) -> None:
    path = write(tmp_path, "x.yaml", "name: x\ntasks: [vl, segment]\n")
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}: tasks[1].kind: unknown task kind 'segment'")
    assert "'depth'" in problem


def test_missing_extends_file(tmp_path: Path) -> None:
    path = write(tmp_path, "x.yaml", "extends: nowhere/base.yaml\nname: x\ntasks: [vl]\n")
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}: extends: base file not found:")
    assert "nowhere/base.yaml" in problem


def test_error_inherited_from_the_base_names_the_base(tmp_path: Path) -> None:
    base = write(tmp_path, "base.yaml", "name: b\ntasks: [vl]\nruntime: {precison: bf16}\n")
    child = write(tmp_path, "child.yaml", "extends: base.yaml\nname: c\n")
    (problem,) = problems_of(child)
    assert problem.startswith(f"{base}: runtime.precison: unknown field")


def test_circular_extends(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "extends: b.yaml\nname: a\ntasks: [vl]\n")
    b = write(tmp_path, "b.yaml", "extends: a.yaml\nname: b\n")
    (problem,) = problems_of(b)
    assert "circular extends" in problem


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "x.yaml", "name: x\ntasks: [vl\noptim: {lr: 1}\n")
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}: line ") and "invalid YAML" in problem


def test_several_problems_are_all_reported(tmp_path: Path) -> None:
    path = write(
        tmp_path, "x.yaml", "name: x\ntasks: [vl]\noptim: {lrr: 1}\ndata: {batch_size: -1}\n"
    )
    problems = problems_of(path)
    assert len(problems) == 2
    assert any("optim.lrr" in p for p in problems) and any("data.batch_size" in p for p in problems)


def test_graph_problems_name_the_task_and_missing_label(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "x.yaml",
        "name: x\ndata: {labels: {kinds: [boxes]}}\ntasks: [vl, ground, depth, vl]\n",
    )
    problems = problems_of(path)
    assert any(p.startswith(f"{path}: tasks[2] (depth): needs label 'depth'") for p in problems), (
        problems
    )
    assert any(
        p.startswith(f"{path}: tasks[3] (vl): task kind 'vl' already appears") for p in problems
    )
    assert not any("(ground)" in p for p in problems)  # boxes are provided


def test_task_defaults_are_validated_where_they_are_written(tmp_path: Path) -> None:
    base = write(
        tmp_path,
        "base.yaml",
        "name: b\ntasks: [vl]\ntask_defaults: {distill: {n_protoypes: 5, weight: abc}}\n",
    )
    # The kind is not even used by the child: a typo in shared defaults is still an error.
    child = write(
        tmp_path, "child.yaml", "extends: base.yaml\nname: c\ntask_defaults: {dino: {}}\n"
    )
    problems = problems_of(child)
    assert sorted(problems) == sorted(
        [
            f"{base}: task_defaults.distill.n_protoypes: unknown field 'n_protoypes'; "
            "did you mean 'n_prototypes'?",
            f"{base}: task_defaults.distill.weight: Input should be a valid number, unable to "
            "parse string as a number (got 'abc')",
            f"{child}: task_defaults.dino: unknown field 'dino' "
            "(allowed: attributes, depth, distill, ground, koleo, masked, vl)",
        ]
    )


def test_resolved_yaml_shows_only_the_defaults_set() -> None:
    text = spec_to_yaml(load_spec(ROOT / "experiments" / "smoke.yaml"))
    defaults = yaml.safe_load(text)["task_defaults"]
    # smoke.yaml sizes the heads; base.yaml calibrates the rest: both, and nothing else.
    calibration = {"teacher_temp": 0.04, "freeze_prototypes_steps": 30}
    head = {"n_prototypes": 256, "hidden_dim": 64, "bottleneck_dim": 32, **calibration}
    assert defaults == {
        "vl": {"logit_bias_init": "batch"},
        "ground": {"logit_bias_init": "batch"},
        "distill": {**head, "n_local_crops": 2},
        "masked": head,
    }


def test_duplicate_keys_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "x.yaml", "name: x\ntasks: [vl]\noptim: {lr: 1}\noptim: {lr: 2}\n")
    assert problems_of(path) == [
        f"{path}: line 4, column 1: invalid YAML: duplicate key 'optim' (first given on line 3)"
    ]


def test_undecodable_file(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_bytes(b"name: \xff\xfe\n")
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}: cannot read the file: 'utf-8' codec can't decode")


def test_misspelt_extends_is_suggested(tmp_path: Path) -> None:
    path = write(tmp_path, "x.yaml", "extend: base.yaml\nname: x\ntasks: [vl]\n")
    assert problems_of(path) == [f"{path}: extend: unknown field 'extend'; did you mean 'extends'?"]


def test_resolved_yaml_round_trips() -> None:
    spec = load_spec(ROOT / "experiments" / "smoke.yaml")
    again = ExperimentSpec.model_validate(yaml.safe_load(spec_to_yaml(spec)))
    assert again == spec


def test_provenance_records_the_override() -> None:
    resolved = resolve_spec(ROOT / "experiments" / "vl.yaml", ["optim.lr=0.1"])
    assert resolved.source_of(("optim", "lr")) == "--set optim.lr=0.1"
    assert resolved.source_of(("data", "batch_size")).endswith("base.yaml")
    assert resolved.source_of(("name",)).endswith("vl.yaml")


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_json_schema_accepts_the_experiment_files(path: Path) -> None:
    import jsonschema

    jsonschema.validate(yaml.safe_load(path.read_text()), experiment_json_schema())


def test_json_schema_rejects_a_misspelt_key() -> None:
    import jsonschema

    with pytest.raises(jsonschema.ValidationError, match="lrr"):
        jsonschema.validate({"optim": {"lrr": 1}}, experiment_json_schema())


def test_json_schema_describes_the_task_union() -> None:
    schema = json.loads(json.dumps(ExperimentSpec.model_json_schema()))
    *classes, short = schema["properties"]["tasks"]["items"]["oneOf"]
    kinds = {c["properties"]["kind"]["const"] for c in classes}
    builtin = {"vl", "distill", "masked", "koleo", "ground", "depth", "attributes"}
    assert set(short["enum"]) == kinds == builtin
    distill = next(c for c in classes if c["properties"]["kind"]["const"] == "distill")
    assert distill["properties"]["n_prototypes"]["default"] == 32768
    assert set(schema["properties"]["task_defaults"]["properties"]) == kinds
    assert schema["additionalProperties"] is False


def test_an_own_data_experiment_is_extends_plus_a_data_block(tmp_path: Path) -> None:
    """A source of another kind starts a fresh mapping: nothing of the mini-world survives."""
    path = tmp_path / "mine.yaml"
    path.write_text(
        f"extends: {ROOT / 'experiments' / 'vl_ssl_depth.yaml'}\n"
        "name: my_photos\n"
        "data:\n"
        "  source: {kind: folder, root: photos, captions: captions.jsonl}\n"
        "  labels: {store: photos/labels.zarr}\n"
    )
    spec = load_spec(path)
    assert spec.data.source.kind == "folder"
    assert spec.data.source.model_dump(exclude_defaults=True) == {
        "root": str(tmp_path / "photos"),  # beside the file that names it
        "captions": "captions.jsonl",  # relative to root, as documented
    }  # nothing of the mini-world source (n_images, image_size, seed) survived
    assert (
        spec.data.batch_size
        == load_spec(ROOT / "experiments" / "vl_ssl_depth.yaml").data.batch_size
    )
    assert spec.data.labels.store == str(tmp_path / "photos" / "labels.zarr")


def test_replace_tag_replaces_a_mapping_instead_of_merging(tmp_path: Path) -> None:
    base = tmp_path / "base.yaml"
    base.write_text("name: b\ntasks: [vl]\noptim: {lr: 0.002, weight_decay: 0.1}\n")
    merged, replaced = tmp_path / "merged.yaml", tmp_path / "replaced.yaml"
    merged.write_text("extends: base.yaml\noptim: {lr: 0.003}\n")
    replaced.write_text("extends: base.yaml\noptim: !replace {lr: 0.003}\n")
    assert load_spec(merged).optim.weight_decay == 0.1  # merged: the base's field kept
    assert load_spec(replaced).optim.weight_decay == 0.0  # replaced: back to the default
    assert load_spec(replaced).optim.lr == 0.003
    # a mapping of the same kind still merges
    same = tmp_path / "same.yaml"
    base.write_text(
        "name: b\ntasks: [vl]\ndata: {source: {kind: miniworld, n_images: 10, seed: 3}}\n"
    )
    same.write_text("extends: base.yaml\ndata: {source: {kind: miniworld, n_images: 20}}\n")
    assert load_spec(same).data.source.seed == 3


def test_paths_resolve_against_the_file_that_wrote_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative path in a spec file means that file's folder (a base file's own paths its
    folder), a `--set` value or a default the working folder; URLs and absolute paths stay. The
    resolved spec holds them absolute, so a run's spec.yaml means the same files anywhere."""
    shared = tmp_path / "shared"
    mine = tmp_path / "mine"
    elsewhere = tmp_path / "elsewhere"
    for folder in (shared, mine, elsewhere):
        folder.mkdir()
    write(
        shared,
        "base.yaml",
        f"extends: {ROOT / 'experiments' / 'vl.yaml'}\n"
        "data:\n  source: {kind: shards, urls: [shards/a.tar, 's3://bucket/b.tar', /abs/c.tar]}\n"
        "model: {tokenizer: {path: ../tokenizers/bpe.json}}\n",
    )
    child = write(
        mine,
        "exp.yaml",
        "extends: ../shared/base.yaml\ndata: {labels: {store: labels.zarr}}\n"
        "eval: {classes: classes.txt}\n",
    )
    monkeypatch.chdir(elsewhere)
    spec = load_spec(child, ["eval.data=held_out"])
    assert spec.data.source.urls == [
        str(shared / "shards/a.tar"),
        "s3://bucket/b.tar",
        "/abs/c.tar",
    ]
    assert spec.model.tokenizer.path == str(tmp_path / "tokenizers" / "bpe.json")
    assert spec.data.labels.store == str(mine / "labels.zarr")
    assert spec.eval.classes == str(mine / "classes.txt")
    assert spec.eval.data == str(elsewhere / "held_out")  # --set: the working folder
    assert spec.output.root == str(ROOT / "runs")  # experiments/base.yaml writes ../runs
    default = load_spec(write(mine, "plain.yaml", "name: plain\ntasks: [vl]\n"))
    assert default.output.root == str(elsewhere / "runs")  # a default: the working folder
    assert str(shared / "shards/a.tar") in spec_to_yaml(spec)


def test_imports_run_where_the_spec_file_is_loaded_not_in_validation(tmp_path: Path) -> None:
    """`imports:` modules are imported by loading the spec file, once; validating a spec model
    (what every read of a spec did, twice per validation) runs no code of the user's."""
    marker = tmp_path / "runs.txt"
    module = tmp_path / "counted_task.py"
    module.write_text(f"with open({str(marker)!r}, 'a') as f:\n    f.write('ran\\n')\n")
    raw = {"name": "x", "imports": [str(module)], "tasks": ["vl"]}
    ExperimentSpec.model_validate(raw)
    assert not marker.exists()
    spec_file = write(tmp_path, "exp.yaml", "name: x\nimports: [counted_task]\ntasks: [vl]\n")
    assert load_spec(spec_file).imports == [str(module)]
    load_spec(spec_file)
    assert marker.read_text() == "ran\n"  # imported once, by the first load

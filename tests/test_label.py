"""Labelling on real files: a rendered corpus, oracle experts, the store, `mtv label check`,
resuming after kill -9, and key-based joins that do not depend on shard order."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import zarr
from mtv_cli.main import app
from typer.testing import CliRunner

from mtv.data import TarShardSource
from mtv.data.store import LabelStoreDamaged
from mtv.label import LabelSpecError, LabelStore, check_store, noun_phrases, run_labelling
from mtv.label.quality import box_iou, label_quality
from mtv.specs import load_spec
from mtv.specs.experiment import OracleLabelsSpec
from mtv.specs.label import LabelSpec
from mtv.train import DataPreparationError, prepare_data
from mtv.world.corpus import GroundTruth, WorldCorpus, render_corpus

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("world") / "corpus"
    render_corpus(root, 40, size=32, views=1, seed=3, shard_size=16)
    return root


def job(corpus: Path, output: Path, **fields: object) -> LabelSpec:
    raw = {
        "source": {"kind": "miniworld", "root": str(corpus)},
        "output": str(output),
        "resolution": 16,
        "chunk_size": 8,
        "batch_size": 4,
        **fields,
    }
    return LabelSpec.model_validate(raw)


def store_arrays(path: Path) -> dict[str, np.ndarray]:
    root = zarr.open_group(str(path), mode="r")
    names = ["keys", "status", "depth", "depth_valid", "boxes/values", "boxes/offsets"]
    out = {name: root[name][:] for name in names}
    out["boxes/names"] = np.asarray([str(n) for n in root["boxes/names"][:]])
    out["boxes/scores"] = root["boxes/scores"][:]
    return out


def test_exact_oracle_labels_are_the_ground_truth(corpus: Path, tmp_path: Path) -> None:
    store, stats = run_labelling(job(corpus, tmp_path / "labels.zarr"))
    assert stats.images == 40 and store.complete and check_store(store) == []
    truth = GroundTruth(corpus / "groundtruth.zarr")
    for key in truth.keys[::7]:
        record = truth[key]
        labels = store.boxes(key)
        np.testing.assert_allclose(labels.boxes, record.boxes)
        assert labels.names == record.names and (labels.scores == 1).all()
        # depth: 1/z, resampled to 16x16 over the whole image, min-max normalised
        disparity = np.where(np.isfinite(record.depth), 1 / record.depth, 0).astype(np.float32)
        small = F.interpolate(
            torch.from_numpy(disparity)[None, None],
            size=(16, 16),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )[0, 0].numpy()
        expected = (small - small.min()) / (small.max() - small.min())
        depth, valid = store.depth(key)
        assert valid.all()
        np.testing.assert_allclose(depth, expected, atol=2e-3)  # float16 storage
    meta = store.attrs
    assert meta["experts"]["depth"]["name"] == "oracle_depth"
    assert "relative disparity" in meta["conventions"]["depth"]
    assert "original image" in meta["conventions"]["boxes"]
    with pytest.raises(KeyError, match="no labels for key"):
        store.depth("missing")


def test_noise_model_is_seeded_by_key(corpus: Path, tmp_path: Path) -> None:
    noisy = {
        "depth": {"kind": "oracle", "blur_sigma": 1.0, "noise": 0.05, "warp": 0.05},
        "boxes": {
            "kind": "oracle",
            "jitter": 0.1,
            "miss_rate": 0.3,
            "false_rate": 1.0,
            "wrong_name_rate": 0.3,
        },
    }
    a, _ = run_labelling(job(corpus, tmp_path / "a.zarr", **noisy))
    run_labelling(job(corpus, tmp_path / "b.zarr", **noisy))
    c, _ = run_labelling(job(corpus, tmp_path / "c.zarr", seed=1, **noisy))
    exact, _ = run_labelling(job(corpus, tmp_path / "exact.zarr"))
    assert check_store(a) == []
    for name, values in store_arrays(tmp_path / "a.zarr").items():
        np.testing.assert_array_equal(values, store_arrays(tmp_path / "b.zarr")[name])
    differs = [k for k in a.keys if a.boxes(k).names != c.boxes(k).names]
    assert differs, "another seed draws other noise"
    degraded = [k for k in a.keys if a.boxes(k).names != exact.boxes(k).names]
    assert len(degraded) > len(a.keys) // 3
    gap = np.mean([np.abs(a.depth(k)[0] - exact.depth(k)[0]).mean() for k in a.keys])
    assert gap > 0.01


class OtherKeys:
    """The corpus's source, short of its first key and with one key more."""

    def __init__(self, corpus: Path, keys: list[str]):
        self.source = TarShardSource(WorldCorpus.open(corpus).shards)
        self._keys = [*keys[1:], "extra"]

    def keys(self) -> list[str]:
        return self._keys

    def fingerprint(self, key: str) -> str:
        return "new" if key == "extra" else self.source.fingerprint(key)


def test_check_names_every_bad_sample(corpus: Path, tmp_path: Path) -> None:
    store, _ = run_labelling(job(corpus, tmp_path / "labels.zarr"))
    keys = store.keys
    root = zarr.open_group(str(tmp_path / "labels.zarr"), mode="r+")
    depth = root["depth"][3]
    depth[0, 0] = np.nan
    root["depth"][3] = depth
    values = root["boxes/values"][:]
    offsets = root["boxes/offsets"][:]
    values[offsets[5]] = [0.2, 0.2, 1.4, 0.5]
    root["boxes/values"][:] = values
    problems = [
        str(p)
        for p in check_store(LabelStore.open(tmp_path / "labels.zarr"), OtherKeys(corpus, keys))
    ]
    assert f"{keys[3]}: depth: NaN or inf values" in problems
    assert any(
        p.startswith(f"{keys[5]}: boxes: box [0.2") and "outside [0, 1]" in p for p in problems
    )
    assert f"{keys[0]}: keys: not in the source" in problems
    assert "extra: keys: in the source but not in the store" in problems
    result = runner.invoke(app, ["label", "check", str(tmp_path / "labels.zarr")])
    assert result.exit_code == 1 and keys[3] in result.output


def test_check_names_the_samples_of_a_deleted_chunk_and_reads_fail(
    corpus: Path, tmp_path: Path
) -> None:
    store, _ = run_labelling(job(corpus, tmp_path / "labels.zarr", chunk_size=16))
    assert check_store(store, TarShardSource(WorldCorpus.open(corpus).shards)) == []
    chunk = store.root["depth"].chunks[0]  # samples per stored depth chunk
    (tmp_path / "labels.zarr" / "depth" / "c" / "1" / "0" / "0").unlink()
    lost = store.keys[chunk : 2 * chunk]
    result = runner.invoke(
        app, ["label", "check", str(tmp_path / "labels.zarr")], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 1
    for key in lost:
        assert f"{key}: depth: chunk 1 is missing" in result.output
    assert store.keys[0] not in result.output
    assert "against miniworld" in result.output  # the store's own record of its source
    reopened = LabelStore.open(tmp_path / "labels.zarr")
    with pytest.raises(LabelStoreDamaged, match=rf"{lost[0]}.*chunk 1 of depth .*is missing"):
        reopened.depth(lost[0])  # never zeros read as valid depth
    assert reopened.depth(store.keys[0])[1].any()
    # a cut chunk file: named too
    path = tmp_path / "labels.zarr" / "depth_valid" / "c" / "0" / "0" / "0"
    path.write_bytes(path.read_bytes()[:5])
    problems = [str(p) for p in check_store(reopened)]
    assert f"{store.keys[0]}: depth_valid: chunk 0 cannot be read" in " ".join(problems)


def test_a_store_of_another_corpus_with_the_same_keys_is_refused(
    corpus: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other-world"
    render_corpus(other, 40, size=32, views=1, seed=4, shard_size=16)  # same keys, other scenes
    store, _ = run_labelling(job(other, tmp_path / "labels.zarr"))
    here = TarShardSource(WorldCorpus.open(corpus).shards)
    assert store.keys == here.keys()
    problems = check_store(store, here)
    assert len([p for p in problems if p.field == "fingerprint"]) >= 35
    spec = load_spec(
        ROOT / "experiments" / "smoke.yaml",
        [
            f"data.source.root={corpus}",
            "data.source.n_images=40",
            "data.source.image_size=32",
            "data.source.seed=3",
            f"data.labels.store={tmp_path / 'labels.zarr'}",
        ],
    )
    said: list[str] = []
    with pytest.raises(DataPreparationError, match=r"differ from the ones the label store"):
        prepare_data(spec, report=said.append)
    assert any("data.labels.oracle is not used" in m for m in said)


def test_resume_with_another_job_is_refused(corpus: Path, tmp_path: Path) -> None:
    run_labelling(job(corpus, tmp_path / "labels.zarr"))
    with pytest.raises(LabelSpecError, match="made by a different job") as info:
        run_labelling(job(corpus, tmp_path / "labels.zarr", resolution=32))
    assert "resolution" in str(info.value)


def test_oracle_needs_the_mini_world(tmp_path: Path) -> None:
    spec = LabelSpec.model_validate(
        {
            "source": {"kind": "shards", "urls": [str(tmp_path / "x.tar")]},
            "output": str(tmp_path / "l"),
        }
    )
    with tarfile.open(tmp_path / "x.tar", "w"):
        pass
    with pytest.raises(LabelSpecError, match="the oracle reads mini-world ground truth"):
        run_labelling(spec)


def test_a_truncated_image_is_skipped_and_counted(corpus: Path, tmp_path: Path) -> None:
    """Copy the corpus's first shard with one PNG cut short; that sample gets status 1."""
    shard = sorted((corpus / "shards").glob("*.tar"))[0]
    broken = tmp_path / "broken.tar"
    with tarfile.open(shard) as src, tarfile.open(broken, "w") as dst:
        members = src.getmembers()
        victim = members[3].name  # the second sample's png
        for member in members:
            data = src.extractfile(member).read()  # type: ignore[union-attr]
            if member.name == victim:
                data = data[: len(data) // 2]
            info = tarfile.TarInfo(member.name)
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    spec = job(corpus, tmp_path / "labels.zarr", boxes=None)
    # A mini-world job (the oracle needs its ground truth) reading the broken shard instead:
    from mtv.label import pipeline

    original = pipeline.resolve_source

    def broken_source(s: LabelSpec):  # type: ignore[no-untyped-def]
        source, truth = original(s)
        return type(source)([str(broken)]), truth

    pipeline.resolve_source = broken_source  # type: ignore[assignment]
    try:
        store, stats = run_labelling(spec)
    finally:
        pipeline.resolve_source = original  # type: ignore[assignment]
    key = victim.split(".")[0]
    assert [k for k, _ in stats.skipped] == [key]
    assert store.status(key) == 1 and not store.depth(key)[1].any()
    assert stats.images == 15 and [p for p in check_store(store) if p.fatal] == []
    assert [(p.key, p.fatal) for p in check_store(store)] == [(key, False)]  # named, not fatal


def test_labels_do_not_depend_on_shard_order(corpus: Path, tmp_path: Path) -> None:
    """Labelling the shards in reverse order stores the same labels under every key."""
    forward, _ = run_labelling(job(corpus, tmp_path / "f.zarr"))
    shards = sorted(str(p) for p in (corpus / "shards").glob("*.tar"))[::-1]
    from mtv.label import pipeline

    original = pipeline.resolve_source

    def reversed_source(s: LabelSpec):  # type: ignore[no-untyped-def]
        source, truth = original(s)
        return type(source)(shards), truth

    pipeline.resolve_source = reversed_source  # type: ignore[assignment]
    try:
        backward, _ = run_labelling(job(corpus, tmp_path / "b.zarr"))
    finally:
        pipeline.resolve_source = original  # type: ignore[assignment]
    assert backward.keys != forward.keys and sorted(backward.keys) == sorted(forward.keys)
    for key in forward.keys:
        np.testing.assert_array_equal(forward.depth(key)[0], backward.depth(key)[0])
        assert forward.boxes(key).names == backward.boxes(key).names


def test_tagger_noun_phrases() -> None:
    assert noun_phrases("Two red cubes to the left of a small shiny sphere.") == [
        "red cubes",
        "small shiny sphere",
    ]
    assert noun_phrases("A dog playing with a red frisbee in the park") == [
        "dog",
        "red frisbee",
        "park",
    ]


def test_kill_9_then_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    render_corpus(root, 240, size=32, views=1, seed=4, shard_size=100)
    spec_text = (
        f"source: {{kind: miniworld, root: {root}}}\noutput: OUTPUT\nresolution: 16\n"
        "chunk_size: 6\nbatch_size: 6\nboxes: {kind: oracle, jitter: 0.05, false_rate: 0.5}\n"
        "depth: {kind: oracle, blur_sigma: 1.0, noise: 0.02}\n"
    )
    (tmp_path / "killed.yaml").write_text(
        spec_text.replace("OUTPUT", str(tmp_path / "killed.zarr"))
    )
    (tmp_path / "whole.yaml").write_text(spec_text.replace("OUTPUT", str(tmp_path / "whole.zarr")))
    mtv = [sys.executable, "-c", "from mtv_cli.main import entry; entry()"]
    env = {**os.environ, "COLUMNS": "100"}
    proc = subprocess.Popen(
        [*mtv, "label", str(tmp_path / "killed.yaml")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    markers = tmp_path / "killed.zarr" / "done" / "c"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if markers.is_dir() and len(list(markers.iterdir())) >= 5:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the job finished before it could be killed"
    partial = LabelStore.open(tmp_path / "killed.zarr")
    done = partial.done()
    assert 0 < done.sum() < len(done) and not partial.complete
    resumed = subprocess.run(
        [*mtv, "label", str(tmp_path / "killed.yaml")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    whole = subprocess.run(
        [*mtv, "label", str(tmp_path / "whole.yaml")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert whole.returncode == 0, whole.stderr
    check = subprocess.run(
        [*mtv, "label", "check", str(tmp_path / "killed.zarr")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    a, b = store_arrays(tmp_path / "killed.zarr"), store_arrays(tmp_path / "whole.zarr")
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_torchrun_ranks_label_disjoint_chunks_into_the_same_store(
    corpus: Path, tmp_path: Path
) -> None:
    """`torchrun --nproc_per_node=2 mtv label` gives exactly the single-process store."""
    text = (
        f"source: {{kind: miniworld, root: {corpus}}}\noutput: OUTPUT\nresolution: 16\n"
        "chunk_size: 4\nbatch_size: 4\nboxes: {kind: oracle, jitter: 0.05, false_rate: 0.5}\n"
    )
    (tmp_path / "two.yaml").write_text(text.replace("OUTPUT", str(tmp_path / "two.zarr")))
    run_labelling(
        job(
            corpus,
            tmp_path / "one.zarr",
            chunk_size=4,
            boxes={"kind": "oracle", "jitter": 0.05, "false_rate": 0.5},
        )
    )
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "mtv_cli.main",
        "label",
        str(tmp_path / "two.yaml"),
    ]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "labelled 20 images in 5 chunk(s)" in done.stdout  # each rank: half of 10 chunks
    a, b = store_arrays(tmp_path / "one.zarr"), store_arrays(tmp_path / "two.zarr")
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_tiny_transformers_experts_label_the_rendered_corpus(corpus: Path, tmp_path: Path) -> None:
    """The Hugging Face experts, loaded from saved tiny checkpoints as users load real ones,
    label the rendered corpus; the store passes `mtv label check`."""
    from tests.tiny_hf import build_tiny_depth_anything, build_tiny_owlv2

    spec = job(
        corpus,
        tmp_path / "hf.zarr",
        depth={"kind": "depth_anything", "model": str(build_tiny_depth_anything(tmp_path / "d"))},
        boxes={"kind": "owlv2", "model": str(build_tiny_owlv2(tmp_path / "o")), "threshold": 0.0},
    )
    store, stats = run_labelling(spec)
    assert stats.images == 40 and check_store(store) == []
    assert store.attrs["experts"]["depth"]["name"] == "depth_anything_v2"
    assert store.attrs["experts"]["boxes"]["name"] == "owlv2"
    names = {n for key in store.keys for n in store.boxes(key).names}
    assert names and all(n for n in names)  # names come from the captions' noun phrases
    result = runner.invoke(app, ["label", "check", str(tmp_path / "hf.zarr")])
    assert result.exit_code == 0, result.output


def test_label_quality_scores_exact_labels_perfect_and_noise_as_noise(
    corpus: Path, tmp_path: Path
) -> None:
    truth = GroundTruth(corpus / "groundtruth.zarr")
    exact, _ = run_labelling(job(corpus, tmp_path / "exact.zarr", resolution=32))
    perfect = label_quality(exact, truth)
    assert perfect["box_recall"] == 1.0 and perfect["box_precision"] == 1.0
    assert perfect["name_accuracy"] == 1.0 and perfect["depth_absrel"] < 1e-3
    noise = {
        "depth": {"kind": "oracle", "blur_sigma": 1.0, "noise": 0.1, "warp": 0.05},
        "boxes": {"kind": "oracle", "miss_rate": 0.5, "false_rate": 1.0, "wrong_name_rate": 0.5},
    }
    noisy, _ = run_labelling(job(corpus, tmp_path / "noisy.zarr", resolution=32, **noise))
    degraded = label_quality(noisy, truth)
    assert 0.3 < degraded["box_recall"] < 0.7  # half the boxes missed
    assert degraded["box_precision"] < 0.9 and degraded["name_accuracy"] < 0.8
    assert degraded["depth_absrel"] > 0.02 and degraded["depth_delta1"] < 1.0
    boxes = np.array([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]])
    assert box_iou(boxes, boxes[:1]).tolist() == [[1.0], [0.0]]


def test_noisy_oracle_labels_get_a_store_of_their_own() -> None:
    exact = OracleLabelsSpec()
    noisy = OracleLabelsSpec.model_validate({"depth": {"noise": 0.1}})
    other = OracleLabelsSpec.model_validate({"depth": {"noise": 0.2}})
    assert exact.exact and exact.store_name() == "labels.zarr"
    assert noisy.store_name() != other.store_name() and noisy.store_name().startswith("labels-")
    # With an explicit store (or another source) the oracle's noise is not used: the run
    # says so (see the next-corpus test), and an experiment extending base.yaml stays valid.
    spec = load_spec(ROOT / "experiments" / "base.yaml", ["data.labels.store=/somewhere.zarr"])
    assert not spec.data.labels.oracle.exact


def test_label_quality_command_measures_a_store_and_refuses_another_corpus(
    corpus: Path, tmp_path: Path
) -> None:
    noise = {"boxes": {"kind": "oracle", "miss_rate": 0.5}}
    run_labelling(job(corpus, tmp_path / "noisy.zarr", **noise))
    result = runner.invoke(
        app, ["label", "quality", str(tmp_path / "noisy.zarr"), "--world", str(corpus)]
    )
    assert result.exit_code == 0, result.output
    assert "box_recall" in result.output and "depth_absrel" in result.output
    other = tmp_path / "other"
    render_corpus(other, 4, size=32, views=1, seed=5, shard_size=16)
    # A corpus of 4 images: the store's other keys are not in it.
    wrong = runner.invoke(
        app, ["label", "quality", str(tmp_path / "noisy.zarr"), "--world", str(other)]
    )
    assert wrong.exit_code == 2 and "a store of another corpus" in wrong.output


class GrownSource(OtherKeys):
    """The corpus's source with one sample more than the store labelled."""

    def __init__(self, corpus: Path, keys: list[str]):
        super().__init__(corpus, keys)
        self._keys = [*keys, "extra"]


def test_training_keys_leave_out_unlabelled_and_undecodable_samples_and_say_so(
    corpus: Path, tmp_path: Path
) -> None:
    from mtv.train.prepare import _labelled_keys

    store, _ = run_labelling(job(corpus, tmp_path / "labels.zarr"))
    keys = store.keys
    zarr.open_group(str(tmp_path / "labels.zarr"), mode="r+")["status"][2] = 1  # undecodable
    store = LabelStore.open(tmp_path / "labels.zarr")
    said: list[str] = []
    chosen = _labelled_keys(store, GrownSource(corpus, keys), said.append)
    assert chosen == [k for k in keys if k != keys[2]]
    assert any("1 sample(s) of the source have no labels" in m and "'extra'" in m for m in said)
    assert any("could not decode are left out" in m and keys[2] in m for m in said)
    with pytest.raises(DataPreparationError, match=r"labels 1 sample\(s\) the source"):
        _labelled_keys(store, OtherKeys(corpus, keys), said.append)  # lacks the store's first


def test_a_grown_source_labels_only_its_new_samples(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mtv.label import pipeline

    shards = WorldCorpus.open(corpus).shards
    extra = tmp_path / "one-more.tar"  # one sample of the third shard, as a grown folder would
    with tarfile.open(shards[2]) as src, tarfile.open(extra, "w") as dst:
        first = src.getmembers()[0].name.split(".")[0]
        for member in src.getmembers():
            if member.name.split(".")[0] == first:
                dst.addfile(member, src.extractfile(member))
    original = pipeline.resolve_source
    urls = [list(shards[:2])]

    def growing_source(s: LabelSpec):  # type: ignore[no-untyped-def]
        source, truth = original(s)
        return type(source)(urls[0]), truth

    monkeypatch.setattr(pipeline, "resolve_source", growing_source)
    spec = job(corpus, tmp_path / "labels.zarr", chunk_size=8)
    store, stats = run_labelling(spec)
    assert stats.images == 32 and store.complete
    before = store_arrays(tmp_path / "labels.zarr")
    urls[0] = [*shards[:2], str(extra)]
    store, stats = run_labelling(spec)
    assert stats.images == 1 and store.complete
    assert store.keys == [*before["keys"].tolist(), first]
    after = store_arrays(tmp_path / "labels.zarr")
    for name in ("status", "depth", "depth_valid"):
        np.testing.assert_array_equal(after[name][:32], before[name], err_msg=name)
    count = int(before["boxes/offsets"][-1])
    np.testing.assert_array_equal(after["boxes/values"][:count], before["boxes/values"])
    assert after["boxes/offsets"][-1] > count  # the new sample's boxes follow the old ones
    grown = TarShardSource(urls[0])
    assert [p for p in check_store(store, grown) if p.fatal] == []
    assert store.depth(first)[1].any()
    urls[0] = list(shards[:1])  # a shrunk source is another corpus: refused
    with pytest.raises(LabelSpecError, match="does not have"):
        run_labelling(spec)


def test_ranks_writing_their_first_chunks_at_once_share_one_box_parts_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ranks labelling side by side each write their chunks' boxes under `box_parts`: the group
    is made with the store, and in a store made before that, the rank that loses the race to
    create it uses the winner's (it once failed: "a group exists")."""
    import numpy as np
    import zarr

    from mtv.data.store import STATUS_OK, BoxLabel, ChunkLabels, LabelStore

    keys = [f"k{i}" for i in range(4)]
    path = tmp_path / "store.zarr"
    created = LabelStore.create(path, keys, ["boxes"], 16, 2, {}, {}, np.arange(4, dtype=np.uint64))
    assert "box_parts" in created.root  # no rank has to create it
    del created.root["box_parts"]  # as in a store made before it was made with the store
    rank0, rank1 = LabelStore.open(path, "r+"), LabelStore.open(path, "r+")

    def labels(name: str) -> ChunkLabels:
        box = BoxLabel(np.array([[0.1, 0.1, 0.5, 0.5]]), [name], np.array([0.9]))
        return ChunkLabels(None, None, [box, box], np.full(2, STATUS_OK, np.uint8))

    real = zarr.Group.create_group
    raced_once: list[bool] = []

    def raced(group: zarr.Group, name: str, **kwargs: object) -> object:
        if name == "box_parts" and not raced_once:
            raced_once.append(True)
            rank0.write_chunk(0, labels("cube"))  # rank 0 creates the group just before
        return real(group, name, **kwargs)

    monkeypatch.setattr(zarr.Group, "create_group", raced)
    rank1.write_chunk(1, labels("sphere"))
    assert raced_once  # rank 1 did lose the race
    rank1.finalize()
    done = LabelStore.open(path)
    assert [done.boxes(k).names for k in keys] == [["cube"], ["cube"], ["sphere"], ["sphere"]]

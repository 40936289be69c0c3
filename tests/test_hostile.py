"""Hostile and careless input: names that escape `output.root`, NaN in specs, `--overwrite` on
folders mtv did not write, symlinks out of a folder source, decompression bombs."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from mtv_cli.main import app
from PIL import Image
from typer.testing import CliRunner

from mtv.data import FolderSource, TarShardSource
from mtv.data.sources import CorruptImageError, Sample, decode_image
from mtv.specs import SpecError, load_spec
from mtv.specs.label import LabelSpec

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "experiments" / "smoke.yaml"
runner = CliRunner()


@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden", "..", "a\\b", "x y"])
def test_a_run_name_is_one_folder_name(name: str) -> None:
    with pytest.raises(SpecError, match=r"name.*not a run name") as info:
        load_spec(SMOKE, [f"name={name}"])
    assert any(p.source == f"--set name={name}" for p in info.value.problems)
    assert load_spec(SMOKE, ["name=vl_ssl+depth-2.b"]).name == "vl_ssl+depth-2.b"


@pytest.mark.parametrize(
    "override", ["optim.lr=.nan", "tasks.0.weight=.inf", "optim.grad_clip=.inf"]
)
def test_non_finite_numbers_are_refused(override: str) -> None:
    with pytest.raises(SpecError, match="finite"):
        load_spec(SMOKE, [override])


def test_overwrite_replaces_only_a_corpus(tmp_path: Path) -> None:
    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "chapter1.tex").write_text("years of work")
    result = runner.invoke(app, ["world", "render", str(precious), "--n", "2", "--overwrite"])
    assert result.exit_code == 2
    assert "MTV_CORPUS.json" in result.output and "not deleted" in result.output
    assert (precious / "chapter1.tex").read_text() == "years of work"

    corpus = tmp_path / "corpus"
    for _ in range(2):  # the second time over an existing corpus, which --overwrite replaces
        result = runner.invoke(
            app, ["world", "render", str(corpus), "--n", "2", "--size", "16", "--overwrite"]
        )
        assert result.exit_code == 0, result.output
    assert (corpus / "world.json").is_file()
    marker = json.loads((corpus / "MTV_CORPUS.json").read_text())
    assert marker["written_by"] == "mtv world render" and marker["n_images"] == 2


def test_export_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    out = tmp_path / "export"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    result = runner.invoke(app, ["export", str(tmp_path / "some-run"), str(out)])
    assert result.exit_code == 2
    assert "--overwrite" in result.output and "not empty" in result.output
    assert (out / "notes.txt").read_text() == "keep me"


def _png(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 20, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_folder_source_refuses_symlinks_out_of_its_root(tmp_path: Path) -> None:
    root, outside = tmp_path / "images", tmp_path / "secret.png"
    root.mkdir()
    (root / "inside.png").write_bytes(_png((8, 8)))
    outside.write_bytes(_png((8, 8)))
    (root / "link.png").symlink_to(outside)
    (root / "sub").mkdir()
    (root / "sub" / "ok.png").symlink_to(root / "inside.png")  # a link within the root is fine
    rows = [{"file": f, "caption": "a thing"} for f in ("inside.png", "link.png", "sub/ok.png")]
    captions = root / "captions.jsonl"
    captions.write_text("\n".join(json.dumps(r) for r in rows))
    problems: list[tuple[str, str]] = []
    source = FolderSource(str(root), str(captions), on_problem=lambda k, r: problems.append((k, r)))
    assert source.keys() == ["inside", "sub/ok"]
    assert len(problems) == 1 and "link.png" in problems[0][1] and "symlink" in problems[0][1]
    # a link made after the listing is not followed either
    (root / "inside.png").unlink()
    (root / "inside.png").symlink_to(outside)
    with pytest.raises(FileNotFoundError, match="symlink"):
        source.get("inside")


def test_images_above_the_pixel_limit_are_refused_before_decoding() -> None:
    sample = Sample("big", _png((300, 200)), "a big image", {}, "test://big.png", "png")
    with pytest.raises(CorruptImageError, match=r"300x200 pixels.*max_pixels"):
        decode_image(sample, max_pixels=50_000)
    assert decode_image(sample, max_pixels=60_000).shape == (200, 300, 3)
    assert load_spec(SMOKE).data.loader.max_pixels == 40_000_000


def test_a_cached_tokenizer_is_never_reused_for_other_captions(tmp_path: Path) -> None:
    from mtv.train.prepare import captions_digest
    from mtv.world.corpus import render_corpus

    names = []
    for seed in (0, 0, 1):
        root = tmp_path / f"world-{len(names)}"
        corpus = render_corpus(root, 6, size=16, seed=seed)
        names.append(captions_digest(TarShardSource(corpus.shards), 256, True))
    assert names[0] == names[1] != names[2]  # the same corpus again, then another one
    assert captions_digest(TarShardSource(corpus.shards), 512, True) != names[2]


def test_errors_are_one_line_without_debug(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    cli = [sys.executable, "-c", "from mtv_cli.main import entry; entry()"]
    cases = [  # (arguments, expected exit code, words of the message)
        (["run", str(SMOKE), "--out", str(blocker)], 2, "is a file, not a folder"),
        (["world", "render", str(blocker / "corpus"), "--n", "2"], 1, str(blocker)),
        (["label", "check", str(tmp_path / "nowhere.zarr")], 2, "no label store"),
    ]
    env = {k: v for k, v in os.environ.items() if k != "MTV_DEBUG"}
    for arguments, code, words in cases:
        result = subprocess.run([*cli, *arguments], capture_output=True, text=True, env=env)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == code, (arguments, result.stderr)
        assert len(lines) == 1 and words in lines[0], (arguments, lines)
        assert "Traceback" not in result.stdout + result.stderr
    debug = subprocess.run([*cli, "--debug", *cases[1][0]], capture_output=True, text=True, env=env)
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_an_error_from_a_loader_worker_is_its_own_last_line() -> None:
    from mtv_cli.output import one_line

    text = (
        "Caught LabelStoreDamaged in DataLoader worker process 0.\n"
        'Original Traceback (most recent call last):\n  File "x.py", line 1, in f\n'
        "mtv.data.store.LabelStoreDamaged: the depth of sample 'k' cannot be read"
    )
    assert one_line(RuntimeError(text)) == (
        "LabelStoreDamaged: the depth of sample 'k' cannot be read"
    )
    assert one_line(FileNotFoundError(2, "No such file or directory", "/x")) == (
        "/x: No such file or directory"
    )


def test_a_process_group_sigterm_stops_the_sweep_with_the_job_checkpointed(
    corpus: str, tmp_path: Path
) -> None:
    """SIGTERM to the sweep's whole process group (Slurm preemption, `scancel`, `kill -- -PGID`)
    reaches the running job once, through the sweep: the job stops after its step with a
    checkpoint (long before `checkpoint_every`), and the sweep starts no further job."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from mtv.train import latest_checkpoint

    sweep = tmp_path / "sweep.yaml"
    sets = [
        f"data.source.root={corpus}",
        "data.loader.workers=0",
        "schedule.steps=400",
        "output.checkpoint_every=1000",
        "output.log_every=1",
    ]
    sweep.write_text(
        f"name: preempted\nout: {tmp_path / 'runs'}\nexperiments: [{SMOKE}]\nseeds: [0, 1]\n"
        f"set: [{', '.join(sets)}]\neval: {{suite: mini, scenes: 4}}\n"
    )
    first, second = (tmp_path / "runs" / "smoke" / f"seed-{s}" for s in (0, 1))
    process = subprocess.Popen(
        [sys.executable, "-m", "mtv_cli.main", "sweep", str(sweep)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a batch job's
    )
    deadline = time.monotonic() + 300
    log = first / "sweep.log"
    while not (log.is_file() and "step 3/400" in log.read_text(errors="replace")):
        assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()  # type: ignore[union-attr]
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGTERM)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGTERM, output
    assert "stopped by SIGTERM" in output and "resumes the sweep" in output
    checkpoint = latest_checkpoint(first)
    assert checkpoint is not None, (first / "sweep.log").read_text()
    assert 3 <= int(checkpoint.name.rsplit("-", 1)[1]) < 400
    assert not second.exists()  # no job started after the stop


def test_a_yaml_alias_bomb_is_one_error_at_once(tmp_path: Path) -> None:
    """Nine levels of nine aliases (9^9 values once expanded) parse instantly in PyYAML but
    hung `spec validate` in the provenance walk; now they are one error naming the file."""
    import time

    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for level in range(1, 9):
        refs = ", ".join([f"*a{level - 1}"] * 9)
        lines.append(f"a{level}: &a{level} [{refs}]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("name: bomb\ntasks: [vl]\n" + "\n".join(lines) + "\n")
    started = time.monotonic()
    with pytest.raises(SpecError, match=r"expands to more than 100,000 values") as caught:
        load_spec(bomb)
    assert time.monotonic() - started < 10
    assert str(bomb) in str(caught.value)
    result = CliRunner().invoke(app, ["spec", "validate", str(bomb)])
    assert result.exit_code == 2 and "YAML aliases" in result.output


def test_overwrite_never_deletes_a_folder_without_mtvs_marker(tmp_path: Path) -> None:
    """--overwrite once decided by entry names: a folder of the user's own `shards/` and
    `labels.zarr` looked like a corpus and was replaced. Only mtv's marker counts now."""
    mine = tmp_path / "mine"
    (mine / "shards").mkdir(parents=True)
    (mine / "shards" / "my-own-000.tar").write_bytes(b"my shard \x00\x01" * 100)
    (mine / "labels.zarr" / "depth").mkdir(parents=True)
    (mine / "labels.zarr" / "zarr.json").write_text('{"mine": true}')
    (mine / "labels.zarr" / "depth" / "c0").write_bytes(b"\x07" * 64)

    def snapshot() -> dict[str, bytes | None]:
        return {
            str(p.relative_to(mine)): p.read_bytes() if p.is_file() else None
            for p in sorted(mine.rglob("*"))
        }

    before = snapshot()
    result = runner.invoke(app, ["world", "render", str(mine), "--n", "2", "--overwrite"])
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.split())
    assert "not deleted" in said and "MTV_CORPUS.json" in said and "mine" in said
    assert snapshot() == before

    corpus = tmp_path / "corpus"
    args = ["world", "render", str(corpus), "--size", "16"]
    assert runner.invoke(app, [*args, "--n", "2"]).exit_code == 0
    assert (corpus / "MTV_CORPUS.json").is_file()
    (corpus / "stale.txt").write_text("from the first render")
    result = runner.invoke(app, [*args, "--n", "3", "--overwrite"])
    assert result.exit_code == 0, result.output
    assert not (corpus / "stale.txt").exists()
    assert json.loads((corpus / "world.json").read_text())["images"] == 3


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_a_loader_worker_error_ends_the_run_with_its_workers(
    corpus: str, tmp_path: Path, workers: int
) -> None:
    """A damaged label chunk read in a loader worker (or in the main process, 0 workers): the
    run prints the error as one line and exits non-zero, its worker processes gone (it printed
    the error, then waited forever)."""
    import shutil
    import subprocess
    import sys

    copy = tmp_path / "mini"
    shutil.copytree(corpus, copy)
    store = next(copy.glob("labels-*.zarr"))
    for chunk in (store / "depth" / "c").rglob("*"):
        if chunk.is_file():
            chunk.write_bytes(b"not a zstd frame")
    run = tmp_path / "run"
    sets = [f"data.source.root={copy}", f"data.loader.workers={workers}", "schedule.steps=20"]
    command = [sys.executable, "-m", "mtv_cli.main", "run", str(SMOKE), "--out", str(run)]
    done = subprocess.run(
        [*command, *(x for s in sets for x in ("--set", s))],
        capture_output=True,
        text=True,
        timeout=240,  # the old code never exited
    )
    assert done.returncode != 0
    output = done.stdout + done.stderr
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "the depth of sample" in errors[0], output
    assert "cannot be read" in errors[0] and "mtv label check" in errors[0], output
    assert "Traceback" not in done.stdout + done.stderr
    left = subprocess.run(["pgrep", "-f", str(run)], capture_output=True, text=True)
    assert left.stdout.strip() == "", left.stdout  # no worker outlived the run


@pytest.mark.parametrize("damage", ["entry removed", "version 1"])
def test_a_damaged_sidecar_is_never_trusted(tmp_path: Path, damage: str) -> None:
    """A sidecar that lost a member's entry (the shard's size unchanged) trained on 49 of 50
    samples and `mtv data index` called it up to date; one written before sidecars carried a
    digest cannot be checked. Both are scanned over with a warning and rewritten by the index."""
    from mtv.data import StaleIndexWarning
    from mtv.data.shard_index import read_sidecar, sidecar_url
    from tests.test_sources import sample_members, write_shard

    shard = tmp_path / "shard-0000.tar"
    members = [m for k in range(5) for m in sample_members(f"k{k}", _png((8, 8)), f"cap {k}")]
    write_shard(shard, members)
    TarShardSource([str(shard)]).write_sidecars()
    sidecar = Path(sidecar_url(str(shard)))
    document = json.loads(sidecar.read_text())
    if damage == "entry removed":
        for column in ("names", "offsets", "sizes"):
            document[column] = document[column][:2] + document[column][4:]  # sample k1 gone
    else:
        document["version"] = 1
        del document["digest"]
    sidecar.write_text(json.dumps(document))
    with pytest.warns(StaleIndexWarning, match="digest"):
        keys = TarShardSource([str(shard)]).keys()
    assert keys == [f"k{k}" for k in range(5)]  # every sample, as a scan finds them
    result = CliRunner().invoke(app, ["data", "index", str(shard)])
    assert result.exit_code == 0 and "wrote 1 sidecar(s)" in result.output, result.output
    listing = read_sidecar(str(shard))
    assert listing is not None and listing.stale is None and len(listing.members) == 10


STUCK_TASK = '''
"""A task whose step never ends once the run is told to stop (a stand-in for a spec too large for
the machine, or a hung collective)."""
import os
import time
from typing import Any, Literal

from mtv.specs.tasks import TaskSpecBase
from mtv.tasks import GLOBAL, Task, TaskNeeds, TaskOutput, register_task


class StuckSpec(TaskSpecBase):
    kind: Literal["stuck"] = "stuck"


@register_task
class Stuck(Task):
    spec_class = StuckSpec

    @classmethod
    def needs_for(cls, spec: Any, env: Any) -> TaskNeeds:
        return TaskNeeds(student_views=frozenset({GLOBAL}), token_views=frozenset({GLOBAL}))

    def forward(self, inputs: Any) -> TaskOutput:
        if os.path.exists(os.environ["STUCK_FLAG"]):
            time.sleep(3600)
        return TaskOutput(inputs.student[GLOBAL].tokens.float().pow(2).mean())
'''


def test_a_stop_does_not_wait_past_its_deadline_for_a_step_that_never_ends(
    corpus: str, tmp_path: Path
) -> None:
    """`timeout 300 mtv run` with a step that never ended ran for an hour: SIGTERM waited for
    it. Now the run exits 128 + SIGTERM once `runtime.stop_deadline` has passed, naming it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    (tmp_path / "stuck_task.py").write_text(STUCK_TASK)
    (tmp_path / "stuck.yaml").write_text(
        f"extends: {SMOKE}\nname: stuck\nimports: [stuck_task]\n"
        f"data: {{source: {{root: {corpus}}}, loader: {{workers: 0}}}}\n"
        "tasks: [vl, stuck]\nschedule: {steps: 1000}\nruntime: {stop_deadline: 3}\n"
        "output: {log_every: 1}\n"
    )
    flag = tmp_path / "stuck-now"
    process = subprocess.Popen(
        [sys.executable, "-m", "mtv_cli.main", "run", "stuck.yaml", "--out", "run"],
        cwd=tmp_path,
        env={**os.environ, "STUCK_FLAG": str(flag)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not (tmp_path / "run" / "metrics.parquet").is_file():
        assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()  # type: ignore[union-attr]
        time.sleep(0.2)
    flag.touch()  # the next step hangs
    time.sleep(2)
    process.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    try:
        output, _ = process.communicate(timeout=120)
    finally:
        process.kill()  # a run still stuck (the bug) is not left behind
    waited = time.monotonic() - sent
    assert process.returncode == 128 + signal.SIGTERM, output
    assert "did not end within 3 s (runtime.stop_deadline)" in output
    assert "--resume continues from there" in output
    assert 2.5 < waited < 60


def test_a_datasets_parquet_with_image_paths_is_read_from_its_folder(tmp_path: Path) -> None:
    """`datasets` writes images it did not embed as {bytes: null, path}: every sample was
    unusable ("no image bytes"). Relative paths are read against the Parquet file's folder (or
    `image_root`), may not leave it, and a missing file is a named, skipped sample."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mtv.data import open_source
    from mtv.data.sources import UnusableSample
    from mtv.specs.experiment import ParquetSourceSpec

    folder = tmp_path / "ds"
    (folder / "images").mkdir(parents=True)
    images = {}
    for i in range(3):
        images[i] = _png((8 + i, 8))
        (folder / "images" / f"{i}.png").write_bytes(images[i])
    (tmp_path / "secret.png").write_bytes(_png((5, 5)))
    rows = [
        {"bytes": None, "path": "images/0.png"},
        {"bytes": None, "path": str(folder / "images" / "1.png")},  # absolute, as datasets writes
        {"bytes": images[2], "path": "images/2.png"},  # embedded: the bytes win
        {"bytes": None, "path": "../secret.png"},  # leaves the folder
        {"bytes": None, "path": "images/gone.png"},
    ]
    table = pa.table({"image": rows, "text": [f"photo {i}" for i in range(5)]})
    pq.write_table(table, folder / "train-00000.parquet")
    source = open_source(ParquetSourceSpec(urls=[str(folder / "train-00000.parquet")]))
    for i in range(3):
        assert source.get(f"train-00000/{i}").image == images[i]
    with pytest.raises(UnusableSample, match=r"'\.\./secret\.png' leaves the image root"):
        source.get("train-00000/3")
    with pytest.raises(UnusableSample, match=r"gone\.png \(FileNotFoundError\)"):
        source.get("train-00000/4")
    # With an image root, absolute paths outside it are refused too.
    rooted = open_source(
        ParquetSourceSpec(urls=[str(folder / "train-00000.parquet")], image_root=str(folder))
    )
    assert rooted.get("train-00000/1").image == images[1]
    outside = tmp_path / "other"
    confined = open_source(
        ParquetSourceSpec(urls=[str(folder / "train-00000.parquet")], image_root=str(outside))
    )
    with pytest.raises(UnusableSample, match="leaves the image root"):
        confined.get("train-00000/1")


def _folder_depth_labelling(tmp_path: Path, images: dict[str, bytes], resolution: int) -> LabelSpec:
    """A folder `tmp_path/photos` of `images` (file name -> bytes) with a caption each, and the
    job that labels its depth with the tiny Depth Anything into `tmp_path/labels.zarr`."""
    from tests.tiny_hf import build_tiny_depth_anything

    photos = tmp_path / "photos"
    photos.mkdir()
    lines = []
    for name, data in images.items():
        (photos / name).write_bytes(data)
        lines.append(json.dumps({"file": name, "caption": f"a photo {name}"}))
    (photos / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return LabelSpec.model_validate(
        {
            "source": {"kind": "folder", "root": str(photos)},
            "output": str(tmp_path / "labels.zarr"),
            "depth": {"kind": "depth_anything", "model": str(build_tiny_depth_anything(tmp_path))},
            "boxes": None,
            "resolution": resolution,
            "chunk_size": 2,
        }
    )


def test_a_source_in_which_no_image_decodes_is_refused_by_label_and_check(
    tmp_path: Path,
) -> None:
    """Labelling a folder of files that are not images finished "successfully" with a store of
    nothing; now `mtv label` ends with one error naming why, and `mtv label check` fails too."""
    from mtv.label import run_labelling
    from mtv.label.check import check_store
    from mtv.label.pipeline import LabelSpecError

    images = {f"{i}.png": b"not a png at all " * 4 for i in range(3)}
    spec = _folder_depth_labelling(tmp_path, images, resolution=16)
    with pytest.raises(LabelSpecError, match=r"no image of the source decoded \(3 sample\(s\)\)"):
        run_labelling(spec)
    from mtv.data.store import LabelStore

    store = LabelStore.open(tmp_path / "labels.zarr")  # kept on disk, as written
    fatal = [p for p in check_store(store) if p.fatal]
    assert any("no image of the 3 sample(s) decoded" in p.message for p in fatal)
    result = CliRunner().invoke(app, ["label", "check", str(tmp_path / "labels.zarr")])
    assert result.exit_code != 0


def test_a_label_store_has_one_writer_and_survives_a_killed_creation(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Two labelling jobs wrote into one store at once; a creation killed half-way left a
    folder no later job could open or replace. Now the store is locked as a run directory is,
    and it is built aside and moved into place whole."""
    from mtv.data.lock import ExclusiveLock
    from mtv.label import run_labelling
    from mtv.label.check import check_store
    from mtv.label.pipeline import LabelSpecError
    from mtv.specs.label import LabelSpec
    from mtv.world.corpus import render_corpus

    corpus = tmp_path_factory.mktemp("world") / "mini"
    render_corpus(corpus, 8, size=16, seed=2)
    output = tmp_path / "labels.zarr"
    spec = LabelSpec.model_validate(
        {
            "source": {"kind": "miniworld", "root": str(corpus)},
            "output": str(output),
            "resolution": 8,
            "chunk_size": 4,
        }
    )
    holder = ExclusiveLock.for_store(output)
    holder.acquire("mtv label (another job)")
    try:
        with pytest.raises(LabelSpecError, match=r"labels\.zarr is in use by pid \d+"):
            run_labelling(spec)
    finally:
        holder.release()
    assert not output.exists()  # the refused job wrote nothing
    # The same with the holder in another process (as two `mtv label` commands are).
    import subprocess
    import sys

    hold = (
        "import sys, time; from pathlib import Path; from mtv.data.lock import ExclusiveLock; "
        "lock = ExclusiveLock.for_store(Path(sys.argv[1])); lock.acquire('mtv label (other)'); "
        "print('held', flush=True); time.sleep(120)"
    )
    other = subprocess.Popen(
        [sys.executable, "-c", hold, str(output)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert other.stdout is not None and other.stdout.readline().strip() == "held"
        with pytest.raises(LabelSpecError, match=rf"labels\.zarr is in use by pid {other.pid}"):
            run_labelling(spec)
    finally:
        other.kill()
        other.wait()
    assert not output.exists()
    # A creation killed half-way: only the aside folder, which the next job starts over.
    partial = tmp_path / "labels.zarr.partial"
    partial.mkdir()
    (partial / "zarr.json").write_text("{half")
    store, stats = run_labelling(spec)
    assert stats.images == 8 and check_store(store) == [] and not partial.exists()
    # A folder that is not a store is named, not overwritten.
    (tmp_path / "junk.zarr").mkdir()
    (tmp_path / "junk.zarr" / "mine.txt").write_text("keep me")
    junk = spec.model_copy(update={"output": str(tmp_path / "junk.zarr")})
    with pytest.raises(LabelSpecError, match=r"junk\.zarr exists but is not a label store"):
        run_labelling(junk)
    assert (tmp_path / "junk.zarr" / "mine.txt").read_text() == "keep me"


def test_a_huge_caption_is_cut_before_it_is_encoded() -> None:
    """A 10 MB caption took training to 3.0 GB in encodings of tokens the context cuts off. The
    tokenizer now encodes (and trains on) at most 32 characters per context token, and a long
    but ordinary caption gives exactly the ids it gave uncut."""
    from mtv.models.tokenizer import CHARS_PER_CONTEXT_TOKEN, TextTokenizer

    words = ["red", "cube", "on", "a", "floor", "and", "blue", "sphere"]
    ordinary = " ".join(words[i % len(words)] for i in range(2000))
    tokenizer = TextTokenizer.train([ordinary, "x" * 10_000_000], 300, 16)
    inner = tokenizer.tokenizer
    lengths: list[int] = []

    class Spy:
        """The tokenizer, with the texts handed to encode_batch recorded."""

        def encode_batch(self, texts):
            lengths.extend(len(t) for t in texts)
            return inner.encode_batch(texts)

    tokenizer.tokenizer = Spy()  # type: ignore[assignment]
    rows = tokenizer(["y" * 10_000_000, ordinary])
    assert max(lengths) == CHARS_PER_CONTEXT_TOKEN * 16
    assert rows[1].tolist() == [*inner.encode(ordinary).ids[:15], tokenizer.eos_id]


def test_imports_come_from_beside_the_spec_not_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`imports:` searched the working folder first and put it on sys.path for good: a module
    that happened to lie where the command ran was imported (and run). Now a module is found
    beside the spec that names it, or installed; the resolved spec names its file, so a run's
    spec.yaml imports the same file from anywhere; sys.path is left alone."""
    import sys

    from mtv.specs import spec_to_yaml

    module = "hostile_probe_task_{}"
    specs, elsewhere = tmp_path / "specs", tmp_path / "elsewhere"
    specs.mkdir()
    elsewhere.mkdir()
    beside = module.format("beside")
    (specs / f"{beside}.py").write_text("LOADED = True\n")
    stray = module.format("stray")
    (elsewhere / f"{stray}.py").write_text("raise SystemExit('the working folder was searched')\n")
    monkeypatch.chdir(elsewhere)
    path_before = list(sys.path)
    (specs / "ok.yaml").write_text(f"name: ok\ntasks: [vl]\nimports: [{beside}]\n")
    spec = load_spec(specs / "ok.yaml")
    assert spec.imports == [str((specs / f"{beside}.py").resolve())]
    assert sys.modules[beside].LOADED and sys.path == path_before
    (specs / "stray.yaml").write_text(f"name: s\ntasks: [vl]\nimports: [{stray}]\n")
    with pytest.raises(SpecError, match=rf"imports: cannot import '{stray}'"):
        load_spec(specs / "stray.yaml")
    assert stray not in sys.modules
    # The resolved spec (what a run directory keeps) imports the same file from anywhere.
    saved = tmp_path / "run" / "spec.yaml"
    saved.parent.mkdir()
    saved.write_text(spec_to_yaml(spec))
    monkeypatch.chdir(tmp_path)
    assert load_spec(saved).imports == spec.imports


def test_changed_samples_are_relabelled_on_request_with_the_store_keeping_the_record(
    tmp_path: Path,
) -> None:
    """A source whose samples were edited (same keys, other images) could only be refused or
    labelled again from nothing. `relabel_changed` labels the changed samples' chunks again,
    keeps every other chunk as it was, and records the relabelling in the store."""
    import numpy as np

    from mtv.data.store import LabelStore
    from mtv.label import run_labelling
    from mtv.label.check import check_store
    from mtv.label.pipeline import LabelSpecError, resolve_source

    rng = np.random.default_rng(0)

    def photo(side: int = 24) -> bytes:
        pixels = rng.integers(0, 255, (side, side, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        return buffer.getvalue()

    spec = _folder_depth_labelling(tmp_path, {f"{i}.png": photo() for i in range(6)}, resolution=8)
    store, _ = run_labelling(spec)
    before = store.root["depth"][:].copy()
    # edited: same key, another image (a folder source sees its size)
    (tmp_path / "photos" / "3.png").write_bytes(photo(side=30))
    with pytest.raises(LabelSpecError, match=r"1 sample\(s\).*differ.*relabel_changed=true"):
        run_labelling(spec)
    store, stats = run_labelling(spec.model_copy(update={"relabel_changed": True}))
    assert stats.chunks == 1  # only the chunk holding sample 3 (rows 2-3) was labelled again
    after = store.root["depth"][:]
    rows = {key: i for i, key in enumerate(store.keys)}
    changed = rows[next(k for k in store.keys if k.endswith("3.png") or k == "3")]
    assert not np.array_equal(after[changed], before[changed])
    untouched = [i for i in range(6) if i // 2 != changed // 2]
    np.testing.assert_array_equal(after[untouched], before[untouched])
    record = LabelStore.open(tmp_path / "labels.zarr").attrs["relabelled"]
    assert len(record) == 1 and record[0]["samples"] == 1 and record[0]["chunks"] == [changed // 2]
    source, _ = resolve_source(spec)
    assert check_store(store, source) == []  # the store matches the edited source again
    # A caption fixed (the case that locked stores): the same refusal, the same way out.
    metadata = tmp_path / "photos" / "metadata.jsonl"
    metadata.write_text(metadata.read_text().replace("a photo 5.png", "a photo of a cat"))
    with pytest.raises(LabelSpecError, match=r"1 sample\(s\).*differ"):
        run_labelling(spec)
    store, stats = run_labelling(spec.model_copy(update={"relabel_changed": True}))
    assert stats.chunks == 1
    record = LabelStore.open(tmp_path / "labels.zarr").attrs["relabelled"]
    assert len(record) == 2 and record[1]["samples"] == 1
    assert check_store(store, resolve_source(spec)[0]) == []


@pytest.mark.parametrize("name", ["../secret.safetensors", "/etc/passwd", "sub/../../x.bin"])
def test_a_sharded_index_cannot_name_a_file_outside_its_checkpoint(
    tmp_path: Path, name: str
) -> None:
    """`model.init_from`'s sharded index names its shard files; one that leads out of the
    checkpoint's folder is refused, naming the index, before anything is opened. Shards beside
    the index load."""
    pytest.importorskip("safetensors")
    import torch
    from safetensors.torch import save_file

    from mtv.models.hf_siglip import read_hf_siglip

    checkpoint = tmp_path / "siglip"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text(json.dumps({"model_type": "siglip"}))
    save_file({"vision_model.a": torch.ones(2)}, str(checkpoint / "part-1.safetensors"))
    save_file({"vision_model.b": torch.zeros(3)}, str(tmp_path / "secret.safetensors"))
    index = checkpoint / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"vision_model.a": "part-1.safetensors"}}))
    _, tensors = read_hf_siglip(checkpoint)
    assert set(tensors) == {"vision_model.a"}
    weights = {"vision_model.a": "part-1.safetensors", "vision_model.b": name}
    index.write_text(json.dumps({"weight_map": weights}))
    with pytest.raises(ValueError, match=r"model.safetensors.index.json: weight_map names"):
        read_hf_siglip(checkpoint)


def test_a_labelling_job_that_fails_before_its_first_image_leaves_no_empty_bar(
    tmp_path: Path,
) -> None:
    """The error is the last word: no empty `labelling ━━━ 0/?` bar printed under it."""
    import subprocess
    import sys

    spec = tmp_path / "label.yaml"
    spec.write_text(f"source: {{kind: folder, root: {tmp_path / 'absent'}}}\n")
    spec.write_text(spec.read_text() + f"output: {tmp_path / 'labels.zarr'}\n")
    mtv = str(Path(sys.executable).parent / "mtv")
    done = subprocess.run(
        [mtv, "label", "run", str(spec)], capture_output=True, text=True, timeout=300
    )
    output = done.stdout + done.stderr
    assert done.returncode == 2 and "image folder not found" in output, output
    assert "━" not in output and "0/?" not in output, output


def test_a_full_disk_is_one_line_naming_the_file_and_leaves_no_partial_write(
    corpus: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint or metrics write that the disk refuses (ENOSPC) ends the run with one line
    naming the file, its `.partial` removed, what was written before untouched (it surfaced as
    a library-internal message naming no file, and left the `.partial` folder)."""
    import errno

    import polars as pl

    import mtv.runs.checkpoint
    from mtv.train.metrics import MetricsHistoryError, MetricsLog

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    run = tmp_path / "run"
    monkeypatch.setattr(mtv.runs.checkpoint.torch, "save", full)
    result = runner.invoke(
        app,
        ["run", str(SMOKE), "--out", str(run), "--set", f"data.source.root={corpus}",
         "--set", "schedule.steps=2", "--set", "data.loader.workers=0"],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    final = run / "checkpoints" / "step-00000002"
    assert f"cannot write the checkpoint {final}: No space left on device" in result.output
    assert not list((run / "checkpoints").glob("*.partial"))

    log = MetricsLog(tmp_path / "metrics.parquet")
    log.add({"step": 1, "loss": 2.0})
    log.flush()
    log.add({"step": 2, "loss": 1.0})
    monkeypatch.setattr(pl.DataFrame, "write_parquet", full)
    with pytest.raises(MetricsHistoryError, match=r"cannot write .*metrics.parquet: No space"):
        log.flush()
    monkeypatch.undo()
    assert not (tmp_path / "metrics.partial").exists()
    assert pl.read_parquet(tmp_path / "metrics.parquet")["step"].to_list() == [1]


def test_a_resume_refuses_a_missing_or_holed_metrics_history(corpus: str, tmp_path: Path) -> None:
    """A missing metrics.parquet, or one without rows for steps the checkpoint trained, is never
    trusted: resuming would start the history at the resumed step (or keep its holes)."""
    import polars as pl

    from mtv.train import Trainer, TrainingError
    from tests.helpers import smoke

    run = tmp_path / "run"
    Trainer(smoke(corpus, "schedule.steps=3"), run, report=lambda m: None).run()
    history = run / "metrics.parquet"
    rows = pl.read_parquet(history)
    more = smoke(corpus, "schedule.steps=4")
    history.unlink()
    with pytest.raises(TrainingError, match=r"metrics\.parquet is missing, though the checkpoint"):
        Trainer(more, run, resume=True, report=lambda m: None)
    assert not history.exists()  # nothing written by the refused resume
    rows.filter(pl.col("step") != 2).write_parquet(history)
    with pytest.raises(TrainingError, match=r"has no rows for steps 2 of the 3"):
        Trainer(more, run, resume=True, report=lambda m: None)
    history.write_bytes(b"PAR1 cut short")  # unreadable: named, never trusted
    with pytest.raises(TrainingError, match=rf"{history} cannot be read"):
        Trainer(more, run, resume=True, report=lambda m: None)
    rows.write_parquet(history)  # the whole history back: the run resumes
    assert Trainer(more, run, resume=True, report=lambda m: None).run().steps == 4

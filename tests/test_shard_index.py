"""Sidecar shard indexes and parallel indexing: the same keys, spans, samples, problem reports
and duplicate-key errors as a sequential scan, stale sidecars caught, and the commands that
write them."""

from __future__ import annotations

import io
import re
import tarfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import fsspec
import pytest
from fsspec.implementations.local import LocalFileSystem
from mtv_cli.main import app
from typer.testing import CliRunner

from mtv.data import DuplicateKeyError, MemberRef, StaleIndexWarning, TarShardSource, open_source
from mtv.data.shard_index import (
    load_listing,
    ordered_map,
    read_sidecar,
    scan_shard,
    sidecar_url,
    write_sidecar,
)
from mtv.specs.experiment import ShardsSourceSpec
from mtv.world.corpus import WorldCorpus
from tests.test_sources import Problems, add, encode, noise, sample_members, write_shard

runner = CliRunner()


class SlowFileSystem(LocalFileSystem):
    """The local filesystem under `slowfile://`, where opening or reading a shard waits a
    delay that depends on its name (so shards listed in parallel finish out of order), and
    every ranged read is counted."""

    protocol = ("slowfile",)
    reads: ClassVar[list[tuple[str, int | None, int | None]]] = []

    def _delay(self, path: str) -> None:
        digits = "".join(c for c in Path(str(path)).name if c.isdigit()) or "0"
        time.sleep((int(digits) * 7 % 5) * 0.004)

    def _open(self, path, mode="rb", block_size=None, **kwargs):  # type: ignore[no-untyped-def]
        self._delay(path)
        return super()._open(path, mode, block_size, **kwargs)

    def cat_file(self, path, start=None, end=None, **kwargs):  # type: ignore[no-untyped-def]
        self._delay(path)
        SlowFileSystem.reads.append((str(path), start, end))
        return super().cat_file(path, start, end, **kwargs)


fsspec.register_implementation("slowfile", SlowFileSystem, clobber=True)


def png(seed: int) -> bytes:
    return encode(noise(seed, 8), "PNG")


def mixed_corpus(root: Path, n_shards: int = 12) -> list[str]:
    """Shards with every kind of problem the index reports: incomplete samples, an unsafe
    member name, members without an extension, a directory, a shard cut inside a header and
    one cut inside a sample's data."""
    urls = []
    for shard in range(n_shards):
        path = root / f"shard-{shard:04d}.tar"
        with tarfile.open(path, "w") as tar:
            directory = tarfile.TarInfo(f"dir{shard}")
            directory.type = tarfile.DIRTYPE
            tar.addfile(directory)
            for item in range(3):
                key = f"{shard:04d}-{item}"
                for name, data in sample_members(key, png(shard * 3 + item), f"c {key}", meta={}):
                    add(tar, name, data)
            if shard % 4 == 1:
                add(tar, f"{shard:04d}-lonely.txt", b"no image")
                add(tar, "../escape.png", png(0))
                add(tar, "README", b"no extension")
            if shard % 5 == 2:
                add(tar, f"{shard:04d}-twice.png", png(1))
                add(tar, f"{shard:04d}-twice.jpg", png(2))
                add(tar, f"{shard:04d}-twice.txt", b"two images")
        urls.append(str(path))
    if n_shards > 3:
        with tarfile.open(urls[3]) as tar:
            header_cut = tar.getmember("0003-2.png").offset + 100
        Path(urls[3]).write_bytes(Path(urls[3]).read_bytes()[:header_cut])
    if n_shards > 7:
        with tarfile.open(urls[7]) as tar:
            data_cut = tar.getmember("0007-1.txt").offset_data + 2
        Path(urls[7]).write_bytes(Path(urls[7]).read_bytes()[:data_cut])
    return urls


def indexed(
    urls: list[str], **options: object
) -> tuple[TarShardSource, dict[str, MemberRef], Problems]:
    """A source with its index built once, the index, and what building it reported."""
    problems = Problems()
    source = TarShardSource(urls, on_problem=problems, **options)  # type: ignore[arg-type]
    return source, source.build_index(), problems


def test_sidecars_give_exactly_the_index_keys_samples_and_problems_of_a_scan(
    tmp_path: Path,
) -> None:
    urls = mixed_corpus(tmp_path)
    scanned, scan_index, scan_problems = indexed(urls, sidecars=False, index_threads=1)
    assert scan_problems and any("ends early" in why for _, why in scan_problems)
    assert any(where == f"{urls[3]}" for where, _ in scan_problems)
    assert any("damaged shard" in why and where == urls[7] for where, why in scan_problems)
    report = TarShardSource(urls, on_problem=Problems()).write_sidecars()
    assert (report.shards, report.written, report.kept) == (12, 12, 0)
    assert report.samples == len(scanned.keys())
    for url in urls:
        assert load_listing(url).from_sidecar  # used, not scanned again
        assert load_listing(url).members == scan_shard(url).members
    for threads in (1, 6):
        from_sidecars, index, problems = indexed(urls, index_threads=threads)
        assert index == scan_index
        assert from_sidecars.keys() == scanned.keys()
        assert problems == scan_problems
        for key in scan_index:
            assert from_sidecars.get(key) == scanned.get(key)
            assert from_sidecars.fingerprint(key) == scanned.fingerprint(key)
    streamed = [s.key for s in TarShardSource(urls, on_problem=Problems())]
    assert streamed == scanned.keys()


def test_a_sidecar_is_what_the_index_is_built_from(tmp_path: Path) -> None:
    """Proof the sidecar is read (not the shard): names changed in it, at the same shard size,
    become the keys; reading such a sample then fails on the header check."""
    urls = mixed_corpus(tmp_path, 2)
    TarShardSource(urls, on_problem=Problems()).write_sidecars()
    # A well-formed sidecar (its digest matches) whose names differ from the shard's headers.
    listing = scan_shard(urls[0])
    renamed = [
        span._replace(name=span.name.replace("0000-0", "renamed")) for span in listing.members
    ]
    write_sidecar(replace(listing, members=tuple(renamed)))
    source = TarShardSource(urls, on_problem=Problems())
    keys = source.keys()
    assert "renamed" in keys and "0000-0" not in keys
    with pytest.raises(ValueError, match="no longer matches its index"):
        source.get("renamed")
    assert source.get("0000-1").caption == "c 0000-1"


def test_a_stale_sidecar_is_detected_and_the_shard_scanned(tmp_path: Path) -> None:
    urls = mixed_corpus(tmp_path, 3)
    TarShardSource(urls, on_problem=Problems()).write_sidecars()
    # The shard rewritten with other samples (another size): its sidecar no longer fits.
    write_shard(Path(urls[1]), sample_members("fresh", png(9), "rewritten"))
    problems = Problems()
    source = TarShardSource(urls, on_problem=problems)
    with pytest.warns(StaleIndexWarning, match=r"shard-0001\.tar.*written for a shard of"):
        keys = source.keys()
    assert "fresh" in keys and "0001-0" not in keys
    assert source.get("fresh").caption == "rewritten"
    assert keys == TarShardSource(urls, sidecars=False, on_problem=Problems()).keys()
    assert not load_listing(urls[1]).from_sidecar
    # A sidecar that is not one is passed over the same way.
    Path(sidecar_url(urls[2])).write_text("{not json")
    with pytest.warns(StaleIndexWarning) as caught:
        assert TarShardSource(urls, on_problem=Problems()).keys() == keys
    assert len(caught) == 1  # one warning for the corpus
    assert "of 2 shard(s)" in str(caught[0].message)
    assert re.search(r"shard-0002\.tar \(it cannot be read", str(caught[0].message))
    refreshed = TarShardSource(urls, on_problem=Problems()).write_sidecars()
    assert (refreshed.written, refreshed.kept) == (2, 1)
    listing = read_sidecar(urls[1])
    assert listing is not None and listing.stale is None and listing.from_sidecar
    assert [span.name for span in listing.members] == ["fresh.png", "fresh.txt"]


def test_parallel_indexing_equals_sequential_on_shards_that_finish_out_of_order(
    tmp_path: Path,
) -> None:
    urls = [f"slowfile://{url}" for url in mixed_corpus(tmp_path, 20)]
    for sidecars in (False, True):
        if sidecars:
            TarShardSource(urls, on_problem=Problems()).write_sidecars()
        sequential, seq_index, seq_problems = indexed(urls, index_threads=1, sidecars=sidecars)
        parallel, par_index, par_problems = indexed(urls, index_threads=8, sidecars=sidecars)
        assert parallel.keys() == sequential.keys()
        assert par_index == seq_index
        assert par_problems == seq_problems
        assert [where for where, _ in par_problems if where.startswith("slowfile")] == [
            f"{urls[1]}:../escape.png",
            urls[3],
            f"{urls[5]}:../escape.png",
            urls[7],
            f"{urls[9]}:../escape.png",
            f"{urls[13]}:../escape.png",
            f"{urls[17]}:../escape.png",
        ]


def test_parallel_indexing_raises_the_sequential_errors_after_the_same_reports(
    tmp_path: Path,
) -> None:
    urls = mixed_corpus(tmp_path, 16)
    again = write_shard(tmp_path / "again.tar", sample_members("0004-1", png(0), "duplicate"))
    with_duplicate = [*urls[:10], again, *urls[10:]]
    missing = str(tmp_path / "missing.tar")
    outcomes = []
    for threads in (1, 8):
        problems = Problems()
        with pytest.raises(DuplicateKeyError) as raised:
            TarShardSource(with_duplicate, on_problem=problems, index_threads=threads).keys()
        outcomes.append((str(raised.value), list(problems)))
        # An error of an earlier shard comes first, whatever thread met its own first.
        with pytest.raises(FileNotFoundError, match="shard not found"):
            TarShardSource(
                [*urls[:2], missing, *with_duplicate[2:]],
                on_problem=Problems(),
                index_threads=threads,
            ).keys()
        with pytest.raises(DuplicateKeyError):
            TarShardSource(
                [*with_duplicate, missing], on_problem=Problems(), index_threads=threads
            ).keys()
    assert outcomes[0] == outcomes[1]
    assert urls[4] in outcomes[0][0] and again in outcomes[0][0]
    assert any(where.startswith(urls[9]) for where, _ in outcomes[0][1])


def test_ordered_map_keeps_order_raises_in_place_and_stops_early() -> None:
    started: list[int] = []
    lock = threading.Lock()

    def work(item: int) -> int:
        with lock:
            started.append(item)
        time.sleep((10 - item % 10) * 0.002)  # later items finish first
        if item == 25:
            raise RuntimeError("item 25")
        return item * item

    assert list(ordered_map(work, range(20), threads=4)) == [i * i for i in range(20)]
    results = []
    with pytest.raises(RuntimeError, match="item 25"):
        for value in ordered_map(work, range(1000), threads=4):
            results.append(value)
    assert results == [i * i for i in range(25)]
    assert len(started) < 20 + 25 + 4 * 4 + 4 + 1  # not all 1,000 were started


def test_mtv_data_index_writes_the_sidecars(tmp_path: Path) -> None:
    urls = mixed_corpus(tmp_path, 4)
    pattern = str(tmp_path / "shard-{0000..0003}.tar")
    result = runner.invoke(app, ["data", "index", pattern, "--threads", "3"])
    assert result.exit_code == 0, result.output
    assert "4 shard(s)" in result.output and "wrote 4 sidecar(s)" in result.output
    assert "1 damaged shard(s)" not in result.output  # the cut shards end early, not damaged
    for url in urls:
        listing = read_sidecar(url)
        assert listing is not None and listing.stale is None
        assert listing.members == scan_shard(url).members
    again = runner.invoke(app, ["data", "index", pattern])
    assert "wrote 0 sidecar(s), 4 already up to date" in again.output
    forced = runner.invoke(app, ["data", "index", pattern, "--force"])
    assert "wrote 4 sidecar(s)" in forced.output
    gz = tmp_path / "s.tar.gz"
    write_shard(gz, sample_members("k", png(0), "gz"), mode="w:gz")
    refused = runner.invoke(app, ["data", "index", str(gz)])
    assert refused.exit_code != 0 and "uncompressed" in str(refused.exception)
    assert not Path(sidecar_url(str(gz))).exists()


def test_mtv_world_render_writes_the_sidecars(tmp_path: Path) -> None:
    out = tmp_path / "w"
    args = ["world", "render", str(out), "--n", "5", "--size", "16", "--shard-size", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    shards = WorldCorpus.open(out).shards
    assert len(shards) == 3
    for shard in shards:
        listing = load_listing(shard)
        assert listing.from_sidecar and listing.members == scan_shard(shard).members
    keys = TarShardSource(shards).keys()
    assert len(keys) == 5 and keys == TarShardSource(shards, sidecars=False).keys()


def test_a_sample_is_one_ranged_read_and_the_spec_sets_the_threads(tmp_path: Path) -> None:
    big = b"x" * 200_000
    members = [
        *sample_members("near", png(1), "adjacent", meta={"a": 1}),
        ("far.png", png(2)),
        ("far.npy", big),  # not read: the caption behind it is fetched on its own
        ("far.txt", b"far caption"),
    ]
    url = "slowfile://" + write_shard(tmp_path / "s-0.tar", members)
    source = TarShardSource(url)
    source.build_index()
    SlowFileSystem.reads.clear()
    assert source.get("near").meta == {"a": 1}
    assert len(SlowFileSystem.reads) == 1
    SlowFileSystem.reads.clear()
    assert source.get("far").caption == "far caption"
    assert len(SlowFileSystem.reads) == 2
    assert all(end - start < 10_000 for _, start, end in SlowFileSystem.reads)  # type: ignore[operator]
    spec = ShardsSourceSpec(urls=[url], index_threads=3)
    assert open_source(spec).index_threads == 3  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="index_threads"):
        ShardsSourceSpec(urls=[url], index_threads=0)
    with pytest.raises(ValueError, match="index_threads"):
        TarShardSource(url, index_threads=0)


def test_a_source_pickled_after_reading_reads_the_same_samples(tmp_path: Path) -> None:
    """Pickled (DataLoader workers) after reading, the source reads again from the same index."""
    import pickle

    url = write_shard(tmp_path / "p.tar", sample_members("k", png(3), "pickled"))
    source = TarShardSource(url)
    first = source.get("k")
    copy = pickle.loads(pickle.dumps(source))
    assert copy.get("k") == first and copy.keys() == ["k"]


def test_members_of_every_size_read_back_as_written(tmp_path: Path) -> None:
    data = {f"m{i}": bytes([i]) * (i * 300 + 1) for i in range(5)}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for key, payload in data.items():
            add(tar, f"{key}.png", payload)
            add(tar, f"{key}.txt", key.encode())
    path = tmp_path / "b.tar"
    path.write_bytes(buffer.getvalue())
    source = TarShardSource(str(path))
    TarShardSource(str(path)).write_sidecars()
    for key, payload in data.items():
        assert source.get(key).image == payload and source.get(key).caption == key

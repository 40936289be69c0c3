"""Image-text sources on real files: tar shards, image folders, fsspec memory://, real photos."""

from __future__ import annotations

import io
import json
import pickle
import random
import tarfile
import warnings
from pathlib import Path

import fsspec
import numpy as np
import polars as pl
import pytest
from PIL import Image, ImageFile

import mtv.data.sources as sources_module
from mtv.data import (
    CorruptImageError,
    DuplicateKeyError,
    FolderSource,
    Sample,
    SkippedSampleWarning,
    TarShardSource,
    decode_image,
    expand_braces,
    open_source,
)
from mtv.specs.experiment import (
    FolderSourceSpec,
    MiniWorldSourceSpec,
    ParquetSourceSpec,
    ShardsSourceSpec,
)


def noise(seed: int, size: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def smooth(seed: int, size: int = 16) -> np.ndarray:
    """A gradient: JPEG keeps it within a few grey levels, unlike noise."""
    ramp = np.linspace(0, 200, size, dtype=np.float64)
    image = ramp[None, :, None] + ramp[:, None, None] * 0.2 + np.array([seed * 10, 20, 40])
    return image.clip(0, 255).astype(np.uint8)


def encode(array: np.ndarray, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shard(path: Path, members: list[tuple[str, bytes]], mode: str = "w") -> str:
    with tarfile.open(path, mode) as tar:
        for name, data in members:
            add(tar, name, data)
    return str(path)


def sample_members(key: str, image: bytes, caption: str, ext: str = "png", meta=None):
    members = [(f"{key}.{ext}", image), (f"{key}.txt", caption.encode())]
    if meta is not None:
        members.append((f"{key}.json", json.dumps(meta).encode()))
    return members


class Problems(list):
    """An on_problem callback that records (key_or_location, reason)."""

    def __call__(self, where: str, reason: str) -> None:
        self.append((where, reason))


def test_shard_samples_keys_captions_meta_and_pixels(tmp_path: Path) -> None:
    png, jpeg = noise(0), smooth(1)
    members = [
        *sample_members("dir/000000", encode(png, "PNG"), "  a red cube\n", meta={"w": 16}),
        *sample_members("dir/000001", encode(jpeg, "JPEG", quality=95), "two spheres", "JPG"),
        ("dir/000001.cls", b"3"),  # unknown extensions are ignored, as in webdataset
        ("README", b"no extension: not a sample"),
    ]
    url = write_shard(tmp_path / "shard-0000.tar", members)
    problems = Problems()
    samples = list(TarShardSource([url], on_problem=problems))
    assert problems == []
    assert [s.key for s in samples] == ["dir/000000", "dir/000001"]
    first, second = samples
    assert (first.caption, first.meta, first.image_format) == ("a red cube", {"w": 16}, "png")
    assert (second.caption, second.meta, second.image_format) == ("two spheres", {}, "jpg")
    assert first.origin == url
    np.testing.assert_array_equal(decode_image(first), png)
    decoded = decode_image(second)
    assert decoded.shape == (16, 16, 3) and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - jpeg.astype(int)).mean() < 4


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("s-{0000..0003}.tar", ["s-0000.tar", "s-0001.tar", "s-0002.tar", "s-0003.tar"]),
        ("s{8..11}", ["s8", "s9", "s10", "s11"]),
        ("{a,b}/{01..02}", ["a/01", "a/02", "b/01", "b/02"]),
        ("x{1,{2,3}}", ["x1", "x2", "x3"]),
        ("{0..6..3}{,.bak}", ["0", "0.bak", "3", "3.bak", "6", "6.bak"]),
        ("{3..1}", ["3", "2", "1"]),
        ("plain.tar", ["plain.tar"]),
    ],
)
def test_expand_braces(pattern: str, expected: list[str]) -> None:
    assert expand_braces(pattern) == expected


@pytest.mark.parametrize("pattern", ["a{0..3", "a}0{", "{x}", "{}", "{a..f}", "{1..9..0}"])
def test_expand_braces_malformed(pattern: str) -> None:
    with pytest.raises(ValueError, match="malformed brace pattern"):
        expand_braces(pattern)


def test_truncated_images_fail_at_decode_naming_the_key(tmp_path: Path) -> None:
    jpeg, png = encode(smooth(0, 64), "JPEG"), encode(noise(1, 64), "PNG")
    members = [
        *sample_members("cut-jpeg", jpeg[: len(jpeg) // 2], "half a jpeg", "jpg"),
        *sample_members("cut-png", png[: len(png) // 2], "half a png"),
        *sample_members("garbage", b"not an image at all", "junk", "webp"),
    ]
    url = write_shard(tmp_path / "s.tar", members)
    samples = list(TarShardSource(url))
    assert [s.key for s in samples] == ["cut-jpeg", "cut-png", "garbage"]
    for sample in samples:
        with pytest.raises(CorruptImageError, match=sample.key) as raised:
            decode_image(sample)
        assert raised.value.key == sample.key and raised.value.origin == url
        assert str(pickle.loads(pickle.dumps(raised.value))) == str(raised.value)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # never switched on as a side effect


def test_truncated_flag_set_elsewhere_is_warned_about(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    monkeypatch.setattr(sources_module, "_warned_truncated_flag", False)
    sample = Sample("k", encode(noise(0), "PNG"), "c")
    with pytest.warns(RuntimeWarning, match="LOAD_TRUNCATED_IMAGES"):
        decode_image(sample)


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "I;16"])
def test_decode_converts_other_modes_to_rgb(mode: str) -> None:
    if mode == "I;16":
        image = Image.fromarray(np.full((16, 16), 40000, dtype=np.uint16))
    else:
        image = Image.fromarray(noise(2)).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    decoded = decode_image(Sample("k", buffer.getvalue(), "c"))
    assert decoded.shape == (16, 16, 3) and decoded.dtype == np.uint8
    if mode == "I;16":
        assert (decoded == 40000 >> 8).all()  # scaled to 8 bits, not clipped at 255


def test_member_names_never_become_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    shard = tmp_path / "evil.tar"
    with tarfile.open(shard, "w") as tar:
        add(tar, "../evil.txt", b"escape")
        add(tar, "../evil.png", encode(noise(0), "PNG"))
        add(tar, "/tmp/mtv-absolute-evil.txt", b"absolute")
        for kind, name in [(tarfile.DIRTYPE, "d"), (tarfile.FIFOTYPE, "fifo.txt")]:
            info = tarfile.TarInfo(name)
            info.type = kind
            tar.addfile(info)
        link = tarfile.TarInfo("linked.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
        add(tar, "linked.txt", b"caption of a symlinked image")
        for name, data in sample_members("ok", encode(noise(1), "PNG"), "fine"):
            add(tar, name, data)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    problems = Problems()
    source = TarShardSource([str(shard)], on_problem=problems)
    assert [s.key for s in source] == ["ok"]
    assert source.get("ok") == next(iter(source))
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before  # nothing written anywhere
    assert not Path("/tmp/mtv-absolute-evil.txt").exists()
    assert not (tmp_path / "evil.txt").exists()
    flagged = {where.split(":", 1)[1] for where, _ in problems if ":" in where}
    assert {"../evil.txt", "../evil.png", "/tmp/mtv-absolute-evil.txt"} <= flagged
    assert ("linked", f"no image member (.jpg, .jpeg, .png or .webp) (shard {shard})") in problems


def test_duplicate_keys_name_both_shards(tmp_path: Path) -> None:
    png = encode(noise(0), "PNG")
    a = write_shard(tmp_path / "a.tar", sample_members("k1", png, "one"))
    b = write_shard(tmp_path / "b.tar", sample_members("k1", png, "again"))
    with pytest.raises(DuplicateKeyError, match="k1") as raised:
        list(TarShardSource([a, b]))
    assert a in str(raised.value) and b in str(raised.value)
    with pytest.raises(DuplicateKeyError, match=r"b\.tar"):
        TarShardSource([a, b]).build_index()
    split = sample_members("k1", png, "x") + sample_members("k2", png, "y")
    split.append(("k1.json", b"{}"))  # k1 again, after k2
    c = write_shard(tmp_path / "c.tar", split)
    with pytest.raises(DuplicateKeyError, match="twice in shard"):
        list(TarShardSource(c))


def corpus(tmp_path: Path, n_shards: int = 4, per_shard: int = 3) -> list[str]:
    urls = []
    for shard in range(n_shards):
        members = []
        for item in range(per_shard):
            index = shard * per_shard + item
            image = encode(noise(index), "PNG")
            members += sample_members(f"{index:06d}", image, f"caption {index}", meta={"i": index})
        urls.append(write_shard(tmp_path / f"shard-{shard:04d}.tar", members))
    return urls


def test_shuffled_shard_order_keeps_every_key_on_its_own_image(tmp_path: Path) -> None:
    urls = corpus(tmp_path)
    source = TarShardSource(str(tmp_path / "shard-{0000..0003}.tar"))
    assert source.shards == urls
    reference = {s.key: (s.image, s.caption, s.meta) for s in source}
    assert len(reference) == 12
    order = list(range(4))
    random.Random(0).shuffle(order)
    shuffled = TarShardSource([urls[i] for i in order])
    assert [s.key for s in shuffled] != list(reference)
    assert {s.key: (s.image, s.caption, s.meta) for s in shuffled} == reference
    for sample in shuffled:
        np.testing.assert_array_equal(decode_image(sample), noise(int(sample.key)))


def test_index_and_get_equal_iteration(tmp_path: Path) -> None:
    urls = corpus(tmp_path, n_shards=2)
    source = TarShardSource(urls)
    index = source.build_index()
    assert list(index) == source.keys() == [s.key for s in source]
    for sample in source:
        assert source.get(sample.key) == sample
    with pytest.raises(KeyError, match="nope"):
        source.get("nope")
    fresh = TarShardSource(urls)
    assert fresh.get("000004") == source.get("000004")
    # A shard rewritten after indexing must fail loudly, not return another sample's bytes.
    write_shard(Path(urls[0]), sample_members("000000", encode(noise(9, 20), "PNG"), "new"))
    with pytest.raises(ValueError, match="rebuild the index"):
        fresh.get("000001")


def test_compressed_shards_stream_but_refuse_random_access(tmp_path: Path) -> None:
    members = sample_members("k", encode(noise(0), "PNG"), "gz")
    url = write_shard(tmp_path / "s.tar.gz", members, mode="w:gz")
    source = TarShardSource(url)
    assert [s.caption for s in source] == ["gz"]
    with pytest.raises(ValueError, match="uncompressed"):
        source.build_index()


def test_incomplete_samples_and_damaged_shards_are_reported(tmp_path: Path) -> None:
    png = encode(noise(0, 32), "PNG")
    members = [("no-caption.png", png), ("no-image.txt", b"lonely caption")]
    members += [*sample_members("two-images", png, "x"), ("two-images.jpg", png)]
    members += sample_members("good", png, "kept")
    damaged = tmp_path / "damaged.tar"
    write_shard(damaged, [*sample_members("before", png, "ok"), *sample_members("cut", png, "x")])
    with tarfile.open(damaged) as tar:
        cut_at = tar.getmember("cut.png").offset_data + len(png) // 2
    damaged.write_bytes(damaged.read_bytes()[:cut_at])  # ends inside cut.png's data
    urls = [write_shard(tmp_path / "a.tar", members), str(damaged), *corpus(tmp_path, 1, 1)]
    problems = Problems()
    keys = [s.key for s in TarShardSource(urls, on_problem=problems)]
    assert keys == ["good", "before", "000000"]  # the cut sample is never yielded
    reported = dict(problems)
    assert "no caption" in reported["no-caption"] and "no image" in reported["no-image"]
    assert "ambiguous" in reported["two-images"]
    assert "damaged shard" in reported[str(damaged)]
    with pytest.raises(FileNotFoundError, match="shard not found"):
        list(TarShardSource(str(tmp_path / "missing.tar")))


@pytest.fixture
def memory_dir(tmp_path: Path):
    fs = fsspec.filesystem("memory")
    root = f"/mtv-test-{tmp_path.name}"
    yield fs, root
    if fs.exists(root):
        fs.rm(root, recursive=True)


def test_memory_filesystem_shards(memory_dir, tmp_path: Path) -> None:
    fs, root = memory_dir
    for url in corpus(tmp_path, n_shards=2):
        fs.pipe(f"{root}/{Path(url).name}", Path(url).read_bytes())
    local = {s.key: s.image for s in TarShardSource(corpus(tmp_path, n_shards=2))}
    source = TarShardSource(f"memory://{root}/shard-{{0000..0001}}.tar")
    assert {s.key: s.image for s in source} == local
    assert source.get("000005").image == local["000005"]
    assert pickle.loads(pickle.dumps(source)).get("000002").image == local["000002"]


def make_folder(root: Path) -> list[dict]:
    (root / "img" / "sub").mkdir(parents=True)
    rows = []
    for i in range(4):
        name = f"img/sub/photo{i}.png" if i % 2 else f"img/photo{i}.png"
        (root / name).write_bytes(encode(noise(i), "PNG"))
        rows.append({"file": name, "caption": f"photo {i}", "source": "cam", "score": i / 2})
    return rows


def test_folder_source_jsonl(tmp_path: Path) -> None:
    rows = make_folder(tmp_path)
    rows[1]["key"] = "custom-key"
    rows.insert(2, {"file": "img/missing.png", "caption": "gone"})
    lines = [json.dumps(row) for row in rows]
    lines.insert(1, "")  # blank lines are allowed
    captions = tmp_path / "captions.jsonl"
    captions.write_text("\n".join(lines) + "\n")
    problems = Problems()
    source = FolderSource(str(tmp_path), str(captions), on_problem=problems)
    assert source.keys() == ["img/photo0", "custom-key", "img/photo2", "img/sub/photo3"]
    assert len(source) == 4
    assert problems == [
        (
            "img/missing",
            f"row 4 of {captions}: image file 'img/missing.png' not found under {tmp_path}",
        )
    ]
    samples = list(source)
    assert [s.caption for s in samples] == ["photo 0", "photo 1", "photo 2", "photo 3"]
    assert samples[1].meta == {"source": "cam", "score": 0.5}
    assert samples[3].origin == f"{tmp_path}/img/sub/photo3.png"
    assert source.get("custom-key") == samples[1]
    np.testing.assert_array_equal(decode_image(source.get("img/sub/photo3")), noise(3))
    (tmp_path / "img/photo0.png").unlink()  # disappears after listing: reported, not raised
    assert next(s.key for s in source) == "custom-key"
    assert "photo0.png" in problems[-1][1]


def test_folder_source_parquet(tmp_path: Path) -> None:
    rows = make_folder(tmp_path)
    frame = pl.DataFrame(rows).with_columns(pl.Series("key", [10, 11, 12, 13]))
    frame.write_parquet(tmp_path / "captions.parquet")
    source = open_source(
        FolderSourceSpec(root=str(tmp_path), captions=str(tmp_path / "captions.parquet"))
    )
    assert isinstance(source, FolderSource)
    assert source.keys() == ["10", "11", "12", "13"]
    sample = source.get("12")
    assert (sample.caption, sample.meta, sample.image_format) == (
        "photo 2",
        {"source": "cam", "score": 1.0},
        "png",
    )
    pl.DataFrame({"file": ["a.png"]}).write_parquet(tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match=r"has columns file; needed.*caption or text"):
        FolderSource(str(tmp_path), str(tmp_path / "bad.parquet"))


def test_folder_source_bad_captions(tmp_path: Path) -> None:
    make_folder(tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"file": "img/photo0.png", "caption": "ok"}\n{"file": oops}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl line 2"):
        FolderSource(str(tmp_path), str(bad))
    dup = tmp_path / "dup.jsonl"
    dup.write_text(
        "".join(
            json.dumps({"file": f, "caption": "c", "key": "same"}) + "\n"
            for f in ["img/photo0.png", "img/photo2.png"]
        )
    )
    with pytest.raises(DuplicateKeyError, match="rows 1 and 2"):
        FolderSource(str(tmp_path), str(dup))
    unsafe = tmp_path / "unsafe.jsonl"
    unsafe.write_text('{"file": "../../etc/passwd", "caption": "c"}\n{"caption": "no file"}\n')
    problems = Problems()
    with pytest.raises(ValueError, match=r"no usable sample in 2 row\(s\).*leaves the root"):
        FolderSource(str(tmp_path), str(unsafe), on_problem=problems)  # zero samples: an error
    assert [where for where, _ in problems] == [f"{unsafe}:1", f"{unsafe}:2"]


def test_open_source_specs(tmp_path: Path) -> None:
    corpus(tmp_path, n_shards=2)
    spec = ShardsSourceSpec(urls=[str(tmp_path / "shard-{0000..0001}.tar")])
    source = open_source(spec)
    assert isinstance(source, TarShardSource) and len(source.shards) == 2
    with pytest.raises(ValueError, match="mtv world render"):
        open_source(MiniWorldSourceSpec())


def test_real_photos_from_scikit_image(tmp_path: Path) -> None:
    skdata = pytest.importorskip("skimage.data")
    photos = {"astronaut": skdata.astronaut(), "coffee": skdata.coffee(), "cat": skdata.chelsea()}
    formats = {"astronaut": "jpg", "coffee": "png", "cat": "jpeg"}
    members = []
    for name, photo in photos.items():
        fmt = formats[name]
        data = encode(photo, "PNG" if fmt == "png" else "JPEG", quality=90)
        members += sample_members(f"photos/{name}", data, f"a photo of {name}", fmt)
    source = TarShardSource(write_shard(tmp_path / "photos-0000.tar", members))
    decoded = {s.key: decode_image(s) for s in source}
    for name, photo in photos.items():
        image = decoded[f"photos/{name}"]
        assert image.shape == photo.shape
        if formats[name] == "png":
            np.testing.assert_array_equal(image, photo)
        else:
            assert abs(image.mean() - photo.mean()) < 1.0
            assert np.abs(image.astype(int) - photo.astype(int)).mean() < 6


def test_default_problem_report_is_a_warning_not_an_error(tmp_path: Path) -> None:
    url = write_shard(tmp_path / "s.tar", [("lonely.txt", b"caption without image")])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert list(TarShardSource(url)) == []
    assert [type(w.message) for w in caught] == [SkippedSampleWarning]
    assert "lonely" in str(caught[0].message)


@pytest.mark.parametrize("where", ["header", "data"])
def test_a_shard_cut_short_is_reported_with_the_offset(tmp_path: Path, where: str) -> None:
    png = encode(noise(0, 32), "PNG")
    members = [m for k in range(6) for m in sample_members(f"{k:03d}", png, f"caption {k}")]
    path = tmp_path / "cut.tar"
    write_shard(path, members)
    with tarfile.open(path) as tar:
        member = tar.getmember("004.png")
    # Inside the 512-byte header of 004.png (tarfile alone would stop there in silence), or
    # inside its data.
    cut = member.offset + 200 if where == "header" else member.offset_data + 100
    path.write_bytes(path.read_bytes()[:cut])
    for read in ("index", "stream"):
        problems = Problems()
        source = TarShardSource(str(path), on_problem=problems)
        keys = source.keys() if read == "index" else [s.key for s in source]
        assert keys == ["000", "001", "002", "003"], (read, keys)
        text = " ".join(reason for _, reason in problems)
        assert str(path) in [w for w, _ in problems] or "004" in [w for w, _ in problems]
        assert "ends early" in text or "damaged shard" in text or "is cut" in text, text
        if where == "header":
            assert f"byte {member.offset}" in text and "ends early" in text, (read, text)


def test_complete_shards_report_nothing(tmp_path: Path) -> None:
    png = encode(noise(0, 16), "PNG")
    path = write_shard(tmp_path / "ok.tar", sample_members("a", png, "x"))
    problems = Problems()
    source = TarShardSource(path, on_problem=problems)
    assert source.keys() == ["a"] and [s.key for s in source] == ["a"] and problems == []


def test_a_bad_caption_is_an_unusable_sample_not_a_crash(tmp_path: Path) -> None:
    png = encode(noise(0, 16), "PNG")
    members = [("bad.png", png), ("bad.txt", b"\xff\xfe caf\xe9"), *sample_members("ok", png, "x")]
    source = TarShardSource(write_shard(tmp_path / "s.tar", members))
    with pytest.raises(sources_module.UnusableSample, match=r"'bad'.*UTF-8"):
        source.get("bad")
    assert source.get("ok").caption == "x"


@pytest.mark.parametrize("layout", ["metadata.jsonl", "metadata.csv", "metadata.parquet"])
def test_hugging_face_imagefolder_is_found_without_being_named(tmp_path: Path, layout: str) -> None:
    rows = make_folder(tmp_path)
    table = pl.DataFrame(
        {"file_name": [r["file"] for r in rows], "text": [r["caption"] for r in rows]}
    )
    if layout.endswith(".jsonl"):
        (tmp_path / layout).write_text("".join(json.dumps(r) + "\n" for r in table.to_dicts()))
    elif layout.endswith(".csv"):
        table.write_csv(tmp_path / layout)
    else:
        table.write_parquet(tmp_path / layout)
    source = open_source(FolderSourceSpec(root=str(tmp_path)))
    assert source.keys() == ["img/photo0", "img/sub/photo1", "img/photo2", "img/sub/photo3"]
    assert source.get("img/photo2").caption == "photo 2" and source.get("img/photo2").meta == {}


def test_captions_path_is_relative_to_the_root_and_a_text_column_can_be_named(
    tmp_path: Path,
) -> None:
    rows = make_folder(tmp_path / "photos")
    lines = [json.dumps({"file": r["file"], "alt": r["caption"]}) for r in rows]
    (tmp_path / "photos" / "pairs.jsonl").write_text("\n".join(lines))
    spec = FolderSourceSpec(
        root=str(tmp_path / "photos"), captions="pairs.jsonl", text_column="alt"
    )
    assert open_source(spec).get("img/photo0").caption == "photo 0"
    with (
        pytest.warns(sources_module.SkippedSampleWarning, match="no `caption` string"),
        pytest.raises(ValueError, match=r"no usable sample in 4 row.*no `caption` string"),
    ):
        open_source(FolderSourceSpec(root=str(tmp_path / "photos"), captions="pairs.jsonl"))
    with pytest.raises(FileNotFoundError, match=r"metadata\.jsonl"):
        open_source(FolderSourceSpec(root=str(tmp_path / "photos" / "img")))


def test_parquet_with_image_bytes_in_both_common_layouts(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    images = [encode(noise(i), "PNG") for i in range(5)]
    captions = [f"photo {i}" for i in range(5)]
    # img2dataset: `jpg` bytes, `caption`, `key`; two files, small row groups
    for part, rows in enumerate([range(0, 3), range(3, 5)]):
        table = pa.table(
            {
                "key": [f"{i:09d}" for i in rows],
                "jpg": [images[i] for i in rows],
                "caption": [captions[i] for i in rows],
            }
        )
        pq.write_table(table, tmp_path / f"{part:05d}.parquet", row_group_size=2)
    spec = ParquetSourceSpec(urls=[str(tmp_path / "{00000..00001}.parquet")])
    source = open_source(spec)
    assert source.keys() == [f"{i:09d}" for i in range(5)]
    sample = source.get("000000003")
    assert sample.caption == "photo 3" and sample.image == images[3]
    assert decode_image(sample).shape == (16, 16, 3)
    # Hugging Face datasets: `image` as {bytes, path}, `text`, no key column
    struct = [{"bytes": images[i], "path": f"{i}.png"} for i in range(5)]
    hf = tmp_path / "hf" / "train-00000.parquet"
    hf.parent.mkdir()
    pq.write_table(pa.table({"image": struct, "text": captions}), hf)
    source = open_source(ParquetSourceSpec(urls=[str(hf)]))
    assert source.keys()[:2] == ["train-00000/0", "train-00000/1"]
    assert source.get("train-00000/4").image == images[4]
    assert [s.caption for s in source] == captions
    pq.write_table(pa.table({"image": struct}), tmp_path / "hf" / "no-text.parquet")
    with pytest.raises(ValueError, match=r"needed: image bytes.*and a caption"):
        open_source(ParquetSourceSpec(urls=[str(tmp_path / "hf" / "no-text.parquet")]))


def test_a_hugging_face_split_layout_is_named_with_what_to_point_at(tmp_path: Path) -> None:
    """`train/`, `test/` imagefolders under one root (how `datasets` lays out splits): mtv says
    which splits it found and which folder to train and evaluate on (it said only that the root
    had no metadata file); pointed at a split, the folder reads as any imagefolder."""
    for split in ("train", "test"):
        rows = make_folder(tmp_path / split)
        lines = [json.dumps({"file_name": r["file"], "text": r["caption"]}) for r in rows]
        (tmp_path / split / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(FileNotFoundError, match=r"in splits \(train, test\)") as info:
        FolderSource(str(tmp_path))
    assert f"data.source.root: {tmp_path}/train" in str(info.value)
    assert f"--data {tmp_path}/test" in str(info.value)
    assert len(FolderSource(str(tmp_path / "train"))) == 4

"""Data at scale: start-up (the key index) and random access of a tar-shard source over many
small shards, on the local filesystem and through a filesystem with added latency.

    python benchmarks/data_scale.py [--out benchmarks/results] [--shards 1000] [--latency-ms 20]

The script writes its own corpus into a temporary folder: `--shards` shards of `--samples`
samples each (an 8x8 PNG, a caption, a JSON object). Index builds compared, each from a fresh
source: the sequential scan of every shard's tar headers (`index_threads=1, sidecars=False`: how
sources indexed before sidecars), the same scan on a thread pool, and the sidecar files written
by `mtv data index`, read sequentially and on the pool. Random access is `get()` of random keys
from 1, 4 and 16 threads, against the read pattern from before (open, then seek and read each
member). Local figures are on a warm page cache; medians of interleaved rounds where cheap.

`latency://PATH` is `LatencyFileSystem`: the local filesystem behind an fsspec filesystem that
sleeps `--latency-ms` before every request, as a round trip to an object store would: a size
lookup (`info`, a HEAD), a ranged read (`cat_file`, a GET), each block fetched by a file opened
for reading (fsspec's buffered file: 5 MiB read-ahead blocks, as s3fs and gcsfs), a write and a
move. It counts requests and bytes, reported per shard. Most of its run time is sleeping, so the
default run (1,000 shards, 20 ms) takes about 2.5 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import torch
from fsspec.implementations.local import LocalFileSystem
from fsspec.spec import AbstractBufferedFile, AbstractFileSystem
from PIL import Image

from mtv.data import MemberRef, Span, TarShardSource

from common import ROOT, Row, Table, interleaved, median

CPU = torch.device("cpu")


class LatencyFileSystem(AbstractFileSystem):
    """The local filesystem with `delay` seconds of sleep before every request."""

    protocol = "latency"

    def __init__(self, delay: float = 0.02, **options: Any):
        # Not called `latency`: fsspec reads a keyword named like a protocol as that
        # protocol's options.
        super().__init__(**options)
        self.delay = delay
        self.local = LocalFileSystem()
        self._lock = threading.Lock()
        self.requests = 0
        self.bytes = 0

    def request(self, nbytes: int = 0) -> None:
        time.sleep(self.delay)
        with self._lock:
            self.requests += 1
            self.bytes += nbytes

    def reset(self) -> tuple[int, int]:
        with self._lock:
            counts, self.requests, self.bytes = (self.requests, self.bytes), 0, 0
        return counts

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        self.request()
        return self.local.info(self._strip_protocol(path))

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        self.request()
        return self.local.ls(self._strip_protocol(path), detail=detail)

    def cat_file(
        self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any
    ) -> bytes:
        data = self.local.cat_file(self._strip_protocol(path), start, end)
        self.request(len(data))
        return data

    def mv(self, path1: str, path2: str, **kwargs: Any) -> None:
        self.request()
        self.local.mv(self._strip_protocol(path1), self._strip_protocol(path2))

    def _open(self, path: str, mode: str = "rb", block_size: Any = None, **kwargs: Any) -> Any:
        path = self._strip_protocol(path)
        if mode != "rb":
            self.request()  # the upload
            return self.local.open(path, mode)
        return _LatencyFile(self, path, mode, block_size or "default", **kwargs)


class _LatencyFile(AbstractBufferedFile):
    def _fetch_range(self, start: int, end: int) -> bytes:
        with open(self.path, "rb") as file:
            file.seek(start)
            data = file.read(end - start)
        self.fs.request(len(data))
        return data


fsspec.register_implementation("latency", LatencyFileSystem, clobber=True)


def write_shards(
    root: Path, name: str, shards: int, samples: int, members: Callable[[int, int], list]
) -> list[str]:
    """`shards` tar shards `root/name-N.tar`, sample `i` of shard `n` being the (member name,
    bytes) pairs `members(n, i)`."""
    urls = []
    for shard in range(shards):
        path = root / f"{name}-{shard:06d}.tar"
        with tarfile.open(path, "w") as tar:
            for item in range(samples):
                for member, data in members(shard, item):
                    _add(tar, member, data)
        urls.append(str(path))
    return urls


def make_corpus(root: Path, shards: int, samples: int) -> list[str]:
    """`shards` webdataset shards of `samples` tiny samples each."""
    rng = np.random.default_rng(0)

    def sample(shard: int, item: int) -> list[tuple[str, bytes]]:
        key = f"{shard:06d}{item:03d}"
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buffer, "PNG")
        meta = json.dumps({"shard": shard, "item": item}).encode()
        return [(f"{key}.png", buffer.getvalue()), (f"{key}.txt", b"a cat"), (f"{key}.json", meta)]

    return write_shards(root, "shard", shards, samples, sample)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def index_builds(
    urls: list[str], options: dict[str, Any], threads: int, expected: list[str] | None
) -> dict[str, Callable[[], None]]:
    """Index builds by name, each from a fresh source (nothing is cached between runs), each
    checked to give the `expected` keys."""

    def build(index_threads: int, sidecars: bool) -> Callable[[], None]:
        def run() -> None:
            source = TarShardSource(
                urls, options, index_threads=index_threads, sidecars=sidecars, on_problem=_fail
            )
            if source.keys() != expected:
                raise AssertionError(f"index_threads={index_threads} gave other keys")

        return run

    return {
        SEQUENTIAL: build(1, False),
        f"parallel scan, {threads} threads": build(threads, False),
        "sidecars, sequential": build(1, True),
        f"sidecars, {threads} threads": build(threads, True),
    }


SEQUENTIAL = "sequential scan (index_threads=1, no sidecars)"


def _fail(where: str, reason: str) -> None:
    raise AssertionError(f"the benchmark corpus has a problem: {where}: {reason}")


def _seconds(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def startup_rows(
    part: str,
    urls: list[str],
    options: dict[str, Any],
    threads: list[int],
    repeats: int,
    latency: LatencyFileSystem | None,
) -> list[Row]:
    """Index build seconds: with sidecars absent, writing them, then each way of listing."""
    n = len(urls)
    first = TarShardSource(urls, options, index_threads=threads[0], on_problem=_fail)
    seconds = _seconds(first.keys)
    expected = first.keys()
    rows = [
        Row(
            part,
            f"index build, {threads[0]} threads, no sidecars yet (lookup miss + scan)",
            seconds,
            "s",
            note=f"{n} shards, {len(expected)} samples",
        )
    ]
    writer = TarShardSource(urls, options, index_threads=threads[0], on_problem=_fail)
    seconds = _seconds(lambda: writer.write_sidecars(force=True))
    rows.append(Row(part, f"mtv data index (write sidecars), {threads[0]} threads", seconds, "s"))
    builds = index_builds(urls, options, threads[0], expected)
    for more in threads[1:]:
        extra = index_builds(urls, options, more, expected)
        builds.update({name: run for name, run in extra.items() if "threads" in name})
    sequential = {name: run for name, run in builds.items() if "sequential" in name}
    parallel = {name: run for name, run in builds.items() if name not in sequential}
    times = interleaved(parallel, repeats, CPU)
    if latency is None:
        times.update(interleaved(sequential, repeats, CPU))
    else:
        # Sleep-bound and long (n x 2 round trips): timed once, counting the requests.
        for name, run in sequential.items():
            latency.reset()
            times[name] = [_seconds(run)]
            requests, nbytes = latency.reset()
            what = "scan" if name == SEQUENTIAL else "sidecar"
            rows.append(Row(part, f"requests per shard: {what}", requests / n, "requests"))
            rows.append(Row(part, f"bytes read per shard: {what}", nbytes / n, "bytes"))
    base = median(times[SEQUENTIAL])
    for name in builds:
        seconds = median(times[name])
        note = f"{n / seconds:,.0f} shards/s, {base / seconds:.1f}x the sequential scan's speed"
        rows.append(Row(part, f"index build: {name}", seconds, "s", note=note))
    return rows


def access_rows(
    part: str,
    urls: list[str],
    options: dict[str, Any],
    per_thread: int,
    threads: tuple[int, ...],
    latency: LatencyFileSystem | None,
    repeats: int,
) -> list[Row]:
    """Random `get()` samples/s from several threads; then the I/O alone of one sample, as
    `get` does it (one ranged read) and as it was done before (open, seek and read each
    member). Under latency each runs once (sleep-bound), counting the requests and bytes of the
    single-thread runs; locally, medians of interleaved rounds."""
    source = TarShardSource(urls, options, on_problem=_fail)
    index = source.build_index()
    keys = list(index)
    rng = random.Random(0)
    runs: dict[str, tuple[Callable[[], None], int]] = {}
    for count in threads:
        chosen = [rng.choice(keys) for _ in range(per_thread * count)]
        runs[f"get(), {count} thread(s)"] = (partial(_read_all, source.get, chosen, count), count)
    patterns = {
        "one ranged read per sample (get)": _ranged_read,
        "open + seek + read per member (before)": _open_seek_read,
    }
    for name, pattern in patterns.items():
        chosen = [rng.choice(keys) for _ in range(per_thread)]
        read = partial(_read_ref, pattern, index, options)
        runs[f"I/O of a sample: {name}, 1 thread"] = (partial(_read_all, read, chosen, 1), 1)
    rows = []
    if latency is None:
        times = interleaved({name: run for name, (run, _) in runs.items()}, repeats, CPU)
        for name, (_, count) in runs.items():
            rate = per_thread * count / median(times[name])
            rows.append(Row(part, name, rate, "samples/s", note=_IO_NOTE if "I/O" in name else ""))
        return rows
    for name, (run, count) in runs.items():
        latency.reset()
        seconds = _seconds(run)
        requests, nbytes = latency.reset()
        note = _IO_NOTE if "I/O" in name else ""
        if count == 1:  # fsspec gives each thread its own filesystem: only this one counts here
            n = per_thread
            note += f"{'; ' if note else ''}{requests / n:.1f} requests, {nbytes / n:,.0f} bytes"
            note += " per sample"
        rows.append(Row(part, name, per_thread * count / seconds, "samples/s", note=note))
    return rows


_IO_NOTE = "I/O only, no header check"


def _read_all(read: Callable[[str], object], keys: list[str], threads: int) -> None:
    if threads == 1:
        for key in keys:
            read(key)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(read, keys))


def _read_ref(
    pattern: Callable[[MemberRef, dict[str, Any]], object],
    index: dict[str, MemberRef],
    options: dict[str, Any],
    key: str,
) -> object:
    return pattern(index[key], options)


def _spans(ref: MemberRef) -> list[Span]:
    return [span for span in (ref.image, ref.caption, ref.meta) if span is not None]


def _ranged_read(ref: MemberRef, options: dict[str, Any]) -> bytes:
    fs, path = fsspec.core.url_to_fs(ref.shard, **options)
    spans = _spans(ref)
    start = min(span.offset for span in spans) - tarfile.BLOCKSIZE
    return fs.cat_file(path, start, max(span.offset + span.size for span in spans))


def _open_seek_read(ref: MemberRef, options: dict[str, Any]) -> list[bytes]:
    with fsspec.open(ref.shard, "rb", **options) as file:
        out = []
        for span in _spans(ref):
            file.seek(span.offset - tarfile.BLOCKSIZE)
            out.append(file.read(tarfile.BLOCKSIZE + span.size))
        return out


def large_shard_rows(
    part: str, root: Path, shards: int, samples: int, image_bytes: int, latency_s: float
) -> list[Row]:
    """What one index build and one sample cost in requests and bytes on shards of real size
    (their headers spread over many read-ahead blocks), through the latency filesystem."""
    rng = np.random.default_rng(1)

    def sample(shard: int, item: int) -> list[tuple[str, bytes]]:
        key = f"{shard:04d}{item:05d}"
        return [(f"{key}.jpg", rng.bytes(image_bytes)), (f"{key}.txt", b"a large cat")]

    urls = [f"latency://{p}" for p in write_shards(root, "large", shards, samples, sample)]
    options = {"delay": latency_s}
    fs = fsspec.filesystem("latency", **options)
    TarShardSource(urls, options, on_problem=_fail).write_sidecars(force=True)
    size = f"{shards} shards of {samples} samples, {samples * image_bytes / 1e6:.0f} MB each"
    rows = []
    for name, sidecars in (("sequential scan", False), ("sidecars, sequential", True)):
        fs.reset()
        source = TarShardSource(urls, options, index_threads=1, sidecars=sidecars)
        seconds = _seconds(source.keys)
        requests, nbytes = fs.reset()
        note = f"{requests / shards:.1f} requests, {nbytes / shards:,.0f} bytes per shard"
        rows.append(Row(part, f"index build: {name}", seconds, "s", note=f"{size}; {note}"))
    rows += access_rows(part, urls, options, 20, (1,), fs, 1)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--shards", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=4, help="samples per shard")
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--threads", type=int, default=16, help="index threads (the default)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--large-shards", type=int, default=8, help="shards of 100 KB images")
    parser.add_argument("--large-samples", type=int, default=200, help="samples per large shard")
    args = parser.parse_args()
    latency_s = args.latency_ms / 1e3
    load = os.getloadavg()[0]
    table = Table()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        urls = make_corpus(root, args.shards, args.samples)
        table.add(Row("corpus", "write the shards", time.perf_counter() - start, "s"))
        local = "local"
        table.extend(startup_rows(local, urls, {}, [args.threads], args.repeats, None))
        table.extend(access_rows(local, urls, {}, 500, (1, 4, 16), None, args.repeats))
        slow = f"{args.latency_ms:g} ms latency"
        remote = [f"latency://{url}" for url in urls]
        options = {"delay": latency_s}
        fs = fsspec.filesystem("latency", **options)
        assert isinstance(fs, LatencyFileSystem)
        threads = [args.threads, 4 * args.threads]
        table.extend(startup_rows(slow, remote, options, threads, args.repeats, fs))
        table.extend(access_rows(slow, remote, options, 60, (1, 4, 16), fs, 1))
        large = f"large shards, {args.latency_ms:g} ms latency"
        table.extend(
            large_shard_rows(large, root, args.large_shards, args.large_samples, 100_000, latency_s)
        )
    table.add(Row("total", "benchmark wall time", time.perf_counter() - started, "s"))
    preamble = (
        f"Setting: {args.shards} shards x {args.samples} samples (8x8 PNG, caption, JSON; "
        f"{args.samples * 3} members per shard), index threads {args.threads}; `latency://` "
        f"sleeps {args.latency_ms:g} ms per request (see the script's docstring). Local: warm "
        f"page cache. Medians of {args.repeats} interleaved rounds, except the sequential "
        "builds and reads under latency (once: sleep-bound). Load average (1 min) at the start: "
        f"{load:.1f} (other work shares the cores: local CPU-bound figures are noisy)."
    )
    title = "Data at scale: shard index start-up and random access"
    table.write(args.out, "data_scale", title, preamble)
    print(f"wrote {args.out / 'data_scale.md'} and {args.out / 'data_scale.parquet'}")


if __name__ == "__main__":
    main()

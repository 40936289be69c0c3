"""Per-shard listings of tar members: scanned from the shard, or read from a sidecar index file
beside it, many shards at once on a thread pool.

A listing holds what random access needs from one uncompressed shard: its byte size, every
regular member's (name, data offset, size) in archive order, where the scan of its headers
stopped and, for a damaged shard, the error that stopped it. `TarShardSource` turns listings into
its key index the same way whether they were scanned or read from a sidecar, so a sidecar gives
exactly the keys, spans and problem reports of a scan (unsafe names, incomplete samples and
duplicate keys are judged from the listing, never by whoever wrote it).

The sidecar of `URL` is `URL.idx.json`: JSON, one object with `format`, `version`, `shard_size`,
`end`, `damage`, `digest` and the members as three parallel lists `names`, `offsets`, `sizes`
(columns, not
one object per member, so field names are not repeated: about 35 bytes per member, ~0.1 MB for a
1,000-sample shard, against the whole shard that a scan pulls through a 5 MB read-ahead cache on
an object store). JSON, because any tool reads it and Python parses a shard's worth in about a
millisecond. A sidecar is used only while its `shard_size` equals the shard's size: a rewritten
shard of another size is scanned instead, with a `StaleIndexWarning`; one rewritten to the very
same size is caught on read, where every member header is checked against the index. A sidecar
whose entries were edited or lost (members removed, a shard's worth of samples silently
missing) no longer matches its `digest` (BLAKE2b of the size, end, damage and member lists) or
lists members out of archive order: it is scanned over too, never trusted; one written before
the digest existed (version 1) likewise, until `mtv data index` rewrites it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import lzma
import tarfile
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import IO, Any, NamedTuple, TypeVar

import fsspec
from fsspec import AbstractFileSystem

SIDECAR_SUFFIX = ".idx.json"
SIDECAR_FORMAT = "mtv-shard-index"
SIDECAR_VERSION = 2  # 2: with the digest of its entries
# Errors of a damaged shard (bad header, cut-off data, broken compression): the shard is reported
# and left, the run goes on. Network errors (OSError) are not among them and propagate.
SHARD_ERRORS = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError)
COMPRESSION_MAGIC = {
    b"\x1f\x8b": "gzip",
    b"BZh": "bzip2",
    b"\xfd7zXZ": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
}

_BLOCK = tarfile.BLOCKSIZE
# Members of one sample closer than this are read with one request: a round trip to an object
# store costs more than a few kilobytes of bytes nobody asked for.
_COALESCE_GAP = 64 * 1024

_In = TypeVar("_In")
_Out = TypeVar("_Out")


class Span(NamedTuple):
    """Where one member's bytes lie in its shard."""

    name: str  # the member name, checked against the tar header on read
    offset: int  # of the data (TarInfo.offset_data)
    size: int


class StaleIndexWarning(UserWarning):
    """A sidecar index that does not match its shard (or cannot be read) was ignored and the
    shard scanned instead; `mtv data index` rewrites it."""


@dataclass(frozen=True)
class ShardListing:
    """The regular members of one uncompressed shard, in archive order."""

    url: str
    size: int | None  # bytes; None when the stream cannot tell (then nothing is checked against it)
    members: tuple[Span, ...]
    end: int  # the offset where the header scan stopped (the end of the last member)
    damage: str | None = None  # the tar error that stopped the scan early, as it is reported
    from_sidecar: bool = False
    stale: str | None = None  # why a sidecar beside the shard was not used


def sidecar_url(url: str) -> str:
    """Where the sidecar index of the shard `url` lies: right beside it."""
    return url + SIDECAR_SUFFIX


def open_shard(url: str, storage_options: dict[str, Any] | None = None) -> IO[bytes]:
    """The shard opened for reading; a missing shard is a `FileNotFoundError` naming it."""
    try:
        return fsspec.open(url, "rb", **(storage_options or {})).open()
    except FileNotFoundError:
        raise FileNotFoundError(f"shard not found: {url}") from None


def refuse_compressed(stream: IO[bytes], url: str) -> None:
    """Random access needs uncompressed shards: offsets into a compressed stream are useless."""
    head = stream.read(6)
    stream.seek(0)
    for magic, name in COMPRESSION_MAGIC.items():
        if head.startswith(magic):
            raise ValueError(
                f"random access needs uncompressed .tar shards; {url} is {name}-compressed "
                "(iterating over it works)"
            )


def size_if_uncompressed(stream: IO[bytes]) -> int | None:
    """The byte size of a seekable, uncompressed shard (None otherwise: then tarfile's offsets
    count decompressed bytes, and the end cannot be checked against the size)."""
    try:
        head = stream.read(6)
        size = stream.seek(0, 2)
        stream.seek(0)
    except (OSError, ValueError):
        return None
    return None if any(head.startswith(m) for m in COMPRESSION_MAGIC) else size


def scan_shard(url: str, storage_options: dict[str, Any] | None = None) -> ShardListing:
    """List the shard's members from its tar headers, seeking over the data (none is read). A
    damaged shard is listed up to the damage, which is recorded, not raised."""
    with open_shard(url, storage_options) as stream:
        refuse_compressed(stream, url)
        size = size_if_uncompressed(stream)
        members: list[Span] = []
        end, damage = 0, None
        try:
            with tarfile.open(fileobj=stream, mode="r:") as tar:  # type: ignore[call-overload]
                for info in tar:
                    if info.isreg():  # directories, links, devices: nothing to read
                        members.append(Span(info.name, info.offset_data, info.size))
                end = tar.offset
        except SHARD_ERRORS as error:
            damage = f"{type(error).__name__}: {error}"
    return ShardListing(url, size, tuple(members), end, damage)


def sidecar_document(listing: ShardListing) -> dict[str, Any]:
    """The JSON object of a listing's sidecar."""
    if listing.size is None:
        raise ValueError(f"the size of {listing.url} is unknown: a sidecar could not be checked")
    entries = {
        "shard_size": listing.size,
        "end": listing.end,
        "damage": listing.damage,
        "names": [span.name for span in listing.members],
        "offsets": [span.offset for span in listing.members],
        "sizes": [span.size for span in listing.members],
    }
    return {
        "format": SIDECAR_FORMAT,
        "version": SIDECAR_VERSION,
        **entries,
        "digest": _digest(entries),
    }


def _digest(entries: dict[str, Any]) -> str:
    """BLAKE2b-128 of a sidecar's entries in canonical JSON: what its writer listed."""
    canonical = json.dumps([entries[k] for k in sorted(entries)], separators=(",", ":"))
    return hashlib.blake2b(canonical.encode(), digest_size=16).hexdigest()


def write_sidecar(listing: ShardListing, storage_options: dict[str, Any] | None = None) -> str:
    """Write the sidecar of a scanned shard; returns its URL."""
    url = sidecar_url(listing.url)
    text = json.dumps(sidecar_document(listing), separators=(",", ":"))
    fs, target = fsspec.core.url_to_fs(url, **(storage_options or {}))
    partial = f"{target}.partial"
    # Written aside then moved, so a killed writer never leaves half a sidecar to be trusted.
    with fs.open(partial, "wb") as file:
        file.write(text.encode())
    fs.mv(partial, target)
    return url


def read_sidecar(url: str, storage_options: dict[str, Any] | None = None) -> ShardListing | None:
    """The listing of shard `url` from its sidecar; None when it has none. A sidecar that cannot
    be read, or that was written for a shard of another size, gives a listing with `stale` set
    and no members: the caller scans the shard and says why."""
    options = storage_options or {}
    fs, path = fsspec.core.url_to_fs(sidecar_url(url), **options)
    try:
        raw = fs.cat_file(path)
    except FileNotFoundError:
        return None
    shard_fs, shard_path = fsspec.core.url_to_fs(url, **options)
    try:
        size = shard_fs.size(shard_path)
    except FileNotFoundError:
        raise FileNotFoundError(f"shard not found: {url}") from None
    try:
        listing = _parse_sidecar(url, raw)
    except (ValueError, TypeError, KeyError) as error:
        return ShardListing(url, size, (), 0, stale=f"it cannot be read ({error})")
    if size is None or listing.size != size:
        now = "an unknown size" if size is None else f"{size:,} bytes"
        stale = f"it was written for a shard of {listing.size:,} bytes, the shard has {now}"
        return ShardListing(url, size, (), 0, stale=stale)
    return listing


def _parse_sidecar(url: str, raw: bytes) -> ShardListing:
    document = json.loads(raw)
    if not isinstance(document, dict) or document.get("format") != SIDECAR_FORMAT:
        raise ValueError(f"not an {SIDECAR_FORMAT} file")
    if document.get("version") != SIDECAR_VERSION:
        raise ValueError(
            f"version {document.get('version')!r}, not {SIDECAR_VERSION} (a version 1 sidecar "
            "has no digest to check its entries by; `mtv data index` rewrites it)"
        )
    fields = ("shard_size", "end", "damage", "names", "offsets", "sizes")
    if document.get("digest") != _digest({k: document[k] for k in fields}):
        raise ValueError("its entries do not match its digest: edited or damaged")
    names, offsets, sizes = document["names"], document["offsets"], document["sizes"]
    if not len(names) == len(offsets) == len(sizes):
        raise ValueError("names, offsets and sizes differ in length")
    if not all(isinstance(n, str) for n in names) or not all(
        isinstance(v, int) and v >= 0 for v in (*offsets, *sizes)
    ):
        raise ValueError("a member name is not text or an offset or size not a count")
    damage = document["damage"]
    if not isinstance(damage, str | None):
        raise ValueError("damage is neither null nor text")
    members = tuple(Span(*member) for member in zip(names, offsets, sizes, strict=True))
    end, size = int(document["end"]), int(document["shard_size"])
    # Members follow each other in the archive, each after the previous one's data and a header.
    for before, after in itertools.pairwise(members):
        if after.offset < before.offset + before.size + _BLOCK:
            raise ValueError(f"member {after.name!r} overlaps {before.name!r}: not archive order")
    return ShardListing(url, size, members, end, damage, from_sidecar=True)


def load_listing(
    url: str, storage_options: dict[str, Any] | None = None, sidecars: bool = True
) -> ShardListing:
    """The shard's listing: from its sidecar when `sidecars` and the sidecar matches the shard,
    else from a scan (carrying the reason a sidecar was passed over, for the caller to warn)."""
    found = read_sidecar(url, storage_options) if sidecars else None
    if found is not None and found.stale is None:
        return found
    scanned = scan_shard(url, storage_options)
    if found is not None:
        return replace(scanned, stale=found.stale)
    return scanned


def read_members(
    fs: AbstractFileSystem, path: str, url: str, spans: dict[str, Span]
) -> dict[str, bytes]:
    """The data of the members at `spans` of the shard `url` (`path` on `fs`), by name. Each is
    read with the 512-byte tar header right before it, and the header checked against the span.
    Members close together (those of one sample are adjacent) share one ranged read: on an
    object store one request, instead of an open, a size lookup and megabytes of read-ahead."""
    data: dict[str, bytes] = {}
    run: list[tuple[str, Span]] = []
    for name, span in sorted(spans.items(), key=lambda item: item[1].offset):
        if run and span.offset - _BLOCK - _end(run) > _COALESCE_GAP:
            data.update(_read_run(fs, path, url, run))
            run = []
        run.append((name, span))
    data.update(_read_run(fs, path, url, run))
    return data


def _end(run: list[tuple[str, Span]]) -> int:
    return max(span.offset + span.size for _, span in run)


def _read_run(
    fs: AbstractFileSystem, path: str, url: str, run: list[tuple[str, Span]]
) -> dict[str, bytes]:
    start = run[0][1].offset - _BLOCK
    try:
        block = fs.cat_file(path, start, _end(run))
    except FileNotFoundError:
        raise FileNotFoundError(f"shard not found: {url}") from None
    out = {}
    for extension, span in run:
        at = span.offset - _BLOCK - start
        out[extension] = _check_span(block[at : at + _BLOCK + span.size], span, url)
    return out


def _check_span(block: bytes, span: Span, url: str) -> bytes:
    """The member's data from `block`, its 512-byte header and data. The header is checked, so
    an index gone stale (shard rewritten) fails loudly instead of joining a label to the wrong
    image."""
    try:
        header = tarfile.TarInfo.frombuf(block[:_BLOCK], tarfile.ENCODING, "surrogateescape")
    except tarfile.TarError:
        header = None
    short_name = len(span.name.encode()) < 100 and span.name.isascii()
    if (
        header is None
        or header.size != span.size
        or len(block) != _BLOCK + span.size
        or (short_name and header.name != span.name)
    ):
        raise ValueError(
            f"shard {url} no longer matches its index at member {span.name!r}: rebuild the index"
        )
    return block[_BLOCK:]


def ordered_map(
    function: Callable[[_In], _Out], items: Iterable[_In], threads: int
) -> Iterator[_Out]:
    """`map(function, items)` on `threads` threads, results in the order of `items`. At most
    4 x `threads` calls run ahead of the consumer (memory stays bounded on 10,000 shards); an
    exception comes out where its item's result would have, after every earlier result, and the
    calls not yet started are cancelled when the consumer stops early."""
    if threads <= 1:
        yield from map(function, items)  # the plain sequential reading, in this thread
        return
    pool = ThreadPoolExecutor(threads, thread_name_prefix="mtv-shard-index")
    pending: deque[Future[_Out]] = deque()
    source = iter(items)
    try:
        for item in source:
            pending.append(pool.submit(function, item))
            if len(pending) >= 4 * threads:
                break
        while pending:
            result = pending.popleft().result()
            following = next(source, _END)
            if following is not _END:
                pending.append(pool.submit(function, following))  # type: ignore[arg-type]
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


_END = object()

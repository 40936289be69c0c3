"""The label store: pseudo-labels in Zarr v3, keyed by sample.

Layout (one group):
- `keys` (N,) strings, the source's sample keys in labelling order; lookup by key is a dict hit.
- `status` (N,) uint8: 0 labelled, 1 image could not be decoded (its labels are empty).
- `depth` (N, R, R) float16 relative disparity covering the whole original image, per-image
  min-max normalised to [0, 1] over valid pixels (the scale of relative disparity means nothing);
  `depth_valid` (N, R, R) bool.
- `boxes/values` (M, 4) float32 xyxy normalised to [0, 1] of the original image, `boxes/offsets`
  (N + 1,) int64 (sample i owns rows offsets[i]:offsets[i + 1]), `boxes/names` (M,) strings,
  `boxes/scores` (M,) float32.
- `done` (chunks,) bool: a labelling chunk's marker, set after its data; `mtv label` skips marked
  chunks when resumed, and different ranks write different chunks.
- attributes: format, version, experts (name, version, settings), conventions, resolution,
  chunk size, source, creation time, and `complete` once the boxes are consolidated.

While labelling, each chunk's boxes go to `box_parts/<chunk>`; `finalize` concatenates them into
the flat `boxes/*` arrays.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.core.sync import sync
from zarr.errors import ContainsGroupError

from mtv.data.provenance import content_digest

FORMAT, VERSION = "mtv-labels", 2
# Version 2: every chunk of every array is written (none elided for equalling the fill value), so
# a missing chunk file is damage, not zeros; `fingerprints` records the labelled corpus.
DENSE = ("status", "depth", "depth_valid")
CONVENTIONS = {
    "depth": "relative disparity (larger = nearer), affine-invariant; per-image min-max "
    "normalised to [0, 1] over valid pixels; the map covers the whole original image",
    "boxes": "xyxy normalised to [0, 1] of the original image",
}
STATUS_OK, STATUS_UNDECODABLE = 0, 1
READ_ROWS = 16  # samples per Zarr chunk of the dense maps
BOX_ROWS = 16384  # boxes per Zarr chunk of the flat box arrays


class LabelStoreDamaged(RuntimeError):
    """A chunk of a label store is missing or unreadable (the message names the samples)."""


def chunk_exists(array: zarr.Array, index: int) -> bool:
    """Whether chunk `index` (along the first axis) of `array` is stored."""
    key = array.metadata.encode_chunk_key((index,) + (0,) * (array.ndim - 1))
    path = f"{array.store_path.path}/{key}" if array.store_path.path else key
    return bool(sync(array.store_path.store.exists(path)))


class CachedArray:
    """Row reads from a Zarr array through an LRU cache of decoded chunks: the fixed cost of a
    Zarr read (~1 ms) is paid once per chunk, not once per sample. With `strict`, a chunk that
    is not stored raises `LabelStoreDamaged` instead of reading as the fill value."""

    def __init__(self, array: zarr.Array, cached: int = 16, strict: bool = False):
        self.array, self.rows, self.cached, self.strict = array, array.chunks[0], cached, strict
        self._chunks: dict[int, np.ndarray] = {}

    def _chunk(self, index: int) -> np.ndarray:
        if index in self._chunks:
            self._chunks[index] = self._chunks.pop(index)  # most recently used last
        else:
            if len(self._chunks) >= self.cached:
                self._chunks.pop(next(iter(self._chunks)))
            self._chunks[index] = self._read(index)
        return self._chunks[index]

    def _read(self, index: int) -> np.ndarray:
        rows = slice(index * self.rows, (index + 1) * self.rows)
        where = f"chunk {index} of {self.array.name.strip('/')} (rows {rows.start}-{rows.stop - 1})"
        if self.strict and not chunk_exists(self.array, index):
            raise LabelStoreDamaged(f"{where} is missing")
        try:
            return self.array[rows]
        except Exception as err:  # codecs report damage as many error types
            reason = f"{type(err).__name__}: {err}"
            raise LabelStoreDamaged(f"{where} cannot be read ({reason})") from err

    def __getitem__(self, rows: int | slice) -> np.ndarray:
        if isinstance(rows, int):
            return self._chunk(rows // self.rows)[rows % self.rows]
        start, stop = rows.start or 0, rows.stop
        if stop <= start:
            return self.array[start:start]  # an empty selection, with the right shape and type
        first, last = start // self.rows, (stop - 1) // self.rows
        parts = [self._chunk(c) for c in range(first, last + 1)]
        joined = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return joined[start - first * self.rows : stop - first * self.rows]


@dataclass
class BoxLabel:
    boxes: np.ndarray  # (n, 4) float32 xyxy in [0, 1] of the original image
    names: list[str]
    scores: np.ndarray  # (n,) float32 in [0, 1]

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        if not len(self.boxes) == len(self.names) == len(self.scores):
            raise ValueError(
                f"{len(self.boxes)} boxes, {len(self.names)} names and {len(self.scores)} scores"
            )


def keys_digest(keys: Sequence[str]) -> str:
    """A fingerprint of the key list, so a resume can tell it labels the same samples."""
    digest = hashlib.sha256()
    for key in keys:
        digest.update(key.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def _strings(group: zarr.Group, name: str, values: Sequence[str], chunk: int) -> None:
    array = group.create_array(
        name,
        shape=(len(values),),
        chunks=(max(1, min(chunk, len(values))),),
        dtype=str,
        overwrite=True,
    )
    if len(values):
        array[:] = np.asarray(list(values), dtype=object)


@dataclass
class ChunkLabels:
    """Everything one labelling chunk writes."""

    depth: np.ndarray | None  # (n, R, R) float32 in [0, 1]
    depth_valid: np.ndarray | None  # (n, R, R) bool
    boxes: list[BoxLabel] | None
    status: np.ndarray  # (n,) uint8


class LabelStore:
    def __init__(self, path: str | Path, root: zarr.Group):
        self.path = Path(path)
        self.root = root
        self.attrs: dict[str, Any] = dict(root.attrs)
        self.keys: list[str] = [str(k) for k in root["keys"][:]]
        self.index = {key: i for i, key in enumerate(self.keys)}
        self.chunk_size: int = self.attrs["chunk_size"]
        self._offsets: np.ndarray | None = None
        self._readers: dict[str, CachedArray] = {}

    # ------------------------------------------------------------------ creation and opening
    @classmethod
    def create(
        cls,
        path: str | Path,
        keys: Sequence[str],
        kinds: Sequence[str],
        resolution: int,
        chunk_size: int,
        experts: dict[str, Any],
        source: dict[str, Any],
        fingerprints: np.ndarray,
    ) -> LabelStore:
        """`fingerprints`: per key, what the source says about the sample (see
        `mtv.data.provenance`), so the store can later tell whether a source is its corpus."""
        if len(set(keys)) != len(keys):
            raise ValueError("the source has duplicate keys; a label store needs unique keys")
        if len(fingerprints) != len(keys):
            raise ValueError(f"{len(fingerprints)} fingerprints for {len(keys)} keys")
        target = Path(path)
        if target.exists():
            raise FileExistsError(
                f"{target} exists but is not a label store (no zarr.json); remove it or choose "
                "another output"
            )
        # Built aside and moved into place whole: a creation killed half-way leaves only the
        # `.partial` folder, which the next creation (under the store's lock) starts over.
        partial = target.with_name(target.name + ".partial")
        if partial.exists():
            shutil.rmtree(partial)
        with zarr.config.set({"array.write_empty_chunks": True}):
            root = zarr.open_group(str(partial), mode="w")
            n = len(keys)
            _strings(root, "keys", keys, 65536)
            root.create_array("fingerprints", data=np.asarray(fingerprints, dtype=np.uint64))
            root.create_array(
                "status", shape=(n,), chunks=(chunk_size,), dtype="uint8", fill_value=0
            )
            n_chunks = max(1, -(-n // chunk_size))
            # Zarr chunks of a few samples, so a random read decodes little; a labelling chunk
            # spans whole Zarr chunks, so ranks writing different labelling chunks never share one.
            storage_rows = READ_ROWS if chunk_size % READ_ROWS == 0 else chunk_size
            root.create_array(
                "done", shape=(n_chunks,), chunks=(1,), dtype="bool", fill_value=False
            )
            if "depth" in kinds:
                spatial = {
                    "shape": (n, resolution, resolution),
                    "chunks": (storage_rows, resolution, resolution),
                }
                # NaN fill: a chunk that was never written reads as NaN, never as valid depth.
                root.create_array("depth", dtype="float16", fill_value=np.nan, **spatial)
                root.create_array("depth_valid", dtype="bool", fill_value=False, **spatial)
            if "boxes" in kinds:
                # Made here, once: ranks labelling side by side each creating it on their first
                # chunk raced, and the loser failed ("a group exists").
                root.create_group("box_parts")
            root.attrs.update(
                {
                    "format": FORMAT,
                    "version": VERSION,
                    "kinds": sorted(kinds),
                    "resolution": resolution,
                    "chunk_size": chunk_size,
                    "experts": experts,
                    "source": source,
                    "keys_digest": keys_digest(keys),
                    "content_digest": content_digest(np.asarray(fingerprints, dtype=np.uint64)),
                    "conventions": CONVENTIONS,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "complete": False,
                }
            )
        partial.rename(target)
        return cls.open(target, mode="r+")

    @classmethod
    def open(cls, path: str | Path, mode: str = "r") -> LabelStore:
        path = Path(path)
        if not (path / "zarr.json").is_file():
            raise FileNotFoundError(f"no label store at {path}")
        root = zarr.open_group(str(path), mode=mode)  # type: ignore[arg-type]
        if root.attrs.get("format") != FORMAT:
            raise ValueError(
                f"{path} is not an mtv label store (format {root.attrs.get('format')!r})"
            )
        return cls(path, root)

    # ------------------------------------------------------------------ writing
    @property
    def n_chunks(self) -> int:
        return int(self.root["done"].shape[0])

    def chunk_range(self, chunk: int) -> tuple[int, int]:
        """Rows [start, stop) of labelling chunk `chunk`: regular, of `chunk_size`, until the
        store grew; a grown store's new rows form chunks of their own (`chunk_starts`)."""
        starts = self.attrs.get("chunk_starts")
        if starts is None:
            start = chunk * self.chunk_size
            return start, min(start + self.chunk_size, len(self.keys))
        stop = starts[chunk + 1] if chunk + 1 < len(starts) else len(self.keys)
        return int(starts[chunk]), int(stop)

    def grow(self, new_keys: Sequence[str], fingerprints: np.ndarray) -> list[int]:
        """Append samples a grown source has added: their rows follow the old ones, in new
        labelling chunks, so the old labels are not rewritten. The store is incomplete until
        those chunks are labelled and `finalize` runs again. Returns the new chunks."""
        if set(new_keys) & set(self.index) or len(set(new_keys)) != len(new_keys):
            raise ValueError("grow: the new keys must be new and unique")
        old, added = len(self.keys), len(new_keys)
        starts = self.attrs.get("chunk_starts") or [
            self.chunk_range(c)[0] for c in range(self.n_chunks)
        ]
        first_new = len(starts)
        starts = [*starts, *range(old, old + added, self.chunk_size)]
        keys = [*self.keys, *new_keys]
        prints = np.concatenate(
            [self.root["fingerprints"][:], np.asarray(fingerprints, dtype=np.uint64)]
        )
        with zarr.config.set({"array.write_empty_chunks": True}):
            _strings(self.root, "keys", keys, 65536)
            self.root.create_array("fingerprints", data=prints, overwrite=True)
            for name in (n for n in DENSE if n in self.root):
                array = self.root[name]
                array.resize((old + added, *array.shape[1:]))
            self.root["done"].resize((len(starts),))
            self.root["done"][first_new:] = False
        update = {
            "chunk_starts": starts,
            "keys_digest": keys_digest(keys),
            "content_digest": content_digest(prints),
            "complete": False,
            "grown": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        self.root.attrs.update(update)
        self.attrs.update(update)
        self.keys = keys
        self.index = {key: i for i, key in enumerate(keys)}
        self._offsets = None
        self._readers.clear()
        return list(range(first_new, len(starts)))

    def relabel(self, keys: Sequence[str], fingerprints: np.ndarray) -> list[int]:
        """Take the new content of samples the source changed: their fingerprints replace the
        old ones, and the chunks holding them are labelled again (the store is incomplete until
        they are and `finalize` runs again). The relabelling is recorded in `relabelled` (when,
        how many samples, which chunks, the first keys). Returns the chunks."""
        rows = np.asarray([self.index[k] for k in keys], dtype=np.int64)
        prints = self.root["fingerprints"][:]
        prints[rows] = np.asarray(fingerprints, dtype=np.uint64)
        starts = np.asarray([self.chunk_range(c)[0] for c in range(self.n_chunks)])
        chunks = sorted({int(c) for c in np.searchsorted(starts, rows, side="right") - 1})
        with zarr.config.set({"array.write_empty_chunks": True}):
            self.root.create_array("fingerprints", data=prints, overwrite=True)
            done = self.root["done"][:]
            done[chunks] = False
            self.root["done"][:] = done
        history = [
            *self.attrs.get("relabelled", []),
            {
                "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "samples": len(keys),
                "chunks": chunks,
                "keys": list(keys[:10]),
            },
        ]
        update = {
            "content_digest": content_digest(prints),
            "complete": False,
            "relabelled": history,
        }
        self.root.attrs.update(update)
        self.attrs.update(update)
        self._readers.clear()
        return chunks

    def done(self) -> np.ndarray:
        return self.root["done"][:]

    def nothing_decoded(self) -> bool:
        """Whether the store has samples and labelling could decode none of their images."""
        status = self.root["status"][:]
        return bool(len(status)) and bool((status == STATUS_UNDECODABLE).all())

    def write_chunk(self, chunk: int, labels: ChunkLabels) -> None:
        """Write one chunk's labels, then its done marker (so a kill leaves it unmarked)."""
        with zarr.config.set({"array.write_empty_chunks": True}):
            self._write_chunk(chunk, labels)

    def _write_chunk(self, chunk: int, labels: ChunkLabels) -> None:
        start, stop = self.chunk_range(chunk)
        self.root["status"][start:stop] = labels.status
        if labels.depth is not None:
            self.root["depth"][start:stop] = labels.depth.astype(np.float16)
            self.root["depth_valid"][start:stop] = labels.depth_valid
        if labels.boxes is not None:
            part = self._box_parts().create_group(f"{chunk:08d}", overwrite=True)
            values = [b.boxes for b in labels.boxes]
            part.create_array(
                "values",
                data=np.concatenate(values).reshape(-1, 4)
                if values
                else np.zeros((0, 4), np.float32),
            )
            part.create_array(
                "counts", data=np.asarray([len(b.names) for b in labels.boxes], np.int64)
            )
            part.create_array(
                "scores",
                data=np.concatenate([b.scores for b in labels.boxes]).astype(np.float32)
                if labels.boxes
                else np.zeros(0, np.float32),
            )
            _strings(part, "names", [n for b in labels.boxes for n in b.names], 65536)
        self.root["done"][chunk] = True

    def _box_parts(self) -> zarr.Group:
        try:
            return self.root["box_parts"]  # type: ignore[return-value]
        except KeyError:  # a store created before `create` made the group
            try:
                return self.root.create_group("box_parts")
            except ContainsGroupError:  # another rank made it meanwhile
                return self.root["box_parts"]  # type: ignore[return-value]

    def finalize(self) -> None:
        """Consolidate the chunks' boxes into flat values + offsets and mark the store complete.
        Idempotent: a kill during it is mended by running it again."""
        with zarr.config.set({"array.write_empty_chunks": True}):
            self._finalize()

    def _finalize(self) -> None:
        done = self.done()
        if not done.all():
            missing = np.flatnonzero(~done)
            raise RuntimeError(f"{len(missing)} chunk(s) not labelled yet (first: {missing[0]})")
        if "boxes" in self.attrs["kinds"]:
            parts = self.root["box_parts"]
            values, counts, scores, names = [], [], [], []
            for chunk in range(self.n_chunks):
                part = parts[f"{chunk:08d}"]
                values.append(part["values"][:])
                counts.append(part["counts"][:])
                scores.append(part["scores"][:])
                names += [str(n) for n in part["names"][:]]
            group = self.root.require_group("boxes")
            flat = np.concatenate(values).astype(np.float32).reshape(-1, 4)
            rows = max(1, min(BOX_ROWS, len(flat)))
            group.create_array("values", data=flat, chunks=(rows, 4), overwrite=True)
            offsets = np.concatenate([[0], np.cumsum(np.concatenate(counts))]).astype(np.int64)
            group.create_array("offsets", data=offsets, overwrite=True)
            group.create_array(
                "scores",
                data=np.concatenate(scores).astype(np.float32),
                chunks=(rows,),
                overwrite=True,
            )
            _strings(group, "names", names, rows)
        self.root.attrs["complete"] = True
        self.attrs["complete"] = True

    # ------------------------------------------------------------------ reading
    @property
    def complete(self) -> bool:
        return bool(self.attrs.get("complete"))

    def _row(self, key: str) -> int:
        try:
            return self.index[key]
        except KeyError:
            raise KeyError(f"no labels for key {key!r} in {self.path}") from None

    @property
    def strict(self) -> bool:
        """Whether every chunk must be stored (format 2 writes them all)."""
        return int(self.attrs.get("version", 1)) >= 2

    def _reader(self, name: str) -> CachedArray:
        if name not in self._readers:
            self._readers[name] = CachedArray(self.root[name], strict=self.strict)
        return self._readers[name]

    def missing_chunks(self) -> dict[str, list[int]]:
        """Per dense array, the chunks (along the sample axis) that are not stored; empty for a
        sound store. Lists the store once per array; reads no data."""
        if not self.strict:
            return {}
        missing = {}
        for name in (n for n in DENSE if n in self.root):
            array = self.root[name]
            count = -(-array.shape[0] // array.chunks[0])
            if array.nchunks_initialized < count:
                missing[name] = [c for c in range(count) if not chunk_exists(array, c)]
        return missing

    def keys_of_chunk(self, name: str, chunk: int) -> list[str]:
        rows = self.root[name].chunks[0]
        return self.keys[chunk * rows : (chunk + 1) * rows]

    def depth(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(disparity (R, R) float32 in [0, 1], valid (R, R) bool) of one sample; a sample whose
        chunk is missing or damaged raises `LabelStoreDamaged` naming it."""
        i = self._row(key)
        try:
            return self._reader("depth")[i].astype(np.float32), self._reader("depth_valid")[i]
        except LabelStoreDamaged as err:
            raise LabelStoreDamaged(
                f"label store {self.path}: the depth of sample {key!r} cannot be read: {err}; "
                f"`mtv label check {self.path}` names every damaged sample"
            ) from None

    def boxes(self, key: str) -> BoxLabel:
        if not self.complete:
            raise RuntimeError(f"{self.path} is not complete: finish `mtv label` first")
        i = self._row(key)
        if self._offsets is None:
            self._offsets = self.root["boxes/offsets"][:]
        rows = slice(int(self._offsets[i]), int(self._offsets[i + 1]))
        return BoxLabel(
            boxes=self._reader("boxes/values")[rows],
            names=[str(n) for n in self._reader("boxes/names")[rows]],
            scores=self._reader("boxes/scores")[rows],
        )

    def status(self, key: str) -> int:
        return int(self.root["status"][self._row(key)])

"""`mtv label`: run the experts over a source, chunk by chunk, into a resumable label store.

Each chunk of `chunk_size` samples is labelled and written, then marked done; a run that is
killed at any point and started again skips the marked chunks and redoes the rest, giving the
same store as an uninterrupted run (experts are deterministic; the oracle's noise is seeded by
key). Under torchrun, rank r labels chunks r, r + W, r + 2W, ... and writes only those.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mtv.data import FolderSource, TarShardSource, UnusableSample, decode_image, open_source
from mtv.data.lock import ExclusiveLock, Locked
from mtv.data.provenance import match_store, sample_fingerprints
from mtv.data.store import (
    STATUS_OK,
    STATUS_UNDECODABLE,
    VERSION,
    ChunkLabels,
    LabelStore,
)
from mtv.label.base import BoxExpert, BoxLabel, DepthExpert, DepthLabel, LabelInput, Tagger
from mtv.label.oracle import OracleBoxes, OracleDepth
from mtv.label.tagger import CaptionTagger
from mtv.specs.experiment import MiniWorldSourceSpec
from mtv.specs.label import LabelSpec
from mtv.world.corpus import GroundTruth, WorldCorpus


class LabelSpecError(ValueError):
    """The labelling job cannot run as specified (named field and reason)."""


@dataclass
class LabelStats:
    images: int = 0
    chunks: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def add_time(self, part: str, seconds: float) -> None:
        self.seconds[part] = self.seconds.get(part, 0.0) + seconds


def describe_source(source: Any) -> str:
    """A source spec as a reader would name it."""
    for name in ("root", "urls"):
        if hasattr(source, name):
            return f"{source.kind} {getattr(source, name)}"
    return str(source.kind)


def resolve_source(spec: LabelSpec) -> tuple[TarShardSource | FolderSource, GroundTruth | None]:
    """The sample source, and the ground truth when it is a rendered mini-world corpus."""
    return open_label_source(spec.source, "source")


def open_label_source(
    source: Any, field_name: str
) -> tuple[TarShardSource | FolderSource, GroundTruth | None]:
    """A source spec opened (`field_name` is where errors point)."""
    if isinstance(source, MiniWorldSourceSpec):
        try:
            corpus = WorldCorpus.open(source.root)
        except FileNotFoundError as err:
            raise LabelSpecError(
                f"{field_name}.root: {err}. Render it with `mtv world render {source.root} "
                f"--n {source.n_images} --size {source.image_size}`"
            ) from None
        return TarShardSource(corpus.shards), GroundTruth(corpus.groundtruth)
    return open_source(source), None


def build_experts(
    spec: LabelSpec, truth: GroundTruth | None
) -> tuple[DepthExpert | None, BoxExpert | None, Tagger]:
    def need_truth(field_name: str) -> GroundTruth:
        if truth is None:
            raise LabelSpecError(
                f"{field_name}: the oracle reads mini-world ground truth, but the source is "
                f"{spec.source.kind}; use depth_anything / owlv2 for other data"
            )
        return truth

    depth: DepthExpert | None = None
    if spec.depth is not None and spec.depth.kind == "oracle":
        d = spec.depth
        depth = OracleDepth(need_truth("depth"), d.blur_sigma, d.noise, d.warp, spec.seed)
    elif spec.depth is not None:
        from mtv.label.hf import DepthAnythingExpert

        depth = DepthAnythingExpert(spec.depth.model, device=spec.depth.device)
    boxes: BoxExpert | None = None
    if spec.boxes is not None and spec.boxes.kind == "oracle":
        b = spec.boxes
        boxes = OracleBoxes(
            need_truth("boxes"), b.jitter, b.miss_rate, b.false_rate, b.wrong_name_rate, spec.seed
        )
    elif spec.boxes is not None:
        from mtv.label.hf import Owlv2Expert

        b = spec.boxes
        boxes = Owlv2Expert(b.model, device=b.device, threshold=b.threshold, max_boxes=b.max_boxes)
    tagger: Tagger = CaptionTagger()
    if spec.tagger.kind == "siglip":
        from mtv.label.hf import SiglipTagger

        t = spec.tagger
        tagger = SiglipTagger(
            t.model, read_vocabulary(t.vocabulary), t.threshold, t.max_tags, t.template, t.device
        )
    return depth, boxes, tagger


def read_vocabulary(path: str) -> list[str]:
    """Tags, one a line (blank lines and `#` comments ignored)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise LabelSpecError(f"tagger.vocabulary: cannot read {path}: {err.strerror}") from None
    tags = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not tags:
        raise LabelSpecError(f"tagger.vocabulary: {path} lists no tag")
    return tags


def to_label_resolution(label: DepthLabel, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """Resample a disparity map over the whole image to resolution^2, then min-max normalise it
    over valid pixels (relative disparity has no meaningful scale; [0, 1] suits float16)."""
    disparity = torch.from_numpy(np.asarray(label.disparity, dtype=np.float32))[None, None]
    valid = (
        torch.ones_like(disparity)
        if label.valid is None
        else torch.from_numpy(np.asarray(label.valid, dtype=np.float32))[None, None]
    )
    size = (resolution, resolution)
    disparity = F.interpolate(
        disparity, size=size, mode="bilinear", antialias=True, align_corners=False
    )
    valid = F.interpolate(valid, size=size, mode="bilinear", align_corners=False) > 0.5
    disparity, valid = disparity[0, 0], valid[0, 0] & torch.isfinite(disparity[0, 0])
    if valid.any():
        low, high = disparity[valid].min(), disparity[valid].max()
        disparity = (disparity - low) / (high - low).clamp(min=1e-12)
    disparity = torch.where(valid, disparity, 0.0)
    return disparity.numpy(), valid.numpy()


def _experts_record(depth: DepthExpert | None, boxes: BoxExpert | None, tagger: Tagger) -> dict:
    record: dict[str, Any] = {"tagger": tagger.info().as_dict()}
    if depth is not None:
        record["depth"] = depth.info().as_dict()
    if boxes is not None:
        record["boxes"] = boxes.info().as_dict()
    return record


def _check_resume(store: LabelStore, expected: dict[str, Any]) -> None:
    differences = [
        f"{name}: store has {store.attrs.get(name)!r}, this job {value!r}"
        for name, value in expected.items()
        if store.attrs.get(name) != value
    ]
    if differences:
        raise LabelSpecError(
            f"output: {store.path} was made by a different job, so it cannot be resumed ("
            + "; ".join(differences)
            + "). Choose another output, or delete it to start over."
        )


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def open_or_create_store(
    spec: LabelSpec,
    source: TarShardSource | FolderSource,
    keys: list[str],
    experts: dict[str, Any],
    rank: int,
) -> LabelStore:
    kinds = [k for k, e in (("depth", spec.depth), ("boxes", spec.boxes)) if e is not None]
    expected = {
        "kinds": sorted(kinds),
        "resolution": spec.resolution,
        "chunk_size": spec.chunk_size,
        "experts": experts,
    }
    if rank == 0:
        try:
            store = LabelStore.open(spec.output, mode="r+")
        except FileNotFoundError:
            try:
                store = LabelStore.create(
                    spec.output,
                    keys,
                    kinds,
                    spec.resolution,
                    spec.chunk_size,
                    experts,
                    source=spec.source.model_dump(mode="json"),
                    fingerprints=sample_fingerprints(source, keys),
                )
            except FileExistsError as err:
                raise LabelSpecError(f"output: {err}") from None
        if store.attrs.get("version") != VERSION:
            raise LabelSpecError(
                f"output: {store.path} is a label store of format {store.attrs.get('version')}, "
                f"this mtv writes format {VERSION}; delete it to label again"
            )
        _check_resume(store, expected)
        match = match_store(store, source, describe_source(spec.source))
        if match.changed and spec.relabel_changed and not (match.legacy or match.not_in_source):
            store.relabel(match.changed, sample_fingerprints(source, match.changed))
        elif match.refused:
            hint = (
                " (or, if the source is the same corpus with edited samples, label them again "
                "with `--set relabel_changed=true`)"
                if match.changed
                else ""
            )
            raise LabelSpecError(f"output: {match.refused}{hint}")
        if match.unlabelled:
            # A grown source: its new samples are appended and labelled, the rest left alone.
            store.grow(match.unlabelled, sample_fingerprints(source, match.unlabelled))
    _barrier()
    if rank != 0:
        store = LabelStore.open(spec.output, mode="r+")
    return store


def _label_chunk(
    store: LabelStore,
    chunk: int,
    source: TarShardSource | FolderSource,
    experts: tuple[DepthExpert | None, BoxExpert | None, Tagger],
    spec: LabelSpec,
    stats: LabelStats,
    on_skip: Callable[[str, str], None] | None,
    progress: Callable[[int], None] | None,
) -> None:
    depth_expert, box_expert, tagger = experts
    start, stop = store.chunk_range(chunk)
    keys = store.keys[start:stop]
    status = np.full(len(keys), STATUS_OK, dtype=np.uint8)
    resolution = spec.resolution
    depth = np.zeros((len(keys), resolution, resolution), np.float32) if depth_expert else None
    valid = np.zeros((len(keys), resolution, resolution), bool) if depth_expert else None
    boxes: list[BoxLabel] | None = (
        [BoxLabel(np.zeros((0, 4)), [], np.zeros(0))] * len(keys) if box_expert else None
    )
    for offset in range(0, len(keys), spec.batch_size):
        tick = time.perf_counter()
        inputs, rows = [], []
        for row, key in enumerate(keys[offset : offset + spec.batch_size], start=offset):
            try:
                sample = source.get(key)
                image = decode_image(sample, spec.max_pixels)
                inputs.append(LabelInput(key, image, sample.caption))
                rows.append(row)
            except UnusableSample as err:
                status[row] = STATUS_UNDECODABLE
                stats.skipped.append((key, err.reason))
                if on_skip is not None:
                    on_skip(key, err.reason)
        stats.add_time("read", time.perf_counter() - tick)
        if not inputs:
            if progress is not None:
                progress(len(keys[offset : offset + spec.batch_size]))
            continue
        if depth_expert is not None:
            tick = time.perf_counter()
            predictions = depth_expert.predict(inputs)
            stats.add_time("depth", time.perf_counter() - tick)
            for row, prediction in zip(rows, predictions, strict=True):
                depth[row], valid[row] = to_label_resolution(prediction, resolution)  # type: ignore[index]
        if box_expert is not None:
            tick = time.perf_counter()
            queries = tagger.tags(inputs)
            stats.add_time("tagger", time.perf_counter() - tick)
            tick = time.perf_counter()
            predictions = box_expert.predict(inputs, queries)
            stats.add_time("boxes", time.perf_counter() - tick)
            for row, prediction in zip(rows, predictions, strict=True):
                boxes[row] = prediction  # type: ignore[index]
        stats.images += len(inputs)
        if progress is not None:
            progress(len(keys[offset : offset + spec.batch_size]))
    tick = time.perf_counter()
    store.write_chunk(chunk, ChunkLabels(depth, valid, boxes, status))
    stats.add_time("write", time.perf_counter() - tick)
    stats.chunks += 1


def run_labelling(
    spec: LabelSpec,
    rank: int = 0,
    world_size: int = 1,
    progress: Callable[[int], None] | None = None,
    on_skip: Callable[[str, str], None] | None = None,
    on_start: Callable[[int, int], None] | None = None,
) -> tuple[LabelStore, LabelStats]:
    """Label every chunk of this rank that is not done yet, then (rank 0) consolidate the store.
    `on_start(total_images, already_done_images)` is called once the work is known."""
    started = time.perf_counter()
    source, truth = resolve_source(spec)
    experts = build_experts(spec, truth)
    keys = source.keys()
    # One labelling job per store (its ranks share it: rank 0 holds the lock for them).
    lock = ExclusiveLock.for_store(Path(spec.output))
    if rank == 0:
        try:
            lock.acquire(f"mtv label {spec.output}")
        except Locked as err:
            raise LabelSpecError(f"output: {err}") from None
    try:
        return _label_store(
            spec, source, keys, experts, rank, world_size, started, progress, on_skip, on_start
        )
    finally:
        lock.release()


def _label_store(
    spec: LabelSpec,
    source: TarShardSource | FolderSource,
    keys: list[str],
    experts: tuple[DepthExpert | None, BoxExpert | None, Tagger],
    rank: int,
    world_size: int,
    started: float,
    progress: Callable[[int], None] | None,
    on_skip: Callable[[str, str], None] | None,
    on_start: Callable[[int, int], None] | None,
) -> tuple[LabelStore, LabelStats]:
    store = open_or_create_store(spec, source, keys, _experts_record(*experts), rank)
    done = store.done()
    mine = [c for c in range(store.n_chunks) if c % world_size == rank]
    todo = [c for c in mine if not done[c]]
    if on_start is not None:
        total = sum(store.chunk_range(c)[1] - store.chunk_range(c)[0] for c in mine)
        finished = sum(store.chunk_range(c)[1] - store.chunk_range(c)[0] for c in mine if done[c])
        on_start(total, finished)
    stats = LabelStats()
    for chunk in todo:
        _label_chunk(store, chunk, source, experts, spec, stats, on_skip, progress)
    _barrier()
    if rank == 0 and not store.complete:
        tick = time.perf_counter()
        store.finalize()
        stats.add_time("write", time.perf_counter() - tick)
    stats.add_time("total", time.perf_counter() - started)
    if rank == 0:
        refuse_if_nothing_decoded(store, stats.skipped)
    return store, stats


def refuse_if_nothing_decoded(store: LabelStore, skipped: list[tuple[str, str]]) -> None:
    """A store in which no sample's image decoded labels nothing: an error naming why (the
    first reason), not a finished job (the store stays on disk, as written)."""
    if store.nothing_decoded():
        example = f"; e.g. {skipped[0][0]}: {skipped[0][1]}" if skipped else ""
        raise LabelSpecError(
            f"no image of the source decoded ({len(store.keys)} sample(s)){example}: {store.path} "
            "holds no labels. Check the source's images (mtv label check lists them)"
        )

"""`mtv label check`: validate a label store and name every bad sample."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import TypeAdapter, ValidationError

from mtv.data.provenance import FingerprintedSource, match_store
from mtv.data.store import DENSE, STATUS_OK, STATUS_UNDECODABLE, LabelStore, chunk_exists
from mtv.label.pipeline import LabelSpecError, describe_source, open_label_source
from mtv.specs.experiment import SourceSpec


@dataclass(frozen=True)
class StoreProblem:
    key: str  # the sample's key, or "" for the store as a whole
    field: str
    message: str
    fatal: bool = True  # False: worth knowing (e.g. an undecodable image), not a defect

    def __str__(self) -> str:
        return f"{self.key or '(store)'}: {self.field}: {self.message}"


def check_store(
    store: LabelStore, source: FingerprintedSource | None = None, source_name: str = "the source"
) -> list[StoreProblem]:
    """Every problem of the store: incomplete labelling, missing or unreadable chunks (every
    chunk is read), depth maps of the wrong shape or with NaN/inf or values outside [0, 1], boxes
    outside [0, 1] or inverted, empty names, scores out of range, broken offsets, and, given the
    source, keys missing on either side and samples whose content differs from what was
    labelled. Samples labelling could not decode are listed as not fatal."""
    problems: list[StoreProblem] = []
    keys = store.keys
    n = len(keys)
    done = store.done()
    if not done.all():
        problems.append(
            StoreProblem("", "done", f"{int((~done).sum())} of {len(done)} chunks not labelled")
        )
    if not store.complete:
        problems.append(StoreProblem("", "complete", "the store was never finalised"))
    unreadable = _check_chunks(store, problems)
    status = store.root["status"][:]
    for i in np.flatnonzero(~np.isin(status, [STATUS_OK, STATUS_UNDECODABLE])):
        if keys[i] not in unreadable:
            problems.append(StoreProblem(keys[i], "status", f"unknown status {status[i]}"))
    for i in np.flatnonzero(status == STATUS_UNDECODABLE):
        note = "image undecodable when labelled; training leaves it out"
        problems.append(StoreProblem(keys[i], "status", note, fatal=False))
    if store.nothing_decoded():
        problems.append(StoreProblem("", "status", f"no image of the {n} sample(s) decoded"))
    if "depth" in store.attrs["kinds"]:
        problems += _check_depth(store, unreadable)
    if "boxes" in store.attrs["kinds"] and store.complete:
        problems += _check_boxes(store)
    if source is not None:
        problems += _check_source(store, source, source_name)
    if len(set(keys)) != n:
        problems.append(StoreProblem("", "keys", "duplicate keys"))
    return problems


def recorded_source(store: LabelStore) -> tuple[FingerprintedSource, str]:
    """The source the store says it labelled, opened; `LabelSpecError` (or the source's own
    error) when it cannot be."""
    recorded = store.attrs.get("source")
    try:
        spec = TypeAdapter(SourceSpec).validate_python(recorded)
    except ValidationError as err:
        raise LabelSpecError(
            f"{store.path} records no readable source ({err.error_count()} error(s)); give the "
            "labelling job with --spec"
        ) from None
    source, _ = open_label_source(spec, "the store's recorded source")
    return source, describe_source(spec)


def _check_source(
    store: LabelStore, source: FingerprintedSource, source_name: str
) -> list[StoreProblem]:
    match = match_store(store, source, source_name)
    if match.legacy:
        return [StoreProblem("", "fingerprints", match.refused)]
    changed = "differs from the sample the store labelled: same key, other content"
    return (
        [StoreProblem(k, "keys", "not in the source") for k in match.not_in_source]
        + [StoreProblem(k, "fingerprint", changed) for k in match.changed]
        + [StoreProblem(k, "keys", "in the source but not in the store") for k in match.unlabelled]
    )


def _check_chunks(store: LabelStore, problems: list[StoreProblem]) -> set[str]:
    """Read every chunk of the dense arrays; name each sample of a missing or unreadable one.
    Returns those samples' keys (their values are not checked further)."""
    bad: set[str] = set()
    if not store.complete:
        return bad  # chunks not labelled yet are reported as such
    for name in (n for n in DENSE if n in store.root):
        array = store.root[name]
        rows = array.chunks[0]
        for chunk in range(-(-array.shape[0] // rows)):
            keys = store.keys[chunk * rows : (chunk + 1) * rows]
            if store.strict and not chunk_exists(array, chunk):
                reason = f"chunk {chunk} is missing"
            else:
                try:
                    array[chunk * rows : (chunk + 1) * rows]
                    continue
                except Exception as err:  # codecs report damage as many error types
                    reason = f"chunk {chunk} cannot be read ({type(err).__name__})"
            problems += [StoreProblem(k, name, reason) for k in keys]
            bad.update(keys)
    return bad


def _check_depth(store: LabelStore, skip: set[str], block_rows: int = 4096) -> list[StoreProblem]:
    problems = []
    depth, valid = store.root["depth"], store.root["depth_valid"]
    resolution = store.attrs["resolution"]
    expected = (len(store.keys), resolution, resolution)
    if depth.shape != expected or valid.shape != expected:
        return [StoreProblem("", "depth", f"shape {depth.shape}, expected {expected}")]
    for start in range(0, len(store.keys), block_rows):
        try:
            block = depth[start : start + block_rows].astype(np.float32)
        except Exception:  # a damaged chunk in this block: already named, one by one
            continue
        finite = np.isfinite(block).all(axis=(1, 2))
        in_range = ((block >= 0) & (block <= 1)).all(axis=(1, 2)) | ~finite
        for i in np.flatnonzero(~finite):
            if store.keys[start + i] not in skip:
                problems.append(StoreProblem(store.keys[start + i], "depth", "NaN or inf values"))
        for i in np.flatnonzero(~in_range):
            problems.append(StoreProblem(store.keys[start + i], "depth", "values outside [0, 1]"))
    return problems


def _check_boxes(store: LabelStore) -> list[StoreProblem]:
    group = store.root["boxes"]
    offsets = group["offsets"][:]
    values = group["values"][:]
    names = group["names"][:]
    scores = group["scores"][:]
    n = len(store.keys)
    if len(offsets) != n + 1 or offsets[0] != 0 or (np.diff(offsets) < 0).any():
        return [StoreProblem("", "boxes.offsets", "not a monotone array of length N + 1 from 0")]
    if offsets[-1] != len(values) or len(names) != len(values) or len(scores) != len(values):
        return [StoreProblem("", "boxes", "values, names, scores and offsets disagree in length")]
    owner = np.repeat(np.arange(n), np.diff(offsets))
    problems = []
    outside = ~((values >= 0) & (values <= 1) & np.isfinite(values)).all(axis=1)
    inverted = (values[:, 2] < values[:, 0]) | (values[:, 3] < values[:, 1])
    for row in np.flatnonzero(outside):
        problems.append(
            StoreProblem(
                store.keys[owner[row]], "boxes", f"box {values[row].tolist()} outside [0, 1]"
            )
        )
    for row in np.flatnonzero(inverted & ~outside):
        problems.append(
            StoreProblem(
                store.keys[owner[row]],
                "boxes",
                f"box {values[row].tolist()} has x1 < x0 or y1 < y0",
            )
        )
    for row in np.flatnonzero([not str(name).strip() for name in names]):
        problems.append(StoreProblem(store.keys[owner[row]], "boxes.names", "empty entity name"))
    for row in np.flatnonzero(~((scores >= 0) & (scores <= 1))):
        problems.append(
            StoreProblem(
                store.keys[owner[row]], "boxes.scores", f"score {scores[row]} outside [0, 1]"
            )
        )
    return problems

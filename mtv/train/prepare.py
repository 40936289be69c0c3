"""Everything a run reads besides the model: the source, the label store and the tokenizer.

For the built-in mini-world, a missing corpus is rendered and labelled with the exact oracle on
first use (then reused), so `mtv run` works on a fresh machine. Other sources must have been
labelled with `mtv label` when their tasks need labels.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mtv.data import TarShardSource, open_source
from mtv.data.lock import ExclusiveLock
from mtv.data.provenance import content_digest, match_store, sample_fingerprints
from mtv.data.store import STATUS_OK, LabelStore
from mtv.label.pipeline import run_labelling
from mtv.models.tokenizer import TextTokenizer, load_or_train_tokenizer
from mtv.specs.experiment import DEFAULT_CAMERA_DISTANCE, ExperimentSpec, MiniWorldSourceSpec
from mtv.specs.label import LabelSpec
from mtv.world.corpus import WorldCorpus, render_corpus


class DataPreparationError(RuntimeError):
    """The run's data is missing or does not match the spec (the message says which field)."""


@dataclass
class RunData:
    source: Any  # TarShardSource | FolderSource
    store: LabelStore | None
    tokenizer: TextTokenizer
    root: Path  # where derived files (tokenizer) live
    keys: list[str]  # the samples to train on: labelled, decodable, in the source


Report = Callable[[str], None]


def _mini_world(spec: MiniWorldSourceSpec, report: Report) -> WorldCorpus:
    root = Path(spec.root)
    views = spec.views_per_scene
    wanted = {
        "seed": spec.seed,
        "size": spec.image_size,
        "views": views,
        "scenes": -(-spec.n_images // views),
        "camera_distance": list(spec.camera_distance),
    }
    try:
        corpus = WorldCorpus.open(root)
    except FileNotFoundError:
        if root.exists() and any(root.iterdir()):
            raise DataPreparationError(
                f"data.source.root: {root} exists but holds no complete mini-world corpus; "
                "remove it or point data.source.root elsewhere"
            ) from None
        report(f"rendering the mini-world into {root} ({wanted['scenes'] * views} images)")
        return render_corpus(
            root,
            wanted["scenes"],
            spec.image_size,
            views,
            spec.seed,
            camera_distance=spec.camera_distance,
        )
    have = {k: corpus.manifest.get(k) for k in wanted}
    if have["camera_distance"] is None:  # rendered before the setting existed: the default
        have["camera_distance"] = list(DEFAULT_CAMERA_DISTANCE)
    if have != wanted:
        raise DataPreparationError(
            f"data.source: the corpus at {root} was rendered with {have}, the spec asks for "
            f"{wanted}; use another data.source.root or remove the old corpus"
        )
    return corpus


def _data_root(spec: ExperimentSpec) -> Path:
    """Where the files a run derives from its data live (corpus, labels, tokenizer)."""
    if isinstance(spec.data.source, MiniWorldSourceSpec):
        return Path(spec.data.source.root)
    store = spec.data.labels.store
    return Path(store).parent if store else Path(spec.output.root)


def prepare_data(spec: ExperimentSpec, report: Report = print, is_main: bool = True) -> RunData:
    """Source, labels and tokenizer for `spec`; renders/labels the mini-world when missing
    (`is_main`: only one rank may create them; the others find them made). Runs started side
    by side (a parallel sweep) share those files: one makes them, holding the data root's lock
    (`ExclusiveLock.for_preparation`), and the others wait for it, then find them made."""
    if not is_main:
        return _prepare_data(spec, report, is_main)
    root = _data_root(spec)
    # A mini-world folder is rendered only where there is none yet: its lock lies beside it.
    mini_world = isinstance(spec.data.source, MiniWorldSourceSpec)
    lock = ExclusiveLock.for_preparation(root, beside=mini_world)
    lock.acquire(
        "mtv run (preparing its data)",
        on_wait=lambda holder: report(f"waiting for {holder}, which is preparing {root}"),
    )
    try:
        return _prepare_data(spec, report, is_main)
    finally:
        lock.release()


def _prepare_data(spec: ExperimentSpec, report: Report, is_main: bool) -> RunData:
    needs_labels = bool({"boxes", "depth"} & set(spec.data.labels.kinds))
    source_spec = spec.data.source
    if isinstance(source_spec, MiniWorldSourceSpec):
        # Only the main rank may render; the others run after it (see the trainer's barrier).
        corpus = _mini_world(source_spec, report) if is_main else WorldCorpus.open(source_spec.root)
        source: Any = TarShardSource(corpus.shards)
        root = Path(source_spec.root)
        oracle = spec.data.labels.oracle
        store_path = Path(spec.data.labels.store or root / oracle.store_name())
        if needs_labels and is_main and not _complete(store_path):
            quality = "exact" if oracle.exact else "noisy"
            report(f"labelling the mini-world with the {quality} oracle into {store_path}")
            kinds = spec.data.labels.kinds
            labels = LabelSpec(
                source=source_spec,
                output=str(store_path),
                resolution=source_spec.image_size,
                depth=oracle.depth if "depth" in kinds else None,
                boxes=oracle.boxes if "boxes" in kinds else None,
                seed=oracle.seed,
            )
            run_labelling(labels)
    else:
        source = open_source(source_spec)
        root = _data_root(spec)
        store_path = Path(spec.data.labels.store) if spec.data.labels.store else None  # type: ignore[assignment]
        if needs_labels and (store_path is None or not _complete(store_path)):
            raise DataPreparationError(
                f"data.labels.store: {store_path} is missing or incomplete; make it with "
                "`mtv label` before training"
            )
    oracle_unused = spec.data.labels.store is not None or not isinstance(
        source_spec, MiniWorldSourceSpec
    )
    if needs_labels and oracle_unused and not spec.data.labels.oracle.exact and is_main:
        # The noise is a way of making mini-world labels on first use (often inherited from
        # experiments/base.yaml); a store made by `mtv label` has the labels its job made.
        report(f"note: data.labels.oracle is not used: the labels come from the store {store_path}")
    store = LabelStore.open(store_path) if needs_labels else None
    keys = source.keys()
    if store is not None:
        missing = [k for k in spec.data.labels.kinds if k not in store.attrs["kinds"]]
        if missing:
            raise DataPreparationError(
                f"data.labels.kinds: the store {store_path} has {store.attrs['kinds']}, "
                f"not {missing}"
            )
        keys = _labelled_keys(store, source, report if is_main else _quiet)
    text = spec.model.text
    tokenizer_path = _tokenizer_path(spec, source, root, report if is_main else _quiet)
    tokenizer = load_or_train_tokenizer(
        tokenizer_path,
        lambda: (s.caption for s in source),
        text.vocab_size,
        text.context_length,
        spec.model.tokenizer.lowercase,
    )
    return RunData(source, store, tokenizer, root, keys)


def _tokenizer_path(spec: ExperimentSpec, source: Any, root: Path, report: Report) -> Path:
    """The tokenizer a run uses: the spec's file; else the one exported beside `model.init_from`
    (its text tower was trained with it); else one trained on this source's captions, cached
    under a name that digests the source, so another data set never reuses it."""
    if spec.model.tokenizer.path:
        return Path(spec.model.tokenizer.path)
    init = spec.model.init_from
    if init is not None and (Path(init) / "tokenizer.json").is_file():
        return Path(init) / "tokenizer.json"
    if init is not None:
        report(
            f"warning: model.init_from: {init} has no tokenizer.json; if its text tower is used, "
            "set model.tokenizer.path to the tokenizer it was trained with (a tokenizer trained "
            "here on the captions would not match it)"
        )
    lowercase = spec.model.tokenizer.lowercase
    digest = captions_digest(source, spec.model.text.vocab_size, lowercase)
    return root / f"tokenizer-{digest}.json"


def captions_digest(source: Any, vocab_size: int, lowercase: bool) -> str:
    """What a tokenizer trained on `source`'s captions depends on, as a short digest: the
    source's samples (keys and content fingerprints) and the training settings."""
    keys = source.keys()
    digest = hashlib.sha256()
    digest.update(content_digest(sample_fingerprints(source, keys)).encode())
    digest.update("\0".join(keys).encode())
    digest.update(f"{vocab_size}:{lowercase}".encode())
    return digest.hexdigest()[:12]


def _quiet(message: str) -> None:
    del message


def _labelled_keys(store: LabelStore, source: Any, report: Report) -> list[str]:
    """The store's keys to train on, after checking that the store labelled this very source and
    is whole; says what is left out and why."""
    match = match_store(store, source, str(getattr(source, "root", None) or source))
    if match.refused:
        raise DataPreparationError(f"data.labels.store: {match.refused}")
    damaged = store.missing_chunks()
    if damaged:
        name, chunks = next(iter(damaged.items()))
        keys = store.keys_of_chunk(name, chunks[0])
        raise DataPreparationError(
            f"data.labels.store: {store.path} is damaged: {sum(map(len, damaged.values()))} "
            f"chunk(s) missing (first: {name} chunk {chunks[0]}, samples {keys[0]!r} to "
            f"{keys[-1]!r}); `mtv label check {store.path}` names every sample, and labelling "
            "into a new store replaces them"
        )
    if match.note:
        report(f"warning: {match.note}")
    status = store.root["status"][:]
    undecodable = [store.keys[i] for i in np.flatnonzero(status != STATUS_OK)]
    if undecodable:
        shown = ", ".join(repr(k) for k in undecodable[:3])
        report(
            f"{len(undecodable)} sample(s) that labelling could not decode are left out "
            f"({shown}{' ...' if len(undecodable) > 3 else ''})"
        )
    left_out = set(undecodable)
    return [k for k in store.keys if k not in left_out]


def _complete(path: Path) -> bool:
    try:
        return LabelStore.open(path).complete
    except (FileNotFoundError, ValueError):
        return False

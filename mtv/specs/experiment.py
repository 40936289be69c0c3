"""The experiment spec: everything one training run is, as data."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from mtv.specs.base import PathText, StrictModel
from mtv.specs.limits import DEFAULT_INDEX_THREADS, DEFAULT_MAX_PIXELS, MAX_IMAGE_SIDE
from mtv.specs.model import ModelSpec
from mtv.specs.oracle import OracleBoxesSpec, OracleDepthSpec
from mtv.specs.tasks import TaskDefaults, TaskEntry, TaskSpecBase, validate_task_defaults

LabelKind = Literal["caption", "boxes", "depth"]


# The mini-world's camera distances (mtv.world.scene.CAMERA_DISTANCE, which a test keeps equal;
# the specs sit below the world in the import order) and the least a spec may ask for: closer,
# a camera can stand beside an object and 5% of scenes show none (measured at 2.5-3.5).
DEFAULT_CAMERA_DISTANCE = (5.0, 6.5)
MIN_CAMERA_DISTANCE = 2.5
# The world seeds of the mini suite's held-out scenes (multi-object, single-object): a training
# corpus drawn from one of them would be evaluated on its own images.
HELD_OUT_WORLD_SEEDS = (1_000_003, 1_000_033)


class MiniWorldSourceSpec(StrictModel):
    """The built-in procedural world: rendered on first use, with exact ground truth."""

    kind: Literal["miniworld"] = "miniworld"
    n_images: int = Field(4000, gt=0)
    image_size: int = Field(
        64, gt=0, le=1024, description="rendered resolution (pixels; the renderer's limit 1024)"
    )
    views_per_scene: int = Field(1, gt=0)
    seed: int = 0
    camera_distance: tuple[float, float] = Field(
        DEFAULT_CAMERA_DISTANCE,
        description="range of the cameras' distance to the scene centre (world units): closer "
        "shows fewer objects, larger; the mini suite renders its scenes with the same range",
    )
    root: PathText = Field("data/miniworld", description="where the rendered corpus is cached")

    @field_validator("camera_distance")
    @classmethod
    def _distance_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        near, far = value
        if not MIN_CAMERA_DISTANCE <= near <= far:
            raise ValueError(
                f"[near, far] with {MIN_CAMERA_DISTANCE} <= near <= far (closer, the camera can "
                f"be inside an object), got {list(value)}"
            )
        return value

    @field_validator("seed")
    @classmethod
    def _not_held_out(cls, value: int) -> int:
        if value in HELD_OUT_WORLD_SEEDS:
            raise ValueError(
                f"seed {value} draws the mini suite's held-out evaluation scenes (seeds "
                f"{', '.join(map(str, HELD_OUT_WORLD_SEEDS))}): a corpus from it would be "
                "evaluated on its own images; choose another seed"
            )
        return value


class ShardsSourceSpec(StrictModel):
    """Webdataset-style tar shards (KEY.jpg|png|webp + KEY.txt [+ KEY.json]) over fsspec."""

    kind: Literal["shards"] = "shards"
    urls: list[PathText] = Field(
        min_length=1, description="paths or URLs; brace ranges such as {0000..0099} expand"
    )
    index_threads: int = Field(
        DEFAULT_INDEX_THREADS,
        ge=1,
        le=1024,
        description="shards listed at once when the key index is built (each from its "
        "SHARD.tar.idx.json sidecar, or by scanning its tar headers): waiting on storage, not "
        "CPU, so more than the cores; 1 lists them one after the other",
    )


class FolderSourceSpec(StrictModel):
    """A folder of images with captions in a .jsonl, .csv or .parquet file (Hugging Face's
    imagefolder layout included)."""

    kind: Literal["folder"] = "folder"
    root: PathText
    captions: str | None = Field(
        None,
        description="a .jsonl, .csv or .parquet file with `file` (or `file_name`), `caption` (or "
        "`text`) and optional `key`; relative to root; null: root/metadata.jsonl, .csv or "
        ".parquet (Hugging Face imagefolder)",
    )
    text_column: str | None = Field(
        None, description="the caption column, if neither `caption` nor `text`"
    )


class ParquetSourceSpec(StrictModel):
    """Parquet files with the image bytes inside, or their paths (img2dataset's and Hugging
    Face `datasets`' layouts)."""

    kind: Literal["parquet"] = "parquet"
    urls: list[PathText] = Field(
        min_length=1, description="paths or URLs; brace ranges such as {0000..0099} expand"
    )
    image_column: str | None = Field(
        None, description="null: the first of image, jpg, png, webp, img (bytes, or a struct "
        "with `bytes` as `datasets` writes)"
    )  # fmt: skip
    text_column: str | None = Field(None, description="null: the first of caption, text, txt")
    key_column: str | None = Field(
        "key", description="the key column if present; else keys are FILE_STEM/ROW"
    )
    image_root: PathText | None = Field(
        None,
        description="where the image paths of rows without bytes (`datasets`' {bytes: null, "
        "path}) are relative to, and which they may not leave; null: each Parquet file's "
        "folder (absolute paths then read as they are)",
    )


SourceSpec = Annotated[
    MiniWorldSourceSpec | ShardsSourceSpec | FolderSourceSpec | ParquetSourceSpec,
    Field(discriminator="kind"),
]


class OracleLabelsSpec(StrictModel):
    """How a mini-world source is labelled on first use: the exact oracle, optionally degraded
    by its noise model (to resemble real experts, or to study label quality)."""

    depth: OracleDepthSpec = Field(default_factory=OracleDepthSpec)
    boxes: OracleBoxesSpec = Field(default_factory=OracleBoxesSpec)
    seed: int = Field(0, description="seed of the noise")

    @property
    def exact(self) -> bool:
        return self == OracleLabelsSpec()

    def store_name(self) -> str:
        """`labels.zarr` for exact labels; a name per noise setting otherwise, so stores of
        different label quality never overwrite or stand in for each other."""
        if self.exact:
            return "labels.zarr"
        digest = hashlib.blake2b(self.model_dump_json().encode(), digest_size=5).hexdigest()
        return f"labels-noisy-{digest}.zarr"


class LabelsSpec(StrictModel):
    """Which pseudo-labels the data provides besides captions, and where they are stored."""

    store: PathText | None = Field(None, description="the Zarr label store made by `mtv label`")
    kinds: list[Literal["boxes", "depth"]] = Field(
        default_factory=list,
        description="labels the store provides (boxes = boxes + entity names; depth = relative "
        "disparity)",
    )
    oracle: OracleLabelsSpec = Field(
        default_factory=OracleLabelsSpec,
        description="mini-world sources without `store`: the oracle (and its noise) that labels "
        "them on first use, into SOURCE_ROOT/labels*.zarr",
    )


class PhotometricSpec(StrictModel):
    """Colour augmentation of a view, as DINOv2 (defaults: DINOv2's values for its local crops).
    Pixel values change, positions do not, so boxes and depth need no change."""

    jitter_probability: float = Field(0.8, ge=0.0, le=1.0, description="colour jitter applied")
    brightness: float = Field(0.4, ge=0.0, description="factor drawn from [1 - x, 1 + x]")
    contrast: float = Field(0.4, ge=0.0, description="factor drawn from [1 - x, 1 + x]")
    saturation: float = Field(0.2, ge=0.0, description="factor drawn from [1 - x, 1 + x]")
    hue: float = Field(0.1, ge=0.0, le=0.5, description="hue shift drawn from [-x, x] turns")
    grayscale_probability: float = Field(0.2, ge=0.0, le=1.0)
    blur_probability: float = Field(
        0.5, ge=0.0, le=1.0, description="DINOv2: 1.0 / 0.1 on its two global views, 0.5 local"
    )
    blur_sigma: tuple[float, float] = Field(
        (0.1, 2.0), description="Gaussian sigma range, in pixels of the view at its output size"
    )
    solarize_probability: float = Field(
        0.0, ge=0.0, le=1.0, description="DINOv2: 0.2 on its second global view"
    )

    @field_validator("blur_sigma")
    @classmethod
    def _check_sigma(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 < value[0] <= value[1]:
            raise ValueError(f"need 0 < low <= high, got {value}")
        return value


class ViewsSpec(StrictModel):
    """Crop geometry of the views the tasks ask for."""

    global_size: int | None = Field(
        None, gt=0, le=MAX_IMAGE_SIDE, description="default: model.encoder.image_size"
    )
    local_size: int | None = Field(
        None,
        gt=0,
        le=MAX_IMAGE_SIDE,
        description="default: 3/7 of the global size, on the patch grid (96 at 224)",
    )
    global_scale: tuple[float, float] = Field((0.32, 1.0), description="area fraction range")
    local_scale: tuple[float, float] = Field((0.05, 0.32), description="area fraction range")
    aspect: tuple[float, float] = Field((3 / 4, 4 / 3), description="crop aspect-ratio range")
    min_box_visibility: float = Field(
        0.25,
        gt=0.0,
        le=1.0,
        description="a box is kept in a crop when at least this fraction of its area is inside",
    )
    hflip: bool = Field(
        False,
        description="random horizontal flips of the global view, boxes and depth moving with it "
        "(off: captions say 'left of' / 'right of')",
    )
    local_hflip: bool = Field(
        False, description="random horizontal flips of the local crops (DINOv2: on)"
    )
    global_photometric: PhotometricSpec | None = Field(
        None,
        description="colour augmentation of the global view, which every task reads (VL "
        "included: captions name colours); null = none",
    )
    local_photometric: PhotometricSpec | None = Field(
        None, description="colour augmentation of the local crops (distill only); null = none"
    )

    @field_validator("global_scale", "local_scale")
    @classmethod
    def _check_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(f"need 0 < low <= high <= 1, got {value}")
        return value


class LoaderSpec(StrictModel):
    workers: int = Field(2, ge=0, description="DataLoader worker processes per rank")
    max_bad_fraction: float = Field(
        0.01,
        ge=0.0,
        le=1.0,
        description="stop the run when more than this fraction of samples cannot be decoded",
    )
    seed: int = Field(0, description="seed of shuffling and augmentation")
    max_pixels: int = Field(
        DEFAULT_MAX_PIXELS,
        gt=0,
        description="an image with more pixels is skipped as undecodable before it is decoded "
        "(a small file can decode to gigabytes)",
    )


class DataSpec(StrictModel):
    source: SourceSpec = Field(default_factory=MiniWorldSourceSpec)
    labels: LabelsSpec = Field(default_factory=LabelsSpec)
    views: ViewsSpec = Field(default_factory=ViewsSpec)
    loader: LoaderSpec = Field(default_factory=LoaderSpec)
    batch_size: int = Field(64, gt=0, description="global batch, summed over ranks")

    def available_labels(self) -> frozenset[str]:
        """Labels every sample carries: captions always (image-text data), plus the store's."""
        return frozenset({"caption", *self.labels.kinds})


class OptimSpec(StrictModel):
    """AdamW (paper: lr 5e-4, no weight decay)."""

    name: Literal["adamw"] = "adamw"
    lr: float = Field(5e-4, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    betas: tuple[float, float] = Field((0.9, 0.999), description="paper: unspecified")
    eps: float = Field(1e-8, gt=0.0)
    grad_clip: float | None = Field(
        1.0, gt=0.0, description="global grad-norm clip; null = off (paper: unspecified)"
    )
    accumulate: int = Field(1, gt=0, description="micro-batches per optimiser step")
    weighting: Literal["uniform", "uncertainty", "pcgrad"] = Field(
        "uniform",
        description="how task losses combine: uniform (the paper's: each task's fixed weight), "
        "uncertainty (Kendall et al. 2018: a learned log-variance per task on top of it) or "
        "pcgrad (Yu et al. 2020: the encoder's gradient is the tasks' gradients projected off "
        "each other where they conflict, compared on the encoder's last block; one backward "
        "per task through its head and that block; heads keep their own gradients)",
    )


class ScheduleSpec(StrictModel):
    """Step-based learning-rate schedule: linear warm-up, then decay."""

    steps: int = Field(10000, gt=0, description="optimiser steps in the run")
    warmup_steps: int = Field(1000, ge=0, description="linear warm-up (paper: 1k)")
    decay: Literal["cosine", "linear", "constant", "wsd"] = Field(
        "cosine",
        description="after warm-up (paper: unspecified); wsd: warmup-stable-decay, constant "
        "then linear to final_lr_fraction over the last decay_fraction of the steps",
    )
    final_lr_fraction: float = Field(0.0, ge=0.0, le=1.0)
    decay_fraction: float = Field(
        0.2, gt=0.0, le=1.0, description="wsd: the share of the steps spent decaying"
    )

    @model_validator(mode="after")
    def _check_warmup(self) -> ScheduleSpec:
        if self.warmup_steps > self.steps:
            raise ValueError(f"warmup_steps {self.warmup_steps} exceeds steps {self.steps}")
        return self


class DistributedSpec(StrictModel):
    backend: Literal["auto", "nccl", "gloo"] = Field(
        "auto", description="auto: nccl on CUDA, gloo on CPU"
    )


class RuntimeSpec(StrictModel):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto",
        description="autocast dtype; auto: bf16 where the device computes it natively (CUDA with "
        "bf16, CPUs with AVX512-BF16/AMX), fp32 elsewhere; the depth head and every loss stay fp32",
    )
    compile: bool | Literal["auto"] = Field("auto", description="auto: on for CUDA, off on CPU")
    compile_backend: Literal["inductor", "aot_eager", "eager"] = Field(
        "inductor", description="torch.compile backend (aot_eager: tracing without codegen)"
    )
    distributed: DistributedSpec = Field(default_factory=DistributedSpec)
    seed: int = 0
    stop_deadline: float | None = Field(
        300.0,
        gt=0,
        description="seconds a SIGINT/SIGTERM waits for the step in progress (and its "
        "checkpoint) before the run exits at once with 128 + the signal, keeping the last "
        "checkpoint; null: no bound",
    )
    nonfinite_patience: int = Field(
        3, gt=0, description="stop after this many consecutive steps with a non-finite loss"
    )
    grad_probe_every: int | None = Field(
        None,
        gt=0,
        description="every N steps, record each task's gradient norm at the shared encoder and "
        "the pairwise cosines between tasks' encoder gradients (costs one backward per task)",
    )


class EvalSpec(StrictModel):
    """What `mtv eval` runs by default, and whether training evaluates as it goes. The suite
    and its evaluators are checked against the evaluation's tables (`mtv.eval.check_settings`)
    when a run starts and when it is evaluated."""

    suite: str = Field(
        "mini",
        description="`mini` (held-out mini-world scenes, exact ground truth), `source` (your "
        "held-out image-text data) or a public benchmark format read from `data` (`mtv eval "
        "--help` lists them)",
    )
    only: list[str] = Field(default_factory=list, description="evaluators to run; empty = all")
    every_steps: int | None = Field(
        None, gt=0, description="evaluate during training every N steps (rank 0); null = off"
    )
    scenes: int = Field(
        500,
        ge=4,
        description="held-out scenes of the mini suite: multi-object scenes (two views each, "
        "retrieval in galleries of 100) and as many single-object scenes (zero-shot, probes)",
    )
    data: PathText | None = Field(
        None,
        description="the benchmark's root for a public suite; for `source`, held-out image-text "
        "data: a folder (captions file or Hugging Face metadata), .parquet or .tar",
    )
    limit: int | None = Field(None, gt=0, description="read at most this many benchmark samples")
    classes: PathText | None = Field(
        None, description="`source` suite: a text file of class names, one a line (zero_shot)"
    )
    labels: PathText | None = Field(
        None, description="`source` suite: a label store of the eval data (relative_depth)"
    )


LoggerName = Literal["parquet", "tensorboard", "wandb", "mlflow"]


class OutputSpec(StrictModel):
    root: PathText = Field("runs", description="run directories are made under this folder")
    log_every: int = Field(10, gt=0)
    checkpoint_every: int = Field(500, gt=0)
    keep_last: int = Field(3, gt=0)
    loggers: list[LoggerName] = Field(
        ["parquet"],
        description="where per-step metrics and evaluations go: parquet (RUN/metrics.parquet), "
        "tensorboard (RUN/tensorboard), wandb (offline in RUN/wandb unless WANDB_MODE says "
        "otherwise), mlflow (RUN/mlruns unless MLFLOW_TRACKING_URI is set). parquet is always "
        "on: it is added when the list leaves it out",
    )

    @field_validator("loggers")
    @classmethod
    def _parquet_always(cls, value: list[str]) -> list[str]:
        # metrics.parquet is what resume, the analysis and the sweeps read: never optional.
        # A repeated name would log every value twice; dict.fromkeys drops it, keeping order.
        return list(dict.fromkeys(["parquet", *value]))


def import_task_modules(names: list[Any]) -> None:
    """Import what an experiment names in `imports:` (its tasks and evaluators register
    themselves): a module file or package folder by its absolute path (what the loader makes of
    a module next to the spec), or an installed module by name. `sys.path` is left as it is:
    nothing is found through the working directory."""
    for name in names:
        if not isinstance(name, str):
            continue  # the field's own validation names it
        try:
            if os.path.isabs(name):
                _import_path(Path(name))
            else:
                importlib.import_module(name)
        except ImportError as err:
            raise ValueError(f"cannot import {name!r} ({err})") from None


def _import_path(path: Path) -> None:
    """The module file (`NAME.py`) or package folder (`NAME/__init__.py`) at `path`, imported as
    `NAME` once; another file already imported under that name is an error."""
    package = path.is_dir()
    init = path / "__init__.py" if package else path
    if not init.is_file():
        raise ImportError(f"no module file at {path}")
    name = path.name if package else path.stem
    loaded = sys.modules.get(name)
    if loaded is not None:
        if Path(getattr(loaded, "__file__", "") or "").resolve() == init.resolve():
            return  # imported already (a module registers its tasks once)
        raise ImportError(f"a module named {name!r} is already imported from elsewhere")
    found = importlib.util.spec_from_file_location(
        name, init, submodule_search_locations=[str(path)] if package else None
    )
    if found is None or found.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(found)
    sys.modules[name] = module  # before running it: its own imports may need it
    try:
        found.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise


class ExperimentSpec(StrictModel):
    """One experiment. `tasks` is a list of task specs discriminated by `kind`; a bare string
    (`- distill`) means that task with its defaults, and `task_defaults` sets fields for every task
    of a kind (so a base file can size the heads once for all the experiments that extend it)."""

    name: str = Field(
        min_length=1,
        description="the run's name: one folder under output.root (letters, digits, . _ + -)",
    )
    description: str = ""
    imports: list[str] = Field(
        default_factory=list,
        description="Python modules imported before the tasks are read: your own tasks, each a "
        "module that registers its spec and task classes (mtv.tasks.register_task): a module "
        "or package beside the spec file, a .py path relative to it, or an installed module "
        "(the working folder is not searched); the resolved spec keeps absolute paths. Loading "
        "the spec file imports them, once (a spec built in code imports its own first: "
        "mtv.specs.import_task_modules)",
    )
    data: DataSpec = Field(default_factory=DataSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    task_defaults: Annotated[dict[str, dict[str, Any]], TaskDefaults] = Field(
        default_factory=dict, description="per task kind, fields applied to every task of it"
    )
    # Each entry validated by the spec class registered for its `kind` (mtv.tasks.register_task).
    tasks: list[Annotated[TaskSpecBase, TaskEntry]] = Field(min_length=1)
    optim: OptimSpec = Field(default_factory=OptimSpec)
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    runtime: RuntimeSpec = Field(default_factory=RuntimeSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    output: OutputSpec = Field(default_factory=OutputSpec)

    @field_validator("name")
    @classmethod
    def _one_folder_name(cls, value: str) -> str:
        # The default run directory is output.root / name: a separator or `..` would put the
        # run (and what it overwrites) outside output.root.
        if not re.fullmatch(r"[A-Za-z0-9_+-][A-Za-z0-9._+-]*", value):
            raise ValueError(
                f"{value!r} is not a run name: letters, digits, '.', '_', '+' and '-' only, not "
                "starting with '.' (it names one folder under output.root)"
            )
        return value

    @model_validator(mode="before")
    @classmethod
    def _expand_tasks(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("tasks"), list):
            return data
        defaults = data.get("task_defaults") or {}
        try:
            defaults = validate_task_defaults(defaults)
        except ValidationError:
            # Reported once, at task_defaults; applying them would repeat each error per task.
            defaults = {}
        tasks = []
        for task in data["tasks"]:
            if isinstance(task, str):
                task = {"kind": task}
            if isinstance(task, dict) and isinstance(defaults.get(task.get("kind")), dict):
                task = {**defaults[task["kind"]], **task}
            tasks.append(task)
        return {**data, "tasks": tasks}

    def task_kinds(self) -> list[str]:
        return [task.kind for task in self.tasks]

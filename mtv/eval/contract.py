"""The evaluation contract: one evaluator interface, one table of suites, one way to run them.

An *evaluator* measures a frozen model on a suite's data and returns named scores, each with
the score of a trivial predictor on the same data (`Score`). It is a class, one evaluator type
per module (`mtv/eval/evaluators/`), constructed from the evaluation settings (`EvalSpec`) and
registered with `register_evaluator` for the suites whose data it reads:

    @register_evaluator
    class ObjectCount(Evaluator):
        name = "object_count"
        suites = ("mini",)

        def __call__(self, model: FrozenModel, data: MiniData) -> Scores:
            ...

A *suite* is a source of held-out data (`Suite`: rendered, read from the user's files or from a
public benchmark's layout), registered with `register_suite`; `mini`, `source` and every public
format are entries of the same table (`mtv/eval/suites.py`). `measure` runs the chosen
evaluators of a suite on its data: one unknown-evaluator error, the text tower's evaluators left
out for a run without one, image features computed once per model and image array
(`image_features`), however many evaluators read them.
"""

from __future__ import annotations

import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np
import polars as pl
from torch import Tensor

from mtv.eval.metrics import Scores, result_rows
from mtv.eval.model import Features
from mtv.specs.experiment import EvalSpec


class EvaluatedModel(Protocol):
    """What evaluators read of a model (`FrozenModel`; tests plant their own)."""

    size: int

    def images(self, images: np.ndarray) -> Features: ...

    def texts(self, texts: list[str]) -> Tensor: ...


class Evaluator(ABC):
    """One measurement of a frozen model on one kind of data. `name`: what `eval.only` and the
    results' `evaluator` column call it; `suites`: the suites whose data it reads;
    `needs_text`: it reads the text tower (left out for a run without one)."""

    name: ClassVar[str]
    suites: ClassVar[tuple[str, ...]]
    needs_text: ClassVar[bool] = False
    # The protocol's version, stored with every score: raise it when a change makes the scores
    # incomparable with earlier ones. A run evaluated by an older version is then out of date
    # (`mtv sweep` evaluates it again, and its cached random-init scores are recomputed), so
    # scores of two protocols never meet in one table.
    version: ClassVar[int] = 1

    def __init__(self, settings: EvalSpec | None = None):
        self.settings = settings or EvalSpec()

    @abstractmethod
    def __call__(self, model: Any, data: Any) -> Scores:
        """Scores of `model` on `data` (empty when what it measures is absent, e.g. a run
        without a depth head)."""


# suite -> evaluator name -> class, in registration order (the order results are written in).
_EVALUATORS: dict[str, dict[str, type[Evaluator]]] = {}


def register_evaluator(cls: type[Evaluator]) -> type[Evaluator]:
    """Make `cls` available under `cls.name` in each of `cls.suites` (a class decorator)."""
    for suite in cls.suites:
        known = _EVALUATORS.setdefault(suite, {})
        if known.get(cls.name, cls) is not cls:
            raise ValueError(
                f"evaluator '{cls.name}' of suite '{suite}' is registered twice "
                f"({known[cls.name].__name__}, {cls.__name__})"
            )
        known[cls.name] = cls
    return cls


@dataclass(frozen=True)
class Suite:
    """A source of held-out data. `load(settings, model)` reads or renders it once, at the
    model's input size, for every evaluator of the suite (and for the random-init reference)."""

    name: str
    description: str
    load: Callable[[EvalSpec, Any], Any]
    reads: str | None = None  # what `eval.data` must name; None: the suite makes its own data


_SUITES: dict[str, Suite] = {}


def register_suite(suite: Suite) -> Suite:
    if _SUITES.get(suite.name, suite) is not suite:
        raise ValueError(f"suite '{suite.name}' is registered twice")
    _SUITES[suite.name] = suite
    return suite


def suites() -> dict[str, Suite]:
    """Every registered suite, by name."""
    return dict(_SUITES)


def suite_of(name: str) -> Suite:
    """The suite called `name`, or one error listing the known ones."""
    if name not in _SUITES:
        raise ValueError(f"eval.suite: unknown suite {name!r}; known: {', '.join(_SUITES)}")
    return _SUITES[name]


def evaluators_of(suite: str) -> dict[str, type[Evaluator]]:
    """The evaluators registered for `suite`, by name, in registration order."""
    suite_of(suite)
    return dict(_EVALUATORS.get(suite, {}))


def evaluator_versions(suite: str) -> dict[str, int]:
    """The protocol version of each evaluator of `suite`, by name."""
    return {name: cls.version for name, cls in evaluators_of(suite).items()}


def check_settings(settings: EvalSpec) -> Suite:
    """The settings' suite, after checking what no spec field can check alone: the suite
    exists, its data is named when it reads some, and every evaluator of `only` is one of it."""
    suite = suite_of(settings.suite)
    if suite.reads is not None and settings.data is None:
        raise ValueError(
            f"eval.data: suite {suite.name!r} reads {suite.reads}: set eval.data to its root"
        )
    known = evaluators_of(suite.name)
    unknown = sorted(set(settings.only) - set(known))
    if unknown:
        raise ValueError(
            f"eval.only: unknown evaluator(s) {unknown} for suite {suite.name!r}; "
            f"known: {', '.join(known)}"
        )
    return suite


def load_data(settings: EvalSpec, model: Any) -> Any:
    """The data of the settings' suite for `model` (the settings checked first)."""
    return check_settings(settings).load(settings, model)


def measure(model: Any, settings: EvalSpec, data: Any) -> pl.DataFrame:
    """Rows (evaluator, metric, value, trivial, higher_is_better, version) of the evaluators
    `settings` chooses (`only`, or all of its suite), run on `data` as `load_data` returns
    it."""
    check_settings(settings)
    chosen = evaluators_of(settings.suite)
    if settings.only:
        chosen = {name: chosen[name] for name in settings.only}
    if not getattr(model, "has_text", True):
        chosen = {name: cls for name, cls in chosen.items() if not cls.needs_text}
    rows = result_rows({name: cls(settings)(model, data) for name, cls in chosen.items()})
    versions = evaluator_versions(settings.suite)
    return rows.with_columns(
        pl.col("evaluator").replace_strict(versions, return_dtype=pl.Int64).alias("version")
    )


# Image features, once per (model, image array): several evaluators read the same images. Held
# per model (weakly, so a model's features go with it) and per array (kept alive by the entry,
# so its id cannot be reused while cached).
_FEATURES: weakref.WeakKeyDictionary[Any, dict[int, tuple[np.ndarray, Features]]] = (
    weakref.WeakKeyDictionary()
)


def image_features(model: EvaluatedModel, images: np.ndarray) -> Features:
    """`model.images(images)`, computed once per model and array."""
    cache = _FEATURES.setdefault(model, {})
    entry = cache.get(id(images))
    if entry is None or entry[0] is not images:
        entry = (images, model.images(images))
        cache[id(images)] = entry
    return entry[1]

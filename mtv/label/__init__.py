"""Pseudo-labels: experts (mini-world oracle, Depth Anything V2, OWLv2, a caption tagger), the
Zarr label store, and the resumable labelling pipeline behind `mtv label`."""

from mtv.data.store import LabelStore
from mtv.label.base import (
    BoxExpert,
    BoxLabel,
    DepthExpert,
    DepthLabel,
    ExpertInfo,
    LabelInput,
    Tagger,
)
from mtv.label.check import StoreProblem, check_store
from mtv.label.oracle import OracleBoxes, OracleDepth
from mtv.label.pipeline import LabelSpecError, LabelStats, run_labelling
from mtv.label.tagger import CaptionTagger, noun_phrases

__all__ = [
    "BoxExpert",
    "BoxLabel",
    "CaptionTagger",
    "DepthExpert",
    "DepthLabel",
    "ExpertInfo",
    "LabelInput",
    "LabelSpecError",
    "LabelStats",
    "LabelStore",
    "OracleBoxes",
    "OracleDepth",
    "StoreProblem",
    "Tagger",
    "check_store",
    "noun_phrases",
    "run_labelling",
]

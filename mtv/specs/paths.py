"""Paths in specs: which fields hold a local path (`PathText`), and making them absolute, each
against the folder its value is relative to (the file that wrote it, or the working folder)."""

from __future__ import annotations

import os
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel

from mtv.specs.base import SpecPath

Loc = tuple[str | int, ...]  # a value's place in a spec: keys and list indices


def _marks_path(annotation: Any, metadata: Sequence[Any] = ()) -> bool:
    """Whether a field's type is `PathText` (alone, optional, or as list items)."""
    if any(isinstance(m, SpecPath) for m in metadata):
        return True
    origin = get_origin(annotation)
    if origin is Annotated:
        inner, *extra = get_args(annotation)
        return _marks_path(inner, extra)
    if origin in (Union, types.UnionType, list):
        return any(_marks_path(arm) for arm in get_args(annotation))
    return False


def absolute_path(value: str, folder: Path) -> str:
    """`value` as an absolute local path (relative to `folder`); a URL as it is."""
    if "://" in value:  # a URL (s3://, https://, ...): not a local path
        return value
    path = Path(value).expanduser()
    return os.path.normpath(path if path.is_absolute() else folder.absolute() / path)


def absolute_paths(model: BaseModel, folder_of: Callable[[Loc], Path], loc: Loc = ()) -> None:
    """Make every `PathText` field of `model` (and of the models inside it) absolute, in place:
    a relative value at `loc` against `folder_of(loc)`."""
    for name, field_info in type(model).model_fields.items():
        value = getattr(model, name)
        here = (*loc, name)
        if _marks_path(field_info.annotation, field_info.metadata):
            if isinstance(value, str):
                new: Any = absolute_path(value, folder_of(here))
            elif isinstance(value, list):
                new = [absolute_path(v, folder_of((*here, i))) for i, v in enumerate(value)]
            else:
                continue
            if new != value:
                setattr(model, name, new)
        elif isinstance(value, BaseModel):
            absolute_paths(value, folder_of, here)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                if isinstance(item, BaseModel):
                    absolute_paths(item, folder_of, (*here, index))

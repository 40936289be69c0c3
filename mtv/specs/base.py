"""The base of every spec: strict, so a misspelt key is an error and not a silent default."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """A pydantic model that rejects unknown keys, NaN and infinities, and validates on
    assignment."""

    # `allow_inf_nan=False`: a `.nan` learning rate or an `.inf` loss weight is a typo that
    # would otherwise train silently into NaNs.
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False
    )


class SpecPath:
    """Field metadata: a local path that a spec file gives relative to its own folder (as
    `extends:` and `imports:` are). Loading a spec file makes it absolute: relative to the file
    that set it, to the working folder for `--set` and defaults. URLs (`scheme://`) stay."""

    def __repr__(self) -> str:
        return "SpecPath()"


# A spec field holding a local path or URL (see SpecPath).
PathText = Annotated[str, SpecPath()]

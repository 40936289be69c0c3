"""The base of every spec: strict, so a misspelt key is an error and not a silent default."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """A pydantic model that rejects unknown keys, NaN and infinities, and validates on
    assignment."""

    # `allow_inf_nan=False`: a `.nan` learning rate or an `.inf` loss weight is a typo that
    # would otherwise train silently into NaNs.
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False
    )

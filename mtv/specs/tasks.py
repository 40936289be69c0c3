"""Task specs: the base every task's spec extends, and the registry that makes a `kind` valid in an
experiment's `tasks:` list.

A task is one file in `mtv/tasks/` (or any module of yours): it defines its spec class (a
`TaskSpecBase` with a `kind: Literal[...]` field; every default the paper's value, or the choice
named in the field's description) and its task class, and registers both at once with
`mtv.tasks.register_task`. Experiment specs validate `tasks:` entries and `task_defaults:`
against whatever is registered when they are validated, and their JSON schema lists the same.

mtv's own tasks, and those of any installed package, are found through package metadata: the
modules named in the `mtv.tasks` entry-point group are imported before the first validation, so a
built-in kind is valid whatever was imported before (and this layer imports no task module).
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import entry_points
from typing import Any

from pydantic import Field, GetCoreSchemaHandler, GetJsonSchemaHandler, create_model
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, InitErrorDetails, ValidationError, core_schema

from mtv.specs.base import StrictModel


class TaskSpecBase(StrictModel):
    """Fields every task has. Each task's spec class adds `kind: Literal["<kind>"] = "<kind>"`."""

    weight: float = Field(1.0, ge=0.0, description="multiplier of this task's loss in the total")


_TASK_SPECS: dict[str, type[TaskSpecBase]] = {}
TASK_ENTRY_POINTS = "mtv.tasks"  # the entry-point group of task modules (pyproject.toml)
_entry_points_loaded = False


class TaskPluginError(ImportError):
    """A module declared in the `mtv.tasks` entry-point group failed to import."""


def load_task_entry_points() -> None:
    """Import, once, every module that an installed package declares in the `mtv.tasks`
    entry-point group (mtv declares `mtv.tasks`, whose import registers every built-in task).
    A module that fails to import is one error naming it and its package."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True  # before loading: a module that validates a spec does not recurse
    for point in entry_points(group=TASK_ENTRY_POINTS):
        try:
            point.load()
        except Exception as error:
            package = point.dist.name if point.dist is not None else "an unknown package"
            raise TaskPluginError(
                f"the task module '{point.value}' (entry point '{point.name}' of {package}, "
                f"group {TASK_ENTRY_POINTS}) failed to import: {type(error).__name__}: {error}"
            ) from error


def registered_task_specs() -> dict[str, type[TaskSpecBase]]:
    """Task kind -> spec class: the installed task modules' (loaded on first use), and any
    registered since (an experiment's `imports:`)."""
    load_task_entry_points()
    return _TASK_SPECS


def task_kind_of(cls: type[TaskSpecBase]) -> str:
    """The `kind` a spec class declares (its `kind` field's default)."""
    field = cls.model_fields.get("kind")
    if field is None or not isinstance(field.default, str):
        raise TypeError(f"{cls.__name__} declares no `kind: Literal['...'] = '...'` field")
    return field.default


def register_task_spec(cls: type[TaskSpecBase]) -> str:
    """Make `cls`'s kind valid in experiment specs; returns the kind. A kind registers once."""
    kind = task_kind_of(cls)
    if _TASK_SPECS.get(kind, cls) is not cls:
        raise ValueError(
            f"task kind '{kind}' is registered twice ({_TASK_SPECS[kind].__name__}, {cls.__name__})"
        )
    _TASK_SPECS[kind] = cls
    task_defaults_model.cache_clear()
    return kind


def task_spec_classes() -> dict[str, type[TaskSpecBase]]:
    """Task kind -> spec class, for every task registered so far."""
    return dict(registered_task_specs())


def validate_task(value: Any) -> TaskSpecBase:
    """A task entry (a mapping with `kind`, or just the kind as a string) as its spec class."""
    if isinstance(value, TaskSpecBase):
        return value
    if isinstance(value, str):
        value = {"kind": value}
    if not isinstance(value, dict):
        raise ValueError(f"a task is a mapping with `kind` or a kind's name, not {value!r}")
    kind = value.get("kind")
    specs = registered_task_specs()
    if kind not in specs:
        # The errors a discriminated union raises, so that messages read the same everywhere.
        expected = ", ".join(f"'{k}'" for k in specs)
        error: InitErrorDetails = (
            {
                "type": "union_tag_invalid",
                "loc": (),
                "input": value,
                "ctx": {"discriminator": "'kind'", "tag": str(kind), "expected_tags": expected},
            }
            if kind is not None
            else {
                "type": "union_tag_not_found",
                "loc": (),
                "input": value,
                "ctx": {"discriminator": "'kind'"},
            }
        )
        raise ValidationError.from_exception_data("TaskSpec", [error])
    return specs[kind].model_validate(value)


class TaskEntry:
    """The type of one `tasks:` entry: validated by the registered class of its `kind`; the JSON
    schema lists every registered class (and the bare kind names, so editors accept `- depth`)."""

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_plain_validator_function(
            validate_task,
            # Serialised as its own class (the field's declared type, the base, has no fields).
            serialization=core_schema.plain_serializer_function_ser_schema(
                lambda task, info: task.model_dump(
                    mode=info.mode, exclude_unset=info.exclude_unset
                ),
                info_arg=True,
            ),
        )

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        specs = registered_task_specs()
        classes = [handler(c.__pydantic_core_schema__) for c in specs.values()]
        return {"oneOf": [*classes, {"enum": sorted(specs)}]}


def _defaults_fields(cls: type[TaskSpecBase]) -> type[StrictModel]:
    """A model with the fields of task spec `cls`, all optional: what `task_defaults` may set."""
    fields: dict[str, Any] = {
        name: (field.annotation | None, Field(None, description=field.description))
        for name, field in cls.model_fields.items()
        if name != "kind"
    }
    return create_model(
        f"{cls.__name__.removesuffix('Spec')}Defaults", __base__=StrictModel, **fields
    )


@cache
def task_defaults_model() -> type[StrictModel]:
    specs = registered_task_specs()
    return create_model(
        "TaskDefaultsSpec",
        __base__=StrictModel,
        __doc__="Per task kind, fields applied to every task of that kind.",
        **{kind: (_defaults_fields(c) | None, None) for kind, c in specs.items()},
    )


def validate_task_defaults(value: Any) -> dict[str, dict[str, Any]]:
    """`task_defaults` checked against the registered kinds and their fields; returned as plain
    data (kind -> the fields it sets)."""
    model = task_defaults_model().model_validate(value or {})
    return model.model_dump(mode="json", exclude_unset=True)


class TaskDefaults:
    """The type of `task_defaults`: per registered kind, any of its fields."""

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_plain_validator_function(validate_task_defaults)

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return handler(task_defaults_model().__pydantic_core_schema__)

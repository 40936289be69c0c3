"""YAML experiment files -> `ExperimentSpec`, with `extends:`, `--set` overrides and clear errors.

Every value keeps a record of the file (or `--set` argument) it came from, so an error in a field
inherited from a base file names the base file, not the file the user passed.
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from mtv.specs.experiment import ExperimentSpec, import_task_modules
from mtv.specs.paths import Loc, absolute_paths
from mtv.specs.tasks import TaskDefaults, TaskSpecBase, task_defaults_model, task_spec_classes

ModelT = TypeVar("ModelT", bound=BaseModel)


@dataclass(frozen=True)
class SpecProblem:
    source: str  # a file path, or the `--set` argument
    field: str  # dotted path with [i] for list items; "" for the whole file
    message: str

    def __str__(self) -> str:
        where = f"{self.source}: {self.field}" if self.field else self.source
        return f"{where}: {self.message}"


class SpecError(Exception):
    """Problems in an experiment, each naming the file (or override) and the field."""

    def __init__(self, problems: Sequence[SpecProblem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass
class ResolvedSpec:
    """A validated spec plus where each of its raw values came from."""

    path: Path
    spec: ExperimentSpec
    raw: dict[str, Any]
    provenance: dict[Loc, str] = field(default_factory=dict)

    def source_of(self, loc: Loc) -> str:
        """The file or override that set the value at `loc` (or its nearest enclosing value)."""
        return source_of(self.provenance, loc, str(self.path))


def format_loc(loc: Iterable[str | int]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


class _StrictLoader(yaml.SafeLoader):
    """`yaml.safe_load` that also refuses a key given twice in one mapping (YAML keeps the last
    silently, which hides the first)."""


def _mapping_without_duplicates(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    first_line: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in first_line:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key '{key}' (first given on line {first_line[key] + 1})",
                key_node.start_mark,
            )
        first_line[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates
)


class Replace(dict):  # type: ignore[type-arg]
    """A mapping tagged `!replace`: it replaces the base file's mapping instead of merging
    into it (`data: !replace {...}` drops every `data` field of the base)."""


def _replacing_mapping(loader: _StrictLoader, node: yaml.Node) -> Replace:
    if not isinstance(node, yaml.MappingNode):
        # Lists and scalars replace the base's value anyway: the tag is for mappings only.
        raise yaml.constructor.ConstructorError(
            None, None, "!replace tags a mapping (lists and values always replace)", node.start_mark
        )
    return Replace(_mapping_without_duplicates(loader, node))


_StrictLoader.add_constructor("!replace", _replacing_mapping)


MAX_SPEC_VALUES = 100_000  # values in a spec file once aliases are expanded; real specs: hundreds


def _parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_StrictLoader)


def _expands_beyond(data: Any, limit: int) -> bool:
    """Whether `data` holds more than `limit` values counted as the spec's walks see them, each
    alias once per place it is used. PyYAML shares an aliased node instead of copying it, so a
    few lines of aliases inside aliases (9 levels of 9 make 9^9) parse at once but would take
    the merge and provenance walks hours and gigabytes; the count stops at the limit."""
    seen = 0
    stack = [data]
    while stack:
        value = stack.pop()
        seen += 1
        if seen > limit:
            return True
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return False


def _read_yaml(path: Path, referrer: tuple[str, str] | None) -> dict[str, Any]:
    if not path.is_file():
        if referrer is not None:
            source, key = referrer
            raise SpecError([SpecProblem(source, key, f"base file not found: {path}")])
        raise SpecError([SpecProblem(str(path), "", "file not found")])
    try:
        data = _parse_yaml(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError([SpecProblem(str(path), "", f"cannot read the file: {err}")]) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise SpecError([SpecProblem(str(path), where, f"invalid YAML: {problem}")]) from None
    if data is None:
        data = {}
    if _expands_beyond(data, MAX_SPEC_VALUES):
        raise SpecError(
            [
                SpecProblem(
                    str(path),
                    "",
                    f"the file expands to more than {MAX_SPEC_VALUES:,} values (YAML aliases "
                    "repeated inside each other?); a spec is far smaller",
                )
            ]
        )
    if not isinstance(data, dict):
        raise SpecError(
            [
                SpecProblem(
                    str(path), "", f"expected a mapping at top level, got {type(data).__name__}"
                )
            ]
        )
    return data


def _forget(provenance: dict[Loc, str], prefix: Loc) -> None:
    for loc in [loc for loc in provenance if loc[: len(prefix)] == prefix]:
        del provenance[loc]


def _record(provenance: dict[Loc, str], loc: Loc, value: Any, source: str) -> None:
    provenance[loc] = source
    if isinstance(value, dict):
        for key, item in value.items():
            _record(provenance, (*loc, key), item, source)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _record(provenance, (*loc, index), item, source)


def _replaces(base: Any, value: Any) -> bool:
    """Whether `value` replaces `base` rather than merging into it: anything but two mappings;
    a mapping tagged `!replace`; a mapping of another `kind` (a folder source does not keep
    a mini-world source's `n_images`)."""
    if not (isinstance(value, dict) and isinstance(base, dict)):
        return True
    if isinstance(value, Replace):
        return True
    return "kind" in value and "kind" in base and value["kind"] != base["kind"]


def _plain(value: Any) -> Any:
    """`Replace` markers dropped, once merging is done."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _merge(
    base: dict[str, Any], top: dict[str, Any], provenance: dict[Loc, str], source: str, at: Loc = ()
) -> dict[str, Any]:
    """Deep-merge `top` over `base`: mappings merge key by key, unless `_replaces` says the new
    one replaces the old; anything else (lists too) replaces."""
    out = dict(base)
    for key, value in top.items():
        loc = (*at, key)
        if not _replaces(out.get(key), value):
            out[key] = _merge(out[key], value, provenance, source, loc)
        else:
            _forget(provenance, loc)
            _record(provenance, loc, value, source)
            out[key] = value
    return out


def _load_with_extends(
    path: Path,
    provenance: dict[Loc, str],
    chain: tuple[Path, ...],
    referrer: tuple[str, str] | None,
) -> dict[str, Any]:
    if path.resolve() in [p.resolve() for p in chain]:
        cycle = " -> ".join(str(p) for p in (*chain, path))
        raise SpecError([SpecProblem(str(chain[-1]), "extends", f"circular extends: {cycle}")])
    data = _read_yaml(path, referrer)
    base_name = data.pop("extends", None)
    merged: dict[str, Any] = {}
    if base_name is not None:
        if not isinstance(base_name, str):
            raise SpecError(
                [SpecProblem(str(path), "extends", "expected a relative path to one base file")]
            )
        base_path = path.parent / base_name
        merged = _load_with_extends(base_path, provenance, (*chain, path), (str(path), "extends"))
    return _merge(merged, data, provenance, str(path))


def _parse_override(text: str) -> tuple[list[str], Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise SpecError(
            [SpecProblem(f"--set {text}", "", "expected KEY=VALUE, e.g. optim.lr=1e-3")]
        )
    try:
        parsed = _parse_yaml(value) if value.strip() else None
    except yaml.YAMLError as err:
        raise SpecError([SpecProblem(f"--set {text}", key, f"invalid YAML value: {err}")]) from None
    return key.strip().split("."), parsed


def _apply_override(raw: dict[str, Any], text: str, provenance: dict[Loc, str]) -> None:
    """`a.b.c=v` sets a nested key; list items are addressed by index or, in `tasks`, by kind."""
    parts, value = _parse_override(text)
    node: Any = raw
    loc: list[str | int] = []
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(node, list):
            index = _list_index(node, part, text, loc)
            loc.append(index)
            if last:
                node[index] = value
            else:
                if isinstance(node[index], str):  # a task given by its kind alone
                    node[index] = {"kind": node[index]}
                node = node[index]
            continue
        if not isinstance(node, dict):
            raise SpecError(
                [SpecProblem(f"--set {text}", format_loc(loc), "is not a mapping; cannot set keys")]
            )
        loc.append(part)
        if last:
            node[part] = value
        else:
            node = node.setdefault(part, {})
    _forget(provenance, tuple(loc))
    _record(provenance, tuple(loc), value, f"--set {text}")


def _list_index(items: list[Any], part: str, text: str, loc: list[str | int]) -> int:
    if part.lstrip("-").isdigit():
        index = int(part)
        if -len(items) <= index < len(items):
            return index % len(items)
        raise SpecError(
            [SpecProblem(f"--set {text}", format_loc(loc), f"index {index} is out of range")]
        )
    kinds = [item if isinstance(item, str) else (item or {}).get("kind") for item in items]
    matches = [i for i, kind in enumerate(kinds) if kind == part]
    if len(matches) == 1:
        return matches[0]
    reason = (
        f"no item of kind '{part}' (present: {', '.join(map(str, kinds))})"
        if not matches
        else f"{len(matches)} items of kind '{part}'; use an index"
    )
    raise SpecError([SpecProblem(f"--set {text}", format_loc(loc), reason)])


def _unwrap(annotation: Any, raw: Any) -> Any:
    """The model class an annotation means for this raw value (unions resolved by `kind`)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _unwrap(get_args(annotation)[0], raw)
    if annotation is TaskSpecBase:  # a task entry: the class registered for its kind
        kind = raw.get("kind") if isinstance(raw, dict) else None
        return task_spec_classes().get(kind, annotation) if isinstance(kind, str) else annotation
    if origin in (Union, types.UnionType):
        options = [a for a in get_args(annotation) if a is not type(None)]
        models = [a for a in options if isinstance(a, type) and issubclass(a, BaseModel)]
        kind = raw.get("kind") if isinstance(raw, dict) else None
        for model in models:
            kind_field = model.model_fields.get("kind")
            if kind_field is not None and kind_field.default == kind:
                return model
        return models[0] if len(models) == 1 else (options[0] if len(options) == 1 else None)
    return annotation


def _allowed_fields(loc: Loc, raw: Any, model: type[BaseModel]) -> list[str]:
    """Field names of the spec class at `loc`, to suggest a correction for a misspelt key."""
    current: Any = model
    node = raw
    for part in loc:
        current = _unwrap(current, node)
        if isinstance(part, int):
            if get_origin(current) is not list:
                return []
            current = get_args(current)[0]
        elif isinstance(current, type) and issubclass(current, BaseModel):
            if part not in current.model_fields:
                return []
            field = current.model_fields[part]
            # task_defaults: a plain mapping, validated by the model of the registered kinds
            current = task_defaults_model() if TaskDefaults in field.metadata else field.annotation
        else:
            return []
        node = node[part] if isinstance(node, (dict, list)) and _has(node, part) else None
    current = _unwrap(current, node)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _has(node: dict[str, Any] | list[Any], part: str | int) -> bool:
    return part in node if isinstance(node, dict) else isinstance(part, int) and part < len(node)


def _clean_loc(loc: Sequence[str | int], raw: Any) -> Loc:
    """Drop the union-tag segments pydantic inserts (`tasks.0.distill.x` -> `tasks.0.x`)."""
    out: list[str | int] = []
    node = raw
    for part in loc:
        if isinstance(node, dict) and part not in node and part == node.get("kind"):
            continue
        if isinstance(part, str) and "[" in part and isinstance(node, (dict, list)):
            continue  # validator wrappers such as 'function-after[...]'
        out.append(part)
        node = node[part] if isinstance(node, (dict, list)) and _has(node, part) else None
    return tuple(out)


def _describe(error: dict[str, Any], loc: Loc, raw: dict[str, Any], model: type[BaseModel]) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden":
        name = str(loc[-1]) if loc else "?"
        allowed = _allowed_fields(loc[:-1], raw, model) + (["extends"] if len(loc) == 1 else [])
        close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        listing = f" (allowed: {', '.join(allowed)})" if allowed and not close else ""
        return f"unknown field '{name}'{hint}{listing}"
    if kind == "union_tag_invalid":
        what = "task kind" if loc[:1] == ("tasks",) else "kind"
        return f"unknown {what} '{ctx.get('tag')}'; expected one of: {ctx.get('expected_tags')}"
    if kind == "union_tag_not_found":
        return f"missing 'kind' ({error['msg']})"
    if kind == "missing":
        return "required field is missing"
    if kind == "value_error" and ctx.get("error") is not None:
        return str(ctx["error"])  # mtv's own validators write whole sentences
    return f"{error['msg']} (got {error.get('input')!r})"


def source_of(provenance: dict[Loc, str], loc: Loc, default: str) -> str:
    """The file or override that set the value at `loc` (or its nearest enclosing value)."""
    for end in range(len(loc), -1, -1):
        if loc[:end] in provenance:
            return provenance[loc[:end]]
    return default


def _validation_problems(
    err: ValidationError,
    raw: dict[str, Any],
    provenance: dict[Loc, str],
    path: Path,
    model: type[BaseModel],
) -> list[SpecProblem]:
    problems = []
    for error in err.errors():
        loc = _clean_loc(error["loc"], raw)
        if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
            loc = (*loc, "kind")
        source = source_of(provenance, loc, str(path))
        problems.append(SpecProblem(source, format_loc(loc), _describe(error, loc, raw, model)))
    return problems


def _locate_imports(raw: dict[str, Any], provenance: dict[Loc, str], path: Path) -> None:
    """`imports:` entries that name a module beside the file that declared them (`NAME.py` or a
    package `NAME/`), or a `.py` path relative to it, become absolute paths: the run's resolved
    spec then imports the same files from anywhere. Other names stay, for installed modules."""
    entries = raw.get("imports")
    if not isinstance(entries, list):
        return
    source = source_of(provenance, ("imports",), str(path))
    declared = Path(source)
    folder = declared.parent if declared.is_file() else Path.cwd()  # --set: the working folder
    located = []
    for entry in entries:
        if isinstance(entry, str) and entry.endswith(".py"):
            entry = str((folder / entry).resolve())  # a missing file is named by the import
        elif isinstance(entry, str) and entry.isidentifier():
            module, package = folder / f"{entry}.py", folder / entry
            if module.is_file():
                entry = str(module.resolve())
            elif (package / "__init__.py").is_file():
                entry = str(package.resolve())
        located.append(entry)
    raw["imports"] = located


def _folder_of(provenance: dict[Loc, str], loc: Loc) -> Path:
    """The folder a relative path at `loc` is relative to: that of the file that set the value;
    the working folder for a `--set` value or a default."""
    source = provenance.get(loc)
    if source is None or source.startswith("--set "):
        return Path.cwd()
    return Path(source).parent


def _import_declared(raw: dict[str, Any], provenance: dict[Loc, str], path: Path) -> None:
    """Import the spec's `imports:` (located), before anything is validated: their tasks must be
    registered when `tasks:` is read. Here, where the file is loaded, and once; a module that
    does not import is one problem at `imports`, naming the file that declared it."""
    entries = raw.get("imports")
    if not isinstance(entries, list):
        return  # the field's own validation names it
    try:
        import_task_modules(entries)
    except ValueError as err:
        source = source_of(provenance, ("imports",), str(path))
        raise SpecError([SpecProblem(source, "imports", str(err))]) from None


def _read_and_validate(
    path: Path, overrides: Sequence[str], model: type[ModelT], paths_from_file: bool = True
) -> tuple[ModelT, dict[str, Any], dict[Loc, str]]:
    provenance: dict[Loc, str] = {}
    raw = _load_with_extends(path, provenance, (), None)
    for text in overrides:
        _apply_override(raw, text, provenance)
    raw = _plain(raw)
    if "imports" in model.model_fields:
        _locate_imports(raw, provenance, path)
        _import_declared(raw, provenance, path)
    try:
        validated = model.model_validate(raw)
    except ValidationError as err:
        raise SpecError(_validation_problems(err, raw, provenance, path, model)) from None
    # Paths relative to the file that wrote them, stored absolute: the resolved spec (a run's
    # spec.yaml) then means the same files from any working folder.
    absolute_paths(
        validated, lambda loc: _folder_of(provenance, loc) if paths_from_file else Path.cwd()
    )
    return validated, raw, provenance


def load_yaml_model(path: str | Path, model: type[ModelT], overrides: Sequence[str] = ()) -> ModelT:
    """Any spec model from a YAML file, with the same `extends:`, `--set` and error messages as
    experiment files. Raises SpecError."""
    return _read_and_validate(Path(path), overrides, model)[0]


def resolve_spec(path: str | Path, overrides: Sequence[str] = ()) -> ResolvedSpec:
    """Read `path` (following `extends:`), apply `--set` overrides, validate. Raises SpecError."""
    path = Path(path)
    spec, raw, provenance = _read_and_validate(path, overrides, ExperimentSpec)
    return ResolvedSpec(path=path, spec=spec, raw=raw, provenance=provenance)


def load_spec(path: str | Path, overrides: Sequence[str] = ()) -> ExperimentSpec:
    """The validated `ExperimentSpec` of a YAML file. Raises SpecError naming file and field."""
    return resolve_spec(path, overrides).spec


def load_run_spec(run_dir: str | Path) -> ExperimentSpec:
    """The resolved spec a run wrote (RUN/spec.yaml). Its paths are absolute; a run written
    before specs stored them absolute holds them relative to the folder it was started from,
    taken to be the working folder (not the run's own folder)."""
    return _read_and_validate(Path(run_dir) / "spec.yaml", (), ExperimentSpec, False)[0]


def experiment_json_schema() -> dict[str, Any]:
    """The JSON schema of experiment *files*: the spec's schema plus `extends:`, with no top-level
    field required (a file may inherit them from its base)."""
    schema = ExperimentSpec.model_json_schema()
    schema["properties"] = {
        "extends": {
            "type": "string",
            "description": "a base experiment file, relative to this one; mappings merge key "
            "by key, other values replace",
        },
        **schema["properties"],
    }
    schema.pop("required", None)
    return schema


SPEC_KINDS = ("experiment", "label", "sweep")


def spec_kind(path: str | Path) -> str:
    """What a spec file is, by its shape: a sweep lists `experiments`; a labelling job has a
    `source` and an `output` and no `tasks`; anything else is an experiment (which may inherit
    everything through `extends:`). Raises SpecError for an unreadable file."""
    data = _read_yaml(Path(path), None)
    if "experiments" in data:
        return "sweep"
    if "output" in data and "source" in data and "tasks" not in data and "extends" not in data:
        return "label"
    return "experiment"


def json_schema(kind: str = "experiment") -> dict[str, Any]:
    """The JSON schema of one kind of spec file (see `SPEC_KINDS`), for editors."""
    if kind == "experiment":
        return experiment_json_schema()
    if kind == "label":
        from mtv.specs.label import LabelSpec

        return LabelSpec.model_json_schema()
    if kind == "sweep":
        from mtv.specs.sweep import SweepSpec

        return SweepSpec.model_json_schema()
    raise ValueError(f"unknown spec kind {kind!r}; known: {', '.join(SPEC_KINDS)}")


def spec_to_yaml(spec: ExperimentSpec) -> str:
    """The fully resolved spec as YAML (every default written out)."""
    data = spec.model_dump(mode="json")
    return yaml.safe_dump(data, sort_keys=False, width=100)

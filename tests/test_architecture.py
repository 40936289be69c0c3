"""The house rules that keep mtv readable: imports between its packages flow one way."""

from __future__ import annotations

import ast
import math
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

import mtv

ROOT = Path(mtv.__file__).parent


def _unit(module: str) -> str:
    """The unit of the import order a module belongs to: `mtv.train.trainer` -> `mtv.train`; a
    top-level module (`mtv.sweep`) is a unit of its own."""
    return ".".join(module.split(".")[:2])


def import_graph(root: Path = ROOT) -> dict[tuple[str, str], list[str]]:
    """(importing unit, imported unit) -> where, over every `import` in the package, including
    those inside functions and `if TYPE_CHECKING:` blocks (a cycle hidden in a function is still
    a cycle). The package's own `__init__` (the public facade) is left out."""
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if module == "mtv":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                if name.split(".")[0] in ("mtv", "mtv_cli") and _unit(name) != _unit(module):
                    edges[(_unit(module), _unit(name))].append(f"{path.name}:{node.lineno}")
    return edges


def cycles(edges: dict[tuple[str, str], list[str]]) -> list[list[str]]:
    """The strongly connected components with more than one unit (Tarjan)."""
    successors: dict[str, set[str]] = defaultdict(set)
    for a, b in edges:
        successors[a].add(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in successors[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in list(successors):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_sees_a_cycle_through_a_function_level_import(tmp_path: Path) -> None:
    package = tmp_path / "mtv"
    for sub in ("a", "b", "c"):
        (package / sub).mkdir(parents=True)
        (package / sub / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "a" / "x.py").write_text("from mtv.b.y import f\n")
    (package / "b" / "y.py").write_text("def f():\n    from mtv.c import g\n")
    (package / "c" / "z.py").write_text("import mtv.a.x\n")
    assert cycles(import_graph(package)) == [["mtv.a", "mtv.b", "mtv.c"]]
    (package / "c" / "z.py").write_text("import mtv.b\n")  # b <-> c only
    assert cycles(import_graph(package)) == [["mtv.b", "mtv.c"]]


def test_imports_between_mtv_packages_flow_one_way() -> None:
    edges = import_graph()
    assert edges, "the scan found no imports at all"
    found = cycles(edges)
    detail = [
        f"{a} -> {b} ({', '.join(where[:3])})"
        for component in found
        for (a, b), where in edges.items()
        if a in component and b in component
    ]
    assert not found, "import cycles between mtv packages:\n" + "\n".join(detail)


def readme_layers() -> list[set[str]]:
    """The import order the README's Layout section states, bottom first: one set of units per
    level (`specs, runtime -> models -> ...`)."""
    text = (ROOT.parent / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Layout") :]
    start = section.index("specs, runtime")
    line = " ".join(section[start : section.index(";", start)].split())
    return [{f"mtv.{unit.strip()}" for unit in level.split(",")} for level in line.split("->")]


def test_imports_follow_the_order_the_readme_states() -> None:
    """Every import between units goes down (or stays level with) the README's order, and
    every unit of the package has its place in it: the order a reader is told is the real one."""
    layers = readme_layers()
    level = {unit: i for i, units in enumerate(layers) for unit in units}
    units = {
        _unit(".".join(p.relative_to(ROOT.parent).with_suffix("").parts))
        for p in ROOT.rglob("*.py")
    }
    assert units - {"mtv.__init__"} == set(level), "units missing from the README's order"
    upward = [
        f"{a} -> {b} ({', '.join(where[:2])})"
        for (a, b), where in import_graph().items()
        if b in level and a in level and level[b] > level[a]
    ]
    assert not upward, "imports that go up the README's order:\n" + "\n".join(upward)


def test_the_library_never_names_the_command_line() -> None:
    """No module under mtv/ imports mtv_cli, nor names it in a string (a `python -m mtv_cli...`
    command is the same dependency, hidden from the import graph)."""
    upward = {k: v for k, v in import_graph().items() if k[1].startswith("mtv_cli")}
    assert not upward, f"mtv imports mtv_cli: {upward}"
    named = [
        f"{path.relative_to(ROOT.parent)}:{node.lineno}"
        for path in sorted(ROOT.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and "mtv_cli" in node.value
    ]
    assert not named, f"mtv names mtv_cli in strings: {named}"


TOY_TASK = '''
"""A task of one's own: the image's mean colour, regressed from the pooled embedding."""

from typing import Any, Literal

import torch.nn.functional as F
from torch import nn

from mtv.specs import TaskSpecBase
from mtv.tasks import GLOBAL, StepInputs, Task, TaskEnv, TaskNeeds, TaskOutput, register_task


class MeanColourSpec(TaskSpecBase):
    kind: Literal["mean_colour"] = "mean_colour"
    hidden: int = 16


@register_task
class MeanColourTask(Task):
    spec_class = MeanColourSpec

    def __init__(self, spec: MeanColourSpec, env: TaskEnv):
        super().__init__(spec, env)
        self.head = nn.Sequential(
            nn.Linear(env.encoder.width, spec.hidden), nn.GELU(), nn.Linear(spec.hidden, 3)
        )

    @classmethod
    def needs_for(cls, spec: Any, env: TaskEnv) -> TaskNeeds:
        return TaskNeeds(student_views=frozenset({GLOBAL}), pooled_views=frozenset({GLOBAL}))

    def forward(self, inputs: StepInputs) -> TaskOutput:
        target = inputs.batch.images.float().mean(dim=(2, 3))
        prediction = self.head(inputs.student[GLOBAL].pooled.float())
        return TaskOutput(F.mse_loss(prediction, target))
'''


def test_a_task_from_one_new_module_trains_in_the_graph(corpus: str, tmp_path: Path) -> None:
    """One new file (spec class + task class, registered together) and an `imports:` line make a
    kind that validates, plans and trains beside the built-in ones. In a subprocess, as a user
    would run it, so the registration does not leak into the other tests."""
    import polars as pl

    (tmp_path / "mean_colour_task.py").write_text(TOY_TASK)
    smoke = Path(__file__).resolve().parents[1] / "experiments" / "smoke.yaml"
    (tmp_path / "toy.yaml").write_text(
        f"extends: {smoke}\nname: toy\nimports: [mean_colour_task]\n"
        f"data: {{source: {{root: {corpus}}}, loader: {{workers: 0}}}}\n"
        "tasks: [vl, {kind: mean_colour, hidden: 8, weight: 5.0}]\n"
        "task_defaults: !replace {mean_colour: {hidden: 32}}\n"
        "schedule: {steps: 30, warmup_steps: 2, decay: cosine}\noptim: {lr: 3.0e-3}\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "mtv_cli.main", "run", "toy.yaml", "--out", "run"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "mean_colour" in done.stdout  # the console's loss line names it
    spec = (tmp_path / "run" / "spec.yaml").read_text()
    assert "hidden: 8" in spec  # the task's own field beats task_defaults
    rows = pl.read_parquet(tmp_path / "run" / "metrics.parquet")
    colour = rows["loss/mean_colour"].to_list()
    assert len(colour) == 30 and all(math.isfinite(v) for v in colour)
    # Its gradient reaches the head: the regression error falls well below where it started.
    assert sum(colour[-5:]) / 5 < 0.5 * sum(colour[:5]) / 5, colour


def _fresh_python(code: str, path: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`code` in a new interpreter (nothing of mtv imported yet), `path` first on sys.path."""
    env = dict(os.environ)
    if path is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(path), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env
    )


def test_built_in_task_kinds_validate_whatever_was_imported_first() -> None:
    """The spec layer knows mtv's own task kinds through package metadata (the `mtv.tasks` entry
    point), not because some module happened to import `mtv.tasks` first: importing the spec
    layer alone loads no task module, and a spec naming every built-in kind validates."""
    done = _fresh_python(
        "import sys\n"
        "import mtv.specs.tasks as registry\n"
        "assert 'mtv.tasks' not in sys.modules, 'the spec layer imported the tasks'\n"
        "assert 'mtv.graph' not in sys.modules, 'the spec layer imported the graph'\n"
        "for kind in ['vl', 'distill', 'masked', 'koleo', 'ground', 'depth']:\n"
        "    assert registry.validate_task(kind).kind == kind\n"
        "assert 'attributes' in registry.task_spec_classes()\n"
        "print('ok')\n"
    )
    assert done.returncode == 0 and "ok" in done.stdout, done.stdout + done.stderr


PLUGIN_TASK = TOY_TASK.replace("mean_colour", "plugin_colour").replace("MeanColour", "PluginColour")


def test_an_installed_package_declares_its_tasks_through_the_entry_point(tmp_path: Path) -> None:
    """A package whose metadata names a module in the `mtv.tasks` group makes its kinds valid
    with no `imports:` line; a declared module that fails to import is one error naming it and
    its package."""
    (tmp_path / "colour_plugin.py").write_text(PLUGIN_TASK)
    info = tmp_path / "colour_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: colour-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[mtv.tasks]\ncolour = colour_plugin\n")
    done = _fresh_python(
        "from mtv.specs.tasks import validate_task\n"
        "print(validate_task({'kind': 'plugin_colour', 'hidden': 4}).hidden)\n",
        tmp_path,
    )
    assert done.returncode == 0 and done.stdout.strip() == "4", done.stdout + done.stderr

    (tmp_path / "colour_plugin.py").write_text("raise RuntimeError('half-installed')\n")
    broken = _fresh_python(
        "from mtv.specs.tasks import TaskPluginError, validate_task\n"
        "try:\n"
        "    validate_task('vl')\n"
        "except TaskPluginError as error:\n"
        "    print(error)\n",
        tmp_path,
    )
    assert broken.returncode == 0, broken.stderr
    assert "'colour_plugin'" in broken.stdout and "colour-plugin" in broken.stdout
    assert "half-installed" in broken.stdout


TOY_EVALUATOR = '''
"""An evaluator of one's own: how well a least-squares readout of the pooled embedding predicts
the mean brightness of held-out mini-world scenes (R^2 on the second half)."""

import torch

from mtv.eval import Evaluator, image_features, register_evaluator
from mtv.eval.metrics import Score


@register_evaluator
class BrightnessReadout(Evaluator):
    name = "brightness_readout"
    suites = ("mini",)

    def __call__(self, model, data):
        pooled = image_features(model, data.images).pooled.double()
        target = torch.from_numpy(data.images).double().mean(dim=(1, 2, 3))
        half = len(target) // 2
        x = torch.cat([pooled, torch.ones(len(pooled), 1, dtype=pooled.dtype)], dim=1)
        ridge = 1e-3 * torch.eye(x.shape[1], dtype=x.dtype)
        w = torch.linalg.solve(x[:half].T @ x[:half] + ridge, x[:half].T @ target[:half])
        residual = ((x[half:] @ w - target[half:]) ** 2).sum()
        total = ((target[half:] - target[:half].mean()) ** 2).sum()
        return {"r2": Score(float(1 - residual / total), 0.0)}
'''


def test_an_evaluator_from_one_new_module_runs_from_mtv_eval(corpus: str, tmp_path: Path) -> None:
    """One new file (an evaluator class, registered for the mini suite) and an `imports:` line:
    `mtv eval RUN --only NAME` runs it, with its reference points, and stores its rows."""
    import polars as pl

    (tmp_path / "brightness_eval.py").write_text(TOY_EVALUATOR)
    smoke = Path(__file__).resolve().parents[1] / "experiments" / "smoke.yaml"
    (tmp_path / "toy.yaml").write_text(
        f"extends: {smoke}\nname: toy\nimports: [brightness_eval]\n"
        f"data: {{source: {{root: {corpus}}}, loader: {{workers: 0}}}}\n"
        "schedule: {steps: 2, warmup_steps: 1}\n"
    )
    command = [sys.executable, "-m", "mtv_cli.main"]
    trained = subprocess.run(
        [*command, "run", "toy.yaml", "--out", "run"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert trained.returncode == 0, trained.stdout + trained.stderr
    evaluated = subprocess.run(
        [*command, "eval", "run", "--only", "brightness_readout", "--scenes", "8"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env=os.environ | {"COLUMNS": "160"},
    )
    assert evaluated.returncode == 0, evaluated.stdout + evaluated.stderr
    assert "brightness_readout" in evaluated.stdout and "r2" in evaluated.stdout
    rows = pl.read_parquet(tmp_path / "run" / "eval" / "mini.parquet")
    assert rows["evaluator"].to_list() == ["brightness_readout"]
    assert rows["random_init"].is_finite().all() and rows["trivial"].to_list() == [0.0]
    # A name no module registered is one error naming the suite's evaluators, the new one too.
    unknown = subprocess.run(
        [*command, "eval", "run", "--only", "brightnes", "--scenes", "8"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert unknown.returncode == 2
    assert "unknown evaluator(s) ['brightnes'] for suite 'mini'" in unknown.stdout + unknown.stderr
    assert "brightness_readout" in unknown.stdout + unknown.stderr


def test_every_package_of_mtv_is_installed() -> None:
    """pyproject lists its packages by name: a package folder missing there would be absent from
    a non-editable install (wheels, `pip install .`), though every test here passes."""
    import tomllib

    listed = set(
        tomllib.loads((ROOT.parent / "pyproject.toml").read_text())["tool"]["setuptools"][
            "packages"
        ]
    )
    found = {
        ".".join(path.parent.relative_to(ROOT.parent).parts) for path in ROOT.rglob("__init__.py")
    }
    assert found <= listed, f"packages missing from pyproject.toml: {sorted(found - listed)}"


def test_every_public_name_of_the_package_resolves() -> None:
    """`mtv.<name>` for each name of `mtv.__all__` (imported on first use) is the object its
    module defines."""
    for name in mtv.__all__:
        assert getattr(mtv, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        mtv.nothing  # noqa: B018

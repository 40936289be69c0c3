"""The `mtv spec` commands, through the installed entry point and typer's runner."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from mtv_cli.main import app
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def test_validate_all_experiments() -> None:
    files = sorted(str(p) for p in (ROOT / "experiments").glob("*.yaml"))
    result = runner.invoke(app, ["spec", "validate", *files])
    assert result.exit_code == 0, result.output
    assert result.output.count("ok ") == len(files)


def test_show_prints_resolved_spec_plan_and_parameters() -> None:
    result = runner.invoke(
        app, ["spec", "show", str(ROOT / "experiments" / "smoke.yaml"), "--set", "optim.lr=0.002"]
    )
    assert result.exit_code == 0, result.output
    assert "lr: 0.002" in result.output
    assert "student encoder: 3 pass(es) per step" in result.output
    assert "trainable parameters" in result.output and "total" in result.output


def test_schema_is_json(tmp_path: Path) -> None:
    out = tmp_path / "schema.json"
    result = runner.invoke(app, ["spec", "schema", "--out", str(out)])
    assert result.exit_code == 0, result.output
    schema = json.loads(out.read_text())
    assert schema["title"] == "ExperimentSpec" and "extends" in schema["properties"]


def test_bad_files_give_one_clear_line_each_and_no_traceback(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("name: b\ntasks: [vl]\n")
    cases = {
        "misspelt.yaml": ("extends: base.yaml\nname: a\noptim: {lrr: 1.0e-3}\n", "optim.lrr"),
        "wrongtype.yaml": ("extends: base.yaml\nname: a\noptim: {lr: fast}\n", "optim.lr"),
        "kind.yaml": ("extends: base.yaml\nname: a\ntasks: [vl, segment]\n", "tasks[1].kind"),
        "nobase.yaml": ("extends: gone.yaml\nname: a\n", "extends"),
    }
    paths = []
    for name, (text, _) in cases.items():
        (tmp_path / name).write_text(text)
        paths.append(str(tmp_path / name))
    # The installed console script, as a user runs it.
    mtv = Path(sys.executable).parent / "mtv"
    proc = subprocess.run(
        [str(mtv), "spec", "validate", *paths], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == len(cases)
    for (name, (_, field)), line in zip(cases.items(), lines, strict=True):
        assert line.startswith(f"error: {tmp_path / name}: {field}: "), line


def test_user_text_is_not_read_as_markup() -> None:
    result = runner.invoke(
        app,
        [
            "spec",
            "validate",
            str(ROOT / "experiments" / "vl.yaml"),
            "--set",
            "runtime.device=a[/]b",
        ],
    )
    assert result.exit_code == 2
    assert "(got 'a[/]b')" in result.output


def test_show_of_a_bad_file_exits_nonzero() -> None:
    result = runner.invoke(app, ["spec", "show", "no/such/file.yaml"])
    assert result.exit_code == 2
    assert "file not found" in result.output


def test_spec_validate_recognises_label_and_sweep_files_by_shape(tmp_path: Path) -> None:
    job = tmp_path / "label.yaml"
    job.write_text("source: {kind: miniworld, root: data/miniworld}\noutput: x.zarr\n")
    typo = tmp_path / "typo.yaml"
    typo.write_text("source: {kind: miniworld}\noutput: x.zarr\nresolutio: 64\n")
    sweep = ROOT / "experiments" / "sweeps" / "pilot.yaml"
    result = runner.invoke(app, ["spec", "validate", str(job), str(sweep)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "labelling job: miniworld" in result.output and "sweep pilot: 4 job(s)" in result.output
    result = runner.invoke(app, ["spec", "validate", str(typo)], env={"COLUMNS": "200"})
    assert result.exit_code == 2 and "did you mean 'resolution'" in result.output
    for kind, field in (("label", "resolution"), ("sweep", "seeds"), ("experiment", "tasks")):
        schema = json.loads(runner.invoke(app, ["spec", "schema", "--kind", kind]).output)
        assert field in schema["properties"], kind


def test_tables_are_wide_when_piped(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import io

    from mtv_cli.output import _width

    monkeypatch.delenv("COLUMNS", raising=False)
    assert _width(io.StringIO()) == 200  # piped: rich alone would fold tables at 80
    monkeypatch.setenv("COLUMNS", "120")
    assert _width(io.StringIO()) is None  # the user's COLUMNS wins


def test_the_eta_counts_from_the_first_trained_step_not_from_start_up() -> None:
    from mtv_cli.run import _View

    view = _View(total=100, log_every=10)
    view.started -= 3600  # an hour of labelling before the first step
    assert view._eta(51) == "-"  # a resumed run's first step: no rate yet
    view.started -= 10  # ten seconds for steps 52..61
    eta = view._eta(61)
    assert eta.startswith("00:00:")  # 39 steps left at ~1 s each, not hours
    assert 30 <= int(eta[-2:]) <= 50, eta

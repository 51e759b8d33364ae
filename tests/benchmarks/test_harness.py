"""The benchmarks' shared harness: interleaved timing, the figures file the docs render, and
every benchmark script run as `python -m benchmarks.<name>` with --figures."""

from __future__ import annotations

import contextlib
import datetime
import importlib
import importlib.util
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from benchmarks import bench_crop, bench_map, harness

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(
    p.stem
    for p in (ROOT / "benchmarks").glob("*.py")
    if p.stem not in ("__init__", "harness", "models")
)


def test_interleaved_times_every_variant_in_turn_after_the_warmup() -> None:
    calls: list[str] = []
    variants = {name: (lambda n=name: calls.append(n)) for name in ("a", "b", "c")}
    times = harness.interleaved(variants, 3, warmup=2, reps={"a": 1, "b": 2, "c": 1})
    round_calls = ["a", "b", "b", "c"]
    assert calls == ["a", "b", "c"] * 2 + round_calls * 3
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert all(t >= 0 for v in times.values() for t in v)


def test_median_ratio_pairs_the_rounds() -> None:
    # per-round ratios 2, 2, 4: median 2; the ratio of the medians would be 4 / 1 = 4
    assert harness.median_ratio([2.0, 20.0, 4.0], [1.0, 10.0, 1.0]) == 2.0
    assert harness.median([3.0, 1.0, 2.0]) == 2.0
    assert harness.median([1.0, 2.0], 0) == 2.0  # 1.5 rounded half to even


def test_command_line_is_the_module_form_with_arguments_quoted() -> None:
    line = harness.command_line(
        ["/x/benchmarks/bench_map.py", "--runs", "1", "--figures", "a b.json"],
        module="benchmarks.bench_map",
    )
    assert line == "python -m benchmarks.bench_map --runs 1 --figures 'a b.json'"
    assert harness.command_line(["tool.py", "-v"], module="") == "python tool.py -v"


def test_figures_document_has_the_contract_the_docs_read(tmp_path: Path) -> None:
    table = harness.Figures("T", ["x", "y"], [[1, "a"], [2.5, None]], ["a note"])
    doc = harness.figures_document(table, source="python -m x", measured=datetime.date(2026, 1, 2))
    assert list(doc) == ["title", "source", "machine", "measured", "columns", "rows", "notes"]
    assert doc["measured"] == "2026-01-02"
    assert set(doc["machine"]) == {"cpu", "cores", "gpu", "torch", "onnxruntime"}
    assert doc["machine"]["cores"] >= 1 and doc["machine"]["torch"]
    assert doc["rows"] == [[1, "a"], [2.5, None]]
    jsonschema.validate(doc, harness.FIGURES_SCHEMA)
    from tests.docs.docs_helpers import load_hook

    hook = load_hook("figures")
    assert hook.SCHEMA == harness.FIGURES_SCHEMA  # one contract, read from one file
    (tmp_path / "figure.json").write_text(json.dumps(doc))
    assert "| 2.5 |" in hook.render_figure(hook.load_figure(tmp_path / "figure.json"))


@pytest.mark.parametrize(
    ("rows", "says"),
    [
        ([[1, 2], [3]], "row 2 has 1 cells for 2 columns"),
        ([[1, True]], "figures rows/0/1: True is not of type"),  # the docs render no booleans
        ([], "figures rows: [] should be non-empty"),
    ],
)
def test_a_table_the_docs_cannot_render_is_refused(rows, says) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        harness.figures_document(harness.Figures("T", ["x", "y"], rows), source="s")


def test_a_figures_problem_is_one_line_after_the_result_is_printed(tmp_path, capsys) -> None:
    args = harness.parser(None).parse_args(["--figures", str(tmp_path / "f.json")])
    with pytest.raises(SystemExit) as exit_:
        harness.finish({"v": 1}, args, lambda r: harness.Figures("T", ["v"], []))
    assert (
        str(exit_.value)
        == f"error: --figures {tmp_path / 'f.json'}: figures rows: [] should be non-empty"
    )
    assert json.loads(capsys.readouterr().out) == {"v": 1}
    assert not (tmp_path / "f.json").exists()


def test_the_docs_build_accepts_what_the_harness_writes(tmp_path) -> None:
    spec = importlib.util.spec_from_file_location("figures_hook", ROOT / "docs/hooks/figures.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    path = tmp_path / "figures" / "t.json"
    table = harness.Figures("T", ["model", "images/s"], [["small", 412.5], ["paper", None]], ["n"])
    harness.write_figures(path, table, source="python -m benchmarks.bench_encode")
    assert hook.load_figure(path)["rows"] == [["small", 412.5], ["paper", None]]
    page = hook.render_markers("<!-- figures: t -->", tmp_path)
    assert "| small | 412.5 |" in page and "python -m benchmarks.bench_encode" in page


def test_figures_option_refuses_a_folder(tmp_path, capsys) -> None:
    parser = harness.parser("Title.\n\nMore.")
    assert parser.description == "Title."
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["--figures", str(tmp_path)])
    assert exit_.value.code == 2
    assert "is a folder" in capsys.readouterr().err


def test_finish_prints_then_writes_the_figures(tmp_path, capsys) -> None:
    out = tmp_path / "deep" / "fig.json"
    args = harness.parser(None).parse_args(["--figures", str(out)])
    result = {"value": 3}
    harness.finish(result, args, lambda r: harness.Figures("T", ["v"], [[r["value"]]]))
    assert json.loads(capsys.readouterr().out) == result
    assert json.loads(out.read_text())["rows"] == [[3]]
    assert [p.name for p in out.parent.iterdir()] == ["fig.json"]  # nothing staged is left


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_benchmark_runs_as_a_module_with_figures(name: str, monkeypatch) -> None:
    source = (ROOT / "benchmarks" / f"{name}.py").read_text()
    assert "sys.path" not in source
    assert "benchmarks.harness" in source or "from benchmarks import harness" in source
    module = importlib.import_module(f"benchmarks.{name}")
    monkeypatch.setattr(sys, "argv", [name, "--help"])
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
        module.main()
    assert exit_.value.code == 0
    assert "--figures PATH" in out.getvalue()


def test_crop_and_map_results_become_valid_figures() -> None:
    crop = bench_crop.run(batch=2, rounds=1)
    table = bench_crop.figures(crop, rounds=1)
    assert [row[0] for row in table.rows] == ["small (128 -> 48)", "paper (448 -> 112)"]
    assert table.rows[0][1] == crop["small"]["ms"]["crop_matrices"]
    found = bench_map.run(runs=1)
    doc = harness.figures_document(bench_map.figures(found), source="s")
    assert doc["rows"] == [[found["queries"], found["candidates"], 2048, found["median_s"]]]


def test_a_script_run_from_the_root_writes_its_figures(tmp_path) -> None:
    figures = tmp_path / "crop.json"
    command = [sys.executable, "-m", "benchmarks.bench_crop", "--batch", "2", "--rounds", "1"]
    run = subprocess.run(
        [*command, "--figures", str(figures)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    printed = json.loads(run.stdout)
    assert set(printed) == {"batch", "threads", "load", "small", "paper"}  # unchanged keys
    doc = json.loads(figures.read_text())
    jsonschema.validate(doc, harness.FIGURES_SCHEMA)
    assert (
        doc["source"] == f"python -m benchmarks.bench_crop --batch 2 --rounds 1 --figures {figures}"
    )
    assert doc["rows"][0][1] == printed["small"]["ms"]["crop_matrices"]

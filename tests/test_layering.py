"""The layering rule (docs/architecture.md, "Layering") and the size limit on functions,
read from the source with `ast` (function-local imports included)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 80


def _sources(*parts: str) -> list[Path]:
    files = []
    for part in parts:
        path = ROOT / part
        files += [path] if path.is_file() else sorted(path.rglob("*.py"))
    return files


def _imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """Every module an `import` or `from ... import` names, at any depth of the file."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def _is_upper_layer(module: str) -> bool:
    """asen.export and asen.client (installed from the export/ and client/ folders)."""
    return module.split(".")[:2] in (["asen", "export"], ["asen", "client"])


def test_the_library_imports_neither_export_nor_client() -> None:
    offending = [
        f"{path.relative_to(ROOT)}:{line}: {module}"
        for path in _sources("asen")
        for line, module in _imported_modules(ast.parse(path.read_text(), str(path)))
        if _is_upper_layer(module)
    ]
    assert offending == []


def test_export_does_not_import_client() -> None:
    offending = [
        f"{path.relative_to(ROOT)}:{line}: {module}"
        for path in _sources("export")
        for line, module in _imported_modules(ast.parse(path.read_text(), str(path)))
        if module.split(".")[:2] == ["asen", "client"]
    ]
    assert offending == []


def test_the_check_sees_function_local_imports() -> None:
    source = "def f():\n    from asen.export.onnx import OPSET\n    import asen.client.triton\n"
    tree = ast.parse(source)
    modules = [m for _, m in _imported_modules(tree)]
    assert modules == ["asen.export.onnx", "asen.client.triton"]
    assert all(_is_upper_layer(m) for m in modules)
    assert not _is_upper_layer("asen.exporter") and not _is_upper_layer("asen.encoders")


@pytest.mark.parametrize("part", ["asen", "export", "client"])
def test_no_function_is_over_80_lines(part: str) -> None:
    long = []
    for path in _sources(part):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                lines = node.end_lineno - first + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines})")
    assert long == []


def _command_modules() -> list[Path]:
    return [
        *_sources("asen/commands"),
        ROOT / "export" / "commands.py",
        ROOT / "client" / "commands.py",
    ]


def test_the_cli_only_composes_and_command_modules_stay_small() -> None:
    assert len((ROOT / "asen" / "cli.py").read_text().splitlines()) < 200
    long = [
        f"{path.relative_to(ROOT)} ({n} lines)"
        for path in _command_modules()
        if (n := len(path.read_text().splitlines())) > 400
    ]
    assert long == []

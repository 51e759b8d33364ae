"""Shared by the docs tests: where the repository is, the hooks as modules, a site build."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
README = ROOT / "README.md"


def load_hook(name: str) -> ModuleType:
    """A MkDocs hook of docs/hooks/ as a module (hooks are files, not a package)."""
    path = DOCS / "hooks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"docs_hook_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_site(project: Path, site: Path) -> subprocess.CompletedProcess:
    """`mkdocs build --strict` of the project folder into `site` (run in the project, as
    the snippets of README.md and CHANGELOG.md are read from there)."""
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )


def readme_block(readme: str, name: str) -> str:
    """The bash block between the README's `[start:name]` and `[end:name]` markers."""
    start_marker, end_marker = f"<!-- --8<-- [start:{name}] -->", f"<!-- --8<-- [end:{name}] -->"
    start, end = readme.index(start_marker), readme.index(end_marker)
    block = readme[start + len(start_marker) : end].strip()
    if not (block.startswith("```bash\n") and block.endswith("```")):
        raise ValueError(f"the README's {name} is not one ```bash block between its markers")
    return block[len("```bash\n") : -len("```")]


def tour_script(readme: str) -> str:
    """The bash block between the README's tour markers."""
    return readme_block(readme, "tour")

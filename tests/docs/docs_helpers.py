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
TOUR_START = "<!-- --8<-- [start:tour] -->"
TOUR_END = "<!-- --8<-- [end:tour] -->"


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


def tour_script(readme: str) -> str:
    """The bash block between the README's tour markers."""
    start, end = readme.index(TOUR_START), readme.index(TOUR_END)
    block = readme[start + len(TOUR_START) : end].strip()
    if not (block.startswith("```bash\n") and block.endswith("```")):
        raise ValueError("the README's tour is not one ```bash block between its markers")
    return block[len("```bash\n") : -len("```")]

"""The documentation site: `mkdocs build --strict` passes on the repository and fails on a
broken link; the benchmark tables render from docs/figures/*.json."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from mkdocs.exceptions import PluginError

from tests.docs.docs_helpers import DOCS, ROOT, build_site, load_hook

figures = load_hook("figures")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The repository's site, built once for the module."""
    site = tmp_path_factory.mktemp("site")
    result = build_site(ROOT, site)
    assert result.returncode == 0, result.stderr
    return site


def test_every_page_of_the_nav_is_built(site: Path) -> None:
    config = (ROOT / "mkdocs.yml").read_text()
    pages = re.findall(r"^\s+- [^:]+: (\S+\.md)$", config, flags=re.M)
    assert "architecture.md" in pages and "cli.md" in pages
    for page in pages:
        built = site / ("index.html" if page == "index.md" else f"{page[:-3]}/index.html")
        assert built.is_file(), page


def test_every_figure_file_is_shown_as_a_table(site: Path) -> None:
    names = sorted(path.stem for path in (DOCS / "figures").glob("*.json"))
    assert names
    pages = "".join(path.read_text() for path in site.rglob("index.html"))
    assert "<!-- figures:" not in pages  # no marker left unrendered
    for name in names:
        figure = json.loads((DOCS / "figures" / f"{name}.json").read_text())
        assert figure["source"] in pages.replace("&gt;", ">").replace("&lt;", "<"), name


def test_the_changelog_and_the_tour_are_included(site: Path) -> None:
    changelog = (site / "changelog" / "index.html").read_text()
    assert "0.2.0" in changelog and "0.1.0" in changelog
    getting_started = (site / "getting-started" / "index.html").read_text()
    assert "Make a synthetic dataset" in getting_started
    assert "--8&lt;--" not in getting_started and "[start:tour]" not in getting_started


def _copy_project(target: Path) -> Path:
    target.mkdir()
    for name in ("mkdocs.yml", "README.md", "CHANGELOG.md"):
        shutil.copy2(ROOT / name, target / name)
    shutil.copytree(DOCS, target / "docs")
    return target


def test_a_broken_link_fails_the_strict_build(tmp_path: Path) -> None:
    project = _copy_project(tmp_path / "project")
    page = project / "docs" / "data.md"
    page.write_text(page.read_text() + "\nSee [the missing page](no-such-page.md).\n")
    result = build_site(project, tmp_path / "site")
    assert result.returncode != 0
    assert "no-such-page.md" in result.stderr


def test_a_broken_anchor_fails_the_strict_build(tmp_path: Path) -> None:
    project = _copy_project(tmp_path / "project")
    page = project / "docs" / "data.md"
    page.write_text(page.read_text() + "\nSee [a section](training.md#no-such-section).\n")
    result = build_site(project, tmp_path / "site")
    assert result.returncode != 0
    assert "no-such-section" in result.stderr


def _figure(**changes) -> dict:
    figure = {
        "title": "Images a second",
        "source": "benchmarks/bench_encode.py",
        "machine": {
            "cpu": "x86-64",
            "cores": 2,
            "gpu": None,
            "torch": "2.14.1",
            "onnxruntime": None,
        },
        "measured": "2026-12-05",
        "columns": ["model", "images/s"],
        "rows": [["small", 412], ["paper | 448 px", 21.3]],
        "notes": ["Random weights."],
    }
    return {**figure, **changes}


def test_a_figure_renders_as_a_table_with_its_machine_and_source(tmp_path: Path) -> None:
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "speed.json").write_text(json.dumps(_figure()))
    page = figures.render_markers("Before\n\n<!-- figures: speed -->\n\nAfter", tmp_path)
    assert "| model | images/s |" in page
    assert "| paper \\| 448 px | 21.3 |" in page
    assert "`benchmarks/bench_encode.py`" in page
    assert "cpu x86-64, cores 2, torch 2.14.1" in page
    assert "- Random weights." in page and page.startswith("Before") and page.endswith("After")


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"rows": [["small"]]}, "rows/0 has 1 values for 2 columns"),
        ({"measured": "last week"}, "measured"),
        ({"columns": []}, "columns"),
        ({"title": 3}, "title"),
    ],
)
def test_a_bad_figure_stops_the_build_naming_the_file(tmp_path, changes, says) -> None:
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "bad.json").write_text(json.dumps(_figure(**changes)))
    with pytest.raises(PluginError, match=re.escape(says)) as raised:
        figures.render_markers("<!-- figures: bad -->", tmp_path)
    assert "bad.json" in str(raised.value)


def test_a_marker_naming_no_file_stops_the_build(tmp_path: Path) -> None:
    (tmp_path / "figures").mkdir()
    with pytest.raises(PluginError, match="missing.json does not exist"):
        figures.render_markers("<!-- figures: missing -->", tmp_path)


def test_a_figure_file_no_page_shows_is_reported(tmp_path: Path) -> None:
    (tmp_path / "figures").mkdir()
    for name in ("shown", "forgotten"):
        (tmp_path / "figures" / f"{name}.json").write_text(json.dumps(_figure()))
    used: set[str] = set()
    figures.render_markers("<!-- figures: shown -->", tmp_path, used)
    assert figures.unused_figures(tmp_path, used) == ["forgotten"]


def test_the_repository_figures_are_valid() -> None:
    for path in sorted((DOCS / "figures").glob("*.json")):
        figure = figures.load_figure(path)
        assert figure["rows"], path

"""The README a newcomer reads: short, a ten-step tour, links that lead somewhere, and no
internal work-item numbers anywhere in the user documentation."""

from __future__ import annotations

import re

from tests.docs.docs_helpers import DOCS, README, ROOT, tour_script

MAX_README_LINES = 250


def test_the_readme_is_at_most_250_lines() -> None:
    lines = README.read_text().splitlines()
    assert 0 < len(lines) <= MAX_README_LINES


def test_the_tour_is_ten_steps_of_one_prose_line_and_one_command() -> None:
    lines = tour_script(README.read_text()).splitlines()
    steps = [line for line in lines if re.match(r"^# \d+\. ", line)]
    assert [int(line.split(".")[0][2:]) for line in steps] == list(range(1, 11))
    for number, line in enumerate(lines):
        if line in steps:
            assert lines[number + 1].startswith("asen "), line
    assert all(line.startswith(("# ", "asen ", "    ", "until ")) for line in lines), lines


def test_the_readme_links_to_files_that_exist() -> None:
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README.read_text())
    local = [link for link in links if not link.startswith(("http://", "https://"))]
    assert "docs/benchmarks.md" in local and "docs/getting-started.md" in local
    for link in local:
        assert (ROOT / link).exists(), link


def test_no_internal_work_item_numbers_in_the_user_documentation() -> None:
    files = [README, ROOT / "CHANGELOG.md", *sorted(DOCS.glob("*.md"))]
    for path in files:
        found = re.findall(r"\bissues? #?\d+", path.read_text(), flags=re.I)
        assert not found, (path.name, found)

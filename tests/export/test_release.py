"""export/release.py is the one Triton release: the Dockerfile, the KServe manifests, the
docs and `asen export --trt`'s messages agree with it, and `disagreements` names every file
that does not (shown by changing the Dockerfile's tag alone in a copy)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml
from asen.export import tensorrt
from asen.export.release import TRITON_RELEASE, TritonRelease, build_args

ROOT = Path(__file__).parent.parent.parent
DOCKERFILE = "docker/Dockerfile"
MANIFESTS = ("deploy/kserve-servingruntime.yaml", "deploy/kserve-inferenceservice.yaml")
OPERATIONS = "docs/operations.md"
COPIED = (DOCKERFILE, *MANIFESTS, "README.md", "docs")  # docs holds operations.md


def _dockerfile(root: Path, release: TritonRelease) -> list[str]:
    text = (root / DOCKERFILE).read_text()
    tag = re.search(r"^ARG TRITON_TAG=(\S+)$", text, re.M)
    found = tag.group(1) if tag else None
    problems = [] if found == release.tag else [f"{DOCKERFILE}: TRITON_TAG {found}"]
    if not re.search(r"^FROM nvcr\.io/nvidia/tritonserver:\$\{TRITON_TAG\}-py3$", text, re.M):
        problems.append(f"{DOCKERFILE}: FROM is not the tritonserver:${{TRITON_TAG}}-py3 image")
    return problems


def _images(root: Path, release: TritonRelease) -> list[str]:
    """Every container image of the manifests is asen's image of this release."""
    problems = []
    for name in MANIFESTS:
        text = (root / name).read_text()
        for image in re.findall(r"^\s*image:\s*(\S+)", text, re.M):
            if not image.endswith(release.asen_image):
                problems.append(f"{name}: image {image}")
        manifest = yaml.safe_load(text)
        if "runtimeVersion" in str(manifest):
            problems.append(f"{name}: runtimeVersion (the stock runtime) instead of asen's image")
    return problems


def _mentions(root: Path, release: TritonRelease) -> list[str]:
    """Every Triton tag, TensorRT wheel and full TensorRT version written in the files."""
    wanted = {
        r"tritonserver:(\d{2}\.\d{2})": release.tag,
        r"Triton (\d{2}\.\d{2})\b": release.tag,
        r"asen-triton:(\d{2}\.\d{2})": release.tag,
        r"(tensorrt-cu12==[\w.]+)": release.tensorrt_wheel,
        r"TensorRT (\d+\.\d+\.\d+\.\d+)": release.tensorrt_version,
    }
    files = [root / p for p in (DOCKERFILE, *MANIFESTS, "README.md")]
    files += sorted((root / "docs").rglob("*.md"))
    problems = []
    for path in files:
        text = path.read_text()
        for pattern, value in wanted.items():
            for found in set(re.findall(pattern, text)) - {value}:
                problems.append(f"{path.relative_to(root)}: {found} (the release has {value})")
    return problems


def _operations(root: Path, release: TritonRelease) -> list[str]:
    text = (root / OPERATIONS).read_text()
    facts = (release.base_image, release.tensorrt_version, release.tensorrt_wheel)
    return [f"{OPERATIONS}: does not state {fact}" for fact in facts if fact not in text]


def disagreements(root: Path, release: TritonRelease = TRITON_RELEASE) -> list[str]:
    """One line per file (under `root`) that disagrees with `release`."""
    checks = (_dockerfile, _images, _mentions, _operations)
    return [problem for check in checks for problem in check(root, release)]


def test_every_file_agrees_with_the_release() -> None:
    assert disagreements(ROOT) == []


def _copy(tmp_path: Path) -> Path:
    for name in COPIED:
        source, target = ROOT / name, tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.png", "figures"))
        else:
            shutil.copyfile(source, target)
    return tmp_path


def test_changing_the_dockerfile_tag_alone_is_caught(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    dockerfile = root / DOCKERFILE
    text = dockerfile.read_text()
    dockerfile.write_text(text.replace(f"TRITON_TAG={TRITON_RELEASE.tag}", "TRITON_TAG=25.01"))
    assert disagreements(root) == [f"{DOCKERFILE}: TRITON_TAG 25.01"]


@pytest.mark.parametrize(
    ("path", "old", "new", "named"),
    [
        (MANIFESTS[0], "asen-triton:24.12", "asen-triton:24.08", MANIFESTS[0]),
        (OPERATIONS, "tensorrt-cu12==10.7.0", "tensorrt-cu12==10.3.0", OPERATIONS),
        (MANIFESTS[1], "tensorrt-cu12==10.7.0", "tensorrt-cu12==10.3.0", MANIFESTS[1]),
    ],
)
def test_a_change_to_one_file_names_that_file(tmp_path, path, old, new, named) -> None:
    root = _copy(tmp_path)
    text = (root / path).read_text()
    assert old in text
    (root / path).write_text(text.replace(old, new))
    problems = disagreements(root)
    assert problems and all(p.startswith(named + ":") for p in problems), problems


def test_a_new_release_flags_the_files_not_yet_moved() -> None:
    newer = TritonRelease(**{**TRITON_RELEASE.__dict__, "tag": "25.01"})
    problems = disagreements(ROOT, newer)
    assert any(p.startswith(DOCKERFILE) for p in problems)
    assert any(p.startswith(MANIFESTS[0]) for p in problems)


def test_build_args_set_the_dockerfile_tag() -> None:
    assert build_args() == ["--build-arg", f"TRITON_TAG={TRITON_RELEASE.tag}"]


def test_export_trt_messages_name_the_release() -> None:
    assert TRITON_RELEASE.tensorrt_wheel in tensorrt.INSTALL_HINT
    assert TRITON_RELEASE.tag in tensorrt.INSTALL_HINT
    same = TRITON_RELEASE.plan_compatibility("10.7.0")  # what the pip wheel reports
    assert "warning" not in same and TRITON_RELEASE.base_image in same
    other = TRITON_RELEASE.plan_compatibility("10.13.0.35")
    assert other.startswith("warning:") and TRITON_RELEASE.tensorrt_wheel in other
    assert "\n" not in other

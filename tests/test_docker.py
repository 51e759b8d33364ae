"""docker/Dockerfile, checked statically (NVIDIA's registry is out of reach here, so it is
never built in CI): the Triton base tag and its TensorRT, asen installed from this tree,
the files it copies exist, and nothing downloads weights."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
DOCKERFILE = ROOT / "docker" / "Dockerfile"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"


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


def test_base_is_a_triton_release_with_tensorrt_10() -> None:
    args = dict(a.split("=", 1) for w, a in instructions() if w == "ARG" and "=" in a)
    tag = args["TRITON_TAG"]
    assert re.fullmatch(r"\d{2}\.\d{2}", tag)
    froms = [a for w, a in instructions() if w == "FROM"]
    assert froms == ["nvcr.io/nvidia/tritonserver:${TRITON_TAG}-py3"]
    text = DOCKERFILE.read_text()
    assert re.search(rf"Tag {re.escape(tag)} .*ships TensorRT 10\.\d+", text)
    trt = re.search(r"ships TensorRT (10\.\d+)", text).group(1)
    assert args["TENSORRT_WHEEL"].startswith(trt + ".")  # the wheel matches the container


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

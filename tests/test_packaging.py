"""The wheel: one import name (`asen`), every file the models need, and a CLI that runs
from a fresh virtual environment outside the repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _source_copy(into: Path) -> Path:
    """The files git would commit (tracked, and untracked ones it does not ignore), copied:
    the wheel is built from them alone, never from a stale build/ folder of the checkout."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, into / name)
    return into


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    source = _source_copy(tmp_path_factory.mktemp("source"))
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out)],
        cwd=source,
        check=True,
        capture_output=True,
    )
    [built] = out.glob("asen-*.whl")
    return built


def test_the_wheel_installs_one_import_name(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        [top_level] = [n for n in names if n.endswith(".dist-info/top_level.txt")]
        assert z.read(top_level).decode().split() == ["asen"]
        [points] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        entry_points = z.read(points).decode()
    assert {n.split("/")[0] for n in names if not n.startswith("asen-")} == {"asen"}
    for source in (ROOT / "export" / "triton_python").glob("*.py"):
        assert f"asen/export/triton_python/{source.name}" in names
    for config in (ROOT / "asen" / "configs").glob("*.yaml"):
        assert f"asen/configs/{config.name}" in names
    for module in ("asen/cli.py", "asen/export/commands.py", "asen/client/commands.py"):
        assert module in names
    assert "asen = asen.launch:main" in entry_points
    for backend in ("torch", "onnx", "trt", "triton"):
        assert f"{backend} = " in entry_points


def _fresh_venv(tmp_path: Path) -> Path:
    """A venv whose dependencies come from this one's site-packages (a path line, so the
    editable install of the checkout is not on it) and whose asen is the wheel's."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def test_the_installed_wheel_runs_outside_the_repository(wheel: Path, tmp_path: Path) -> None:
    venv = _fresh_venv(tmp_path)
    python = venv / "bin" / "python"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "-q",
            "--no-deps",
            str(wheel),
        ],
        check=True,
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    work = tmp_path / "work"
    work.mkdir()

    def asen(*args: str) -> str:
        done = subprocess.run(
            [str(venv / "bin" / "asen"), *args],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    where = subprocess.run(
        [str(python), "-c", "import asen, asen.export, asen.client; print(asen.__file__)"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert str(venv) in where and str(ROOT) not in where
    assert asen("--version").strip().startswith("asen ")
    asen("data", "synth", "d", "--train", "40", "--eval", "20")
    asen(
        "train",
        "--data",
        "d",
        "-c",
        "small",
        "--epochs",
        "1",
        "--set",
        "train.triplets_per_epoch=32",
        "--out",
        "run",
        "--workers",
        "0",
    )
    asen("export", "run/best.pt", "--repo", "models", "--max-batch", "4")
    assert (work / "models" / "asen_onnx" / "1" / "model.onnx").is_file()

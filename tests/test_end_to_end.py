"""End to end on the CPU: synthetic data -> train -> resume -> eval -> embed, via the CLI."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import asen.train as train_module
from asen.checkpoint import load_checkpoint
from asen.cli import app
from asen.training.stopping import StopRequest

runner = CliRunner()
SMALL = [
    "-c",
    "small",
    "--set",
    "train.triplets_per_epoch=32",
    "--set",
    "train.batch_size=8",
    "--set",
    "train.eval_batch_size=32",
    "--workers",
    "0",
]


def _ok(args: list[str]) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    _ok(["data", "synth", root, "--train", 60, "--eval", 20, "--seed", 3])
    return root


def test_train_resume_eval_embed(data, tmp_path) -> None:
    run = tmp_path / "run"
    _ok(["train", "--data", data, *SMALL, "--epochs", 1, "--out", run])
    first = load_checkpoint(run / "last.pt")
    assert first["epoch"] == 1 and first["stage"] == 1
    # without --resume an existing run is not overwritten
    result = runner.invoke(
        app, ["train", "--data", str(data), *SMALL, "--epochs", "2", "--out", str(run)]
    )
    assert result.exit_code == 1 and "--resume" in result.output
    _ok(["train", "--data", data, *SMALL, "--epochs", 2, "--out", run, "--resume"])
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert all(0 <= r["val_map"] <= 1 and r["triplets"] == 32 for r in records)
    assert load_checkpoint(run / "last.pt")["epoch"] == 2

    # stage 2 from stage 1
    run2 = tmp_path / "run2"
    _ok(
        [
            "train",
            "--data",
            data,
            *SMALL,
            "--stage",
            2,
            "--init",
            run / "best.pt",
            "--epochs",
            1,
            "--out",
            run2,
        ]
    )
    ckpt2 = load_checkpoint(run2 / "best.pt")
    assert ckpt2["stage"] == 2
    torch.testing.assert_close(  # the global branch started from stage 1 and moved only a little
        ckpt2["model"]["attr_embedding.weight"],
        first["model"]["attr_embedding.weight"],
        atol=0.05,
        rtol=0,
    )

    out = _ok(
        ["eval", run2 / "best.pt", "--data", data, "--json", tmp_path / "m.json", "--workers", 0]
    )
    figures = json.loads((tmp_path / "m.json").read_text())
    assert figures["backend"] == "torch" and figures["split"] == "test"
    assert set(figures["per_attribute"]) == {
        "collar_design",
        "sleeve_length",
        "garment_length",
        "pattern",
    }
    assert sum(figures["num_queries"].values()) == 4 * 4  # 20% of 20 images, every attribute
    weighted = sum(figures["per_attribute"][k] * n for k, n in figures["num_queries"].items())
    assert figures["overall_map"] == pytest.approx(weighted / 16)
    assert "overall" in out

    _ok(["embed", run2 / "best.pt", "--data", data, "--out", tmp_path / "e.npz", "--workers", 0])
    npz = np.load(tmp_path / "e.npz")
    assert npz["embeddings"].shape == (80, 256) and npz["embeddings"].dtype == np.float32
    assert npz["is_query"].sum() == 16 and len(npz["paths"]) == 80
    np.testing.assert_allclose(np.linalg.norm(npz["embeddings"], axis=1), 1, atol=1e-5)


def test_resume_continues_exactly(data, tmp_path) -> None:
    """A run interrupted and resumed ends with the weights of an uninterrupted one. The
    uninterrupted run's second epoch reads its images from the decoded-image cache, the
    resumed one (`--cache-mb 0`) decodes them again: the same pixels, the same weights."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    _ok(["train", "--data", data, *SMALL, "--epochs", 2, "--out", straight])
    _ok(["train", "--data", data, *SMALL, "--epochs", 1, "--out", split])
    resume = ["--resume", "--cache-mb", 0]
    _ok(["train", "--data", data, *SMALL, "--epochs", 2, "--out", split, *resume])
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(split / "last.pt")
    assert (a["config"]["data"]["cache_mb"], b["config"]["data"]["cache_mb"]) == (2048, 0)
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, msg=key)
    assert a["scheduler"] == b["scheduler"]


def test_time_budget_stops_mid_epoch_and_resumes(data, tmp_path) -> None:
    run = tmp_path / "budget"
    _ok(["train", "--data", data, *SMALL, "--epochs", 1, "--time-budget", 0, "--out", run])
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["epoch"] == 0 and ckpt["step"] == 1  # stopped after the first step
    record = json.loads((run / "metrics.jsonl").read_text())
    assert record["partial"] and record["steps"] == 1
    _ok(["train", "--data", data, *SMALL, "--epochs", 1, "--out", run, "--resume"])
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["epoch"] == 1 and ckpt["step"] == 0


def test_budget_spent_in_validation_starts_no_further_epoch(data, tmp_path, monkeypatch) -> None:
    """A budget that runs out while epoch 1 validates ends the run there: no one-step epoch 2."""
    spent = {"now": False}
    validate = train_module.validate

    def validate_then_spend(*args, **kwargs):
        result = validate(*args, **kwargs)
        spent["now"] = True
        return result

    monkeypatch.setattr(train_module, "validate", validate_then_spend)
    monkeypatch.setattr(StopRequest, "over_budget", lambda self: spent["now"])
    run = tmp_path / "budget"
    out = _ok(["train", "--data", data, *SMALL, "--epochs", 3, "--time-budget", 5, "--out", run])
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["partial"]) for r in records] == [(1, False)]
    assert load_checkpoint(run / "last.pt")["epoch"] == 1 and "time budget" in out


def test_second_dataset_other_seed_and_counts(tmp_path) -> None:
    root = tmp_path / "other"
    _ok(
        [
            "data",
            "synth",
            root,
            "--train",
            40,
            "--eval",
            10,
            "--seed",
            7,
            "--attributes",
            "3,6,2,7,4",
        ]
    )
    _ok(["train", "--data", root, *SMALL, "--epochs", 1, "--out", tmp_path / "r"])
    _ok(
        [
            "eval",
            tmp_path / "r" / "best.pt",
            "--data",
            root,
            "--json",
            tmp_path / "m.json",
            "--workers",
            0,
        ]
    )
    figures = json.loads((tmp_path / "m.json").read_text())
    assert len(figures["per_attribute"]) == 5

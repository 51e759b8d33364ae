"""Training's pieces, each alone: micro-batches, precision, the losses, one step, the run
folder (lock, temporaries, metrics in step with the checkpoint), resume rules, stops."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from asen import AsenError
from asen.cli import app
from asen.config import load_config
from asen.losses import step_losses
from asen.model.asen import ASENPP
from asen.training import faults
from asen.training.run_folder import LOCK_NAME, RunFolder
from asen.training.setup import check_config, param_groups, resolve_config
from asen.training.step import (
    CPU_MICRO_BATCH,
    MicroBatches,
    StepSetup,
    native_bf16_cpu,
    resolve_micro_batch,
    resolve_precision,
    stack_triplets,
    train_step,
)
from asen.training.stopping import StopRequest

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def cfg():
    return load_config(["small"], ["model.image_size=32", "model.local_size=24"])


def _triplets(cfg, n: int, attrs: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    s = cfg.model.source_size
    images = torch.randint(0, 256, (n, 3, 3, s, s), dtype=torch.uint8, generator=g)
    return images, torch.randint(0, attrs, (n,), generator=g)


# ------------------------------------------------------------------ micro-batches


@pytest.mark.parametrize("stage", [1, 2])
def test_micro_batches_are_per_chunk_passes_joined(cfg, stage: int) -> None:
    """In training mode BatchNorm normalises each micro-batch by its own statistics: the
    wrapper's output is exactly the passes over each chunk, concatenated."""
    torch.manual_seed(0)
    model = ASENPP(cfg.model, 3, stage).train()
    x, a = stack_triplets(*_triplets(cfg, 4))  # 12 images: anchors, positives, negatives
    out = MicroBatches(model, 4)(x, a)
    parts = [model.branches(x[i : i + 4], a[i : i + 4]) for i in (0, 4, 8)]
    torch.testing.assert_close(out.global_embedding, torch.cat([p.global_embedding for p in parts]))
    if stage == 2:
        torch.testing.assert_close(
            out.local_embedding, torch.cat([p.local_embedding for p in parts])
        )
        assert out.boxes.shape == (12, 4)
    whole = model.branches(x, a).global_embedding  # one pass: other BatchNorm statistics
    assert not torch.allclose(whole, out.global_embedding)


def test_micro_batches_match_one_pass_in_eval_mode(cfg) -> None:
    torch.manual_seed(0)
    model = ASENPP(cfg.model, 3, 2).eval()
    x, a = stack_triplets(*_triplets(cfg, 3))
    with torch.no_grad():
        split, whole = MicroBatches(model, 5)(x, a), MicroBatches(model, 0)(x, a)
    torch.testing.assert_close(split.global_embedding, whole.global_embedding)
    torch.testing.assert_close(split.local_embedding, whole.local_embedding)


def test_stack_triplets_groups_anchors_positives_negatives(cfg) -> None:
    images, attrs = _triplets(cfg, 2)
    x, a = stack_triplets(images, attrs)
    assert torch.equal(x[1], images[1, 0]) and torch.equal(x[2], images[0, 1])
    assert torch.equal(x[5], images[1, 2]) and a.tolist() == attrs.tolist() * 3


def test_device_defaults() -> None:
    assert resolve_micro_batch(0, CPU) == CPU_MICRO_BATCH
    assert resolve_micro_batch(0, torch.device("cuda")) == 0  # the whole step in one pass
    assert resolve_micro_batch(7, CPU) == 7
    assert resolve_precision("auto", CPU) == ("bf16" if native_bf16_cpu() else "fp32")
    assert resolve_precision("fp32", CPU) == "fp32" and resolve_precision("bf16", CPU) == "bf16"


# ------------------------------------------------------------------ losses and the step


def test_step_losses_by_stage() -> None:
    g = torch.nn.functional.normalize(torch.randn(12, 8), dim=1)
    stage1 = step_losses(g, None, margin=0.2, local_weight=0.1, align_weight=0.1)
    assert set(stage1) == {"loss", "loss_global"}
    assert stage1["loss"] == stage1["loss_global"]
    local = torch.randn(12, 8)
    stage2 = step_losses(g, local, margin=0.2, local_weight=0.5, align_weight=0.25)
    expected = stage2["loss_global"] + 0.5 * stage2["loss_local"] + 0.25 * stage2["loss_align"]
    torch.testing.assert_close(stage2["loss"], expected)
    same = step_losses(g, g, margin=0.2, local_weight=0.5, align_weight=0.25)
    torch.testing.assert_close(same["loss_align"], torch.tensor(0.0), atol=1e-6, rtol=0)


@pytest.mark.parametrize(("stage", "precision"), [(1, "fp32"), (2, "bf16")])
def test_one_step_moves_the_trained_parameters(cfg, stage: int, precision: str) -> None:
    torch.manual_seed(0)
    model = ASENPP(cfg.model, 3, stage).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(param_groups(model, cfg))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    setup = StepSetup(MicroBatches(model, 4), optimizer, cfg.train, CPU, precision)
    losses = train_step(setup, *_triplets(cfg, 4))
    assert set(losses) == (
        {"loss", "loss_global"}
        if stage == 1
        else {"loss", "loss_global", "loss_local", "loss_align"}
    )
    assert all(v == v and v >= 0 for v in losses.values())  # finite, not NaN
    after = model.state_dict()
    assert not torch.equal(after["attr_embedding.weight"], before["attr_embedding.weight"])
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast: fp32 weights


def test_one_epoch_counts_skips_and_stops_after_the_step(cfg) -> None:
    from asen.evaluate import EvalResult
    from asen.training.epoch import train_epoch
    from asen.training.records import make_record

    torch.manual_seed(0)
    model = ASENPP(cfg.model, 3, 1)
    setup = StepSetup(
        MicroBatches(model, 0), torch.optim.Adam(model.parameters()), cfg.train, CPU, "fp32"
    )
    images, attrs = _triplets(cfg, 4)
    ok = torch.tensor([True, False, True, True])  # one triplet's image could not be read
    loader = [(images, attrs, ok)] * 3
    seen = []
    tally = train_epoch(setup, loader, start_step=5, stop=StopRequest(), on_step=seen.append)
    assert (tally.step, tally.steps, tally.seen, tally.skipped) == (8, 3, 9, 3)
    assert [s["step"] for s in seen] == [6, 7, 8] and not tally.stopped
    budget = StopRequest(time_budget_min=0)  # over budget at once: one step, then stop
    tally = train_epoch(setup, loader, start_step=0, stop=budget)
    assert (tally.step, tally.steps, tally.stopped) == (1, 1, True)
    val = EvalResult(
        backend="torch", split="valid", overall_map=0.5, per_attribute={"a": 0.5}, num_queries={}
    )
    record = make_record(
        tally, epoch=1, partial=True, stage=1, lrs={"all": 1e-3}, val=val, elapsed_s=1
    )
    assert record["partial"] and record["steps"] == 1 and record["triplets"] == 3
    assert record["loss"] == tally.sums["loss"] and "loss_local" not in record


# ------------------------------------------------------------------ the run folder


def test_lock_refuses_a_second_holder_and_tidies_an_empty_folder(tmp_path) -> None:
    folder = RunFolder(tmp_path / "run")
    with folder.lock():
        assert (folder.path / LOCK_NAME).exists()
        with pytest.raises(AsenError, match="another asen train is running in this folder"):
            with RunFolder(folder.path).lock():
                pass
    assert not folder.path.exists()  # created by the lock and left empty: removed again
    folder.path.mkdir()
    (folder.path / LOCK_NAME).touch()  # a lock file nobody holds (its process died)
    with folder.lock():
        pass
    assert (folder.path / LOCK_NAME).exists()  # a folder it did not create stays


def test_lock_of_a_killed_process_does_not_block(tmp_path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    lock = str(run / LOCK_NAME)
    code = (
        f"import os, fcntl, signal; fd = os.open({lock!r}, os.O_RDWR | os.O_CREAT); "
        "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); signal.pause()"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(AsenError, match="another asen train"):
            with RunFolder(run).lock():
                pass
    finally:
        holder.kill()
        holder.wait()
    with RunFolder(run).lock():  # the kernel dropped the dead process's lock
        pass


def test_start_removes_temporaries_and_puts_metrics_in_step(tmp_path) -> None:
    folder = RunFolder(tmp_path)
    stale = tmp_path / ".asen-tmp-last.pt.abc123"
    stale.write_bytes(b"half a checkpoint")
    mine = tmp_path / "notes.txt"
    mine.write_text("not asen's")
    records = [{"epoch": 1, "val_map": 0.5}, {"epoch": 2, "val_map": 0.25}]
    # a killed run wrote one record more than its checkpoint holds, then a torn line
    folder.metrics.write_text(
        "".join(json.dumps(r) + "\n" for r in records) + json.dumps({"epoch": 3}) + '\n{"epo'
    )
    assert folder.start(records) == [stale]
    assert not stale.exists() and mine.read_text() == "not asen's"
    assert folder.read_metrics() == records
    assert folder.metrics.read_text().endswith("}\n")  # whole lines only
    folder.start([])  # a fresh run: the dead run's records are not continued
    assert folder.metrics.read_text() == ""


def test_check_refuses_overwrite_and_empty_resume(tmp_path) -> None:
    folder = RunFolder(tmp_path / "run")
    with pytest.raises(AsenError, match="nothing to resume"):
        folder.check(resume=True)
    folder.path.mkdir()
    folder.last.write_bytes(b"x")
    with pytest.raises(AsenError, match="pass --resume"):
        folder.check(resume=False)
    (tmp_path / "file").write_text("")
    with pytest.raises(AsenError, match="not a folder"):
        RunFolder(tmp_path / "file").check(resume=False)


# ------------------------------------------------------------------ set-up and resume rules


def test_resume_keeps_the_runs_settings_and_names_changes(cfg, tmp_path) -> None:
    saved = {"config": cfg.to_dict()}
    source = tmp_path / "last.pt"
    changes = {
        "train.epochs": 9,
        "data.workers": 1,
        "data.skip_bad_images": True,
        "data.cache_mb": 0,
    }
    run = resolve_config(None, saved=saved, changes=changes, source=source)
    assert (run.train.epochs, run.data.workers, run.data.skip_bad_images) == (9, 1, True)
    assert run.data.cache_mb == 0
    assert run.model == cfg.model
    same = load_config(["small"], ["model.image_size=32", "model.local_size=24"])
    assert resolve_config(same, saved=saved, changes={}, source=source).model == cfg.model
    other = load_config(["small"], ["model.image_size=32", "model.local_size=24", "train.lr=0.5"])
    with pytest.raises(AsenError, match=r"train\.lr \(0\.001 in the run, 0\.5 given\)"):
        resolve_config(other, saved=saved, changes={}, source=source)


def test_resume_refuses_init(cfg, tmp_path) -> None:
    from asen.train import train

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "last.pt").write_bytes(b"not read")
    with pytest.raises(AsenError, match="--init starts a new run"):
        train(
            None,
            data_root=tmp_path,
            stage=1,
            run_dir=tmp_path / "run",
            init=tmp_path / "s1.pt",
            resume=True,
        )


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("train.epochs", 0, r"train\.epochs must be at least 1, got 0"),
        ("train.precision", "fp16", "train.precision must be one of auto, fp32, bf16, got 'fp16'"),
        ("train.micro_batch", -1, r"train\.micro_batch must be at least 0, got -1"),
        ("data.workers", -2, r"data\.workers must be at least 0, got -2"),
        ("data.cache_mb", -1, r"data\.cache_mb must be at least 0, got -1"),
        ("train.lr_gamma", 1.5, r"train\.lr_gamma must be at most 1\.0, got 1\.5"),
    ],
)
def test_declared_bounds_checked_in_files_and_in_code(key, value, message) -> None:
    with pytest.raises(AsenError, match=f"^--set {key}: {message}$"):
        load_config(["small"], [f"{key}={value}"])
    built = load_config(["small"])  # a Config changed in code, as --resume's changes are
    section, name = key.split(".")
    setattr(getattr(built, section), name, value)
    with pytest.raises(AsenError, match=f"^training config: {message}$"):
        check_config(built, 1)


def test_check_config_one_line_per_field(cfg) -> None:
    with pytest.raises(AsenError, match=r"divisible by the number of processes \(3\)"):
        check_config(cfg, 3)


# ------------------------------------------------------------------ stopping and the hook


def test_sigterm_asks_for_a_stop_once() -> None:
    sigint_before = signal.getsignal(signal.SIGINT)
    with StopRequest() as stop:
        assert not stop.should_stop()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.should_stop() and stop.interrupted() and stop.reason == "SIGTERM"
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # a second one acts at once
    with StopRequest(time_budget_min=0) as budget:
        assert budget.should_stop() and not budget.interrupted()
        assert budget.reason == "time budget"
    assert signal.getsignal(signal.SIGINT) is sigint_before  # restored, whatever it was


def test_fault_hook_spec() -> None:
    assert faults.parse("kill@last#2") == ("kill", "last", 2)
    assert faults.parse("stop@step") == ("stop", "step", 1)
    for bad in ("kill@nowhere", "explode@step", "kill@step#x"):
        with pytest.raises(ValueError, match="ACTION@POINT"):
            faults.parse(bad)


# ------------------------------------------------------------------ the command line


def test_cli_refuses_zero_epochs_and_unknown_precision(tmp_path) -> None:
    runner = CliRunner()
    args = ["train", "--data", str(tmp_path), "-c", "small", "--out", str(tmp_path / "r")]
    result = runner.invoke(app, [*args, "--epochs", "0"])
    assert result.exit_code == 1, result.output  # one line, as for --workers -1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: Invalid value for '--epochs'")
    assert "greater than or equal to 1" in lines[0]
    assert not (tmp_path / "r").exists()
    result = runner.invoke(app, [*args, "--precision", "fp16"])
    assert result.exit_code in (1, 2)  # a usage error, with the valid values
    assert "--precision" in result.output and "fp16" in result.output and "bf16" in result.output

"""Two-stage ASEN++ training: the reference's triplets, losses, parameter groups and
schedules, with exact resume, a time budget, clean stops on SIGTERM/SIGINT and per-epoch
validation. `train` is the recipe; its pieces live in `asen.training`."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asen import AsenError, distributed
from asen.config import Config
from asen.encoders import TorchEncoder, resolve_device
from asen.model.shape import ModelInfo
from asen.signals import STOP_SIGNALS, Stopped
from asen.training import setup as run_setup
from asen.training.checkpoints import save_run
from asen.training.epoch import Diverged, EpochTally, epoch_loader, train_epoch, validate
from asen.training.heap import keep_freed_memory
from asen.training.records import make_record
from asen.training.run_folder import RunFolder
from asen.training.setup import TrainingData, TrainState
from asen.training.step import MicroBatches, StepSetup, resolve_micro_batch, resolve_precision
from asen.training.stopping import StopRequest


@dataclass
class TrainCallbacks:
    """Hooks for progress display; every one is optional."""

    epoch_start: Callable[[int, int, int], None] | None = None  # epoch, first step, steps
    step: Callable[[dict], None] | None = None  # {"step", "loss", "triplets_per_s"}
    eval_start: Callable[[int], None] | None = None  # number of entries to encode
    eval_progress: Callable[[int], None] | None = None
    epoch_end: Callable[[dict], None] | None = None  # the metrics.jsonl record
    message: Callable[[str], None] | None = None


@dataclass
class TrainResult:
    run_dir: Path
    records: list[dict] = field(default_factory=list)
    best_val_map: float = -1.0
    stopped_by: str = ""  # "", "time budget", "SIGTERM" or "SIGINT"


def _plot_curves(folder: RunFolder, cb: TrainCallbacks) -> None:
    """Redraw curves.png beside metrics.jsonl; a plotting failure never stops training."""
    try:
        from asen.visualize import plot_training

        plot_training(folder.metrics)
    except Exception as e:  # noqa: BLE001 - any plotting error is reported, not raised
        if cb.message:
            cb.message(f"could not draw {folder.metrics.with_name('curves.png')}: {e}")


def _step_setup(state: TrainState) -> StepSetup:
    """The forward (micro-batched, under DDP when several processes train), optimizer,
    device and precision every step uses."""
    dev = next(state.model.parameters()).device
    if dev.type == "cpu":
        keep_freed_memory()
    t = state.cfg.train
    forward = MicroBatches(state.model, resolve_micro_batch(t.micro_batch, dev))
    if distributed.world_size() > 1:
        forward = distributed.data_parallel(forward)
    precision = resolve_precision(t.precision, dev)
    return StepSetup(forward, state.optimizer, t, dev, precision)


def _describe(setup: StepSetup, world: int) -> str:
    micro = setup.forward.module if world > 1 else setup.forward
    parts = [
        f"training on {setup.device.type}",
        "bf16 autocast" if setup.precision == "bf16" else "fp32",
        "channels_last",
        f"micro-batches of {micro.micro_batch} images" if micro.micro_batch else "one pass a step",
    ]
    if world > 1:
        rank_bs = setup.train.batch_size // world
        parts.append(f"{world} processes ({distributed.backend()}): {rank_bs} triplets a step each")
    return ", ".join(parts)


def _end_epoch(state: TrainState, tally: EpochTally) -> tuple[int, bool, dict[str, float]]:
    """Advance the position past `tally`; returns (the 1-based epoch, partial, its lrs)."""
    lrs = {g["name"]: g["lr"] for g in state.optimizer.param_groups}
    number = state.epoch + 1
    if tally.step < state.steps_per_epoch:
        state.step = tally.step
        return number, True, lrs
    state.scheduler.step()
    state.epoch, state.step = state.epoch + 1, 0
    return number, False, lrs


@contextmanager
def _stops_at_once() -> Iterator[None]:
    """For set-up, which writes nothing: a stop signal ends it where it is (SIGINT as
    KeyboardInterrupt, SIGTERM and SIGHUP as `Stopped`), not once set-up is over."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    owner = os.getpid()

    def stop(signum: int, frame) -> None:
        if os.getpid() == owner:  # not in a process forked meanwhile
            raise KeyboardInterrupt if signum == signal.SIGINT else Stopped(signum)

    previous = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _diverged(state: TrainState, folder: RunFolder, error: Diverged) -> AsenError:
    """One line for a run whose loss became NaN or infinite: where, what is kept, what to try."""
    kept = (
        f"this epoch is not saved: {folder.last} keeps epoch {state.records[-1]['epoch']}, "
        "the last finite state"
        if state.records
        else "nothing was saved"
    )
    return AsenError(
        f"training diverged: {error} of epoch {state.epoch + 1}; {kept}; "
        f"lower train.lr (now {state.cfg.train.lr:g}) or check the data"
    )


def _prepare(
    cfg: Config | None,
    *,
    folder: RunFolder,
    data_root: str | Path,
    stage: int,
    init: str | Path | None,
    device: str,
    resume: bool,
    changes: Mapping[str, Any],
) -> tuple[TrainState, TrainingData]:
    """Set-up and resume: config, checks, data, model/optimizer/scheduler."""
    folder.check(resume=resume)
    if resume and init is not None:
        raise AsenError(f"--init starts a new run; --resume continues {folder.last} (drop --init)")
    saved = run_setup.load_resume_state(folder, stage=stage) if resume else None
    cfg = run_setup.resolve_config(cfg, saved=saved, changes=changes, source=folder.last)
    run_setup.check_config(cfg, distributed.world_size())
    dev = resolve_device(device)
    data = run_setup.open_training_data(cfg, data_root)
    if saved is not None:
        run_setup.check_attributes(saved, data, folder.last)
    state = run_setup.build_state(
        cfg, stage=stage, attributes=data.attributes, device=dev, init=init, saved=saved
    )
    return state, data


def train(
    cfg: Config | None,
    *,
    data_root: str | Path,
    stage: int,
    run_dir: str | Path,
    init: str | Path | None = None,
    time_budget_min: float | None = None,
    device: str = "auto",
    resume: bool = False,
    changes: Mapping[str, Any] | None = None,
    callbacks: TrainCallbacks | None = None,
) -> TrainResult:
    """Train `stage` (1 or 2) on a split-format dataset; write checkpoints and metrics to
    `run_dir`. `changes` sets the settings that may differ on resume (train.epochs,
    data.workers, data.skip_bad_images); with `resume`, `cfg` may be None (the run's own).

    Under torchrun (inside `distributed.process_group()`), each of the W processes trains
    on batch_size / W of every step's triplets with DistributedDataParallel; rank 0 alone
    reports progress, holds the run folder's lock and writes files."""
    if stage not in (1, 2):
        raise AsenError(f"--stage must be 1 or 2, got {stage}")
    main = distributed.is_main()
    cb = (callbacks if main else None) or TrainCallbacks()
    folder = RunFolder(run_dir)
    with folder.lock() if main else nullcontext(), StopRequest(time_budget_min) as stop:
        with _stops_at_once():
            state, data = _prepare(
                cfg,
                folder=folder,
                data_root=data_root,
                stage=stage,
                init=init,
                device=device,
                resume=resume,
                changes=changes or {},
            )
        if main:
            folder.start(state.records)
        return _run(state, data, folder=folder, stop=stop, cb=cb)


def _run(
    state: TrainState,
    data: TrainingData,
    *,
    folder: RunFolder,
    stop: StopRequest,
    cb: TrainCallbacks,
) -> TrainResult:
    """The epochs: train, validate, record, save; until the last epoch or a stop."""
    cfg, main = state.cfg, distributed.is_main()
    setup = _step_setup(state)
    if cb.message:
        cb.message(_describe(setup, distributed.world_size()))
    info = ModelInfo.from_config(cfg.model, data.attributes, state.model.stage)
    encoder = TorchEncoder(state.model, info, setup.device, batch_size=cfg.train.eval_batch_size)
    result = TrainResult(folder.path, best_val_map=state.best_val_map)
    started = time.monotonic()
    stop.start_clock()
    while state.epoch < cfg.train.epochs:
        if stop.interrupted():  # a signal during validation or set-up
            result.stopped_by = stop.reason
            break
        if cb.epoch_start:
            cb.epoch_start(state.epoch, state.step, state.steps_per_epoch)
        loader = epoch_loader(cfg, data, epoch=state.epoch, start_step=state.step)
        state.model.train()
        try:
            tally = train_epoch(
                setup,
                loader,
                start_step=state.step,
                stop=stop,
                skip_bad=cfg.data.skip_bad_images,
                on_step=cb.step,
            )
        except Diverged as e:
            raise _diverged(state, folder, e) from None
        tally.reduce()
        number, partial, lrs = _end_epoch(state, tally)
        if cb.eval_start:
            cb.eval_start(data.val_pairs)
        val = validate(encoder, data, cfg, progress=cb.eval_progress)
        record = make_record(
            tally,
            epoch=number,
            partial=partial,
            stage=state.model.stage,
            lrs=lrs,
            val=val,
            elapsed_s=time.monotonic() - started,
        )
        improved = val.overall_map > state.best_val_map
        state.best_val_map = max(state.best_val_map, val.overall_map)
        state.records.append(record)
        if main:  # rank 0 writes; the other ranks hold the same model and figures
            save_run(folder, state, improved=improved)
            _plot_curves(folder, cb)
        result.records.append(record)
        result.best_val_map = state.best_val_map
        if cb.epoch_end:
            cb.epoch_end(record)
        # a stop asked during the epoch, or a budget spent by its validation: no next epoch
        if tally.stopped or (state.epoch < cfg.train.epochs and stop.should_stop()):
            result.stopped_by = stop.reason
            break
    return result

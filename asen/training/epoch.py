"""One epoch (its steps over the DataLoader, until the epoch ends or a stop is asked for)
and validation."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field

from asen import distributed
from asen.config import Config
from asen.data.datasets import TripletImages, batches, make_loader
from asen.encoders import TorchEncoder
from asen.evaluate import EvalResult, evaluate
from asen.training.setup import TrainingData
from asen.training.step import StepSetup, train_step
from asen.training.stopping import StopRequest


class Diverged(Exception):
    """The loss became NaN or infinite (on any rank) at `step` of the epoch: the weights
    are no longer worth saving."""

    def __init__(self, step: int):
        super().__init__(f"the loss is not finite at step {step}")
        self.step = step


@dataclass
class EpochTally:
    """What an epoch (or the part of it run now) did, summed over ranks by `reduce`."""

    start_step: int
    step: int  # the position reached: steps of this epoch done, the resumed ones included
    steps: int = 0  # optimizer steps run now
    seen: int = 0  # triplets trained on
    skipped: int = 0  # undecodable images skipped
    sums: dict[str, float] = field(default_factory=dict)  # loss sums over the steps
    data_wait_s: float = 0.0  # time spent waiting for the DataLoader
    seconds: float = 0.0
    stopped: bool = False

    def means(self) -> dict[str, float]:
        return {k: v / max(self.steps, 1) for k, v in self.sums.items()}

    def reduce(self) -> None:
        """Under torchrun: count every rank's triplets and average their losses."""
        world = distributed.world_size()
        if world == 1:
            return
        keys = sorted(self.sums)
        seen, skipped, *sums = distributed.all_sum(
            [self.seen, self.skipped, *(self.sums[k] for k in keys)]
        )
        self.seen, self.skipped = round(seen), round(skipped)
        self.sums = {k: v / world for k, v in zip(keys, sums, strict=True)}


def epoch_loader(cfg: Config, data: TrainingData, *, epoch: int, start_step: int):
    """This rank's share of the epoch's triplets from `start_step` on, decoded in workers."""
    world, rank = distributed.world_size(), distributed.rank()
    rank_bs = cfg.train.batch_size // world
    triplets = data.sampler.epoch(epoch, cfg.train.triplets_per_epoch // world, rank)
    images = TripletImages(
        data.images, triplets[start_step * rank_bs :], skip_bad=cfg.data.skip_bad_images
    )
    return make_loader(images, rank_bs, cfg.data.workers)


def _runs_step(n: int, skip_bad: bool) -> bool:
    """Whether to step on `n` triplets. DDP steps all ranks together, so under torchrun a
    batch left empty by skipped images on any rank is skipped by all."""
    if distributed.world_size() > 1 and skip_bad:
        return not distributed.any_rank(n == 0)
    return n > 0


def train_epoch(
    setup: StepSetup,
    loader,
    *,
    start_step: int,
    stop: StopRequest,
    skip_bad: bool = False,
    on_step: Callable[[dict], None] | None = None,
) -> EpochTally:
    """Run the loader's steps; stop after the step at which `stop` says so (every rank
    after the same step). A batch whose images were all skipped runs no step (on every
    rank under torchrun)."""
    tally = EpochTally(start_step=start_step, step=start_step)
    began = waited = time.monotonic()
    with closing(batches(loader)) as stream:  # a stop ends the workers before validation
        for images, attrs, ok in stream:
            tally.data_wait_s += time.monotonic() - waited
            tally.skipped += int((~ok).sum())
            images, attrs = images[ok], attrs[ok]
            tally.step += 1
            if _runs_step(len(attrs), skip_bad):
                for k, v in train_step(setup, images, attrs).items():
                    tally.sums[k] = tally.sums.get(k, 0.0) + v
                tally.steps += 1
                tally.seen += len(attrs)
            if distributed.any_rank(not math.isfinite(tally.sums.get("loss", 0.0))):
                raise Diverged(tally.step)
            if on_step:
                rate = tally.seen / max(time.monotonic() - began, 1e-9)
                loss = tally.sums.get("loss", 0.0) / max(tally.steps, 1)
                on_step({"step": tally.step, "loss": loss, "triplets_per_s": rate})
            waited = time.monotonic()
            if stop.should_stop():
                tally.stopped = True
                break
    tally.seconds = time.monotonic() - began
    return tally


def validate(
    encoder: TorchEncoder, data: TrainingData, cfg: Config, *, progress=None
) -> EvalResult:
    """Validation mAP in fp32 (no autocast); every rank validates a share of rank 0's model."""
    distributed.sync_buffers(encoder.model)
    return evaluate(
        encoder,
        data.dataset,
        "valid",
        batch_size=cfg.train.eval_batch_size,
        workers=cfg.data.workers,
        skip_bad=cfg.data.skip_bad_images,
        progress=progress,
    )

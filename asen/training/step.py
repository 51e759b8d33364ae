"""One training step: the network over micro-batches inside one forward, bf16 autocast
where the hardware has it, the losses, backward and the optimizer step."""

from __future__ import annotations

import functools
from contextlib import AbstractContextManager
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch import nn

from asen.config import TrainConfig
from asen.losses import step_losses
from asen.model.asen import ASENPP, BranchOutputs
from asen.training.faults import fault_point

CPU_MICRO_BATCH = 16  # images a pass on CPU: 3 passes of 16 beat one of 48 (cache-bound)


@functools.cache
def native_bf16_cpu() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX), not by emulation."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split())) and bool(
        torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto`: bf16 autocast on CUDA with bf16 and on CPUs with native BF16, else fp32."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if native_bf16_cpu() else "fp32"


def resolve_micro_batch(micro_batch: int, device: torch.device) -> int:
    """Images a forward pass; 0 (per device): CPU_MICRO_BATCH on CPU, all at once on CUDA
    (returned as 0: no split)."""
    if micro_batch:
        return micro_batch
    return CPU_MICRO_BATCH if device.type == "cpu" else 0


def autocast(precision: str, device: torch.device) -> AbstractContextManager:
    """The autocast context of the training forward (validation and export stay fp32)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def concat_outputs(parts: list[BranchOutputs]) -> BranchOutputs:
    """The micro-batches' outputs as one batch's."""
    joined = {}
    for f in fields(BranchOutputs):
        values = [getattr(p, f.name) for p in parts]
        joined[f.name] = None if values[0] is None else torch.cat(values)
    return BranchOutputs(**joined)


class MicroBatches(nn.Module):
    """`model.branches` as one forward that runs the network over `micro_batch` images at a
    time and concatenates the outputs, so that DistributedDataParallel sees one forward.
    BatchNorm statistics come from each micro-batch. 0 runs the batch in one pass."""

    def __init__(self, model: ASENPP, micro_batch: int = 0):
        super().__init__()
        self.model, self.micro_batch = model, micro_batch

    def forward(self, image: torch.Tensor, attribute: torch.Tensor) -> BranchOutputs:
        size = self.micro_batch
        if not size or len(image) <= size:
            return self.model.branches(image, attribute)
        parts = zip(image.split(size), attribute.split(size), strict=True)
        return concat_outputs([self.model.branches(x, a) for x, a in parts])


@dataclass
class StepSetup:
    """What every step of a run uses."""

    forward: nn.Module  # MicroBatches, or DistributedDataParallel around it
    optimizer: torch.optim.Optimizer
    train: TrainConfig
    device: torch.device
    precision: str  # fp32 or bf16 (resolved)


def stack_triplets(images: torch.Tensor, attrs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, 3, 3, S, S] triplets -> [3n, 3, S, S] (anchors, positives, negatives) and [3n]."""
    n = len(attrs)
    return images.transpose(0, 1).reshape(3 * n, *images.shape[2:]), attrs.repeat(3)


def train_step(setup: StepSetup, images: torch.Tensor, attrs: torch.Tensor) -> dict[str, float]:
    """One optimizer step on n triplets (uint8 [n, 3, 3, S, S], attributes [n]); returns
    the losses as floats."""
    x, a = stack_triplets(images, attrs)
    x, a = x.to(setup.device, non_blocking=True), a.to(setup.device, non_blocking=True)
    with autocast(setup.precision, setup.device):
        out = setup.forward(x, a)
    t = setup.train
    losses = step_losses(
        out.global_embedding,
        out.local_embedding,
        margin=t.margin,
        local_weight=t.local_weight,
        align_weight=t.align_weight,
    )
    setup.optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()
    fault_point("step")
    setup.optimizer.step()
    return {k: v.item() for k, v in losses.items()}

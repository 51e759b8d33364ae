"""Several processes under torchrun: the process group from torchrun's environment, this
process's rank, and the few collectives training and evaluation need.

Outside torchrun (no WORLD_SIZE > 1) every function is the single-process identity."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from asen import AsenError
from asen.encoders import resolve_device

DEFAULT_TIMEOUT_S = 600.0


def launched() -> bool:
    """Whether torchrun started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def world_size() -> int:
    if dist.is_initialized():
        return dist.get_world_size()
    if launched():
        raise AsenError(
            "started by torchrun but not in its process group: "
            "run inside asen.distributed.process_group()"
        )
    return 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    """Rank 0 logs, prints and writes files."""
    return rank() == 0


def backend() -> str:
    """The process group's backend: nccl or gloo (single process: none)."""
    return dist.get_backend() if dist.is_initialized() else "none"


def _comm_error(e: BaseException) -> bool:
    """A failed or timed-out collective (gloo raises plain RuntimeErrors)."""
    text = str(e)
    return isinstance(e, dist.DistError) or (
        isinstance(e, RuntimeError) and any(s in text for s in ("gloo", "NCCL", "c10d"))
    )


@contextmanager
def process_group(device: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[None]:
    """Under torchrun: join the process group (NCCL with this process on GPU LOCAL_RANK when
    `device` resolves to CUDA, else gloo), each collective failing after `timeout_s`; leave
    it on exit. A collective that fails (a rank died or hangs) becomes one AsenError."""
    if not launched() or dist.is_initialized():
        yield
        return
    if timeout_s <= 0:
        raise AsenError(f"--dist-timeout {timeout_s:g}: must be a positive number of seconds")
    dev = resolve_device(device)
    if dev.index is not None:
        raise AsenError(
            f"--device {device}: under torchrun each process uses GPU LOCAL_RANK; "
            "pass --device cuda or auto"
        )
    if dev.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise AsenError(
                f"LOCAL_RANK {local}: only {torch.cuda.device_count()} GPUs are visible; "
                "start at most that many processes a node (--nproc-per-node)"
            )
        torch.cuda.set_device(local)
    try:
        dist.init_process_group(
            "nccl" if dev.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout_s)
        )
        yield
    except Exception as e:
        if not _comm_error(e):
            raise
        lines = str(e).strip().splitlines() or [type(e).__name__]
        reason = re.sub(r"^\[[^\]]*\]\s*", "", lines[0])  # drop gloo's [source:line] prefix
        who = f"rank {rank()} of {os.environ['WORLD_SIZE']}"
        raise AsenError(
            f"{who}: lost contact with the other processes ({reason}); another rank died or "
            f"did not respond within the timeout ({timeout_s:g} s): see its log"
        ) from None
    dist.destroy_process_group()


def _run(collective: Callable[[], dist.Work], *tensors: torch.Tensor) -> None:
    """Run an async collective on `tensors` and wait until gloo's worker thread has let go of
    them too: freeing them on that thread takes the GIL, which aborts a process that is
    exiting by then ("terminate called without an active exception")."""
    counts = [t._use_count() for t in tensors]
    collective().wait()
    deadline = time.monotonic() + 10
    while (
        backend() == "gloo"
        and any(t._use_count() > c for t, c in zip(tensors, counts, strict=True))
        and time.monotonic() < deadline
    ):
        time.sleep(0.0005)  # lets the worker take the GIL


def _comm_device() -> torch.device:
    """NCCL communicates GPU tensors, gloo CPU tensors."""
    if backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is true on any: one decision all ranks follow."""
    if world_size() == 1:
        return flag
    t = torch.tensor([int(flag)], device=_comm_device())
    _run(lambda: dist.all_reduce(t, op=dist.ReduceOp.MAX, async_op=True), t)
    return bool(t.item())


def all_sum(values: list[float]) -> list[float]:
    """Element-wise sums over ranks."""
    t = torch.tensor(values, dtype=torch.float64, device=_comm_device())
    _run(lambda: dist.all_reduce(t, async_op=True), t)
    return t.tolist()


def shard(n: int) -> slice:
    """This rank's contiguous share of `n` items (ranks in order cover 0..n)."""
    r, w = rank(), world_size()
    return slice(n * r // w, n * (r + 1) // w)


def all_gather_array(a: np.ndarray) -> np.ndarray:
    """Every rank's rows of `a` concatenated in rank order, on every rank."""
    if world_size() == 1:
        return a
    if a.dtype == np.bool_:
        return all_gather_array(a.view(np.uint8)).view(np.bool_)
    dev = _comm_device()
    size = torch.tensor([len(a)], device=dev)
    sizes = [torch.zeros_like(size) for _ in range(world_size())]
    _run(lambda: dist.all_gather(sizes, size, async_op=True), size, *sizes)
    counts = [int(s.item()) for s in sizes]
    padded = torch.zeros((max(counts), *a.shape[1:]), dtype=torch.from_numpy(a).dtype, device=dev)
    padded[: len(a)] = torch.from_numpy(np.ascontiguousarray(a)).to(dev)
    parts = [torch.empty_like(padded) for _ in counts]
    _run(lambda: dist.all_gather(parts, padded, async_op=True), padded, *parts)
    return np.concatenate([p[:c].cpu().numpy() for p, c in zip(parts, counts, strict=True)])


def sync_buffers(module: nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm statistics drift apart with local batches)."""
    if world_size() > 1:
        for b in module.buffers():
            _run(lambda b=b: dist.broadcast(b, 0, async_op=True), b)


def data_parallel(module: nn.Module) -> nn.Module:
    """`module` under DistributedDataParallel on this process's device (gradients averaged)."""
    cuda = next(module.parameters()).is_cuda
    return DistributedDataParallel(
        module, device_ids=[torch.cuda.current_device()] if cuda else None
    )

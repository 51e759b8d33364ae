"""How Triton runs the exported encoder models (`asen export` deployment options): instance
count and kind, ONNX Runtime threads, dynamic batching, the queue policy (bound, timeout,
reject or delay) and warmup. Given as options or as a YAML file
(`asen export --config FILE`, the same names with `_`); options given on the command line
win over the file. Written into each encoder model's `config.pbtxt` by `export.repository`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asen import AsenError
from asen.config import read_yaml_mapping

KINDS = ("cpu", "gpu")
TIMEOUT_ACTIONS = ("reject", "delay")
DEFAULT_PREFERRED = (8, 16, 32)  # kept where at most the max batch
DEFAULT_DELAY_US = 2000


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def parse_batches(value: Any, where: str) -> tuple[int, ...]:
    """`8,16,32` or a YAML list of positive integers."""
    items = value.split(",") if isinstance(value, str) else value
    try:
        sizes = tuple(int(v) for v in (items if isinstance(items, list | tuple) else [items]))
    except (TypeError, ValueError):
        sizes = ()
    if not sizes or any(s < 1 for s in sizes) or isinstance(value, bool):
        raise AsenError(f"{where} {value!r}: expected positive batch sizes, e.g. 8,16,32")
    return tuple(sorted(set(sizes)))


@dataclass(frozen=True)
class DeploymentOptions:
    """None: the default of each backend (ONNX models on CPU, TensorRT plans on the GPU,
    ONNX Runtime's own thread count, preferred batches 8/16/32 up to the max batch)."""

    instances: int = 1
    instance_kind: str | None = None  # cpu | gpu
    threads: int | None = None  # ONNX Runtime intra_op_thread_count
    dynamic_batching: bool = True
    preferred_batch: tuple[int, ...] | None = None
    max_queue_delay_us: int = DEFAULT_DELAY_US
    max_queue_size: int | None = None  # requests waiting per model; the excess is refused
    queue_timeout_us: int | None = None  # longest wait in the queue
    queue_timeout_action: str = "reject"  # reject | delay (run it after the others)
    warmup: bool = True  # model_warmup on a real image, before the model reports ready

    @classmethod
    def load(cls, config: Path | None = None, **given: Any) -> DeploymentOptions:
        """The options of YAML file `config` (if any), then those of `given` that are not
        None (the command line), checked."""
        values = cls._read_yaml(config) if config is not None else {}
        source = {k: f"{config}: {k}" for k in values}
        values |= {k: v for k, v in given.items() if v is not None}
        source |= {k: _flag(k) for k, v in given.items() if v is not None}
        options = cls()
        for key, value in values.items():
            options = dataclasses.replace(options, **{key: _coerce(key, value, source[key])})
        return options

    @staticmethod
    def _read_yaml(path: Path) -> dict[str, Any]:
        data = read_yaml_mapping(path)
        known = [f.name for f in dataclasses.fields(DeploymentOptions)]
        for key in data:
            if key not in known:
                raise AsenError(f"{path}: unknown key '{key}' (known: {', '.join(known)})")
        return data

    def check(self, *, trt: bool, max_batch: int) -> None:
        """What the exported models cannot honour, as one line."""
        if self.instance_kind == "cpu" and trt:
            raise AsenError("--instance-kind cpu: TensorRT plans (--trt) run on the GPU only")
        if self.threads is not None and trt:
            raise AsenError(
                "--threads sets ONNX Runtime's threads; the TensorRT models of --trt cannot "
                "honour it (export without --trt to set it)"
            )
        if not self.dynamic_batching and self.preferred_batch is not None:
            raise AsenError("--preferred-batch needs dynamic batching (drop --no-dynamic-batching)")
        if not self.dynamic_batching and self.queue_policy:
            raise AsenError(
                "--max-queue-size and --queue-timeout-us set the dynamic batcher's queue "
                "(drop --no-dynamic-batching)"
            )
        too_big = [b for b in self.preferred_batch or () if b > max_batch]
        if too_big:
            raise AsenError(f"--preferred-batch {too_big[0]}: larger than --max-batch {max_batch}")

    @property
    def queue_policy(self) -> bool:
        """Whether a queue bound or timeout is set."""
        return self.max_queue_size is not None or self.queue_timeout_us is not None

    def preferred(self, max_batch: int) -> list[int]:
        """The preferred batch sizes for a model of `max_batch`."""
        if self.preferred_batch is not None:
            return list(self.preferred_batch)
        return [b for b in DEFAULT_PREFERRED if b <= max_batch]


def _coerce(key: str, value: Any, flag: str) -> Any:
    """One option's value, checked; `flag` names the option, or the file and key."""
    if key == "preferred_batch":
        return parse_batches(value, flag)
    if key == "instance_kind":
        if value not in KINDS:
            raise AsenError(f"{flag} {value!r}: expected cpu or gpu")
        return value
    if key == "queue_timeout_action":
        if value not in TIMEOUT_ACTIONS:
            raise AsenError(f"{flag} {value!r}: expected reject or delay")
        return value
    if key in ("dynamic_batching", "warmup"):
        if not isinstance(value, bool):
            raise AsenError(f"{flag} {value!r}: expected true or false")
        return value
    low = {
        "instances": 1,
        "threads": 1,
        "max_queue_delay_us": 0,
        "max_queue_size": 1,
        "queue_timeout_us": 1,
    }[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise AsenError(f"{flag} {value!r}: expected an integer of at least {low}")
    return value

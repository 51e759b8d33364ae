"""System shared memory for requests to a Triton server on the same host.

Each thread that sends requests gets its own input and output regions (created with
`tritonclient.utils.shared_memory`, registered with the server), grown when a larger batch
comes; the request then carries region names and offsets instead of the tensor bytes.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable

import numpy as np
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException, serialize_byte_tensor

from asen import AsenError

SHARED_MEMORY = ("none", "system")
_ids = itertools.count()


def check_shared_memory(kind: str) -> str:
    if kind not in SHARED_MEMORY:
        raise AsenError(f"--shared-memory {kind}: expected none or system")
    return kind


def _raw(array: np.ndarray) -> bytes:
    if array.dtype == object:
        return serialize_byte_tensor(array).tobytes()
    return np.ascontiguousarray(array).tobytes()


class _Region:
    """One registered region of `size` bytes."""

    def __init__(self, client, size: int):
        self.name = f"asen_{os.getpid()}_{next(_ids)}"
        self.size = size
        self.handle = shm.create_shared_memory_region(self.name, "/" + self.name, size)
        try:
            client.register_system_shared_memory(self.name, "/" + self.name, size)
        except InferenceServerException as e:
            shm.destroy_shared_memory_region(self.handle)
            raise AsenError(
                f"--shared-memory system: the server cannot map it (is it on this host?): "
                f"{(e.message() or str(e)).splitlines()[0]}"
            ) from None

    def release(self, client) -> None:
        """Unregister (with `client`, one usable from the calling thread) and destroy."""
        try:
            client.unregister_system_shared_memory(self.name)
        except InferenceServerException:
            pass  # the server is gone: nothing to unregister
        finally:
            shm.destroy_shared_memory_region(self.handle)


class SystemShm:
    """Per-thread input/output regions on one client; `close()` releases them all."""

    def __init__(self, client_for_thread: Callable[[], object]):
        self._client = client_for_thread
        self._local = threading.local()
        self._regions: list[_Region] = []
        self._lock = threading.Lock()

    def _region(self, slot: str, size: int) -> _Region:
        region = getattr(self._local, slot, None)
        if region is None or region.size < size:
            new = _Region(self._client(), max(size, 2 * region.size if region else size))
            with self._lock:
                if region is not None:
                    self._regions.remove(region)
                    region.release(self._client())
                self._regions.append(new)
            setattr(self._local, slot, new)
            region = new
        return region

    def attach(self, module, feeds: dict[str, np.ndarray], output: str, output_bytes: int):
        """(inputs, requested outputs, read) for one request: the feeds copied into this
        thread's input region; `read(result)` copies the output out of its region."""
        raws = {name: _raw(array) for name, array in feeds.items()}
        region = self._region("inputs", sum(len(r) for r in raws.values()))
        inputs, offset = [], 0
        for name, array in feeds.items():
            dtype = "BYTES" if array.dtype == object else str(array.dtype).upper()
            tensor = module.InferInput(name, list(array.shape), dtype)
            shm.set_shared_memory_region(
                region.handle, [np.frombuffer(raws[name], np.uint8)], offset
            )
            tensor.set_shared_memory(region.name, len(raws[name]), offset)
            inputs.append(tensor)
            offset += len(raws[name])
        out_region = self._region("output", output_bytes)
        requested = module.InferRequestedOutput(output)
        requested.set_shared_memory(out_region.name, output_bytes)

        def read(result) -> np.ndarray:
            meta = result.get_output(output)
            shape = [int(d) for d in (meta["shape"] if isinstance(meta, dict) else meta.shape)]
            array = shm.get_contents_as_numpy(out_region.handle, np.float32, shape)
            return np.array(array, copy=True)

        return inputs, [requested], read

    def close(self) -> None:
        with self._lock:
            for region in self._regions:
                region.release(self._client())
            self._regions.clear()
        self._local = threading.local()

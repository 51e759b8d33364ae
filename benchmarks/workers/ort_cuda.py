"""ONNX Runtime's CUDA execution provider in a process of its own, for benchmarks.gpu_check.

It runs under the Python of a separate virtual environment holding `onnxruntime-gpu` and
the nvidia-* CUDA 12 wheels it pulls: asen's own environment has the CPU `onnxruntime` and
a CUDA 13 PyTorch, and the two ONNX Runtime wheels install the same module. So this file
imports only numpy and onnxruntime, and talks through its standard streams:

- it starts by writing one JSON line: {"providers": [...], "onnxruntime": version};
- then, per request, it reads one JSON line and answers:
  {"op": "encode"} + two .npy arrays (images, attributes) -> one .npy array (embeddings);
  {"op": "time", "rounds": N} + the two arrays -> one JSON line {"seconds": [...]}.

    <venv>/bin/python benchmarks/workers/ort_cuda.py MODEL.onnx
"""

from __future__ import annotations

import io
import json
import sys
import time

import numpy as np
import onnxruntime as ort


def _session(path: str) -> ort.InferenceSession:
    """The graph on CUDA only: a session that falls back to the CPU is an error here."""
    if hasattr(ort, "preload_dlls"):  # CUDA and cuDNN from the nvidia-* wheels
        ort.preload_dlls()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    found = ort.InferenceSession(path, opts, providers=["CUDAExecutionProvider"])
    if found.get_providers()[0] != "CUDAExecutionProvider":
        raise SystemExit(f"CUDA execution provider not active (providers {found.get_providers()})")
    return found


def write_array(stream, array: np.ndarray) -> None:
    """One array as its byte count and its .npy bytes (numpy's own writer needs a file
    position, which a pipe has not)."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    stream.write(len(buffer.getbuffer()).to_bytes(8, "little") + buffer.getvalue())


def read_array(stream) -> np.ndarray:
    """The array `write_array` sent."""
    size = int.from_bytes(stream.read(8), "little")
    return np.load(io.BytesIO(stream.read(size)))


def _line(stream, value: dict) -> None:
    stream.write(json.dumps(value).encode() + b"\n")
    stream.flush()


def main() -> None:
    reader, writer = sys.stdin.buffer, sys.stdout.buffer
    session = _session(sys.argv[1])
    _line(writer, {"providers": session.get_providers(), "onnxruntime": ort.__version__})
    while header := reader.readline():
        request = json.loads(header)
        images = read_array(reader)
        attributes = read_array(reader)
        feeds = {"image": images, "attribute": attributes}
        if request["op"] == "encode":
            write_array(writer, session.run(["embedding"], feeds)[0])
            writer.flush()
            continue
        session.run(["embedding"], feeds)  # warm-up
        seconds = []
        for _ in range(int(request["rounds"])):
            start = time.perf_counter()
            session.run(["embedding"], feeds)
            seconds.append(time.perf_counter() - start)
        _line(writer, {"seconds": seconds})


if __name__ == "__main__":
    main()

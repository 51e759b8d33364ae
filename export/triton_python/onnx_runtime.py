"""Triton Python-backend model that serves `<name>_onnx/1/model.onnx` with ONNX Runtime, for
servers without the ONNX Runtime backend (`configs/python.pbtxt` selects it). Same inputs and
outputs as the native config; the requests of a dynamic batch run as one ONNX Runtime call,
and a request with an out-of-range attribute fails alone. The optional parameter
`intra_op_thread_count` (the ONNX Runtime backend's own key; 0 or absent: one thread per
core) sets ONNX Runtime's threads per instance. A GPU instance (`asen export --instance-kind
gpu`) runs on its GPU with ONNX Runtime's CUDA execution provider; without it (the
`onnxruntime` wheel, not `onnxruntime-gpu`) the model fails to load, saying so."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

ATTRIBUTE = "attribute"  # the graph's attribute-id input (docs/architecture.md, "Exported graph")


def _providers(args: dict) -> list:
    """CPU, or CUDA on the instance's GPU for a GPU instance."""
    if args.get("model_instance_kind") != "GPU":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise RuntimeError(
            "a GPU instance needs ONNX Runtime's CUDA execution provider (onnxruntime-gpu); "
            "re-export with --instance-kind cpu"
        )
    return [("CUDAExecutionProvider", {"device_id": int(args["model_instance_device_id"])})]


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config["parameters"].items()}
        self.names = params["attribute_names"].split(",")
        self.inputs = [t["name"] for t in config["input"]]
        self.outputs = [t["name"] for t in config["output"]]
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        opts.intra_op_num_threads = int(params.get("intra_op_thread_count", "0"))
        self.session = ort.InferenceSession(str(path), opts, providers=_providers(args))

    def _check(self, feeds: dict[str, np.ndarray]) -> str | None:
        if ATTRIBUTE not in feeds:  # the all-attributes graph takes images only
            return None
        ids = feeds[ATTRIBUTE].reshape(-1)
        bad = ids[(ids < 0) | (ids >= len(self.names))]
        if len(bad):
            n = len(self.names)
            return f"attribute id {int(bad[0])} out of range (0..{n - 1}: {', '.join(self.names)})"
        return None

    def execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        good, feeds = [], []
        for i, request in enumerate(requests):
            feed = {
                n: pb_utils.get_input_tensor_by_name(request, n).as_numpy() for n in self.inputs
            }
            problem = self._check(feed)
            if problem:
                error = pb_utils.TritonError(problem, pb_utils.TritonError.INVALID_ARG)
                responses[i] = pb_utils.InferenceResponse(error=error)  # the caller's mistake
            else:
                good.append(i)
                feeds.append(feed)
        if good:
            sizes = [len(f[self.inputs[0]]) for f in feeds]
            batch = {n: np.concatenate([f[n] for f in feeds]) for n in self.inputs}
            try:
                results = self.session.run(self.outputs, batch)
            except Exception as e:  # noqa: BLE001 - the error goes back to each caller
                error = pb_utils.TritonError(f"ONNX Runtime: {e}".splitlines()[0])
                for i in good:
                    responses[i] = pb_utils.InferenceResponse(error=error)
                return responses
            bounds = np.cumsum(sizes)[:-1]
            parts = [np.split(r, bounds) for r in results]
            for k, i in enumerate(good):
                tensors = [
                    pb_utils.Tensor(n, p[k]) for n, p in zip(self.outputs, parts, strict=True)
                ]
                responses[i] = pb_utils.InferenceResponse(tensors)
        return responses

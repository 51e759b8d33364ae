"""Triton Python-backend model `<name>_preprocess` (copied to `<name>_preprocess/1/model.py`
by `asen export`): encoded image bytes [B,1] -> uint8 [B,3,S,S] with the one preprocessing
function, `asen.data.images.load_image`. An undecodable image fails its own request only."""

from __future__ import annotations

import json
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

try:
    from asen.data.images import BadImageError, load_image
except ImportError as e:
    raise ImportError(
        f"{e}: the Python backend's interpreter ({sys.executable}) cannot import asen; "
        "install asen into it or start the server with `asen serve`"
    ) from e


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        self.size = int(config["parameters"]["source_size"]["string_value"])
        self.input, self.output = config["input"][0]["name"], config["output"][0]["name"]

    def execute(self, requests: list) -> list:
        return [self._decode(request) for request in requests]

    def _decode(self, request):
        blobs = pb_utils.get_input_tensor_by_name(request, self.input).as_numpy().reshape(-1)
        images = []
        for i, blob in enumerate(blobs):
            try:
                images.append(load_image(bytes(blob), self.size))
            except BadImageError as e:  # the reason only: load_image names no stream or path
                reason = str(e).removeprefix("<bytes>: ")
                return pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(  # the caller's mistake, not a server fault
                        f"{self.input}[{i}]: {reason}", pb_utils.TritonError.INVALID_ARG
                    )
                )
        return pb_utils.InferenceResponse([pb_utils.Tensor(self.output, np.stack(images))])

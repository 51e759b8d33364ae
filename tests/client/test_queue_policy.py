"""The queue policy export writes, in the real tritonserver: with a queue of 4 and 32 clients
at once, the requests that find the queue full (or wait past the timeout) are refused with
UNAVAILABLE within the timeout, the others are answered, and the server keeps serving."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from asen.client.server import free_ports, start_server
from asen.export.build import export_model
from asen.export.deployment import DeploymentOptions
from asen.export.repository import read_config
from tritonclient.utils import InferenceServerException

QUEUE = 4
CONCURRENCY = 32
TIMEOUT_US = 500_000
GRACE_S = 1.0  # the shared CI machine's scheduling, on top of the timeout


@pytest.fixture(scope="module")
def bounded(checkpoint, max_batch, tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("queue") / "models"
    deployment = DeploymentOptions(
        max_queue_size=QUEUE, queue_timeout_us=TIMEOUT_US, queue_timeout_action="reject"
    )
    export_model(checkpoint, repo, max_batch=max_batch, deployment=deployment)
    return repo


def test_the_config_carries_the_policy(bounded: Path) -> None:
    for path in (bounded / "asen_onnx" / "config.pbtxt", bounded / "asen_preprocess/config.pbtxt"):
        policy = read_config(path).dynamic_batching.default_queue_policy
        assert policy.max_queue_size == QUEUE and policy.default_timeout_microseconds == TIMEOUT_US
        assert policy.timeout_action == policy.REJECT


def _inputs(size: int) -> list[grpcclient.InferInput]:
    image = grpcclient.InferInput("image", [1, 3, size, size], "UINT8")
    image.set_data_from_numpy(np.full((1, 3, size, size), 7, np.uint8))
    attribute = grpcclient.InferInput("attribute", [1, 1], "INT64")
    attribute.set_data_from_numpy(np.zeros((1, 1), np.int64))
    return [image, attribute]


def _burst(url: str, size: int) -> list[tuple[float, str | None, str]]:
    """CONCURRENCY requests released at once: (seconds, status or None, message) each."""
    gate = threading.Barrier(CONCURRENCY)
    results = []
    clients = [grpcclient.InferenceServerClient(url) for _ in range(CONCURRENCY)]

    def one(client) -> None:
        inputs = _inputs(size)
        gate.wait()
        start = time.perf_counter()
        try:
            client.infer("asen_onnx", inputs, client_timeout=60)
            results.append((time.perf_counter() - start, None, ""))
        except InferenceServerException as e:
            results.append((time.perf_counter() - start, e.status(), e.message()))

    threads = [threading.Thread(target=one, args=(c,)) for c in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for client in clients:
        client.close()
    return results


def test_the_excess_is_refused_quickly_and_the_server_keeps_serving(bounded, tmp_path) -> None:
    size = int(read_config(bounded / "asen_onnx" / "config.pbtxt").input[0].dims[-1])
    with start_server(bounded, log_file=tmp_path / "t.log", **free_ports()) as server:
        results = _burst(server.grpc_url, size)
        refused = [r for r in results if r[1] is not None]
        answered = [r for r in results if r[1] is None]
        assert len(results) == CONCURRENCY
        assert answered and refused, results
        assert {status for _, status, _ in refused} == {"StatusCode.UNAVAILABLE"}, refused
        assert all(
            "maximum queue size" in msg or "timeout" in msg.lower() for _, _, msg in refused
        ), refused
        slowest = max(seconds for seconds, _, _ in refused)
        assert slowest <= TIMEOUT_US / 1e6 + GRACE_S, refused
        client = grpcclient.InferenceServerClient(server.grpc_url)
        client.infer("asen_onnx", _inputs(size))  # still serving
        client.close()
        assert server.alive()
    print(
        f"{len(answered)} answered, {len(refused)} refused (UNAVAILABLE), slowest refusal "
        f"{slowest * 1000:.0f} ms"
    )

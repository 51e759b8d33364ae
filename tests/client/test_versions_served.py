"""Deployment variants and model versions in the real tritonserver (the one bundled in
nvidia-pytriton: the Python-backend variants load; the native configs are parsed back in
tests/export/test_deployment.py): `asen serve` prints the versions it serves, a client asks
for one, and mistakes are one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from asen.client.server import free_port, has_gpu
from asen.client.triton import TritonEncoder
from asen.export.build import export_model
from asen.export.deployment import DeploymentOptions
from asen.export.encoders import OnnxEncoder
from asen.export.repository import write_repository
from asen.export.versions import VersionRequest
from typer.testing import CliRunner

from asen import AsenError
from asen.checkpoint import atomic_save, make_checkpoint
from asen.cli import app
from asen.config import load_config
from asen.model.asen import ASENPP
from tests.client.conftest import ATTRIBUTES
from tests.client.serve_process import serve_process

runner = CliRunner()
DEPLOY = DeploymentOptions(instances=2, threads=1, preferred_batch=(2, 4), max_queue_delay_us=500)


@pytest.fixture(scope="module")
def versioned(checkpoint, tmp_path_factory, max_batch):
    """`asen` at versions 1 and 2 (two checkpoints, two instances of one thread, preferred
    batches 2 and 4) and `flat` without dynamic batching, in one repository."""
    root = tmp_path_factory.mktemp("versions")
    torch.manual_seed(1)
    cfg = load_config(["small"], ["model.threshold=0.8"])
    other = root / "other.pt"
    atomic_save(make_checkpoint(ASENPP(cfg.model, len(ATTRIBUTES), 2), cfg, ATTRIBUTES), other)
    repo = root / "models"
    export_model(checkpoint, repo, max_batch=max_batch, deployment=DEPLOY)
    nxt = VersionRequest("next")
    export_model(other, repo, max_batch=max_batch, deployment=DEPLOY, model_versions=nxt)
    flat = DeploymentOptions(instance_kind="cpu", dynamic_batching=False)
    export_model(checkpoint, repo, name="flat", max_batch=max_batch, deployment=flat)
    return repo


@pytest.fixture(scope="module")
def served(versioned, tmp_path_factory):
    """`asen serve` on it: (its output up to 'Ctrl-C to stop', the gRPC URL, the HTTP URL)."""
    ports = {k: free_port() for k in ("http_port", "grpc_port", "metrics_port")}
    log = tmp_path_factory.mktemp("log") / "server.log"
    with serve_process(versioned, log, ports) as (_, out):
        assert "Ctrl-C to stop" in out, out
        yield out, f"127.0.0.1:{ports['grpc_port']}", f"127.0.0.1:{ports['http_port']}"


def test_serve_prints_the_versions_it_serves(served) -> None:
    out = served[0]
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert "version 1,2 (serves 2 by default)" in lines["asen_onnx"]
    assert "version 1 " in lines["flat_onnx"] and "version 1 " in lines["asen"]
    assert "ready: asen, asen_onnx, asen_preprocess, flat, flat_onnx, flat_preprocess" in out


def test_the_server_loaded_each_deployment(served) -> None:
    url = served[1]
    with TritonEncoder(url, "asen") as enc:
        config = enc._model_config("asen_onnx")
    assert [int(g.get("count", 1)) for g in config["instance_group"]] == [2]
    assert config["params"]["intra_op_thread_count"] == "1"
    batcher = config["dynamic_batching"]
    assert [int(b) for b in batcher["preferred_batch_size"]] == [2, 4]
    assert int(batcher["max_queue_delay_microseconds"]) == 500
    with TritonEncoder(url, "flat") as enc:
        assert "dynamic_batching" not in enc.config
        assert enc.config["instance_group"][0]["kind"] == "KIND_CPU"


def test_a_client_asks_for_a_version(served, versioned) -> None:
    url = served[1]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 3, 128, 128), dtype=np.uint8)
    attributes = np.array([0, 1, 2])
    out = {}
    for version in ("1", "2", None):
        with TritonEncoder(url, "asen", model_version=version) as enc:
            out[version] = enc.encode_batch(images, attributes)
    for version in ("1", "2"):
        local = OnnxEncoder(versioned / "asen_onnx" / version / "model.onnx", "cpu")
        np.testing.assert_allclose(out[version], local.encode_batch(images, attributes), atol=1e-5)
    np.testing.assert_array_equal(out[None], out["2"])  # the latest by default
    assert not np.allclose(out["1"], out["2"])  # two checkpoints


def test_missing_model_or_version_is_one_line(served, synth, tmp_path) -> None:
    url = served[1]
    for address, protocol in ((url, "grpc"), (served[2], "http")):
        with pytest.raises(AsenError, match=r"model asen_onnx has no version 7 \(served: 1, 2\)"):
            TritonEncoder(address, "asen", protocol, model_version="7")
    with pytest.raises(AsenError, match="model nope is not ready"):
        TritonEncoder(url, "nope")
    with pytest.raises(AsenError, match="--send-bytes goes through the ensemble"):
        TritonEncoder(url, "asen", model_version="1", send_bytes=True)
    base = ["embed", "asen", "--data", str(synth), "--out", str(tmp_path / "e.npz")]
    for extra, message in (
        (["--backend", "triton", "--url", url, "--model-version", "7"], "has no version 7"),
        (["--backend", "onnx", "--model-version", "1"], "--model-version does not apply"),
    ):
        result = runner.invoke(app, [*base, *extra])
        assert result.exit_code == 1 and message in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1, result.output


@pytest.mark.skipif(has_gpu(), reason="checks a machine without a GPU")
def test_gpu_instances_on_a_machine_without_gpu(repo, tmp_path, ports) -> None:
    import shutil

    gpu = tmp_path / "models"
    shutil.copytree(repo, gpu)
    write_repository(gpu, "asen", deployment=DeploymentOptions(instance_kind="gpu"))
    args = [f"--{k.replace('_', '-')}={v}" for k, v in ports.items()]
    result = runner.invoke(app, ["serve", "--repo", str(gpu), *args])
    assert result.exit_code == 1, result.output
    assert "model asen_onnx runs GPU instances, and this machine has no GPU" in result.output
    assert "--instance-kind cpu" in result.output

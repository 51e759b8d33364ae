"""Deployment options (`asen export --instances/--instance-kind/--threads/...` and `--config
FILE`): parsed and checked, written into every encoder config through the protobuf (the
configs the real server loads: tests/client/test_versions_served.py)."""

from __future__ import annotations

import shutil

import pytest
from asen.export.deployment import DeploymentOptions
from asen.export.repository import read_config, write_repository
from tritonclient.grpc import model_config_pb2 as mc
from typer.testing import CliRunner

from asen import AsenError
from asen.cli import app

runner = CliRunner()
GPU, CPU = mc.ModelInstanceGroup.KIND_GPU, mc.ModelInstanceGroup.KIND_CPU


def test_yaml_then_command_line(tmp_path) -> None:
    path = tmp_path / "deploy.yaml"
    path.write_text("instances: 3\nthreads: 2\npreferred_batch: [4, 2]\ndynamic_batching: true\n")
    options = DeploymentOptions.load(path, threads=1, instance_kind=None)
    assert (options.instances, options.threads, options.preferred_batch) == (3, 1, (2, 4))
    assert DeploymentOptions.load(None, preferred_batch="16,8").preferred(64) == [8, 16]
    assert DeploymentOptions().preferred(8) == [8]  # the defaults up to the max batch


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("threds: 2\n", "unknown key 'threds'"),
        ("instances: [2\n", "invalid YAML"),
        ("instances: two\n", "instances 'two': expected an integer of at least 1"),
        ("- 1\n", "expected a mapping"),
        ("instance_kind: tpu\n", "instance_kind 'tpu': expected cpu or gpu"),
        ("dynamic_batching: 3\n", "expected true or false"),
    ],
)
def test_bad_yaml_is_one_line_naming_file_and_key(tmp_path, text, message) -> None:
    path = tmp_path / "deploy.yaml"
    path.write_text(text)
    with pytest.raises(AsenError, match=message) as e:
        DeploymentOptions.load(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("options", "trt", "message"),
    [
        ({"threads": 2}, True, "--threads sets ONNX Runtime's threads; the TensorRT models"),
        ({"instance_kind": "cpu"}, True, "TensorRT plans (--trt) run on the GPU only"),
        ({"preferred_batch": (128,)}, False, "--preferred-batch 128: larger than --max-batch 64"),
        (
            {"dynamic_batching": False, "preferred_batch": (8,)},
            False,
            "--preferred-batch needs dynamic batching",
        ),
    ],
)
def test_options_the_backend_cannot_honour(options, trt, message) -> None:
    with pytest.raises(AsenError, match=message.replace("(", r"\(").replace(")", r"\)")):
        DeploymentOptions(**options).check(trt=trt, max_batch=64)


def test_configs_carry_the_options(repos, tmp_path) -> None:
    out = tmp_path / "models"
    shutil.copytree(repos[2], out)
    deployment = DeploymentOptions(
        instances=2, instance_kind="gpu", threads=1, preferred_batch=(4, 16), max_queue_delay_us=500
    )
    write_repository(out, "asen", deployment=deployment)
    for path in (out / "asen_onnx/config.pbtxt", out / "asen_onnx/configs/python.pbtxt"):
        config = read_config(path)
        assert [(g.kind, g.count) for g in config.instance_group] == [(GPU, 2)]
        assert config.parameters["intra_op_thread_count"].string_value == "1"
        assert list(config.dynamic_batching.preferred_batch_size) == [4, 16]
        assert config.dynamic_batching.max_queue_delay_microseconds == 500
        assert config.version_policy.HasField("all")
    preprocess = read_config(out / "asen_preprocess/config.pbtxt")  # not an encoder: as before
    assert preprocess.instance_group[0].kind == CPU
    assert "intra_op_thread_count" not in preprocess.parameters

    write_repository(out, "asen", deployment=DeploymentOptions(dynamic_batching=False))
    config = read_config(out / "asen_onnx/config.pbtxt")
    assert not config.HasField("dynamic_batching")
    assert [(g.kind, g.count) for g in config.instance_group] == [(CPU, 1)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--threads", "2", "--trt"], "--threads sets ONNX Runtime's threads"),
        (["--instance-kind", "tpu"], "--instance-kind 'tpu': expected cpu or gpu"),
        (["--preferred-batch", "8,x"], "--preferred-batch '8,x': expected positive batch sizes"),
        (["--max-queue-delay-us", "-1"], "--max-queue-delay-us -1: expected an integer"),
        (["--keep", "0"], "--keep 0: keep at least 1 version"),
        (["--model-version", "v2"], "--model-version v2: expected a version number"),
        (["--config", "missing.yaml"], "missing.yaml: cannot read"),
    ],
)
def test_cli_mistakes_are_one_line(checkpoints, tmp_path, args, message) -> None:
    repo = tmp_path / "models"
    result = runner.invoke(app, ["export", str(checkpoints[1]), "--repo", str(repo), *args])
    assert result.exit_code == 1, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert not repo.exists()

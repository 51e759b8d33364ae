"""The queue policy and warmup deployment options: the same names in `asen export` and in
the YAML file, checked the same way, and written into every encoder config whatever the
model's name."""

from __future__ import annotations

from pathlib import Path

import pytest
from asen.export.commands import deployment_flags
from asen.export.deployment import DeploymentOptions
from asen.export.repository import Tensor, encoder_config, mc
from typer.testing import CliRunner

from asen import AsenError
from asen.cli import app


def test_yaml_and_flags_give_the_same_options(tmp_path: Path) -> None:
    path = tmp_path / "deploy.yaml"
    path.write_text(
        "max_queue_size: 4\nqueue_timeout_us: 1000\nqueue_timeout_action: delay\nwarmup: false\n"
    )
    from_file = DeploymentOptions.load(path)
    from_flags = DeploymentOptions.load(
        None, max_queue_size=4, queue_timeout_us=1000, queue_timeout_action="delay", warmup=False
    )
    assert from_file == from_flags and from_file.queue_policy and not from_file.warmup
    assert DeploymentOptions.load(path, max_queue_size=8).max_queue_size == 8  # flags win


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"max_queue_size": 0}, "--max-queue-size 0: expected an integer of at least 1"),
        ({"queue_timeout_us": -5}, "--queue-timeout-us -5: expected an integer of at least 1"),
        ({"queue_timeout_action": "drop"}, "--queue-timeout-action 'drop': expected reject or"),
        ({"warmup": "yes"}, "--warmup 'yes': expected true or false"),
    ],
)
def test_bad_values_are_one_line(given: dict, message: str) -> None:
    with pytest.raises(AsenError, match=message):
        DeploymentOptions.load(None, **given)


def test_queue_policy_needs_the_dynamic_batcher() -> None:
    options = DeploymentOptions.load(None, max_queue_size=4, dynamic_batching=False)
    with pytest.raises(AsenError, match="drop --no-dynamic-batching"):
        options.check(trt=False, max_batch=8)


def test_every_deployment_field_is_an_export_option() -> None:
    fields = {f: None for f in DeploymentOptions.__dataclass_fields__}
    assert deployment_flags({**fields, "checkpoint": None}) == fields
    with pytest.raises(KeyError):
        deployment_flags({k: None for k in list(fields)[:-1]})


@pytest.mark.parametrize("name", ["asen_onnx", "asen_all_onnx_fp16", "shoes_trt"])
def test_every_encoder_config_gets_the_policy_and_warmup(name: str) -> None:
    options = DeploymentOptions(
        max_queue_size=4, queue_timeout_us=500, queue_timeout_action="delay"
    )
    image = Tensor("image", mc.TYPE_UINT8, (3, 64, 64))
    out = Tensor("embedding", mc.TYPE_FP32, (8,))
    config = encoder_config(
        name, "onnxruntime", [image], [out], {"source_size": "64"}, 8, deployment=options
    )
    policy = config.dynamic_batching.default_queue_policy
    assert (policy.max_queue_size, policy.default_timeout_microseconds) == (4, 500)
    assert policy.timeout_action == mc.ModelQueuePolicy.DELAY
    (sample,) = config.model_warmup
    assert sample.inputs["image"].input_data_file == "image"
    cold = encoder_config(
        name,
        "onnxruntime",
        [image],
        [out],
        {"source_size": "64"},
        8,
        deployment=DeploymentOptions(warmup=False),
    )
    assert not cold.model_warmup and not cold.dynamic_batching.HasField("default_queue_policy")


def test_cli_bad_queue_option_writes_nothing(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    result = CliRunner().invoke(
        app, ["export", str(tmp_path / "x.pt"), "--repo", str(repo), "--max-queue-size", "0"]
    )
    assert result.exit_code == 1 and "--max-queue-size 0" in result.output
    assert not repo.exists()

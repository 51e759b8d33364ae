"""`asen export`, and what the export layer adds to `asen index` (--repo)."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from asen import AsenError
from asen.commands import search
from asen.commands.ui import console

Precisions = Annotated[
    list[str] | None,
    typer.Option(
        "--precision",
        help="fp32, fp16, int8: one graph (Triton model) each; repeat or comma-separate.",
    ),
]
BuildTrt = Annotated[
    bool,
    typer.Option(
        "--trt",
        help="Also build a strongly typed TensorRT engine per precision (TensorRT 10/11, GPU).",
    ),
]
AllAttributes = Annotated[
    bool,
    typer.Option(
        "--all-attributes",
        help="Also export <name>_all: every attribute of an image in one pass (the global "
        "backbone once), in each precision, for `asen catalog embed`.",
    ),
]
CalibrateRoot = Annotated[
    Path | None,
    typer.Option(help="INT8: dataset root whose images calibrate the activations."),
]
VerifyRoot = Annotated[
    Path | None,
    typer.Option(
        help="Dataset root to verify every graph on (valid split, with mAP); default the "
        "--calibrate root, else synthetic probe images."
    ),
]
MaxMapDrop = Annotated[
    float | None,
    typer.Option(help="Largest mAP drop vs PyTorch fp32 (default 0.005 fp16, 0.01 int8)."),
]
MinCosine = Annotated[
    float | None,
    typer.Option(help="Smallest per-row cosine vs PyTorch fp32 (default 0.999 fp16, 0.95 int8)."),
]
DeployConfig = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="YAML file of deployment options (options given here win)."
    ),
]
Instances = Annotated[
    int | None, typer.Option(help="Deployment: instances of each encoder model (default 1).")
]
InstanceKind = Annotated[
    str | None,
    typer.Option(help="Deployment: cpu or gpu (default: ONNX on the CPU, TensorRT on the GPU)."),
]
Threads = Annotated[
    int | None,
    typer.Option(help="Deployment: ONNX Runtime threads per instance (default: one per core)."),
]
DynamicBatching = Annotated[
    bool | None,
    typer.Option(
        "--dynamic-batching/--no-dynamic-batching",
        help="Deployment: Triton's dynamic batcher on the encoder models (default on).",
    ),
]
PreferredBatch = Annotated[
    str | None,
    typer.Option(
        help="Deployment: preferred batch sizes, e.g. 8,16,32 (default: those up to --max-batch)."
    ),
]
MaxQueueDelay = Annotated[
    int | None,
    typer.Option(
        "--max-queue-delay-us", help="Deployment: longest wait to form a batch (default 2000)."
    ),
]
MaxQueueSize = Annotated[
    int | None,
    typer.Option(
        help="Deployment: requests that may wait per encoder model; the excess is refused "
        "at once (UNAVAILABLE / HTTP 503). Default unbounded."
    ),
]
QueueTimeout = Annotated[
    int | None,
    typer.Option(
        "--queue-timeout-us", help="Deployment: longest wait in the queue (default none)."
    ),
]
QueueTimeoutAction = Annotated[
    str | None,
    typer.Option(help="Deployment: past --queue-timeout-us, reject (default) or delay."),
]
Warmup = Annotated[
    bool | None,
    typer.Option(
        "--warmup/--no-warmup",
        help="Deployment: warm each model on a real image before it is ready (default on).",
    ),
]
ExportVersion = Annotated[
    str,
    typer.Option(
        "--model-version",
        help="Version to write beside the others: N or next (default 1, replacing version 1).",
    ),
]
Keep = Annotated[
    int | None, typer.Option(help="Keep the K newest versions asen wrote (default: all).")
]
OverwriteEdited = Annotated[
    bool,
    typer.Option("--overwrite-edited", help="Replace configs edited since asen wrote them."),
]
ReloadUrl = Annotated[
    str | None,
    typer.Option(
        "--reload",
        help="Then ask the Triton server at this URL (host:port, http:// or grpc://; "
        "`asen serve --model-control explicit`) to load what was written.",
    ),
]


def export(
    checkpoint: Annotated[
        Path, typer.Argument(help="Checkpoint to export (e.g. runs/stage2/best.pt).")
    ],
    repo: Annotated[Path, typer.Option(help="Model repository folder.")] = Path("triton_models"),
    name: Annotated[
        str,
        typer.Option(help="Model name: writes <name>_onnx[_fp16|_int8] (and <name>_trt...)."),
    ] = "asen",
    precision: Precisions = None,
    trt: BuildTrt = False,
    all_attributes: AllAttributes = False,
    fp16: Annotated[
        bool, typer.Option("--fp16", help="Alias of --precision fp16 (deprecated).")
    ] = False,
    calibrate: CalibrateRoot = None,
    split: Annotated[str, typer.Option(help="Split of --calibrate to draw images from.")] = "train",
    calibration_images: Annotated[
        int, typer.Option(help="INT8: how many calibration images (every attribute in turn).")
    ] = 512,
    verify: VerifyRoot = None,
    max_map_drop: MaxMapDrop = None,
    min_cosine: MinCosine = None,
    max_batch: Annotated[int, typer.Option(help="Largest batch the artifacts accept.")] = 64,
    config: DeployConfig = None,
    instances: Instances = None,
    instance_kind: InstanceKind = None,
    threads: Threads = None,
    dynamic_batching: DynamicBatching = None,
    preferred_batch: PreferredBatch = None,
    max_queue_delay_us: MaxQueueDelay = None,
    max_queue_size: MaxQueueSize = None,
    queue_timeout_us: QueueTimeout = None,
    queue_timeout_action: QueueTimeoutAction = None,
    warmup: Warmup = None,
    model_version: ExportVersion = "1",
    keep: Keep = None,
    overwrite_edited: OverwriteEdited = False,
    reload: ReloadUrl = None,
) -> None:
    """Export a checkpoint to ONNX graphs of each precision (and TensorRT engines), each
    verified against PyTorch fp32, switched into the model repository as one set."""
    from asen.export.build import export_model
    from asen.export.calibrate import CalibrationSource
    from asen.export.deployment import DeploymentOptions
    from asen.export.versions import VersionRequest

    report = functools.partial(console.print, markup=False, highlight=False)
    if reload is not None:
        _server_control().check_reload_url(reload)  # refused before anything is written
    precisions = [*(precision or []), *(["fp16"] if fp16 else [])]
    if fp16:
        report("note: --fp16 is deprecated; it means --precision fp16 (an FP16 graph and plan)")
    source = calibrate and CalibrationSource(calibrate, split, calibration_images)
    deployment = DeploymentOptions.load(config, **deployment_flags(locals()))
    written = export_model(
        checkpoint,
        repo,
        name=name,
        precisions=precisions or ["fp32"],
        trt=trt,
        max_batch=max_batch,
        calibrate=source,
        verify=verify,
        max_map_drop=max_map_drop,
        min_cosine=min_cosine,
        deployment=deployment,
        model_versions=VersionRequest(model_version, keep, overwrite_edited),
        all_graph=all_attributes,
        report=report,
    )
    for path in written:
        report(f"wrote {path}")
    if reload is not None:
        _reload(reload, repo, written, report)


def deployment_flags(given: dict) -> dict:
    """The deployment options among `asen export`'s parameters: one per field of
    DeploymentOptions, so the options and the YAML keys stay in step (a field without its
    option is a KeyError in every export)."""
    from asen.export.deployment import DeploymentOptions

    return {f.name: given[f.name] for f in dataclasses.fields(DeploymentOptions)}


@dataclass
class ServerControl:
    """What the client layer lends `asen export` and `asen index --repo` when it registers
    (asen.client.model_control): `--reload URL` has a running Triton server load what they
    wrote. The export layer never imports the client layer."""

    check_reload_url: Callable[[str], object]
    reload_models: Callable[..., None]
    written_versions: Callable[..., dict]


SERVER_CONTROL: list[ServerControl] = []  # filled by asen.client.commands.register


def _server_control() -> ServerControl:
    if not SERVER_CONTROL:
        raise AsenError("--reload needs asen's client layer (asen.client), which is not installed")
    return SERVER_CONTROL[0]


def _reload(url: str, repo: Path, written: list[Path], report) -> None:
    """`--reload URL`: the server loads the models the export wrote, new versions ready."""
    control = _server_control()
    control.reload_models(url, repo, control.written_versions(repo, written), report=report)


def publish_index(
    index, embedded, *, data_root, repo: Path, encoder: str, source: str, reload=None
):
    """`asen index --repo`: record the encoder in the index now; returns the step that adds
    the saved index to the repository as model asen_search (and says what it wrote), and
    with `reload` (a URL) has that server load it."""
    from asen.export.search_model import SEARCH_MODEL, add_search_model, record_encoder

    if reload is not None:
        _server_control().check_reload_url(reload)
    record_encoder(index, embedded, data_root=data_root, repo=repo, encoder=encoder, source=source)

    def add() -> str:
        version = add_search_model(repo, index, encoder)
        lines = [f"wrote {version} (model asen_search, encoder {encoder})"]
        if reload is not None:
            expect = {SEARCH_MODEL: [int(version.name)]}
            _server_control().reload_models(reload, repo, expect, report=lines.append)
        return "\n".join(lines)

    return add


def register(app: typer.Typer) -> None:
    """Add the export layer's commands to `asen` (entry point `asen.commands`)."""
    app.command("export")(export)
    search.EXTENSIONS.publish_index = publish_index

"""`asen export`, and what the export layer adds to `asen index` (--repo)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated

import typer

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
    model_version: ExportVersion = "1",
    keep: Keep = None,
    overwrite_edited: OverwriteEdited = False,
) -> None:
    """Export a checkpoint to ONNX graphs of each precision (and TensorRT engines), each
    verified against PyTorch fp32, switched into the model repository as one set."""
    from asen.export.build import export_model
    from asen.export.calibrate import CalibrationSource
    from asen.export.deployment import DeploymentOptions
    from asen.export.versions import VersionRequest

    report = functools.partial(console.print, markup=False, highlight=False)
    precisions = [*(precision or []), *(["fp16"] if fp16 else [])]
    if fp16:
        report("note: --fp16 is deprecated; it means --precision fp16 (an FP16 graph and plan)")
    source = calibrate and CalibrationSource(calibrate, split, calibration_images)
    deployment = DeploymentOptions.load(
        config,
        instances=instances,
        instance_kind=instance_kind,
        threads=threads,
        dynamic_batching=dynamic_batching,
        preferred_batch=preferred_batch,
        max_queue_delay_us=max_queue_delay_us,
    )
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
        report=report,
    )
    for path in written:
        report(f"wrote {path}")


def publish_index(index, embedded, *, data_root, repo: Path, encoder: str, source: str):
    """`asen index --repo`: record the encoder in the index now; returns the step that adds
    the saved index to the repository as model asen_search (and says what it wrote)."""
    from asen.export.search_model import add_search_model, record_encoder

    record_encoder(index, embedded, data_root=data_root, repo=repo, encoder=encoder, source=source)

    def add() -> str:
        version = add_search_model(repo, index, encoder)
        return f"wrote {version} (model asen_search, encoder {encoder})"

    return add


def register(app: typer.Typer) -> None:
    """Add the export layer's commands to `asen` (entry point `asen.commands`)."""
    app.command("export")(export)
    search.EXTENSIONS.publish_index = publish_index

"""`asen`: the command-line interface. Parses arguments, calls one function, prints."""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import sys
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

import asen
from asen import AsenError
from asen.config import TRAIN_PRECISIONS

if TYPE_CHECKING:
    from asen.encoders import Encoder
    from client.server import ServerHandle

console = Console(soft_wrap=True, markup=False)  # user text (paths, names) prints as it is
err = Console(stderr=True)


def _error_line(message: str) -> None:
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)


class _OneLineUsageErrors(typer.core.TyperGroup):
    """A bad or missing option value (e.g. an unknown backend name, which lists the valid
    ones) is one line and exit 1, like every other user mistake."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except typer.BadParameter as e:
            where = f" (see `{e.ctx.command_path} --help`)" if e.ctx else ""
            _error_line(f"{e.format_message()}{where}")
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=_OneLineUsageErrors,
    help="ASEN++ attribute-specific fashion similarity: train, export, serve, evaluate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _print_version(value: bool) -> None:
    if value:
        console.print(f"asen {asen.__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """ASEN++ attribute-specific fashion similarity: train, export, serve, evaluate."""


def _errors(fn):
    """Run a command; a user mistake (AsenError) is one red line and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except AsenError as e:
            _error_line(str(e))
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("[red]interrupted[/red]")
            raise typer.Exit(130) from None

    return wrapper


def _output_file(ctx: typer.Context, param: typer.CallbackParam, value: Path | None):
    """Option callback: an output file that could not be written at the end of the work is
    refused before it starts (one line, exit 1)."""
    from asen.output_paths import check_output_file

    if value is not None:
        try:
            check_output_file(value)
        except AsenError as e:
            raise typer.BadParameter(str(e)) from None
    return value


def _output_folder(ctx: typer.Context, param: typer.CallbackParam, value: Path | None):
    """Option callback: an output folder that cannot be made or written is refused first."""
    from asen.output_paths import check_output_folder

    if value is not None:
        try:
            check_output_folder(value)
        except AsenError as e:
            raise typer.BadParameter(str(e)) from None
    return value


def _progress() -> Progress:
    from asen.distributed import is_main

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
        disable=not console.is_terminal or not is_main(),
    )


Configs = Annotated[
    list[str],
    typer.Option(
        "--config", "-c", help="YAML file or packaged config name; repeat to compose (later wins)."
    ),
]
Sets = Annotated[
    list[str], typer.Option("--set", help="Override one field: key=value (e.g. train.epochs=3).")
]
DataRoot = Annotated[Path, typer.Option("--data", help="Dataset root in the split format.")]
Device = Annotated[str, typer.Option(help="auto, cpu or cuda.")]
Workers = Annotated[int, typer.Option(min=0, help="DataLoader workers decoding images.")]
SkipBad = Annotated[
    bool,
    typer.Option("--skip-bad-images", help="Skip and count undecodable images instead of failing."),
]
DistTimeout = Annotated[
    float,
    typer.Option(
        min=1.0,
        help="Under torchrun: seconds a process waits for the others before failing the run.",
    ),
]
Stage = Annotated[
    int, typer.Option(min=1, max=2, help="1: global branch; 2: adds the local branch.")
]
RunFolder = Annotated[
    Path,
    typer.Option(callback=_output_folder, help="Run folder: last.pt, best.pt, metrics.jsonl."),
]
TrainWorkers = Annotated[
    int | None, typer.Option(min=0, help="DataLoader workers (default: config data.workers).")
]
CacheMb = Annotated[
    int | None,
    typer.Option(
        min=0,
        help="MiB of decoded training images kept for the run, 0 for none "
        "(default: config data.cache_mb, 2048).",
    ),
]
JsonOut = Annotated[
    Path | None,
    typer.Option(
        "--json", callback=_output_file, help="Also write the figures or results as JSON."
    ),
]


@data_app.command("synth")
@_errors
def data_synth(
    out: Annotated[Path, typer.Argument(help="Folder to write the dataset into.")],
    seed: Annotated[int, typer.Option(min=0, help="Random seed (same seed, same files).")] = 0,
    train: Annotated[int, typer.Option(min=10, help="Training images.")] = 4000,
    eval: Annotated[
        int, typer.Option("--eval", min=5, help="Images in each of valid and test.")
    ] = 1000,
    attributes: Annotated[
        str | None,
        typer.Option(
            help="Attribute value counts, e.g. 3,6,2,7,4 (default: 4 garment attributes)."
        ),
    ] = None,
) -> None:
    """Write the built-in synthetic garment dataset in the reference split format."""
    from asen.data.synthetic import generate

    attrs = None
    if attributes:
        try:
            attrs = {f"attr{i}": int(v) for i, v in enumerate(attributes.split(","))}
        except ValueError:
            raise AsenError(
                f"--attributes {attributes}: expected comma-separated integers"
            ) from None
    with console.status(escape(f"writing synthetic dataset to {out}")):
        meta = generate(out, seed=seed, n_train=train, n_eval=eval, attributes=attrs)
    names = ", ".join(f"{a['name']} ({a['values']})" for a in meta["attributes"])
    console.print(
        f"wrote {out}: {train} train, {eval} valid, {eval} test images; attributes: {names}"
    )


# Training precision (asen.config.TRAIN_PRECISIONS): auto picks bf16 where it is native.
Precision = Enum("Precision", {p: p for p in TRAIN_PRECISIONS}, type=str)


def _train_callbacks(progress: Progress, stage: int):
    """Progress bars and one line an epoch for `asen.train.train`."""
    from asen.train import TrainCallbacks

    task: dict = {"id": None}

    def epoch_start(epoch: int, first: int, total: int) -> None:
        task["id"] = progress.add_task(
            f"stage {stage} epoch {epoch + 1}", total=total, completed=first, info=""
        )

    def step(s: dict) -> None:
        info = f"loss {s['loss']:.4f}  {s['triplets_per_s']:.0f} triplets/s"
        progress.update(task["id"], completed=s["step"], info=info)

    def eval_start(n: int) -> None:
        task["eval"] = progress.add_task("  validating", total=n, info="")

    def epoch_end(r: dict) -> None:
        progress.remove_task(task["eval"])
        console.print(
            f"epoch {r['epoch']}{' (partial)' if r['partial'] else ''}: loss {r['loss']:.4f}  "
            f"val mAP {r['val_map']:.4f}  {r['triplets_per_s']:.0f} triplets/s"
            + (f"  skipped images {r['skipped_images']}" if r["skipped_images"] else "")
        )

    return TrainCallbacks(
        epoch_start=epoch_start,
        step=step,
        eval_start=eval_start,
        eval_progress=lambda n: progress.advance(task["eval"], n),
        epoch_end=epoch_end,
        message=lambda line: console.print(line, markup=False, highlight=False),
    )


@app.command("train")
@_errors
def train_cmd(
    data: DataRoot,
    config: Configs = None,
    set_: Sets = None,
    stage: Stage = 1,
    init: Annotated[
        Path | None, typer.Option(help="Checkpoint to initialise from (stage 1 for stage 2).")
    ] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Override train.epochs.")] = None,
    time_budget: Annotated[
        float | None, typer.Option(help="Minutes; stop cleanly after the step that crosses it.")
    ] = None,
    out: RunFolder = Path("runs/stage1"),
    device: Device = "auto",
    resume: Annotated[
        bool, typer.Option(help="Continue the run in --out exactly where it stopped.")
    ] = False,
    weights: Annotated[
        str | None, typer.Option(help="Backbone weights: 'imagenet' or a local state-dict file.")
    ] = None,
    precision: Annotated[
        Precision | None,
        typer.Option(help="Training precision (default: train.precision, auto: bf16 if native)."),
    ] = None,
    workers: TrainWorkers = None,
    cache_mb: CacheMb = None,
    skip_bad_images: SkipBad = False,
    dist_timeout: DistTimeout = 600.0,
) -> None:
    """Train ASEN++ (stage 1 or 2) with the reference's triplets, losses and schedules.
    Runs unchanged under torchrun: one process a GPU, gradients averaged over them.
    SIGTERM or Ctrl-C finishes the step, validates and saves (then --resume continues)."""
    from asen.config import load_config
    from asen.distributed import is_main, process_group
    from asen.train import train

    overrides = list(set_ or [])
    if weights is not None:
        overrides.append(f"model.weights={weights}")
    if precision is not None:
        overrides.append(f"train.precision={precision.value}")
    changes: dict[str, Any] = {"data.skip_bad_images": True} if skip_bad_images else {}
    if epochs is not None:
        changes["train.epochs"] = epochs
    if workers is not None:
        changes["data.workers"] = workers
    if cache_mb is not None:
        changes["data.cache_mb"] = cache_mb
    cfg = None  # --resume without -c/--set/--weights/--precision: the run's own settings
    if config or overrides or not resume:
        stages = [f"stage{stage}"] if stage in (1, 2) else []
        cfg = load_config([*stages, *(config or [])], overrides)
    with process_group(device, dist_timeout), _progress() as progress:
        result = train(
            cfg,
            data_root=data,
            stage=stage,
            run_dir=out,
            init=init,
            time_budget_min=time_budget,
            device=device,
            resume=resume,
            changes=changes,
            callbacks=_train_callbacks(progress, stage),
        )
        if not is_main():
            return
    if result.stopped_by:  # SIGTERM, SIGINT or the time budget
        console.print(f"stopped by {result.stopped_by}; saved in {out}: continue with --resume")
        if result.stopped_by == "SIGINT":
            raise typer.Exit(130)
    console.print(
        f"best val mAP {result.best_val_map:.4f}; checkpoints in {out} (best.pt, last.pt)"
    )


class BackendName(str, Enum):
    """The backends an Encoder runs on (docs/architecture.md, "Backends")."""

    torch = "torch"
    onnx = "onnx"
    trt = "trt"
    triton = "triton"


@dataclass(frozen=True)
class BackendEntry:
    """Where a backend's Encoder class lives (imported when used) and the options its
    `open` accepts."""

    encoder: str  # "module:Class"
    options: tuple[str, ...]

    def load(self) -> type[Encoder]:
        module, _, name = self.encoder.partition(":")
        return getattr(importlib.import_module(module), name)


BACKENDS: dict[BackendName, BackendEntry] = {
    BackendName.torch: BackendEntry("asen.encoders:TorchEncoder", ("device", "batch_size")),
    BackendName.onnx: BackendEntry("export.encoders:OnnxEncoder", ("device", "batch_size")),
    BackendName.trt: BackendEntry("export.encoders:TrtEncoder", ("device", "batch_size")),
    BackendName.triton: BackendEntry(
        "client.triton:TritonEncoder",
        (
            "url",
            "protocol",
            "send_bytes",
            "batch_size",
            "tls",
            "headers",
            "shared_memory",
            "model_version",
        ),
    ),
}


def _flag(option: str) -> str:
    return "--" + option.replace("_", "-")


def _open_encoder(backend: BackendName, model: str, **options: Any) -> Encoder:
    """The Encoder of `backend` for `model`, described on stderr. Options left unset
    (None, False, "auto") are dropped; a set one the backend cannot honour is one error."""
    entry = BACKENDS[backend]
    given = {k: v for k, v in options.items() if not (v is None or v is False or v == "auto")}
    for option in given:
        if option not in entry.options:
            accepted = ", ".join(_flag(o) for o in entry.options)
            raise AsenError(
                f"{_flag(option)} does not apply to --backend {backend.value} "
                f"(its options: {accepted})"
            )
    encoder = entry.load().open(model, **given)
    err.print(encoder.describe(), highlight=False)
    return encoder


def _print_map_table(results: list) -> None:
    table = Table(title=f"mAP ({results[0].split} split)")
    table.add_column("attribute")
    table.add_column("queries", justify="right")
    for r in results:
        table.add_column(r.backend, justify="right")
    first = results[0]
    for name, n in first.num_queries.items():
        table.add_row(name, str(n), *(f"{100 * r.per_attribute[name]:.2f}" for r in results))
    table.add_row(
        "overall (weighted)",
        str(sum(first.num_queries.values())),
        *(f"{100 * r.overall_map:.2f}" for r in results),
        style="bold",
    )
    console.print(table)


ModelArg = Annotated[
    str,
    typer.Argument(
        help="Checkpoint (torch), model repository or artifact (onnx, trt), "
        "served model name (triton, e.g. asen)."
    ),
]
Backend = Annotated[BackendName, typer.Option(help="The engine that computes embeddings.")]
Split = Annotated[str, typer.Option(help="valid or test.")]
BatchSize = Annotated[int, typer.Option(min=1, help="Images per encoder call.")]
Url = Annotated[
    str | None,
    typer.Option(help="Triton server HOST:PORT (default 127.0.0.1:8001 gRPC, :8000 HTTP)."),
]
Protocol = Annotated[str | None, typer.Option(help="Triton protocol: grpc (default) or http.")]
SendBytes = Annotated[
    bool,
    typer.Option(
        "--send-bytes", help="Triton: send encoded image files through the ensemble, not tensors."
    ),
]
Ssl = Annotated[bool, typer.Option("--ssl", help="Triton: connect with TLS (gRPC or HTTPS).")]
RootCertificates = Annotated[
    Path | None, typer.Option(help="Triton TLS: PEM root certificates that verify the server.")
]
PrivateKey = Annotated[Path | None, typer.Option(help="Triton TLS: the client's PEM private key.")]
CertificateChain = Annotated[
    Path | None, typer.Option(help="Triton TLS: the client's PEM certificate chain.")
]
Header = Annotated[
    list[str] | None,
    typer.Option(
        "--header",
        help="Triton: NAME:VALUE sent with every request (repeatable; e.g. Host:NAME for "
        "KServe behind an ingress).",
    ),
]
SharedMemory = Annotated[
    str | None,
    typer.Option(help="Triton: none or system (shared memory with a server on this host)."),
]
ModelVersion = Annotated[
    str | None,
    typer.Option(help="Triton: the encoder model's version (default: the latest served)."),
]


def _connection(
    backend: BackendName | None,
    ssl: bool,
    certificates: tuple[Path | None, Path | None, Path | None],
    *,
    header: list[str] | None,
    shared_memory: str | None,
) -> dict[str, Any]:
    """The Triton connection options (`tls`, `headers`, `shared_memory`), None where unset;
    set with another backend, one error."""
    from client.connection import Tls, parse_headers

    root, key, chain = certificates
    given = [
        f
        for f, v in (("--ssl", ssl), ("--header", header), ("--shared-memory", shared_memory))
        if v
    ]
    if backend not in (None, BackendName.triton) and given:
        raise AsenError(f"{given[0]} applies to --backend triton")
    if not ssl and any(certificates):
        raise AsenError("--root-certificates, --private-key and --certificate-chain need --ssl")
    return {
        "tls": Tls(root, key, chain) if ssl else None,
        "headers": parse_headers(header) or None,
        "shared_memory": shared_memory,
    }


def _dataset(data: Path, encoder):
    from asen.data.splits import open_dataset

    return open_dataset(data, encoder.info.attributes)


@dataclass(frozen=True)
class _SplitJob:
    """What eval and embed embed: a split of a dataset, with a backend's Encoder."""

    backend: BackendName
    model: str
    options: dict[str, Any]  # the backend's options as given (see `_open_encoder`)
    data: Path
    split: str
    workers: int
    skip_bad_images: bool


def _embed_split(job: _SplitJob, *, device: str, dist_timeout: float):
    """Open the backend's Encoder, embed the split (sharded under torchrun) and close it;
    returns (dataset, embedded) on rank 0 and None on the other ranks."""
    from asen.distributed import is_main, process_group
    from asen.evaluate import embed_split, num_pairs

    with process_group(device, dist_timeout):
        with _open_encoder(job.backend, job.model, device=device, **job.options) as encoder:
            dataset = _dataset(job.data, encoder)
            with _progress() as progress:
                total = num_pairs(dataset, job.split)
                what = f"encoding {job.split} ({job.backend.value})"
                task = progress.add_task(what, total=total, info="")
                embedded = embed_split(
                    encoder,
                    dataset,
                    job.split,
                    workers=job.workers,
                    skip_bad=job.skip_bad_images,
                    progress=lambda n: progress.advance(task, n),
                )
        if not is_main():
            return None
    return dataset, embedded


@app.command("eval")
@_errors
def eval_cmd(
    model: ModelArg,
    data: DataRoot,
    split: Split = "test",
    backend: Backend = BackendName.torch,
    json_out: JsonOut = None,
    device: Device = "auto",
    batch_size: BatchSize = 64,
    workers: Workers = 2,
    skip_bad_images: SkipBad = False,
    url: Url = None,
    protocol: Protocol = None,
    send_bytes: SendBytes = False,
    ssl: Ssl = False,
    root_certificates: RootCertificates = None,
    private_key: PrivateKey = None,
    certificate_chain: CertificateChain = None,
    header: Header = None,
    shared_memory: SharedMemory = None,
    model_version: ModelVersion = None,
    dist_timeout: DistTimeout = 600.0,
) -> None:
    """Per-attribute and overall mAP (the paper's protocol) through any backend."""
    from asen.atomic import atomic_write_text
    from asen.evaluate import score

    options = {"batch_size": batch_size, "url": url, "protocol": protocol, "send_bytes": send_bytes}
    options["model_version"] = model_version
    certificates = (root_certificates, private_key, certificate_chain)
    options |= _connection(backend, ssl, certificates, header=header, shared_memory=shared_memory)
    job = _SplitJob(backend, model, options, data, split, workers, skip_bad_images)
    done = _embed_split(job, device=device, dist_timeout=dist_timeout)
    if done is None:
        return
    dataset, embedded = done
    result = score(embedded, dataset.names, backend=backend.value, split=split)
    _print_map_table([result])
    if result.skipped:
        console.print(
            f"skipped {result.skipped} entries whose image could not be decoded", style="yellow"
        )
    if json_out:
        atomic_write_text(json_out, json.dumps(result.to_json(), indent=2) + "\n")
        console.print(f"wrote {json_out}")


@app.command("embed")
@_errors
def embed_cmd(
    model: ModelArg,
    data: DataRoot,
    out: Annotated[Path, typer.Option(callback=_output_file, help="Output .npz file.")],
    split: Split = "test",
    backend: Backend = BackendName.torch,
    device: Device = "auto",
    batch_size: BatchSize = 64,
    workers: Workers = 2,
    skip_bad_images: SkipBad = False,
    url: Url = None,
    protocol: Protocol = None,
    send_bytes: SendBytes = False,
    ssl: Ssl = False,
    root_certificates: RootCertificates = None,
    private_key: PrivateKey = None,
    certificate_chain: CertificateChain = None,
    header: Header = None,
    shared_memory: SharedMemory = None,
    model_version: ModelVersion = None,
    dist_timeout: DistTimeout = 600.0,
) -> None:
    """Embed every query and candidate entry of a split into an .npz file."""
    options = {"batch_size": batch_size, "url": url, "protocol": protocol, "send_bytes": send_bytes}
    options["model_version"] = model_version
    certificates = (root_certificates, private_key, certificate_chain)
    options |= _connection(backend, ssl, certificates, header=header, shared_memory=shared_memory)
    job = _SplitJob(backend, model, options, data, split, workers, skip_bad_images)
    done = _embed_split(job, device=device, dist_timeout=dist_timeout)
    if done is None:
        return
    dataset, embedded = done
    embedded.save(out, dataset.names)
    console.print(
        f"wrote {out}: {len(embedded.embeddings)} embeddings of dim {embedded.embeddings.shape[1]}"
        + (f"; skipped {embedded.skipped} undecodable entries" if embedded.skipped else "")
    )


@app.command("compare")
@_errors
def compare_cmd(
    results: Annotated[list[Path], typer.Argument(help="Files written by `asen eval --json`.")],
) -> None:
    """Print several evaluations (e.g. torch, onnx, triton) side by side."""
    from asen.evaluate import EvalResult

    loaded = [EvalResult.load(p) for p in results]
    names = {tuple(r.num_queries) for r in loaded}
    if len(names) != 1 or len({r.split for r in loaded}) != 1:
        raise AsenError("the results are of different splits or attributes; compare like with like")
    if len({r.backend for r in loaded}) < len(loaded):  # e.g. onnx fp32 / fp16 / int8 graphs
        loaded = [
            dataclasses.replace(r, backend=f"{r.backend} ({p.stem})")
            for r, p in zip(loaded, results, strict=True)
        ]
    _print_map_table(loaded)


ExportName = Annotated[
    str, typer.Option(help="Model name: writes <name>_onnx[_fp16|_int8] (and <name>_trt...).")
]
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


@app.command("export")
@_errors
def export_cmd(
    checkpoint: Annotated[
        Path, typer.Argument(help="Checkpoint to export (e.g. runs/stage2/best.pt).")
    ],
    repo: Annotated[Path, typer.Option(help="Model repository folder.")] = Path("triton_models"),
    name: ExportName = "asen",
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
    from export.build import export_model
    from export.calibrate import CalibrationSource
    from export.deployment import DeploymentOptions
    from export.versions import VersionRequest

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


def _print_serving(handle: ServerHandle) -> None:
    """What `asen serve` serves, where, and how to stop it."""
    for choice in handle.choices:
        served = handle.versions.get(choice.model, [])
        version = "version " + ",".join(map(str, served)) if served else ""
        version += f" (serves {served[-1]} by default)" if len(served) > 1 else ""
        console.print(
            f"  {choice.model:<24} {version:<10} {choice.how}",
            markup=False,
            highlight=False,
        )
    console.print(
        f"HTTP {handle.http_url}  gRPC {handle.grpc_url}  metrics {handle.metrics_url}\n"
        f"ready: {', '.join(handle.models)}\nlog: {handle.log_file} (pid {handle.process.pid})"
        "\nCtrl-C to stop",
        highlight=False,
    )


@app.command("serve")
@_errors
def serve_cmd(
    repo: Annotated[Path, typer.Option(help="Model repository (written by `asen export`).")] = Path(
        "triton_models"
    ),
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    http_port: Annotated[int, typer.Option(min=1, max=65535, help="HTTP/REST port.")] = 8000,
    grpc_port: Annotated[int, typer.Option(min=1, max=65535, help="gRPC port.")] = 8001,
    metrics_port: Annotated[
        int, typer.Option(min=1, max=65535, help="Prometheus metrics port.")
    ] = 8002,
    log_file: Annotated[
        Path | None, typer.Option(help="Server log (default: tritonserver.log in --repo).")
    ] = None,
) -> None:
    """Serve the model repository with a real tritonserver until Ctrl-C (model control off)."""
    from client.server import find_server, launch, serve_until_stopped

    binary = find_server()
    kind = "bundled in nvidia-pytriton" if binary.bundled else "on PATH"
    console.print(f"tritonserver ({kind}): {binary.path}", highlight=False)
    with console.status("starting tritonserver"):
        handle = launch(repo, host, http_port, grpc_port, metrics_port, log_file)
    serve_until_stopped(handle, announce=functools.partial(_print_serving, handle))
    console.print("tritonserver stopped")


def _levels_table(levels: list, title: str) -> Table:
    """perf_analyzer's figures, one row a concurrency level."""
    table = Table(title=title, caption="latency, server queue and compute in ms")
    for name in ("concurrency", "images/s", "p50", "p90", "p99", "queue", "compute", "batch/exec"):
        table.add_column(name, justify="right")
    for v in levels:
        table.add_row(
            str(v.concurrency),
            f"{v.throughput:.1f}",
            *(f"{x:.2f}" for x in (v.p50_ms, v.p90_ms, v.p99_ms, v.queue_ms, v.compute_ms)),
            f"{v.batch_per_execution:.2f}",
        )
    return table


bench_app = typer.Typer(help="Load tests.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@bench_app.command("serve")
@_errors
def bench_serve_cmd(
    url: Annotated[str, typer.Option(help="The server's HOST:PORT (gRPC or HTTP port).")],
    model: Annotated[str, typer.Option(help="Served encoder model, e.g. asen_onnx.")],
    protocol: Annotated[str, typer.Option(help="grpc or http.")] = "grpc",
    model_version: Annotated[
        str | None, typer.Option(help="Model version (default: the server's latest).")
    ] = None,
    concurrency: Annotated[
        str,
        typer.Option(help="Concurrency levels: first, last and step (e.g. 1:16:1), or one (8)."),
    ] = "1:16:1",
    batch_size: Annotated[int, typer.Option(help="Images per request.")] = 1,
    shared_memory: Annotated[
        str, typer.Option(help="none or system (the server must be on this host).")
    ] = "none",
    input_data: Annotated[
        Path | None,
        typer.Option(help="Dataset root: its test queries as inputs (default: random images)."),
    ] = None,
    csv_out: Annotated[
        Path | None, typer.Option("--csv", help="Write perf_analyzer's CSV.")
    ] = None,
    plot: Annotated[
        Path | None, typer.Option(help="Write a throughput-latency plot (PNG).")
    ] = None,
    measurement_interval: Annotated[
        int, typer.Option(help="perf_analyzer's measurement window (ms).")
    ] = 5000,
    stability: Annotated[
        int, typer.Option(help="perf_analyzer's stability threshold (percent).")
    ] = 10,
    ssl: Ssl = False,
    root_certificates: RootCertificates = None,
    private_key: PrivateKey = None,
    certificate_chain: CertificateChain = None,
    header: Header = None,
) -> None:
    """Sweep concurrency on a running server with NVIDIA's perf_analyzer (real inputs)."""
    from client.perf import Sweep, Target, run_sweep
    from client.perf_report import plot as plot_levels

    sweep = Sweep.parse(concurrency)
    certificates = (root_certificates, private_key, certificate_chain)
    connection = _connection(None, ssl, certificates, header=header, shared_memory=None)
    target = Target(
        url, model, protocol, model_version or "", connection["tls"], connection["headers"] or {}
    )
    with console.status(escape(f"perf_analyzer: {model} at {url}, concurrency {sweep}")):
        levels = run_sweep(
            target,
            sweep=sweep,
            batch_size=batch_size,
            shared_memory=shared_memory,
            input_data=input_data,
            csv_out=csv_out,
            interval_ms=measurement_interval,
            stability=stability,
        )
    title = f"{model} at {url} ({protocol}, batch {batch_size}, shared memory {shared_memory})"
    console.print(_levels_table(levels, title))
    if csv_out:
        console.print(f"wrote {csv_out}", markup=False)
    if plot:
        plot_levels(levels, plot, f"{model} ({protocol}, batch {batch_size}, shm {shared_memory})")
        console.print(f"wrote {plot}", markup=False)


@app.command("index")
@_errors
def index_cmd(
    gallery: Annotated[
        Path, typer.Argument(help="Embeddings .npz written by `asen embed` (any backend).")
    ],
    out: Annotated[Path, typer.Option(help="Index folder (an index already there is replaced).")],
    data: Annotated[
        Path | None,
        typer.Option("--data", help="Dataset root the .npz paths are relative to (for images)."),
    ] = None,
    ivf: Annotated[
        bool,
        typer.Option(
            "--ivf", help="Approximate IVF index (nlist ~ sqrt(N)): exact search reads every item."
        ),
    ] = False,
    nprobe: Annotated[int, typer.Option(min=1, help="IVF lists searched per query.")] = 16,
    compress: Annotated[
        str | None,
        typer.Option(help="With --ivf: store vectors as sq8 (1 byte a dim) or pq<m> (m bytes)."),
    ] = None,
    include_queries: Annotated[
        bool,
        typer.Option("--include-queries", help="Also index the split's queries (default: not)."),
    ] = False,
    repo: Annotated[
        Path | None,
        typer.Option(help="Also add the index to this model repository as model asen_search."),
    ] = None,
    encoder: Annotated[
        str, typer.Option(help="With --repo: the encoder model asen_search calls.")
    ] = "asen_onnx",
) -> None:
    """Build one FAISS inner-product index per attribute from an embeddings file."""
    from asen.search import SearchIndex, load_embeddings

    with console.status(escape(f"indexing {gallery}")):
        embedded, names = load_embeddings(gallery)
        index = SearchIndex.build(
            embedded,
            names,
            ivf=ivf,
            include_queries=include_queries,
            nprobe=nprobe,
            data_root=data,
            source=str(gallery.resolve()),
            compress=compress,
        )
        if repo is not None:
            from export.search_model import record_encoder

            record_encoder(
                index, embedded, data_root=data, repo=repo, encoder=encoder, source=str(gallery)
            )
        index.save(out)
    counts = ", ".join(f"{n} {c}" for n, c in zip(names, index.manifest["counts"], strict=True))
    console.print(
        f"wrote {out}: {index.manifest['kind']} index of dim {index.dim}; entries: {counts}",
        highlight=False,
    )
    if repo is not None:
        from export.search_model import add_search_model

        version = add_search_model(repo, index, encoder)
        console.print(f"wrote {version} (model asen_search, encoder {encoder})", highlight=False)


@app.command("search")
@_errors
def search_cmd(
    image: Annotated[Path, typer.Argument(help="Query image file.")],
    attr: Annotated[str, typer.Option("--attr", help="Attribute to match on (name or number).")],
    index: Annotated[
        Path | None,
        typer.Option(
            "--index",
            help="Index folder (`asen index`); omit it with --backend triton to query the "
            "served asen_search model.",
        ),
    ] = None,
    backend: Backend = BackendName.torch,
    model: Annotated[
        str | None,
        typer.Option(
            help="Checkpoint (torch), model repository or artifact (onnx, trt), "
            "served model name (triton; default asen)."
        ),
    ] = None,
    top: Annotated[int, typer.Option(min=1, help="Number of results.")] = 10,
    html: Annotated[
        Path | None,
        typer.Option(
            help="Write a results page; its images go to OUT_files/, a folder asen marks "
            "as its own (any other folder there is refused)."
        ),
    ] = None,
    json_out: JsonOut = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(help="Checkpoint for the page's attention map when --backend is not torch."),
    ] = None,
    nprobe: Annotated[
        int | None, typer.Option(min=1, help="IVF lists searched (default: the index's).")
    ] = None,
    device: Device = "auto",
    url: Url = None,
    protocol: Protocol = None,
) -> None:
    """Find the gallery items most similar to an image in one attribute."""
    from dataclasses import asdict

    from asen.atomic import atomic_write_text
    from asen.search import SearchIndex, attribute_id, query

    if html:
        from asen.page_files import check_page_path

        check_page_path(html)  # a page asen must not write is refused before the search
    if index is None:
        if backend != BackendName.triton or html:
            raise AsenError("--index is required (except with --backend triton and no --html)")
        hits, attr_name = _served_search(image, attr, top, nprobe, url, protocol, model)
    else:
        gallery = SearchIndex.load(index)
        a = attribute_id(attr, gallery.names)
        if model is None and backend != BackendName.triton:
            raise AsenError(f"--model is required for --backend {backend.value}")
        options = {"device": device, "batch_size": 1, "url": url, "protocol": protocol}
        with _open_encoder(backend, model or "asen", **options) as encoder:
            _, hits = query(encoder, gallery, image, attribute=a, k=top, nprobe=nprobe)
        attr_name = gallery.names[a]
    table = Table(title=f"{image.name}: same {attr_name} ({backend.value})")
    for column in ("#", "score", "value", "path"):
        table.add_column(column, justify="right" if column != "path" else "left")
    for h in hits:
        table.add_row(str(h.rank), f"{h.score:.4f}", str(h.value), h.path)
    console.print(table)
    if json_out:
        atomic_write_text(json_out, json.dumps([asdict(h) for h in hits], indent=2) + "\n")
        console.print(f"wrote {json_out}")
    if html:
        if checkpoint is None and backend == BackendName.torch:
            checkpoint = Path(model)
        count, kind = gallery.manifest["counts"][a], gallery.manifest["kind"]
        subtitle = f"{backend.value}: {model or 'asen'} · index {index} ({kind}, {count} items)"
        _search_page(html, image, a, hits, gallery, checkpoint=checkpoint, subtitle=subtitle)
        console.print(f"wrote {html}")


@app.command("app")
@_errors
def app_cmd(
    url: Url = None,
    protocol: Protocol = None,
    model: Annotated[str, typer.Option(help="Served search model.")] = "asen_search",
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port of the page.")] = 8080,
    data: Annotated[
        Path | None,
        typer.Option("--data", help="Gallery dataset root (default: the one the model reports)."),
    ] = None,
    max_upload_mb: Annotated[float, typer.Option(help="Largest query image accepted.")] = 10.0,
) -> None:
    """A web page on the served asen_search model: upload or pick a query, see the top k."""
    from client.app import Settings, run

    if max_upload_mb <= 0:
        raise AsenError(f"--max-upload-mb {max_upload_mb}: must be positive")
    settings = Settings(url, model, protocol or "grpc", data, int(max_upload_mb * 2**20))

    def ready(address: str) -> None:
        console.print(f"asen app on {address} (Ctrl-C to stop)", highlight=False)

    run(settings, host=host, port=port, ready=ready)


def _served_search(
    image: Path, attr: str, top: int, nprobe: int | None, url, protocol, model: str | None
) -> tuple[list, str]:
    """One query to the served asen_search model: (hits, attribute name)."""
    from asen.search import attribute_id
    from client.search import SEARCH_MODEL, ServedSearch

    if not image.is_file():
        raise AsenError(f"{image}: no such image file")
    with ServedSearch(url, model or SEARCH_MODEL, protocol or "grpc") as served:
        name = served.names[attribute_id(attr, served.names)]
        return served.search(image.read_bytes(), name, top, nprobe), name


def _search_page(
    out: Path, image: Path, attribute: int, hits: list, gallery, *, checkpoint, subtitle: str
) -> None:
    """The results page, with the attention map when a PyTorch checkpoint is at hand."""
    from asen.checkpoint import load_model
    from asen.visualize import explain, write_search_page

    explanation, note = None, "No attention map: no PyTorch model; pass --checkpoint."
    if checkpoint is not None:
        net, _ = load_model(checkpoint)
        explanation, note = explain(net, image, [attribute]), ""
    write_search_page(
        out,
        image,
        attribute,
        hits=hits,
        index=gallery,
        explanation=explanation,
        subtitle=subtitle,
        note=note,
    )


@app.command("explain")
@_errors
def explain_cmd(
    image: Annotated[Path, typer.Argument(help="Image file.")],
    model: Annotated[Path, typer.Option(help="Checkpoint (e.g. runs/stage2/best.pt).")],
    out: Annotated[Path, typer.Option(callback=_output_file, help="PNG to write.")],
    attr: Annotated[
        str, typer.Option("--attr", help="Attribute name(s), comma-separated, or all.")
    ] = "all",
    device: Device = "auto",
) -> None:
    """Attention heatmap and local-branch crop box per attribute, in one figure."""
    from asen.checkpoint import load_model
    from asen.encoders import resolve_device
    from asen.model.shape import ModelInfo
    from asen.search import attribute_id
    from asen.visualize import explain, explain_figure

    net, ckpt = load_model(model, resolve_device(device))
    names = ModelInfo.from_checkpoint(ckpt).names
    ids = (
        list(range(len(names)))
        if attr == "all"
        else [attribute_id(n.strip(), names) for n in attr.split(",")]
    )
    width, height = explain_figure(explain(net, image, ids), names, out)
    console.print(f"wrote {out} ({width}x{height})")


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())

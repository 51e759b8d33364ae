"""`asen`: the command-line interface. Parses arguments, calls one function, prints."""

from __future__ import annotations

import functools
import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from asen import AsenError

app = typer.Typer(
    help="ASEN++ attribute-specific fashion similarity: train, export, serve, evaluate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console(soft_wrap=True)
err = Console(stderr=True)


def _errors(fn):
    """Run a command; a user mistake (AsenError) is one red line and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except AsenError as e:
            err.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("[red]interrupted[/red]")
            raise typer.Exit(130) from None

    return wrapper


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
Workers = Annotated[int, typer.Option(help="DataLoader workers decoding images.")]
SkipBad = Annotated[
    bool,
    typer.Option("--skip-bad-images", help="Skip and count undecodable images instead of failing."),
]
DistTimeout = Annotated[
    float,
    typer.Option(
        help="Under torchrun: seconds a process waits for the others before failing the run."
    ),
]


@data_app.command("synth")
@_errors
def data_synth(
    out: Annotated[Path, typer.Argument(help="Folder to write the dataset into.")],
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same files).")] = 0,
    train: Annotated[int, typer.Option(help="Training images.")] = 4000,
    eval: Annotated[int, typer.Option("--eval", help="Images in each of valid and test.")] = 1000,
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
    with console.status(f"writing synthetic dataset to {out}"):
        meta = generate(out, seed=seed, n_train=train, n_eval=eval, attributes=attrs)
    names = ", ".join(f"{a['name']} ({a['values']})" for a in meta["attributes"])
    console.print(
        f"wrote {out}: {train} train, {eval} valid, {eval} test images; attributes: {names}"
    )


class Precision(str, Enum):
    """Training precision: auto picks bf16 where the hardware computes it natively."""

    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"


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
    stage: Annotated[int, typer.Option(help="1: global branch; 2: adds the local branch.")] = 1,
    init: Annotated[
        Path | None, typer.Option(help="Checkpoint to initialise from (stage 1 for stage 2).")
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Override train.epochs.")] = None,
    time_budget: Annotated[
        float | None, typer.Option(help="Minutes; stop cleanly after the step that crosses it.")
    ] = None,
    out: Annotated[Path, typer.Option(help="Run folder: last.pt, best.pt, metrics.jsonl.")] = Path(
        "runs/stage1"
    ),
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
    workers: Annotated[
        int | None, typer.Option(help="DataLoader workers (default: config data.workers).")
    ] = None,
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
    if result.stopped_by in ("SIGTERM", "SIGINT"):
        console.print(f"stopped by {result.stopped_by}; saved in {out}: continue with --resume")
        if result.stopped_by == "SIGINT":
            raise typer.Exit(130)
    console.print(
        f"best val mAP {result.best_val_map:.4f}; checkpoints in {out} (best.pt, last.pt)"
    )


def _open_encoder(
    backend: str,
    model: str,
    device: str,
    batch_size: int,
    url: str | None = None,
    protocol: str = "grpc",
    send_bytes: bool = False,
):
    """The Encoder for a backend name (DESIGN contract 4)."""
    if backend == "torch":
        from asen.encoders import TorchEncoder

        return TorchEncoder.from_checkpoint(model, device, batch_size)
    if backend in ("onnx", "trt"):
        from export.encoders import open_encoder

        encoder = open_encoder(backend, model, device, batch_size)
        err.print(encoder.describe(), highlight=False)
        return encoder
    if backend == "triton":
        from client.triton import TritonEncoder

        encoder = TritonEncoder(url, model, protocol, send_bytes, batch_size)
        err.print(encoder.describe(), highlight=False)
        return encoder
    if send_bytes:
        raise AsenError("--send-bytes applies to --backend triton")
    raise AsenError(f"--backend {backend}: unknown backend (valid: torch, onnx, trt, triton)")


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
Backend = Annotated[str, typer.Option(help="torch, onnx, trt or triton.")]
Split = Annotated[str, typer.Option(help="valid or test.")]
BatchSize = Annotated[int, typer.Option(help="Images per encoder call.")]
Url = Annotated[
    str | None,
    typer.Option(help="Triton server HOST:PORT (default 127.0.0.1:8001 gRPC, :8000 HTTP)."),
]
Protocol = Annotated[str, typer.Option(help="Triton protocol: grpc or http.")]
SendBytes = Annotated[
    bool,
    typer.Option(
        "--send-bytes", help="Triton: send encoded image files through the ensemble, not tensors."
    ),
]


def _dataset(data: Path, encoder):
    from asen.data.splits import open_dataset

    return open_dataset(data, encoder.info.attributes)


def _embed_split(
    model: str,
    data: Path,
    split: str,
    backend: str,
    device: str,
    batch_size: int,
    workers: int,
    skip_bad_images: bool,
    url: str | None,
    protocol: str,
    send_bytes: bool,
    dist_timeout: float,
):
    """Open the backend's Encoder and embed a split (sharded under torchrun); returns
    (encoder, dataset, embedded) on rank 0 and None on the other ranks."""
    from asen.distributed import is_main, process_group
    from asen.evaluate import embed_split, num_pairs

    with process_group(device, dist_timeout):
        encoder = _open_encoder(backend, model, device, batch_size, url, protocol, send_bytes)
        dataset = _dataset(data, encoder)
        with _progress() as progress:
            total = num_pairs(dataset, split)
            task = progress.add_task(f"encoding {split} ({backend})", total=total, info="")
            embedded = embed_split(
                encoder, dataset, split, batch_size, workers, skip_bad_images,
                lambda n: progress.advance(task, n),
            )  # fmt: skip
        if not is_main():
            return None
    return encoder, dataset, embedded


@app.command("eval")
@_errors
def eval_cmd(
    model: ModelArg,
    data: DataRoot,
    split: Split = "test",
    backend: Backend = "torch",
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the figures as JSON.")
    ] = None,
    device: Device = "auto",
    batch_size: BatchSize = 64,
    workers: Workers = 2,
    skip_bad_images: SkipBad = False,
    url: Url = None,
    protocol: Protocol = "grpc",
    send_bytes: SendBytes = False,
    dist_timeout: DistTimeout = 600.0,
) -> None:
    """Per-attribute and overall mAP (the paper's protocol) through any backend."""
    from asen.evaluate import score

    done = _embed_split(
        model, data, split, backend, device, batch_size, workers, skip_bad_images, url,
        protocol, send_bytes, dist_timeout,
    )  # fmt: skip
    if done is None:
        return
    encoder, dataset, embedded = done
    result = score(embedded, dataset.names, encoder.backend, split)
    _print_map_table([result])
    if result.skipped:
        console.print(
            f"[yellow]skipped {result.skipped} entries whose image could not be decoded[/yellow]"
        )
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result.to_json(), indent=2) + "\n")
        console.print(f"wrote {json_out}")


@app.command("embed")
@_errors
def embed_cmd(
    model: ModelArg,
    data: DataRoot,
    out: Annotated[Path, typer.Option(help="Output .npz file.")],
    split: Split = "test",
    backend: Backend = "torch",
    device: Device = "auto",
    batch_size: BatchSize = 64,
    workers: Workers = 2,
    skip_bad_images: SkipBad = False,
    url: Url = None,
    protocol: Protocol = "grpc",
    send_bytes: SendBytes = False,
    dist_timeout: DistTimeout = 600.0,
) -> None:
    """Embed every query and candidate entry of a split into an .npz file."""
    done = _embed_split(
        model, data, split, backend, device, batch_size, workers, skip_bad_images, url,
        protocol, send_bytes, dist_timeout,
    )  # fmt: skip
    if done is None:
        return
    _, dataset, embedded = done
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
    _print_map_table(loaded)


@app.command("export")
@_errors
def export_cmd(
    checkpoint: Annotated[
        Path, typer.Argument(help="Checkpoint to export (e.g. runs/stage2/best.pt).")
    ],
    repo: Annotated[Path, typer.Option(help="Model repository folder.")] = Path("triton_models"),
    name: Annotated[
        str, typer.Option(help="Model name: writes <name>_onnx (and <name>_trt).")
    ] = "asen",
    trt: Annotated[
        bool,
        typer.Option("--trt", help="Also build a TensorRT engine (needs TensorRT and a CUDA GPU)."),
    ] = False,
    fp16: Annotated[
        bool, typer.Option("--fp16", help="Build the TensorRT engine with FP16 kernels.")
    ] = False,
    max_batch: Annotated[int, typer.Option(help="Largest batch the artifacts accept.")] = 64,
) -> None:
    """Export a checkpoint to one ONNX graph (and a TensorRT engine), verified against PyTorch."""
    from export.build import export_model

    def report(line: str) -> None:
        console.print(line, markup=False, highlight=False)

    for path in export_model(checkpoint, repo, name, trt, fp16, max_batch, report):
        report(f"wrote {path}")


@app.command("serve")
@_errors
def serve_cmd(
    repo: Annotated[Path, typer.Option(help="Model repository (written by `asen export`).")] = Path(
        "triton_models"
    ),
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    http_port: Annotated[int, typer.Option(help="HTTP/REST port.")] = 8000,
    grpc_port: Annotated[int, typer.Option(help="gRPC port.")] = 8001,
    metrics_port: Annotated[int, typer.Option(help="Prometheus metrics port.")] = 8002,
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
    for choice in handle.choices:
        console.print(f"  {choice.model:<24} {choice.how}", markup=False, highlight=False)
    console.print(
        f"HTTP {handle.http_url}  gRPC {handle.grpc_url}  metrics {handle.metrics_url}\n"
        f"ready: {', '.join(handle.models)}\nlog: {handle.log_file} (pid {handle.process.pid})"
        "\nCtrl-C to stop",
        highlight=False,
    )
    serve_until_stopped(handle)
    console.print("tritonserver stopped")


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
    nprobe: Annotated[int, typer.Option(help="IVF lists searched per query.")] = 16,
    include_queries: Annotated[
        bool,
        typer.Option("--include-queries", help="Also index the split's queries (default: not)."),
    ] = False,
) -> None:
    """Build one FAISS inner-product index per attribute from an embeddings file."""
    from asen.search import SearchIndex, load_embeddings

    with console.status(f"indexing {gallery}"):
        embedded, names = load_embeddings(gallery)
        index = SearchIndex.build(
            embedded, names, ivf, include_queries, nprobe, data, str(gallery.resolve())
        )
        index.save(out)
    counts = ", ".join(f"{n} {c}" for n, c in zip(names, index.manifest["counts"], strict=True))
    console.print(
        f"wrote {out}: {index.manifest['kind']} index of dim {index.dim}; entries: {counts}",
        highlight=False,
    )


@app.command("search")
@_errors
def search_cmd(
    image: Annotated[Path, typer.Argument(help="Query image file.")],
    attr: Annotated[str, typer.Option("--attr", help="Attribute to match on (name or number).")],
    index: Annotated[Path, typer.Option("--index", help="Index folder (`asen index`).")],
    backend: Backend = "torch",
    model: Annotated[
        str | None,
        typer.Option(
            help="Checkpoint (torch), model repository or artifact (onnx, trt), "
            "served model name (triton; default asen)."
        ),
    ] = None,
    top: Annotated[int, typer.Option(help="Number of results.")] = 10,
    html: Annotated[
        Path | None,
        typer.Option(help="Write a results page; its images go to OUT_files/ (replaced)."),
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the results as JSON.")
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(help="Checkpoint for the page's attention map when --backend is not torch."),
    ] = None,
    nprobe: Annotated[
        int | None, typer.Option(help="IVF lists searched (default: the index's).")
    ] = None,
    device: Device = "auto",
    url: Url = None,
    protocol: Protocol = "grpc",
) -> None:
    """Find the gallery items most similar to an image in one attribute."""
    from dataclasses import asdict

    from asen.search import SearchIndex, attribute_id, query

    gallery = SearchIndex.load(index)
    a = attribute_id(attr, gallery.names)
    if model is None and backend != "triton":
        raise AsenError(f"--model is required for --backend {backend}")
    encoder = _open_encoder(backend, model or "asen", device, 1, url, protocol)
    _, hits = query(encoder, gallery, image, a, top, nprobe)
    table = Table(title=f"{image.name}: same {gallery.names[a]} ({backend})")
    for column in ("#", "score", "value", "path"):
        table.add_column(column, justify="right" if column != "path" else "left")
    for h in hits:
        table.add_row(str(h.rank), f"{h.score:.4f}", str(h.value), h.path)
    console.print(table)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps([asdict(h) for h in hits], indent=2) + "\n")
        console.print(f"wrote {json_out}")
    if html:
        from asen.checkpoint import load_model
        from asen.visualize import explain, write_search_page

        note = ""
        net = encoder.model if backend == "torch" else None
        if net is None and checkpoint is not None:
            net, _ = load_model(checkpoint)
        if net is None:
            note = f"No attention map: --backend {backend} has no PyTorch model; pass --checkpoint."
        explanation = explain(net, image, [a]) if net is not None else None
        html.parent.mkdir(parents=True, exist_ok=True)
        count, kind = gallery.manifest["counts"][a], gallery.manifest["kind"]
        subtitle = f"{backend}: {model or 'asen'} · index {index} ({kind}, {count} items)"
        write_search_page(html, image, a, hits, gallery, explanation, subtitle, note)
        console.print(f"wrote {html}")


@app.command("explain")
@_errors
def explain_cmd(
    image: Annotated[Path, typer.Argument(help="Image file.")],
    model: Annotated[Path, typer.Option(help="Checkpoint (e.g. runs/stage2/best.pt).")],
    out: Annotated[Path, typer.Option(help="PNG to write.")],
    attr: Annotated[
        str, typer.Option("--attr", help="Attribute name(s), comma-separated, or all.")
    ] = "all",
    device: Device = "auto",
) -> None:
    """Attention heatmap and local-branch crop box per attribute, in one figure."""
    from asen.checkpoint import load_model
    from asen.encoders import resolve_device
    from asen.search import attribute_id
    from asen.visualize import explain, explain_figure

    net, ckpt = load_model(model, resolve_device(device))
    names = [a["name"] for a in ckpt["attributes"]]
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

"""`asen index`, `asen search` and `asen explain`: a gallery index, queries on it, and
what the model looks at."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from asen import AsenError
from asen.commands.evaluate import open_encoder
from asen.commands.options import (
    Backend,
    BackendName,
    Device,
    JsonOut,
    ServerAddress,
    output_file,
    with_options,
)
from asen.commands.ui import console


@dataclass
class Extensions:
    """What the layers above the library add to these commands when asen/cli.py registers
    them: asen.export publishes an index as the served `asen_search` model (`asen index
    --repo`), asen.client queries that served model (`asen search --backend triton`
    without --index)."""

    publish_index: Callable | None = None
    served_search: Callable | None = None


EXTENSIONS = Extensions()


def index(
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
    reload: Annotated[
        str | None,
        typer.Option(
            help="With --repo: then ask the Triton server at this URL (`asen serve "
            "--model-control explicit`) to load the new gallery version."
        ),
    ] = None,
) -> None:
    """Build one FAISS inner-product index per attribute from an embeddings file."""
    from asen.search import SearchIndex, load_embeddings

    publish = EXTENSIONS.publish_index
    if repo is not None and publish is None:
        raise AsenError("--repo needs asen's export layer (asen.export), which is not installed")
    if reload is not None and repo is None:
        raise AsenError("--reload needs --repo (the model repository the server serves)")
    with console.status(escape(f"indexing {gallery}")):
        embedded, names = load_embeddings(gallery)
        built = SearchIndex.build(
            embedded,
            names,
            ivf=ivf,
            include_queries=include_queries,
            nprobe=nprobe,
            data_root=data,
            source=str(gallery.resolve()),
            compress=compress,
        )
        publish_step = None
        if repo is not None:
            publish_step = publish(
                built,
                embedded,
                data_root=data,
                repo=repo,
                encoder=encoder,
                source=str(gallery),
                **({"reload": reload} if reload is not None else {}),
            )
        built.save(out)
    counts = ", ".join(f"{n} {c}" for n, c in zip(names, built.manifest["counts"], strict=True))
    console.print(
        f"wrote {out}: {built.manifest['kind']} index of dim {built.dim}; entries: {counts}",
        highlight=False,
    )
    if publish_step is not None:
        console.print(publish_step(), highlight=False)


def _check_search(*, index: Path | None, backend, html: Path | None, model) -> None:
    """Refuse what the search cannot do before it starts."""
    if html:
        from asen.page_files import check_page_path

        check_page_path(html)  # a page asen must not write is refused before the search
    if index is None and (backend != BackendName.triton or html):
        raise AsenError("--index is required (except with --backend triton and no --html)")
    if index is not None and model is None and backend != BackendName.triton:
        raise AsenError(f"--model is required for --backend {backend.value}")


def _served(image: Path, attr: str, top: int, nprobe: int | None, server: ServerAddress, model):
    if EXTENSIONS.served_search is None:
        raise AsenError("--backend triton without --index needs asen's client layer")
    return EXTENSIONS.served_search(
        image, attr, top=top, nprobe=nprobe, url=server.url, protocol=server.protocol, model=model
    )


@with_options(server=ServerAddress)
def search(
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
    *,
    server: ServerAddress,
) -> None:
    """Find the gallery items most similar to an image in one attribute."""
    from asen.atomic import atomic_write_text
    from asen.search import SearchIndex, attribute_id, query

    _check_search(index=index, backend=backend, html=html, model=model)
    if index is None:
        hits, attr_name = _served(image, attr, top, nprobe, server, model)
    else:
        gallery = SearchIndex.load(index)
        a = attribute_id(attr, gallery.names)
        options = {"device": device, "batch_size": 1, "url": server.url}
        options["protocol"] = server.protocol
        with open_encoder(backend.value, model or "asen", **options) as encoder:
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


def _search_page(
    out: Path, image: Path, attribute: int, hits: list, gallery, *, checkpoint, subtitle: str
) -> None:
    """The results page, with the attention map when a PyTorch checkpoint is at hand."""
    from asen.checkpoint import load_model
    from asen.visualize import explain as explain_image
    from asen.visualize import write_search_page

    explanation, note = None, "No attention map: no PyTorch model; pass --checkpoint."
    if checkpoint is not None:
        net, _ = load_model(checkpoint)
        explanation, note = explain_image(net, image, [attribute]), ""
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


def explain(
    image: Annotated[Path, typer.Argument(help="Image file.")],
    model: Annotated[Path, typer.Option(help="Checkpoint (e.g. runs/stage2/best.pt).")],
    out: Annotated[Path, typer.Option(callback=output_file, help="PNG to write.")],
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
    from asen.visualize import explain as explain_image
    from asen.visualize import explain_figure

    net, ckpt = load_model(model, resolve_device(device))
    names = ModelInfo.from_checkpoint(ckpt).names
    ids = (
        list(range(len(names)))
        if attr == "all"
        else [attribute_id(n.strip(), names) for n in attr.split(",")]
    )
    width, height = explain_figure(explain_image(net, image, ids), names, out)
    console.print(f"wrote {out} ({width}x{height})")

"""Options shared by several commands, each declared once.

Single options are `Annotated` types. Options that travel together (a Triton server's
address, its connection settings, the split to embed, the backend that embeds it) are
option groups: frozen dataclasses whose fields are such types. `with_options` adds a
group's fields to a command's options and hands the command one instance of the group.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from asen import AsenError
from asen.backends import backend_names


def _checked_path(check: str) -> Callable:
    """An option callback: an output path that could not be written at the end of the work
    (asen.output_paths.`check`) is refused before it starts (one line, exit 1)."""

    def callback(ctx: typer.Context, param: typer.CallbackParam, value: Path | None):
        from asen import output_paths

        if value is not None:
            try:
                getattr(output_paths, check)(value)
            except AsenError as e:
                raise typer.BadParameter(str(e)) from None
        return value

    return callback


output_file = _checked_path("check_output_file")
output_folder = _checked_path("check_output_folder")

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
JsonOut = Annotated[
    Path | None,
    typer.Option("--json", callback=output_file, help="Also write the figures or results as JSON."),
]
BatchSize = Annotated[int, typer.Option(min=1, help="Images per encoder call.")]
Split = Annotated[str, typer.Option(help="valid or test.")]
ModelArg = Annotated[
    str,
    typer.Argument(
        help="Checkpoint (torch), model repository or artifact (onnx, trt), "
        "served model name (triton, e.g. asen)."
    ),
]

# The backends an Encoder runs on (asen.backends: the library's own and the entry points).
BackendName = Enum("BackendName", {name: name for name in backend_names()}, type=str)
Backend = Annotated[BackendName, typer.Option(help="The engine that computes embeddings.")]
Url = Annotated[
    str | None,
    typer.Option(help="Triton server HOST:PORT (default 127.0.0.1:8001 gRPC, :8000 HTTP)."),
]
Protocol = Annotated[str | None, typer.Option(help="Triton protocol: grpc (default) or http.")]
ModelVersion = Annotated[
    str | None,
    typer.Option(help="Triton: the encoder model's version (default: the latest served)."),
]


@dataclass(frozen=True)
class ServerAddress:
    """Where a Triton server answers."""

    url: Url = None
    protocol: Protocol = None


@dataclass(frozen=True)
class TritonConnection:
    """How to talk to a Triton server beyond its address: TLS, headers, shared memory."""

    ssl: Annotated[
        bool, typer.Option("--ssl", help="Triton: connect with TLS (gRPC or HTTPS).")
    ] = False
    root_certificates: Annotated[
        Path | None, typer.Option(help="Triton TLS: PEM root certificates that verify the server.")
    ] = None
    private_key: Annotated[
        Path | None, typer.Option(help="Triton TLS: the client's PEM private key.")
    ] = None
    certificate_chain: Annotated[
        Path | None, typer.Option(help="Triton TLS: the client's PEM certificate chain.")
    ] = None
    header: Annotated[
        list[str] | None,
        typer.Option(
            "--header",
            help="Triton: NAME:VALUE sent with every request (repeatable; e.g. Host:NAME for "
            "KServe behind an ingress).",
        ),
    ] = None
    shared_memory: Annotated[
        str | None,
        typer.Option(help="Triton: none or system (shared memory with a server on this host)."),
    ] = None

    def given(self) -> list[str]:
        """The flags set on the command line."""
        pairs = (
            ("--ssl", self.ssl),
            ("--header", self.header),
            ("--shared-memory", self.shared_memory),
        )
        return [flag for flag, value in pairs if value]

    def options(self) -> dict[str, Any]:
        """The `tls`, `headers` and `shared_memory` options of a Triton client, None where
        unset (certificates without --ssl: one error)."""
        from asen.remote import Tls, parse_headers

        certificates = (self.root_certificates, self.private_key, self.certificate_chain)
        if not self.ssl and any(certificates):
            raise AsenError("--root-certificates, --private-key and --certificate-chain need --ssl")
        return {
            "tls": Tls(*certificates) if self.ssl else None,
            "headers": parse_headers(self.header) or None,
            "shared_memory": self.shared_memory,
        }


@dataclass(frozen=True)
class SplitOptions:
    """A split of a dataset to embed, and how its images are decoded."""

    data: DataRoot
    split: Split = "test"
    workers: Workers = 2
    skip_bad_images: SkipBad = False


@dataclass(frozen=True)
class EncoderOptions:
    """The backend that embeds, and how."""

    backend: Backend = BackendName.torch
    device: Device = "auto"
    batch_size: BatchSize = 64
    send_bytes: Annotated[
        bool,
        typer.Option(
            "--send-bytes",
            help="Triton: send encoded image files through the ensemble, not tensors.",
        ),
    ] = False
    model_version: ModelVersion = None
    dist_timeout: DistTimeout = 600.0


def _default(field: dataclasses.Field) -> Any:
    missing = field.default is dataclasses.MISSING
    return inspect.Parameter.empty if missing else field.default


def with_options(**groups: type) -> Callable[[Callable], Callable]:
    """Add each option group's fields to the decorated command's options (after its own);
    the command receives one instance of each group under the given keyword (as a named
    parameter, or in its **kwargs)."""

    def decorate(command: Callable) -> Callable:
        own = inspect.signature(command, eval_str=True)
        added = [
            inspect.Parameter(
                field.name,
                inspect.Parameter.KEYWORD_ONLY,
                annotation=typing.get_type_hints(group, include_extras=True)[field.name],
                default=_default(field),
            )
            for group in groups.values()
            for field in dataclasses.fields(group)
        ]
        kept = [
            p
            for p in own.parameters.values()
            if p.name not in groups and p.kind is not inspect.Parameter.VAR_KEYWORD
        ]
        parameters = kept + added

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            for keyword, group in groups.items():
                fields = dataclasses.fields(group)
                kwargs[keyword] = group(**{f.name: kwargs.pop(f.name) for f in fields})
            return command(**kwargs)

        wrapper.__signature__ = own.replace(parameters=parameters)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        del wrapper.__wrapped__  # Typer reads the new signature, not the command's own
        return wrapper

    return decorate

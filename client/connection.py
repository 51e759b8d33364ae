"""How a client reaches a Triton endpoint: protocol, TLS and extra headers.

Shared by `TritonEncoder` and `asen bench serve`. A `Host:` header over gRPC becomes the
channel's authority (`grpc.default_authority`), which is what an ingress such as Istio in
front of KServe routes on; every other header goes with each call (HTTP headers, gRPC
metadata).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping
from http import HTTPStatus

import grpc
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from asen import AsenError
from asen.remote import Tls

PROTOCOLS = ("grpc", "http")
# tritonclient raises one InferenceServerException for both protocols and keeps its status
# as text: str() of the grpc.StatusCode ("StatusCode.UNAVAILABLE"), or the HTTP status
# number ("503"). `status_code` turns that text back into the typed code, once, here.
_GRPC_CODES = {str(code): code for code in grpc.StatusCode}


def status_code(error: InferenceServerException) -> grpc.StatusCode | HTTPStatus | None:
    """The typed status of a tritonclient error: a `grpc.StatusCode` (gRPC), an
    `HTTPStatus` (HTTP), or None where it has none (an error raised by the client)."""
    text = str(error.status() or "")
    if text.isdigit():
        try:
            return HTTPStatus(int(text))
        except ValueError:  # a number outside the standard's list
            return None
    return _GRPC_CODES.get(text)


def check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise AsenError(f"--protocol {protocol}: expected grpc or http")
    return protocol


class _WithHeaders:
    """A tritonclient client whose every call that takes `headers` gets these."""

    def __init__(self, client, headers: Mapping[str, str]):
        self._client, self._headers = client, dict(headers)

    def __getattr__(self, name: str):
        attr = getattr(self._client, name)
        if callable(attr) and "headers" in inspect.signature(attr).parameters:
            return functools.partial(attr, headers=self._headers)
        return attr


def _grpc_channel_args(authority: str) -> list[tuple]:
    """tritonclient's default channel options (which `channel_args` replaces) plus the
    authority."""
    keepalive = grpcclient.KeepAliveOptions()
    return [
        ("grpc.max_send_message_length", 2**31 - 1),
        ("grpc.max_receive_message_length", 2**31 - 1),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
        ("grpc.default_authority", authority),
    ]


def make_client(
    url: str,
    protocol: str,
    *,
    tls: Tls | None = None,
    headers: Mapping[str, str] | None = None,
    timeout_s: float = 60.0,
):
    """A tritonclient gRPC or HTTP client for `url` with TLS (when `tls` is given, even
    empty) and `headers` on every call."""
    headers = dict(headers or {})
    if check_protocol(protocol) == "grpc":
        host = next((headers.pop(k) for k in list(headers) if k.lower() == "host"), None)
        client = grpcclient.InferenceServerClient(
            url,
            ssl=tls is not None,
            root_certificates=tls.path(tls.root_certificates) if tls else None,
            private_key=tls.path(tls.private_key) if tls else None,
            certificate_chain=tls.path(tls.certificate_chain) if tls else None,
            channel_args=_grpc_channel_args(host) if host else None,
        )
        headers = {k.lower(): v for k, v in headers.items()}  # gRPC metadata keys
    else:
        options = None
        if tls is not None:
            options = {
                key: str(path)
                for key, path in (
                    ("ca_certs", tls.root_certificates),
                    ("certfile", tls.certificate_chain),
                    ("keyfile", tls.private_key),
                )
                if path
            }
        client = httpclient.InferenceServerClient(
            url,
            connection_timeout=timeout_s,
            network_timeout=timeout_s,
            ssl=tls is not None,
            ssl_options=options,
        )
    return _WithHeaders(client, headers) if headers else client

"""A local TCP relay in front of a real server, for tests: it records what clients send
(to check headers on the wire) and optionally terminates TLS with a given certificate."""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import subprocess
import threading
from pathlib import Path


def self_signed(folder: Path, name: str = "server") -> tuple[Path, Path]:
    """(certificate, key) PEM files for localhost / 127.0.0.1, made by the openssl CLI."""
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost"]
        + ["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )
    return cert, key


class Relay:
    """Listens on 127.0.0.1 and relays each connection to `target`; `sent` holds the bytes
    clients sent (after TLS, when `tls` is a server context)."""

    def __init__(self, target: str, tls: ssl.SSLContext | None = None):
        host, _, port = target.rpartition(":")
        self.target, self.tls = (host, int(port)), tls
        self.sent = bytearray()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(conn,), daemon=True).start()

    def _relay(self, conn: socket.socket) -> None:
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            upstream = socket.create_connection(self.target, timeout=30)
        except OSError:
            conn.close()
            return
        with self._lock:
            self._open += [conn, upstream]
        with contextlib.suppress(OSError), conn, upstream:
            self._pump(conn, upstream)

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        while True:
            ready, _, _ = select.select([client, upstream], [], [], 60)
            if not ready:
                return
            for sock in ready:
                other = upstream if sock is client else client
                data = sock.recv(1 << 16)
                while isinstance(sock, ssl.SSLSocket) and sock.pending():
                    data += sock.recv(sock.pending())
                if not data:
                    return
                if sock is client:
                    with self._lock:
                        self.sent += data
                other.sendall(data)

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server context for the relay (ALPN h2 for gRPC, http/1.1 for HTTP)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["h2", "http/1.1"])
    return context

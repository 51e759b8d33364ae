"""Settings for reaching a remote server, as the command line gives them: TLS files and
extra headers. Plain values, checked when made; the clients in asen.client use them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from asen import AsenError


@dataclass(frozen=True)
class Tls:
    """TLS to the server: PEM files (all optional; without a root certificate the system's
    trusted roots verify the server)."""

    root_certificates: Path | None = None
    private_key: Path | None = None
    certificate_chain: Path | None = None

    def __post_init__(self) -> None:
        for flag, path in self.files().items():
            if not Path(path).is_file():
                raise AsenError(f"{flag} {path}: no such file")
        if bool(self.private_key) != bool(self.certificate_chain):
            raise AsenError("--private-key and --certificate-chain go together (client TLS)")

    def files(self) -> dict[str, Path]:
        """The given files by their option name."""
        named = {
            "--root-certificates": self.root_certificates,
            "--private-key": self.private_key,
            "--certificate-chain": self.certificate_chain,
        }
        return {flag: Path(p) for flag, p in named.items() if p is not None}

    @staticmethod
    def path(path: Path | None) -> str | None:
        return str(path) if path else None


def parse_headers(items: Sequence[str] | None) -> dict[str, str]:
    """`K:V` strings (`--header`, repeatable) -> {K: V}; a malformed one is an error."""
    headers: dict[str, str] = {}
    for item in items or ():
        key, sep, value = item.partition(":")
        if not sep or not key.strip() or any(c.isspace() for c in key.strip()):
            raise AsenError(f"--header {item!r}: expected NAME:VALUE (e.g. Host:asen.example.com)")
        headers[key.strip()] = value.strip()
    return headers

"""Image URLs for `asen data import` (docs/data-import.md, "URLs and the cache").

Downloads run concurrently in threads, each with bounded retries and exponential backoff
for what may pass (connection errors, resets, timeouts, HTTP 408/429/5xx); a 404 or any
other final answer is not retried. Every download lands in a content-addressed cache:
`blobs/<sha256 of the bytes>` plus `urls/<sha256 of the URL>` holding that digest, so a
second import reads the cache instead of the network. A dead link (what no retry fixed,
or bytes that are not an image) is reported with its reason, never raised.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import asen
from asen.atomic import atomic_write_bytes, atomic_write_text, file_sha256
from asen.data.images import DECODE_ERRORS, BadImageError, open_image

MAX_DOWNLOAD_BYTES = 64 << 20  # a larger answer is not an image asen can use
RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
URL_SCHEMES = ("http://", "https://")
DEAD_LINK, NOT_AN_IMAGE = "dead link", "not an image"


def is_url(ref: str) -> bool:
    return ref.lower().startswith(URL_SCHEMES)


def default_cache() -> Path:
    """`$XDG_CACHE_HOME/asen/downloads`, else `~/.cache/asen/downloads`."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "asen" / "downloads"


def plain_reason(message: str) -> str:
    """A decoder's message without the Python object it names (`<_io.BytesIO object at
    0x...>`, `<_io.BufferedReader name='...'>`), so the same failure reads the same."""
    return re.sub(r" ?<(_io\.[^<>]*|[^<>]* at 0x[0-9a-fA-F]+)>", "", message)


def image_format(source: str | Path | bytes) -> str:
    """Decode an image whole (within images.py's pixel bound); returns Pillow's format
    name. Anything else is a BadImageError naming the source."""
    with open_image(source) as img:
        try:
            img.load()
        except DECODE_ERRORS as e:
            name = "<bytes>" if isinstance(source, bytes) else str(source)
            raise BadImageError(f"{name}: cannot decode image ({e})") from e
        return img.format or "image"


@dataclass(frozen=True)
class FetchOptions:
    cache: Path
    workers: int = 8
    retries: int = 3  # attempts after the first
    backoff: float = 0.5  # seconds before the first retry, doubled for each next one
    timeout: float = 30.0  # seconds per attempt (connect and each read)


@dataclass(frozen=True)
class Fetched:
    """One URL's outcome: the cached file and its format, or why the link is dead."""

    url: str
    blob: Path | None = None
    image_format: str = ""
    problem: str = ""  # "dead link" or "not an image"; empty when the image is usable
    reason: str = ""


class _Failure(Exception):
    def __init__(self, reason: str, retry: bool):
        super().__init__(reason)
        self.reason, self.retry = reason, retry


def _describe(error: BaseException | str) -> str:
    """A short, stable reason for a failed attempt (the same failure reads the same)."""
    if isinstance(error, str):
        return error
    if isinstance(error, (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected,
                          http.client.IncompleteRead)):  # fmt: skip
        return "connection reset or closed"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, socket.gaierror):
        return "host not found"
    return str(error) or type(error).__name__


def _get(url: str, timeout: float) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": f"asen/{asen.__version__}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            data = response.read(MAX_DOWNLOAD_BYTES + 1)
    except urllib.error.HTTPError as e:
        e.close()
        raise _Failure(f"HTTP {e.code}", retry=e.code in RETRY_STATUS) from None
    except urllib.error.URLError as e:
        raise _Failure(_describe(e.reason), retry=True) from None
    except (http.client.HTTPException, OSError) as e:  # resets, timeouts, broken answers
        raise _Failure(_describe(e), retry=True) from None
    if len(data) > MAX_DOWNLOAD_BYTES:
        raise _Failure(f"larger than {MAX_DOWNLOAD_BYTES >> 20} MiB", retry=False)
    return data


def download(url: str, options: FetchOptions) -> bytes:
    """The body of `url`, retried up to `options.retries` times with backoff; a _Failure
    names the last reason."""
    attempt = 0
    while True:
        try:
            return _get(url, options.timeout)
        except _Failure as failure:
            if not failure.retry or attempt >= options.retries:
                tries = f" after {attempt + 1} tries" if attempt else ""
                raise _Failure(f"{failure.reason}{tries}", retry=False) from None
        time.sleep(options.backoff * 2**attempt)
        attempt += 1


class DownloadCache:
    """The content-addressed cache folder: blobs by content digest, URLs pointing at them."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def blob(self, digest: str) -> Path:
        return self.root / "blobs" / digest[:2] / digest

    def _entry(self, url: str) -> Path:
        key = hashlib.sha256(url.encode("utf-8")).hexdigest()
        return self.root / "urls" / key[:2] / key

    def lookup(self, url: str) -> Path | None:
        """The cached file of `url`, when present and still matching its digest."""
        try:
            digest = self._entry(url).read_text(encoding="ascii").strip()
            blob = self.blob(digest)
            return blob if file_sha256(blob) == digest else None
        except (OSError, ValueError):
            return None

    def store(self, url: str, data: bytes) -> Path:
        digest = hashlib.sha256(data).hexdigest()
        blob = self.blob(digest)
        if not blob.is_file() or file_sha256(blob) != digest:
            atomic_write_bytes(blob, data)
        atomic_write_text(self._entry(url), digest + "\n")
        return blob


def fetch(url: str, cache: DownloadCache, options: FetchOptions) -> Fetched:
    """One URL through the cache; a dead link or non-image comes back with its reason."""
    blob = cache.lookup(url)
    if blob is None:
        try:
            data = download(url, options)
        except _Failure as failure:
            return Fetched(url, problem=DEAD_LINK, reason=failure.reason)
        try:
            kind = image_format(data)
        except BadImageError as e:
            detail = plain_reason(str(e).removeprefix("<bytes>: "))
            return Fetched(url, problem=NOT_AN_IMAGE, reason=f"{len(data)} bytes: {detail}")
        return Fetched(url, cache.store(url, data), kind)
    try:
        return Fetched(url, blob, image_format(blob))
    except BadImageError as e:  # cannot happen to a blob that matched its digest, but say so
        return Fetched(url, problem=NOT_AN_IMAGE, reason=f"cached file unreadable ({e})")


def fetch_all(
    urls: Iterable[str],
    options: FetchOptions,
    progress: Callable[[int, int], object] | None = None,
) -> dict[str, Fetched]:
    """Fetch every distinct URL with `options.workers` threads; `progress(done, total)`
    after each."""
    cache = DownloadCache(options.cache)
    unique = sorted(set(urls))
    results: dict[str, Fetched] = {}
    with ThreadPoolExecutor(max_workers=max(1, options.workers)) as pool:
        for fetched in pool.map(lambda u: fetch(u, cache, options), unique):
            results[fetched.url] = fetched
            if progress is not None:
                progress(len(results), len(unique))
    return results

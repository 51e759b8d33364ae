"""An undecodable image's message gives the reason only: never the repr of the stream
Pillow read (`<_io.BytesIO object at 0x...>`), which Triton's preprocessing model would
send to the caller."""

from __future__ import annotations

import re

import pytest

from asen.data.images import BadImageError, load_image


@pytest.mark.parametrize("blob", [b"not an image", b"GIF89a but not really", b"\x89PNG\r\n\x1a\n"])
def test_decode_error_names_no_object_address(blob: bytes) -> None:
    with pytest.raises(BadImageError) as info:
        load_image(blob, 32)
    message = str(info.value)
    assert message.startswith("<bytes>: cannot decode image (") and "\n" not in message
    assert not re.search(r"object at 0x|BytesIO", message), message


def test_a_file_error_still_names_the_file(tmp_path) -> None:
    path = tmp_path / "broken.png"
    path.write_bytes(b"not an image")
    with pytest.raises(BadImageError, match=f"^{re.escape(str(path))}: cannot decode image"):
        load_image(path, 32)

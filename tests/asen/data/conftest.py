"""Image files for the dataset and cache tests."""

from __future__ import annotations

import pytest
from PIL import Image


@pytest.fixture
def files(tmp_path):
    """Four images of distinct colours; file 2 is corrupt."""
    paths = []
    for i in range(4):
        p = tmp_path / f"im{i}.png"
        Image.new("RGB", (20 + i, 18), (50 * i, 10, 200)).save(p)
        paths.append(p)
    paths[2].write_bytes(b"\x89PNG\r\n\x1a\n this is no png")
    return paths

"""The one Triton release asen is deployed on: NVIDIA's container tag, the TensorRT that
container's backend runs, and the `tensorrt` wheel that builds plans it can load.

This module is the single source of truth. docker/Dockerfile's build arguments, the KServe
manifests in deploy/, docs/operations.md and `asen export --trt`'s compatibility line are
checked against it by tests/export/test_release.py. It is a Python module rather than a
JSON file so that it ships in the wheel without package data. To move to a new release,
change it here, run `python -m asen.export.release` for the values to put in the files, and
let the test name every file that still disagrees.

Facts from NVIDIA's Triton release notes (frameworks support matrix) for 24.12.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class TritonRelease:
    """A Triton container release and what a TensorRT plan served by it must match."""

    tag: str  # NGC tag of nvcr.io/nvidia/tritonserver (without -py3)
    triton_version: str
    tensorrt_version: str  # the TensorRT its backend runs (a plan loads only on this one)
    tensorrt_wheel: str  # pip requirement that builds plans for it
    cuda_version: str
    python_version: str  # the container's python3 (asen is installed into it)
    asen_image: str  # the image docker/Dockerfile builds, as deploy/ refers to it

    @property
    def base_image(self) -> str:
        return f"nvcr.io/nvidia/tritonserver:{self.tag}-py3"

    @property
    def tensorrt_short(self) -> str:
        """Major.minor, as NVIDIA's notes and the docs name it (10.7)."""
        return ".".join(self.tensorrt_version.split(".")[:2])

    def plan_compatibility(self, built_with: str) -> str:
        """One line on whether a plan built with TensorRT `built_with` loads in this release."""
        where = f"Triton {self.tag} ({self.base_image}, TensorRT {self.tensorrt_version})"
        if _patch(built_with) == _patch(self.tensorrt_version):
            return f"TensorRT {built_with} plans load in asen's Triton release {where}"
        return (
            f"warning: these plans are built with TensorRT {built_with} and will not load in "
            f"asen's Triton release {where}; build them with `pip install "
            f"{self.tensorrt_wheel}` to serve them there"
        )


TRITON_RELEASE = TritonRelease(
    tag="24.12",
    triton_version="2.53.0",
    tensorrt_version="10.7.0.23",
    tensorrt_wheel="tensorrt-cu12==10.7.0",
    cuda_version="12.6.3",
    python_version="3.12",
    asen_image="asen-triton:24.12",
)


def _patch(version: str) -> tuple[str, ...]:
    """Major, minor, patch: the pip wheels report 10.7.0 for the container's 10.7.0.23."""
    return tuple(version.split(".")[:3])


def build_args(release: TritonRelease = TRITON_RELEASE) -> list[str]:
    """`docker build` arguments that set docker/Dockerfile's ARGs from the release."""
    return ["--build-arg", f"TRITON_TAG={release.tag}"]


def main() -> None:
    """Print the release (`python -m asen.export.release`), or with `--build-args` the
    docker build arguments, one per line."""
    if "--build-args" in sys.argv[1:]:
        print(" ".join(build_args()))
        return
    for key, value in {**asdict(TRITON_RELEASE), "base_image": TRITON_RELEASE.base_image}.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()

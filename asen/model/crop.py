"""Attention-guided zoom-in, batched on tensors (no per-sample loop, no CPU copy).

The reference computes this per sample with OpenCV and PIL: upsample the global attention
map to the global input size, min-max normalise, turn it into uint8 by truncation, keep
the pixels above `255 * threshold`, take their bounding box, make it square on its longer
side (centred, shifted inside the image), crop that square from the source image and
resize it to the local input with PIL's antialiased bilinear filter.

`attention_boxes` follows that rule on the whole batch (the same uint8 levels, so the same
pixels pass); the square is centred exactly (the reference's integer halving can move it
by one pixel). `crop` is the antialiased bilinear resize of each box, written as two
interpolation matrices per sample (`out = Wy @ image @ Wx^T`): the same triangle filter,
support and normalisation as PIL's resize and `torch.nn.functional.interpolate(...,
antialias=True)` of the cropped box, in plain MatMul arithmetic, so the model exports as
one graph that every backend runs the same way.

Why not `torchvision.ops.roi_align` / ONNX `RoiAlign`: it averages bilinear samples over
each output bin, i.e. a box filter. With 2 samples a bin it aliases once a box is shrunk
4x or more; with adaptive sampling (`sampling_ratio=0`: ceil(box / output) samples a bin)
it is an area average, still not the reference's triangle filter. ONNX Runtime's CPU
RoiAlign accepts `sampling_ratio >= 0` (0: adaptive, as the ONNX spec defines it; a missing
`coordinate_transformation_mode` means output_half_pixel there, not the spec's half_pixel).
TensorRT 10's ONNX parser imports the node as the `ROIAlign_TRT` plugin (version 2,
IPluginV3; FP32/FP16), which accepts `sampling_ratio >= 0` with the same adaptive rule, but
the parser reads a missing `sampling_ratio` as 1, not ONNX's 0.
The matrices avoid both the filter mismatch and those defaults (and need no plugin).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

FLAT = 1e-5  # a map whose max-min span is below this fraction of its max is flat
LEVELS = 255  # the reference quantises the normalised map to uint8 before thresholding


def attention_boxes(attention: torch.Tensor, size: int, threshold: float) -> torch.Tensor:
    """Square crop boxes [B, 4] (x1, y1, x2, y2) in pixels of a `size` x `size` image,
    from attention maps [B, h, w]: the pixels whose min-max normalised value, truncated to
    uint8, exceeds `255 * threshold` (0.1: levels >= 26). A flat map gives the whole image."""
    up = F.interpolate(
        attention.float().unsqueeze(1), size=(size, size), mode="bilinear", align_corners=False
    ).squeeze(1)
    # a row (column) has a pixel above the cut iff its maximum is: the float steps below are
    # monotonic, so testing the maxima gives exactly the per-pixel mask's rows and columns
    row_max, col_max = up.amax(dim=2), up.amax(dim=1)  # [B, size] each
    lo = up.amin(dim=(1, 2)).unsqueeze(1)
    hi = row_max.amax(dim=1, keepdim=True)
    span = hi - lo
    safe = span.clamp_min(torch.finfo(up.dtype).tiny)
    cut = math.floor(LEVELS * threshold)  # OpenCV thresholds uint8 images at floor(thresh)
    real = span > FLAT * hi  # a (nearly) flat map has no box
    rows = (torch.floor((row_max - lo) / safe * LEVELS) > cut) & real  # uint8 level > cut
    cols = (torch.floor((col_max - lo) / safe * LEVELS) > cut) & real
    index = torch.arange(size, device=up.device, dtype=up.dtype)
    big = torch.full_like(index, float(size))
    y1 = torch.where(rows, index, big).amin(dim=1)
    x1 = torch.where(cols, index, big).amin(dim=1)
    y2 = torch.where(rows, index, -big).amax(dim=1) + 1
    x2 = torch.where(cols, index, -big).amax(dim=1) + 1
    empty = y2 <= 0
    zero, full = torch.zeros_like(y1), torch.full_like(y1, float(size))
    x1, y1 = torch.where(empty, zero, x1), torch.where(empty, zero, y1)
    x2, y2 = torch.where(empty, full, x2), torch.where(empty, full, y2)
    side = torch.maximum(x2 - x1, y2 - y1)
    left = torch.minimum(torch.clamp((x1 + x2 - side) / 2, min=0.0), size - side)
    top = torch.minimum(torch.clamp((y1 + y2 - side) / 2, min=0.0), size - side)
    return torch.stack([left, top, left + side, top + side], dim=1)


def resize_weights(start: torch.Tensor, end: torch.Tensor, size: int, out: int) -> torch.Tensor:
    """Antialiased bilinear interpolation matrices [B, out, size]: row i resamples output
    pixel i of the span [start, end) (pixels of an axis of length `size`) to `out` pixels,
    with PIL's triangle filter (support 1 input pixel, widened to the scale when shrinking),
    over the pixels inside the span only, normalised to sum 1."""
    scale = ((end - start) / out).unsqueeze(1)  # [B, 1] input pixels per output pixel
    steps = torch.arange(out, device=start.device, dtype=start.dtype)
    centre = start.unsqueeze(1) + (steps + 0.5) * scale  # [B, out]
    pixel = torch.arange(size, device=start.device, dtype=start.dtype) + 0.5  # pixel centres
    inside = (pixel > start.unsqueeze(1)) & (pixel < end.unsqueeze(1))  # [B, size]
    distance = (pixel.view(1, 1, size) - centre.unsqueeze(2)).abs()
    weight = torch.relu(1 - distance / scale.clamp_min(1.0).unsqueeze(2))
    weight = weight * inside.unsqueeze(1).to(weight.dtype)
    return weight / weight.sum(dim=2, keepdim=True).clamp_min(torch.finfo(weight.dtype).tiny)


def crop(images: torch.Tensor, boxes: torch.Tensor, out_size: int) -> torch.Tensor:
    """Crop boxes [B, 4] (x1, y1, x2, y2 in pixels of `images`) from images [B, C, H, W]
    and resize each to `out_size` x `out_size` as PIL's antialiased bilinear resize of the
    cropped box does."""
    boxes = boxes.to(images.dtype)
    rows = resize_weights(boxes[:, 1], boxes[:, 3], images.shape[-2], out_size)
    cols = resize_weights(boxes[:, 0], boxes[:, 2], images.shape[-1], out_size)
    return rows.unsqueeze(1) @ images @ cols.transpose(1, 2).unsqueeze(1)


def crop_each(images: torch.Tensor, boxes: torch.Tensor, out_size: int) -> torch.Tensor:
    """`crop` of A boxes per image, without copying the images: images [B, C, H, W] and
    boxes [B, A, 4] -> crops [B*A, C, out, out], image-major (row i*A + a is box a of
    image i). The arithmetic is `crop`'s, so each row equals `crop` of its own pair."""
    b, a = boxes.shape[0], boxes.shape[1]
    flat = boxes.reshape(b * a, 4).to(images.dtype)
    h, w = images.shape[-2], images.shape[-1]
    rows = resize_weights(flat[:, 1], flat[:, 3], h, out_size).view(b, a, 1, out_size, h)
    cols = resize_weights(flat[:, 0], flat[:, 2], w, out_size).view(b, a, 1, out_size, w)
    crops = rows @ images.unsqueeze(1) @ cols.transpose(-1, -2)  # [B, A, C, out, out]
    return crops.flatten(0, 1)

"""Attention-guided zoom-in, batched on tensors (no per-sample loop, no CPU copy).

The reference computes this per sample with OpenCV: upsample the global attention map to
the global input size, min-max normalise, threshold, take the bounding box of the pixels
above the threshold, make it square on its longer side (centred, shifted inside the
image), map it to the source image and crop there. Here the same steps run on the whole
batch, and the crop is `torchvision.ops.roi_align`, so the model exports as one graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

FLAT = 1e-5  # a map whose max-min span is below this fraction of its max is flat
SAMPLING_RATIO = 2  # bilinear samples per output bin and axis (fixed: same result on every backend)


def attention_boxes(attention: torch.Tensor, size: int, threshold: float) -> torch.Tensor:
    """Square crop boxes [B, 4] (x1, y1, x2, y2) in pixels of a `size` x `size` image,
    from attention maps [B, h, w]. A flat map gives the whole image."""
    up = F.interpolate(
        attention.unsqueeze(1), size=(size, size), mode="bilinear", align_corners=False
    ).squeeze(1)
    lo = up.amin(dim=(1, 2), keepdim=True)
    hi = up.amax(dim=(1, 2), keepdim=True)
    # min-max normalised map > threshold, without a division; a (nearly) flat map has no box
    span = hi - lo
    mask = ((up - lo) > threshold * span) & (span > FLAT * hi)
    mask = mask.to(up.dtype)  # [B, size, size]
    index = torch.arange(size, device=up.device, dtype=up.dtype)
    rows = mask.amax(dim=2) > 0  # any pixel above the threshold in row y
    cols = mask.amax(dim=1) > 0  # ... in column x
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


def crop(images: torch.Tensor, boxes: torch.Tensor, out_size: int) -> torch.Tensor:
    """Crop boxes [B, 4] (pixels of `images`) from images [B, C, H, W] and resize each
    to `out_size` x `out_size` (bilinear, half-pixel aligned)."""
    index = torch.arange(images.shape[0], device=images.device, dtype=boxes.dtype).unsqueeze(1)
    rois = torch.cat([index, boxes], dim=1)
    return roi_align(
        images,
        rois,
        (out_size, out_size),
        spatial_scale=1.0,
        sampling_ratio=SAMPLING_RATIO,
        aligned=True,
    )

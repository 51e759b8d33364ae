"""ASEN++: one module, one inference function (docs/architecture.md, "Model forward").

`ASENPP(image uint8 [B,3,S,S], attribute int64 [B]) -> embedding float32 [B,D]`:
normalisation, the global branch on the image resized to S/2, the attention-guided crop
from the source image and the local branch all run inside `forward`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from asen.config import ModelConfig
from asen.model.attention import Branch
from asen.model.backbones import create_backbone
from asen.model.crop import attention_boxes, crop

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class BranchOutputs:
    """Everything a training step or a visualisation needs from one forward pass."""

    global_embedding: torch.Tensor  # [B, D], not normalised
    global_attention: torch.Tensor  # [B, h, w]
    local_embedding: torch.Tensor | None = None
    local_attention: torch.Tensor | None = None
    boxes: torch.Tensor | None = None  # [B, 4] crop boxes in source-image pixels


class ASENPP(nn.Module):
    """The ASEN++ network; `stage=1` builds the global branch only."""

    def __init__(self, cfg: ModelConfig, num_attributes: int, stage: int = 2):
        super().__init__()
        if stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {stage}")
        self.cfg, self.stage, self.num_attributes = cfg, stage, num_attributes
        self.attr_embedding = nn.Embedding(num_attributes, cfg.attr_dim)
        backbone, channels = create_backbone(cfg.global_backbone, cfg.weights)
        self.global_branch = Branch(
            backbone, channels, cfg.attr_dim, cfg.global_common, cfg.channel_hidden, cfg.embed_dim
        )
        self.local_branch: Branch | None = None
        if stage == 2:
            backbone, channels = create_backbone(cfg.local_backbone, cfg.weights)
            self.local_branch = Branch(
                backbone,
                channels,
                cfg.attr_dim,
                cfg.local_common,
                cfg.channel_hidden,
                cfg.embed_dim,
            )
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255, False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255, False)

    @property
    def embedding_dim(self) -> int:
        return self.cfg.embedding_dim(self.stage)

    @property
    def source_size(self) -> int:
        return self.cfg.source_size

    def branches(self, image: torch.Tensor, attribute: torch.Tensor) -> BranchOutputs:
        """Both branches' raw outputs for uint8 images [B,3,S,S] and attributes [B]."""
        x = (image.to(self.mean.dtype) - self.mean) / self.std
        attr = self.attr_embedding(attribute)
        g_emb, g_att = self.global_branch(F.avg_pool2d(x, 2), attr)
        out = BranchOutputs(g_emb, g_att)
        if self.local_branch is not None:
            with torch.no_grad():
                boxes = attention_boxes(g_att.detach(), self.cfg.image_size, self.cfg.threshold)
                boxes = boxes * (image.shape[-1] / self.cfg.image_size)
            local_input = crop(x, boxes, self.cfg.local_size)
            out.local_embedding, out.local_attention = self.local_branch(local_input, attr)
            out.boxes = boxes
        return out

    def fuse(self, out: BranchOutputs) -> torch.Tensor:
        """The inference embedding: l2norm(global), or the beta-weighted concatenation."""
        g = F.normalize(out.global_embedding.float(), dim=1)
        if out.local_embedding is None:
            return g
        beta = self.cfg.beta
        local = F.normalize(out.local_embedding.float(), dim=1)
        return torch.cat([math.sqrt(beta) * g, math.sqrt(1 - beta) * local], dim=1)

    def forward(self, image: torch.Tensor, attribute: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.branches(image, attribute))

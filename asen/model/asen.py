"""ASEN++: one module, one inference function (docs/architecture.md, "Model forward").

`ASENPP(image uint8 [B,3,S,S], attribute int64 [B]) -> embedding float32 [B,D]`:
normalisation, the global branch on the image resized to S/2, the attention-guided crop
from the source image and the local branch all run inside `forward`.
`forward_all(image) -> [B,A,D]` is the same function for every attribute at once: the
global backbone runs once per image, the attention (and at stage 2 the crop and the local
branch) once per attribute (docs/architecture.md, "All-attributes graph").
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
from asen.model.crop import attention_boxes, crop, crop_each

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

    def normalise(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 images -> ImageNet-normalised float images (the model's first step)."""
        return (image.to(self.mean.dtype) - self.mean) / self.std

    def branches(self, image: torch.Tensor, attribute: torch.Tensor) -> BranchOutputs:
        """Both branches' raw outputs for uint8 images [B,3,S,S] and attributes [B]."""
        x = self.normalise(image)
        attr = self.attr_embedding(attribute)
        g_emb, g_att = self.global_branch(F.avg_pool2d(x, 2), attr)
        return self._add_local(BranchOutputs(g_emb, g_att), x, attr, per_image=1)

    def branches_all(self, image: torch.Tensor) -> BranchOutputs:
        """`branches` for every attribute of every image, rows image-major ([B*A] in the
        order image 0 attribute 0..A-1, image 1 ...): the global backbone runs once per
        image and its features are shared by the A attentions."""
        b, a = image.shape[0], self.num_attributes
        x = self.normalise(image)
        features = self.global_branch.backbone(F.avg_pool2d(x, 2))
        tiled = features.unsqueeze(1).expand(b, a, *features.shape[1:]).flatten(0, 1)
        weight = self.attr_embedding.weight
        attr = weight.unsqueeze(0).expand(b, a, weight.shape[1]).flatten(0, 1)
        g_emb, g_att = self.global_branch.attention(tiled, attr)
        return self._add_local(BranchOutputs(g_emb, g_att), x, attr, per_image=a)

    def _add_local(
        self, out: BranchOutputs, x: torch.Tensor, attr: torch.Tensor, *, per_image: int
    ) -> BranchOutputs:
        """Stage 2: crop each row's box from its source image (row i is image
        i // per_image) and run the local branch on it."""
        if self.local_branch is None:
            return out
        with torch.no_grad():
            boxes = attention_boxes(
                out.global_attention.detach(), self.cfg.image_size, self.cfg.threshold
            )
            boxes = boxes * (x.shape[-1] / self.cfg.image_size)
        if per_image == 1:
            local_input = crop(x, boxes, self.cfg.local_size)
        else:
            local_input = crop_each(x, boxes.view(-1, per_image, 4), self.cfg.local_size)
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

    def forward_all(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 images [B,3,S,S] -> float32 [B,A,D]: `forward` for every attribute, row
        [i, a] equal to `forward(image[i:i+1], [a])`."""
        embedding = self.fuse(self.branches_all(image))
        return embedding.view(image.shape[0], self.num_attributes, embedding.shape[1])

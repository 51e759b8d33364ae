"""Attribute-aware spatial and channel attention (one per branch), as in ASEN++."""

from __future__ import annotations

import math

import torch
from torch import nn


class AttributeAttention(nn.Module):
    """Spatial attention -> attention-weighted pooling -> channel attention -> embedding.

    Returns the embedding [B, D] and the spatial attention map [B, h, w] (sums to 1).
    """

    def __init__(self, channels: int, attr_dim: int, common: int, hidden: int, embed_dim: int):
        super().__init__()
        self.feature_proj = nn.Conv2d(channels, common, 1)
        self.attr_proj = nn.Linear(attr_dim, common)
        self.attr_channel = nn.Linear(attr_dim, hidden)
        self.fc1 = nn.Linear(channels + hidden, channels // 2)
        self.fc2 = nn.Linear(channels // 2, channels)
        self.out = nn.Linear(channels, embed_dim)
        self.scale = 1.0 / math.sqrt(common)

    def forward(self, features: torch.Tensor, attr_emb: torch.Tensor):
        b, c, h, w = features.shape
        f = torch.tanh(self.feature_proj(features)).flatten(2)  # [B, Cc, hw]
        q = torch.tanh(self.attr_proj(attr_emb))  # [B, Cc]
        scores = torch.bmm(q.unsqueeze(1), f).squeeze(1) * self.scale  # [B, hw]
        attention = torch.softmax(scores, dim=1)
        pooled = torch.bmm(features.flatten(2), attention.unsqueeze(2)).squeeze(2)  # [B, C]
        r = torch.relu(self.attr_channel(attr_emb))
        mask = torch.sigmoid(self.fc2(torch.relu(self.fc1(torch.cat([pooled, r], dim=1)))))
        return self.out(pooled * mask), attention.view(b, h, w)


class Branch(nn.Module):
    """A backbone followed by the attribute attention."""

    def __init__(
        self,
        backbone: nn.Module,
        channels: int,
        attr_dim: int,
        common: int,
        hidden: int,
        embed_dim: int,
    ):
        super().__init__()
        self.backbone = backbone
        self.attention = AttributeAttention(channels, attr_dim, common, hidden, embed_dim)

    def forward(self, x: torch.Tensor, attr_emb: torch.Tensor):
        return self.attention(self.backbone(x), attr_emb)

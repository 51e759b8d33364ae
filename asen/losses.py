"""The reference's training losses: cosine margin ranking and global-local alignment."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def triplet_loss(
    anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, margin: float
) -> torch.Tensor:
    """mean(max(0, margin - cos(a, p) + cos(a, n)))."""
    pos = F.cosine_similarity(anchor, positive, dim=1)
    neg = F.cosine_similarity(anchor, negative, dim=1)
    return F.relu(margin - pos + neg).mean()


def alignment_loss(
    global_emb: torch.Tensor, local_emb: torch.Tensor, groups: int = 3
) -> torch.Tensor:
    """Sum over anchor, positive and negative of mean(1 - cos(global, local)).

    The inputs stack the three groups along the batch dimension ([3B, D])."""
    per_sample = 1 - F.cosine_similarity(global_emb, local_emb, dim=1)
    return per_sample.view(groups, -1).mean(dim=1).sum()

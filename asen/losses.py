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


def step_losses(
    global_emb: torch.Tensor,
    local_emb: torch.Tensor | None,
    *,
    margin: float,
    local_weight: float,
    align_weight: float,
) -> dict[str, torch.Tensor]:
    """A training step's losses for embeddings of anchors, positives and negatives stacked
    along the batch ([3B, D] each): `loss` (what is minimised) and its parts. Stage 1 (no
    local embedding): the global triplet loss. Stage 2 adds the local triplet loss and the
    global-local alignment, weighted."""
    g = global_emb.float().view(3, -1, global_emb.shape[-1])
    losses = {"loss_global": triplet_loss(g[0], g[1], g[2], margin)}
    loss = losses["loss_global"]
    if local_emb is not None:
        local = local_emb.float()
        lv = local.view(3, -1, local.shape[-1])
        losses["loss_local"] = triplet_loss(lv[0], lv[1], lv[2], margin)
        losses["loss_align"] = alignment_loss(global_emb.float(), local)
        loss = loss + local_weight * losses["loss_local"] + align_weight * losses["loss_align"]
    return {"loss": loss, **losses}

"""Reference launcher of the ``longid`` family: the oracle of semid_fast.reference.longid, its
result copied into the op's outputs (on the outputs' device)."""

from __future__ import annotations

import torch

from ...reference import longid as ref

__all__ = ["holistic_topk"]


def holistic_topk(token_scores: torch.Tensor, codes: torch.Tensor, k: int, mean: bool,
                  candidates: torch.Tensor | None, item_mask: torch.Tensor | None,
                  scores: torch.Tensor, ids: torch.Tensor) -> None:
    """Top-k items by holistic score into scores (B, k) float32 and ids (B, k) int64."""
    got_scores, got_ids = ref.holistic_topk(token_scores, codes, k, "mean" if mean else "sum",
                                            candidates, item_mask)
    scores.copy_(got_scores)
    ids.copy_(got_ids)

"""Ranking keys shared by the GPU holistic top-k paths (CUDA and Triton).

A scored (query, item) pair is one int64: ``(ord32(score) << 32) | (2**32 - 1 - item)``,
where ``ord32`` maps float bits to an int32 of the same order (x >= 0: bits; x < 0:
bits ^ 0x7FFFFFFF). A larger key is a better item (higher score, then the smaller id), so
``torch.topk`` on keys is the exact ranking. ``SENTINEL`` (int64 min) marks "no item".
"""

from __future__ import annotations

import torch

SENTINEL = torch.iinfo(torch.int64).min
MAX_ITEMS = 2**32


def dedupe_rows(candidates: torch.Tensor) -> torch.Tensor:
    """(B, C) ids sorted per row with repeats replaced by -1 (fixed shape, no host sync)."""
    ids = candidates.long().sort(dim=1).values
    repeat = torch.zeros_like(ids, dtype=torch.bool)
    repeat[:, 1:] = ids[:, 1:] == ids[:, :-1]
    return torch.where(repeat, -1, ids).contiguous()


def decode_keys(keys: torch.Tensor, scores: torch.Tensor, ids: torch.Tensor) -> None:
    """(B, k') keys sorted best first (k' <= k) -> scores (B, k) float32 and ids (B, k) int64,
    written in place and padded with (-inf, -1) where there is no item."""
    k = scores.shape[1]
    if keys.shape[1] < k:
        pad = keys.new_full((keys.shape[0], k - keys.shape[1]), SENTINEL)
        keys = torch.cat([keys, pad], dim=1)
    missing = keys == SENTINEL
    high = keys >> 32
    # ord32 is its own inverse; the float's bits go straight into the output.
    scores.view(torch.int32).copy_(torch.where(high >= 0, high, high ^ 0x7FFFFFFF))
    scores.masked_fill_(missing, -torch.inf)
    # The low word is 2**32 - 1 - item, its complement within 32 bits.
    torch.bitwise_not(keys, out=ids).bitwise_and_(0xFFFFFFFF).masked_fill_(missing, -1)

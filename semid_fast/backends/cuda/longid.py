"""CUDA launcher of the ``longid`` family: holistic top-k keys from semid_fast._C_cuda, merged
and decoded on the device (see semid_fast._keys for the keys)."""

from __future__ import annotations

import torch

from ... import _keys, _native

__all__ = ["holistic_topk"]


def holistic_topk_refuses(k: int) -> str | None:
    limit = _native._C_cuda.HOLISTIC_MAX_K
    if k > limit:
        return f"its kernel sorts item blocks of at most {limit} keys, so k <= {limit}; got k={k}"
    return None


def holistic_topk(token_scores: torch.Tensor, codes: torch.Tensor, k: int, mean: bool,
                  candidates: torch.Tensor | None, item_mask: torch.Tensor | None,
                  scores: torch.Tensor, ids: torch.Tensor,
                  packed: torch.Tensor | None = None) -> None:
    """Top-k items by holistic score into scores (B, k) float32 and ids (B, k) int64: per-block
    top-k keys from the kernel, merged by torch.topk (exact on int64). ``packed`` (the CPU
    scan's copy of uint8 codes) is not read here."""
    b, m, kc = token_scores.shape
    n = codes.shape[0]
    if candidates is not None and candidates.shape[1] == 0:  # a launch of zero blocks fails
        scores.fill_(-torch.inf)
        ids.fill_(-1)
        return
    table = token_scores.float().contiguous()
    codes = codes.contiguous()
    mask = None if item_mask is None else item_mask.contiguous().view(torch.uint8)
    mask_args = (0 if mask is None else mask.data_ptr(),
                 0 if mask is None or mask.dim() == 1 else n)
    divisor = float(m) if mean else 1.0
    common = (table.data_ptr(), b, m, kc, codes.data_ptr(), codes.element_size(), n)
    lib = _native._C_cuda
    if candidates is not None:
        cand = _keys.dedupe_rows(candidates)
        keys = torch.empty_like(cand)
        _native.call_cuda("holistic_topk", lib.holistic_candidate_keys, *common,
                          cand.data_ptr(), cand.shape[1], *mask_args, divisor, keys.data_ptr(),
                          device=table.device)
    else:
        per_block = max(2048, 1 << (k - 1).bit_length())  # few blocks: a small merge
        n_blocks = -(-n // per_block)
        keys = torch.empty((b, n_blocks, k), dtype=torch.long, device=table.device)
        _native.call_cuda("holistic_topk", lib.holistic_block_topk, *common, *mask_args,
                          divisor, k, per_block, keys.data_ptr(), device=table.device)
        keys = keys.reshape(b, -1)
    _keys.decode_keys(keys.topk(min(k, keys.shape[1]), dim=1).values, scores, ids)

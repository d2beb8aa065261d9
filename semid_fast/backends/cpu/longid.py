"""CPU launcher of the ``longid`` family: the holistic top-k kernel of semid_fast._C."""

from __future__ import annotations

import torch

from ... import _native

__all__ = ["holistic_topk"]

# Lookups (queries x items x positions) below which the scan runs on one thread: about a
# millisecond of work, less than what waking a second thread costs when its core is busy.
_PARALLEL_MIN_LOOKUPS = 1 << 22


def holistic_topk(token_scores: torch.Tensor, codes: torch.Tensor, k: int, mean: bool,
                  candidates: torch.Tensor | None, item_mask: torch.Tensor | None,
                  scores: torch.Tensor, ids: torch.Tensor) -> None:
    """Top-k items by holistic score into scores (B, k) float32 and ids (B, k) int64 (CPU,
    contiguous); see semid_fast.reference.longid.holistic_topk for the arguments."""
    lib = _native.cpu()
    b, m, kc = token_scores.shape
    n = codes.shape[0]
    table = token_scores.float()
    interleaved = candidates is None and b >= 2
    if interleaved:
        # (B, M, K) -> (ceil(B/L), M, K, L): the kernel reads the entries of L queries (its
        # vector lanes) with one load, so they sit side by side.
        lanes = lib.HOLISTIC_QUERY_LANES
        groups = -(-b // lanes)
        padded = table.new_zeros((groups * lanes, m, kc))
        padded[:b] = table
        table = padded.reshape(groups, lanes, m, kc).permute(0, 2, 3, 1)
    table = table.contiguous()
    codes = codes.contiguous()
    cand = None if candidates is None else candidates.long().contiguous()
    mask = None if item_mask is None else item_mask.contiguous().view(torch.uint8)
    status = lib.holistic_topk_f32(
        table.data_ptr(), int(interleaved), b, m, kc, codes.data_ptr(), codes.element_size(), n,
        0 if cand is None else cand.data_ptr(), -1 if cand is None else cand.shape[1],
        0 if mask is None else mask.data_ptr(), 0 if mask is None or mask.dim() == 1 else n,
        float(m) if mean else 1.0, k, scores.data_ptr(), ids.data_ptr(),
        _native.n_threads() if b * (n if cand is None else cand.shape[1]) * m
        >= _PARALLEL_MIN_LOOKUPS else 1)
    _native.check_cpu_status(status, "holistic_topk")

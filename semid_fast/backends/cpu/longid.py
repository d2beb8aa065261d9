"""CPU launcher of the ``longid`` family: the holistic top-k kernel of semid_fast._C."""

from __future__ import annotations

import functools

import torch

from ... import _native

__all__ = ["holistic_topk"]  # and pack_codes, for PackedCodes (not an op)

# Lookups (queries x items x positions) below which the scan runs on one thread: about a
# millisecond of work, less than what waking a second thread costs when its core is busy.
_PARALLEL_MIN_LOOKUPS = 1 << 22


@functools.lru_cache(maxsize=None)
def _bounded_scan(m: int) -> bool:
    """Whether this CPU scans catalogs of M-position uint8 codes with the bounded scan (the
    AVX-512 build on a CPU with VBMI), which reads plain tables (no query interleaving)."""
    lib = _native.cpu()
    return lib.holistic_pack_codes(0, 0, m, 0, 1) == lib.STATUS_OK


def pack_codes(codes: torch.Tensor) -> torch.Tensor | None:
    """(N, M) uint8 CPU codes in the layout of the bounded catalog scan (uint8 tensor of
    floor(N / 512) * 512 * M bytes), or None where this CPU or M has no bounded scan."""
    lib = _native.cpu()
    n, m = codes.shape
    if not _bounded_scan(m):  # before allocating a copy of the catalog
        return None
    codes = codes.contiguous()
    whole = n - n % lib.HOLISTIC_PACK_ITEMS
    packed = torch.empty(whole * m, dtype=torch.uint8)
    status = lib.holistic_pack_codes(codes.data_ptr(), whole, m, packed.data_ptr(),
                                     _native.n_threads())
    return packed if status == lib.STATUS_OK else None


def holistic_topk(token_scores: torch.Tensor, codes: torch.Tensor, k: int, mean: bool,
                  candidates: torch.Tensor | None, item_mask: torch.Tensor | None,
                  scores: torch.Tensor, ids: torch.Tensor,
                  packed: torch.Tensor | None = None) -> None:
    """Top-k items by holistic score into scores (B, k) float32 and ids (B, k) int64 (CPU,
    contiguous); see semid_fast.reference.longid.holistic_topk for the arguments. ``packed``:
    pack_codes(codes), read by the catalog scan instead of transposing the codes each call."""
    lib = _native.cpu()
    b, m, kc = token_scores.shape
    n = codes.shape[0]
    table = token_scores.float()
    bounded = codes.dtype == torch.uint8 and kc <= 256 and n >= (
        lib.HOLISTIC_PACK_ITEMS if packed is not None else lib.HOLISTIC_BOUNDED_MIN_ITEMS)
    interleaved = candidates is None and b >= 2 and not (bounded and _bounded_scan(m))
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
        0 if packed is None else packed.data_ptr(),
        0 if cand is None else cand.data_ptr(), -1 if cand is None else cand.shape[1],
        0 if mask is None else mask.data_ptr(), 0 if mask is None or mask.dim() == 1 else n,
        float(m) if mean else 1.0, k, scores.data_ptr(), ids.data_ptr(),
        _native.n_threads() if b * (n if cand is None else cand.shape[1]) * m
        >= _PARALLEL_MIN_LOOKUPS else 1)
    _native.check_cpu_status(status, "holistic_topk")

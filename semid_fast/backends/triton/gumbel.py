"""Triton kernels of the gumbel family: fused Gumbel-softmax forward and backward, Gumbel-top-k.

Noise: ``triton.language.philox`` is the Philox4x32-10 of csrc/include/semid_fast/philox.h, so
element e draws word e & 3 of ``philox(seed, group lo, group hi, offset lo, offset hi)``,
group = e >> 2; u = (2 (r >> 9) + 1) * 2^-24 and g = -log(-log(u)) with philox.h's float32
log made of single operations (bit for bit the CPU's, CUDA's and the reference's noise).
Each element computes its group's block and keeps one word (4x the Philox arithmetic, but
no cross-lane shuffles and any row start).

One program per row. A row of at most FIT_LIMIT entries is held in registers: one read of
the logits, one write. Longer rows are streamed in CHUNK-wide blocks twice (an online max /
sum pass, then the output pass drawing the noise again). Kernels launch with
``enable_fp_fusion=False`` and divide with ``div_rn`` so that z = (x + scale * g) / tau
rounds exactly like the reference (argmax and top-k indices agree exactly).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._device import on_device

__all__ = ["noise", "softmax_forward", "softmax_backward", "topk"]

FIT_LIMIT = 8192  # rows up to this length stay in registers
CHUNK = 2048  # block width of the streaming path
TOPK_CHUNK = 1024  # columns per program of gumbel_topk

# Triton turns an int argument equal to 1 into a constexpr (and tracks divisibility by 16):
# the seed and offset words would then fail to compile at 1 (`.to()` on a constexpr) and
# recompile per value class. They are plain runtime values.
_random_jit = triton.jit(do_not_specialize=["seed", "off_lo", "off_hi"])


@triton.jit
def _bits(seed, off_lo, off_hi, e):
    """The 32-bit noise word of every element index in e (int64)."""
    group = e >> 2
    lane = e & 3
    c0 = (group & 0xFFFFFFFF).to(tl.uint32)
    c1 = (group >> 32).to(tl.uint32)
    c2 = tl.zeros_like(c0) + off_lo.to(tl.uint32)
    c3 = tl.zeros_like(c0) + off_hi.to(tl.uint32)
    r0, r1, r2, r3 = tl.philox(seed, c0, c1, c2, c3)
    return tl.where(lane == 0, r0, tl.where(lane == 1, r1, tl.where(lane == 2, r2, r3)))


@triton.jit
def _log_positive(x):
    """The float32 log of philox.h, op by op (launched without FMA contraction)."""
    bits = x.to(tl.int32, bitcast=True)
    k = (bits - 0x3F3504F3) >> 23
    m = (bits - k * 8388608).to(tl.float32, bitcast=True)
    f = m - 1.0
    z = f * f
    p = f * 7.0376836292e-2 - 1.1514610310e-1
    p = p * f + 1.1676998740e-1
    p = p * f - 1.2420140846e-1
    p = p * f + 1.4249322787e-1
    p = p * f - 1.6668057665e-1
    p = p * f + 2.0000714765e-1
    p = p * f - 2.4999993993e-1
    p = p * f + 3.3333331174e-1
    kf = k.to(tl.float32)
    y = (p * f) * z
    y = y + kf * -2.12194440e-4
    y = y - z * 0.5
    return (f + y) + kf * 0.693359375


@triton.jit
def _gumbel(seed, off_lo, off_hi, e):
    r = _bits(seed, off_lo, off_hi, e)
    u = ((r >> 9) * 2 + 1).to(tl.int32).to(tl.float32) * 5.9604644775390625e-08
    return -_log_positive(-_log_positive(u))


@_random_jit
def _noise_kernel(bits_ptr, noise_ptr, n, seed, off_lo, off_hi, WRITE_BITS: tl.constexpr,
                  BLOCK: tl.constexpr):
    e = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = e < n
    if WRITE_BITS:
        tl.store(bits_ptr + e, _bits(seed, off_lo, off_hi, e).to(tl.int32, bitcast=True),
                 mask=mask)
    else:
        tl.store(noise_ptr + e, _gumbel(seed, off_lo, off_hi, e), mask=mask)


@triton.jit
def _perturb(x_ptr, base, cols, vocab, tau, scale, seed, off_lo, off_hi):
    """z = (x + scale * g) / tau over the columns `cols` of the row starting at `base`; -inf
    outside the row."""
    mask = cols < vocab
    x = tl.load(x_ptr + base + cols, mask=mask, other=0.0).to(tl.float32)
    z = tl.math.div_rn(x + scale * _gumbel(seed, off_lo, off_hi, base + cols), tau)
    return tl.where(mask, z, float("-inf"))


@_random_jit
def _softmax_fwd_kernel(x_ptr, y_ptr, argmax_ptr, tau_ptr, tau_stride, scale_ptr, scale_stride,
                        vocab, seed, off_lo, off_hi, HARD: tl.constexpr, FITS: tl.constexpr,
                        BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    tau = tl.load(tau_ptr + row * tau_stride)
    scale = tl.load(scale_ptr + row * scale_stride)
    base = row * vocab
    lanes = tl.arange(0, BLOCK)
    if FITS:
        z = _perturb(x_ptr, base, lanes, vocab, tau, scale, seed, off_lo, off_hi)
        best = tl.max(z, 0)
        at = tl.min(tl.where(z == best, lanes, BLOCK), 0)
        at = tl.where(at < vocab, at, 0)  # a NaN row (unchecked input) matches nothing
        tl.store(argmax_ptr + row, at.to(tl.int64))
        if HARD:
            y = tl.where(lanes == at, 1.0, 0.0)
        else:
            e = tl.exp(z - best)
            y = e / tl.sum(e, 0)
        tl.store(y_ptr + base + lanes, y.to(y_ptr.dtype.element_ty), mask=lanes < vocab)
    else:
        # Per lane: running max, the first column reaching it, and the sum of exp(z - max).
        lane_max = tl.full((BLOCK,), float("-inf"), tl.float32)
        lane_at = tl.zeros((BLOCK,), tl.int64)
        lane_sum = tl.zeros((BLOCK,), tl.float32)
        for start in range(0, vocab, BLOCK):
            cols = start + lanes
            z = _perturb(x_ptr, base, cols, vocab, tau, scale, seed, off_lo, off_hi)
            lane_at = tl.where(z > lane_max, cols, lane_at)
            new_max = tl.maximum(lane_max, z)
            if not HARD:
                safe = tl.where(new_max == float("-inf"), 0.0, new_max)
                lane_sum = lane_sum * tl.exp(lane_max - safe) + tl.exp(z - safe)
            lane_max = new_max
        best = tl.max(lane_max, 0)
        at = tl.min(tl.where(lane_max == best, lane_at, vocab), 0)
        at = tl.where(at < vocab, at, 0)  # a NaN row (unchecked input) matches nothing
        tl.store(argmax_ptr + row, at)
        total = tl.sum(lane_sum * tl.exp(lane_max - best), 0)
        for start in range(0, vocab, BLOCK):
            cols = start + lanes
            if HARD:
                y = tl.where(cols == at, 1.0, 0.0)
            else:
                z = _perturb(x_ptr, base, cols, vocab, tau, scale, seed, off_lo, off_hi)
                y = tl.exp(z - best) / total
            tl.store(y_ptr + base + cols, y.to(y_ptr.dtype.element_ty), mask=cols < vocab)


@_random_jit
def _softmax_bwd_kernel(x_ptr, dy_ptr, dx_ptr, gz_ptr, zz_ptr, tau_ptr, tau_stride, scale_ptr,
                        scale_stride, vocab, seed, off_lo, off_hi, SUMS: tl.constexpr,
                        FITS: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    tau = tl.load(tau_ptr + row * tau_stride)
    scale = tl.load(scale_ptr + row * scale_stride)
    base = row * vocab
    lanes = tl.arange(0, BLOCK)
    if FITS:
        mask = lanes < vocab
        z = _perturb(x_ptr, base, lanes, vocab, tau, scale, seed, off_lo, off_hi)
        dy = tl.load(dy_ptr + base + lanes, mask=mask, other=0.0).to(tl.float32)
        e = tl.exp(z - tl.max(z, 0))
        y = e / tl.sum(e, 0)
        dz = y * (dy - tl.sum(dy * y, 0))
        tl.store(dx_ptr + base + lanes, dz / tau, mask=mask)
        if SUMS:
            g = tl.where(mask, _gumbel(seed, off_lo, off_hi, base + lanes), 0.0)
            tl.store(gz_ptr + row, tl.sum(dz * g, 0))
            tl.store(zz_ptr + row, tl.sum(dz * tl.where(dz != 0.0, z, 0.0), 0))
    else:
        lane_max = tl.full((BLOCK,), float("-inf"), tl.float32)
        lane_sum = tl.zeros((BLOCK,), tl.float32)
        lane_dot = tl.zeros((BLOCK,), tl.float32)  # sum of dy * exp(z - lane_max)
        for start in range(0, vocab, BLOCK):
            cols = start + lanes
            z = _perturb(x_ptr, base, cols, vocab, tau, scale, seed, off_lo, off_hi)
            dy = tl.load(dy_ptr + base + cols, mask=cols < vocab, other=0.0).to(tl.float32)
            new_max = tl.maximum(lane_max, z)
            safe = tl.where(new_max == float("-inf"), 0.0, new_max)
            rescale = tl.exp(lane_max - safe)
            e = tl.exp(z - safe)
            lane_sum = lane_sum * rescale + e
            lane_dot = lane_dot * rescale + dy * e
            lane_max = new_max
        best = tl.max(lane_max, 0)
        weight = tl.exp(lane_max - best)
        total = tl.sum(lane_sum * weight, 0)
        dot = tl.sum(lane_dot * weight, 0) / total
        acc_gz = tl.zeros((BLOCK,), tl.float32)
        acc_zz = tl.zeros((BLOCK,), tl.float32)
        for start in range(0, vocab, BLOCK):
            cols = start + lanes
            mask = cols < vocab
            z = _perturb(x_ptr, base, cols, vocab, tau, scale, seed, off_lo, off_hi)
            dy = tl.load(dy_ptr + base + cols, mask=mask, other=0.0).to(tl.float32)
            dz = tl.exp(z - best) / total * (dy - dot)
            tl.store(dx_ptr + base + cols, dz / tau, mask=mask)
            if SUMS:
                g = tl.where(mask, _gumbel(seed, off_lo, off_hi, base + cols), 0.0)
                acc_gz += dz * g
                acc_zz += dz * tl.where(dz != 0.0, z, 0.0)
        if SUMS:
            tl.store(gz_ptr + row, tl.sum(acc_gz, 0))
            tl.store(zz_ptr + row, tl.sum(acc_zz, 0))


@_random_jit
def _topk_kernel(x_ptr, tau_ptr, tau_stride, vocab, seed, off_lo, off_hi, per_chunk, n_chunks,
                 out_scores_ptr, out_idx_ptr, BLOCK: tl.constexpr):
    """The best `per_chunk` perturbed scores x / tau + g of one BLOCK-wide chunk of one row,
    best first, ties toward the smaller column; -inf / -1 once the chunk runs out."""
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    tau = tl.load(tau_ptr + row * tau_stride)
    cols = chunk * BLOCK + tl.arange(0, BLOCK)
    valid = cols < vocab
    x = tl.load(x_ptr + row * vocab + cols, mask=valid, other=0.0)
    scores = tl.math.div_rn(x, tau) + _gumbel(seed, off_lo, off_hi, row * vocab + cols)
    # Unchecked NaN ranks first (as in torch.topk, reported as +inf): every pick stays in the row.
    scores = tl.where(scores != scores, float("inf"), scores)
    taken = ~valid
    out = (row * n_chunks + chunk) * per_chunk
    for r in range(per_chunk):
        open_scores = tl.where(taken, float("-inf"), scores)
        best = tl.max(open_scores, 0)
        at = tl.min(tl.where((open_scores == best) & ~taken, cols, 2147483647), 0)
        found = at < 2147483647
        tl.store(out_scores_ptr + out + r, tl.where(found, best, float("-inf")))
        tl.store(out_idx_ptr + out + r, tl.where(found, at, -1).to(tl.int64))
        taken = taken | (cols == at)


_MAX_GRID_X = 2**31 - 1  # CUDA's grid limits: rows go on x, top-k chunks on y
_MAX_GRID_Y = 65535


def softmax_forward_refuses(rows: int, vocab: int) -> str | None:
    """One program per row: the rows must fit on the grid."""
    if rows > _MAX_GRID_X:
        return f"the triton gumbel kernels take at most {_MAX_GRID_X} rows, got {rows}"
    return None


def topk_refuses(rows: int, vocab: int, k: int) -> str | None:
    """Rows on the grid's x, TOPK_CHUNK-wide chunks of a row on its y."""
    if triton.cdiv(vocab, TOPK_CHUNK) > _MAX_GRID_Y:
        return f"triton gumbel_topk takes at most {_MAX_GRID_Y * TOPK_CHUNK} columns, got {vocab}"
    return softmax_forward_refuses(rows, vocab)


def _offset_words(offset: int) -> tuple[int, int]:
    return offset & 0xFFFFFFFF, offset >> 32


def _warps(block: int) -> int:
    return max(4, min(16, block // 256))


def _stride(param: torch.Tensor) -> int:
    return 0 if param.numel() == 1 else 1


def noise(seed: int, offset: int, out: torch.Tensor | None, bits: torch.Tensor | None) -> None:
    """Fills the float32 noise `out` or the int32 words `bits` (the other is None) of the
    elements [0, n) of the stream keyed by (seed, offset)."""
    target = bits if bits is not None else out
    n = target.numel()
    block = 1024
    lo, hi = _offset_words(offset)
    with on_device(target):
        _noise_kernel[(triton.cdiv(n, block),)](
            target, target, n, seed, lo, hi, WRITE_BITS=bits is not None, BLOCK=block,
            enable_fp_fusion=False)


def softmax_forward(x, tau, scale, seed, offset, hard, y, argmax) -> None:
    """x, y (rows, vocab) contiguous of one dtype; tau, scale (1,) or (rows,), float32 (float64
    with float64 x); argmax (rows,) int64."""
    if x.dtype == torch.float64:  # the kernels compute in float32, as cpu and cuda do
        y32 = torch.empty(y.shape, dtype=torch.float32, device=y.device)
        softmax_forward(x.float(), tau.float(), scale.float(), seed, offset, hard, y32, argmax)
        y.copy_(y32)
        return
    rows, vocab = x.shape
    fits = vocab <= FIT_LIMIT
    block = triton.next_power_of_2(vocab) if fits else CHUNK
    lo, hi = _offset_words(offset)
    with on_device(x):
        _softmax_fwd_kernel[(rows,)](x, y, argmax, tau, _stride(tau), scale, _stride(scale), vocab,
                                     seed, lo, hi, HARD=hard, FITS=fits, BLOCK=block,
                                     num_warps=_warps(block), enable_fp_fusion=False)


def softmax_backward(x, dy, tau, scale, seed, offset, dx, gz, zz) -> None:
    """x, dy (rows, vocab) contiguous of one dtype; dx (rows, vocab) and gz, zz (rows,) (or
    None: not wanted) float32, float64 with float64 x (as tau and scale)."""
    if x.dtype == torch.float64:  # the kernels compute in float32
        outs = (dx, gz, zz)
        bufs = [None if t is None else torch.empty(t.shape, dtype=torch.float32, device=t.device)
                for t in outs]
        softmax_backward(x.float(), dy.float(), tau.float(), scale.float(), seed, offset, *bufs)
        for t, buf in zip(outs, bufs):
            if t is not None:
                t.copy_(buf)
        return
    rows, vocab = x.shape
    fits = vocab <= FIT_LIMIT
    block = triton.next_power_of_2(vocab) if fits else CHUNK
    lo, hi = _offset_words(offset)
    sums = gz is not None
    with on_device(x):
        _softmax_bwd_kernel[(rows,)](x, dy, dx, gz if sums else dx, zz if sums else dx, tau,
                                     _stride(tau), scale, _stride(scale), vocab, seed, lo, hi,
                                     SUMS=sums, FITS=fits, BLOCK=block, num_warps=_warps(block),
                                     enable_fp_fusion=False)


def topk(x, k, tau, seed, offset, values, indices) -> None:
    """x (rows, vocab) float32 contiguous; values (rows, k) float32, indices (rows, k) int64."""
    rows, vocab = x.shape
    block = min(TOPK_CHUNK, triton.next_power_of_2(vocab))
    n_chunks = triton.cdiv(vocab, block)
    per_chunk = min(k, block)
    if n_chunks == 1:  # the one chunk's picks are the answer (per_chunk = k)
        scores, picks = values, indices
    else:
        scores = torch.empty((rows, n_chunks * per_chunk), dtype=torch.float32, device=x.device)
        picks = torch.empty((rows, n_chunks * per_chunk), dtype=torch.long, device=x.device)
    lo, hi = _offset_words(offset)
    with on_device(x):
        _topk_kernel[(rows, n_chunks)](x, tau, _stride(tau), vocab, seed, lo, hi, per_chunk,
                                       n_chunks, scores, picks, BLOCK=block,
                                       num_warps=_warps(block), enable_fp_fusion=False)
    if n_chunks > 1:
        # Candidates lie in column order within equal scores: a stable sort keeps ties toward
        # the smaller index.
        scores, order = torch.sort(scores, dim=1, descending=True, stable=True)
        values.copy_(scores[:, :k])
        torch.gather(picks, 1, order[:, :k], out=indices)

"""Triton backend of the ``quantize`` family: RQ/PQ encode and decode.

Kernels
-------
``_rq_encode_kernel`` (greedy RQ, one launch for all levels)
    A program owns ``BLOCK_N`` rows. For every level it streams the level's codebook in tiles
    of ``BLOCK_K`` codewords, scores them with ``||c||^2 - 2 r.c`` (``tl.dot`` in exact fp32,
    ``input_precision="ieee"``; ``||r||^2`` is constant per row and dropped), keeps a running
    argmin per row (ties go to the smaller index) and finally gathers the chosen codeword
    from the codebook and subtracts it from the residual. No (N, K) distance matrix is ever
    written. Codeword norms are computed in-kernel from the tile already loaded (a 1/BLOCK_N
    overhead, no extra launch or workspace).
    * D padded to a power of two <= 256: the residual tile lives in registers all along.
    * larger D (e.g. 384, 768, 1024): D is cut into chunks of ``BLOCK_D`` and the residual
      lives in an fp32 (N, D) scratch (the ``quantized`` output when given, so no extra
      memory); each program only touches its own rows, ``tl.debug_barrier`` orders its
      writes before the next level reads them.
``_pq_encode_kernel``
    A program per (row block, group of sub-spaces): nearest codeword of each sub-vector, same
    tiled fp32 ``tl.dot`` + running argmin. Sub-vectors wider than 256 (padded) are streamed
    in chunks from ``x`` (read-only, so no scratch).
``_beam_dist_kernel`` + ``_beam_advance_kernel`` (beam RQ, faiss ``max_beam_size``)
    Per level, the distance kernel scores every (row, beam) residual against every codeword,
    ``||r||^2 - 2 r.c + ||c||^2``, and keeps only the ``min(B, BLOCK_K)`` best candidates of
    each codeword tile (exact: a global top-B element is in the top-B of its own tile), so the
    candidate buffer is ``BLOCK_K / B`` times smaller than (N, B*K). ``torch.topk`` then picks
    the B best per row over those candidates, and the advance kernel gathers parent residual
    and code history and subtracts the chosen codeword. Rows are processed in chunks so that
    the workspace (residuals, histories, candidates) stays under ``_BEAM_WORKSPACE_BYTES``.
``_rq_decode_kernel`` / ``_pq_decode_kernel``
    Gather-and-sum (RQ) or gather-and-concatenate (PQ). A code outside [0, K) is masked: it
    reads nothing and contributes zero.

Precision: all distances are fp32 (``tl.dot(..., input_precision="ieee")``); float16/bfloat16
``x`` is upcast in the kernel, so codes match the float32 choice up to summation order.

Offsets that can exceed 2**31 (row * D, code * D) are computed in int64.

Block sizes are fixed heuristics for Hopper (see ``_rq_config`` / ``_pq_config``); there is no
``triton.autotune`` because its first call benchmarks and synchronises with the host. None of
the launchers synchronises with the host.

Sinkhorn has no Triton kernel: ``sinkhorn_codes`` is the cuda backend's torch-op version, and
``rq_encode_sinkhorn`` runs the Sinkhorn levels in it and the others in ``_rq_encode_kernel``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..cuda.quantize import encode_sinkhorn_levels, sinkhorn_codes
from ._device import num_sms, on_device

__all__ = ["rq_encode", "rq_encode_beam", "rq_encode_sinkhorn", "sinkhorn_codes", "pq_encode",
           "rq_decode", "pq_decode", "kmeans_assign"]

# Codebook dims up to this (after padding to a power of two) keep the whole residual / x tile
# in registers; wider ones are streamed in chunks.
_MAX_REG_DIM = 256
# Workspace bound of the beam search (residuals + histories + candidates), per row chunk.
_BEAM_WORKSPACE_BYTES = 256 << 20


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _pow2(n: int, lo: int = 16) -> int:
    """Smallest power of two >= max(n, lo); tl.dot needs every tile dim >= 16."""
    return max(lo, triton.next_power_of_2(max(int(n), 1)))


@triton.jit
def _argmin_update(dist, ks, best_d, best_i):
    """Fold a (BLOCK_N, BLOCK_K) distance tile into the running (min, argmin) per row.

    Inside the tile the smallest index among equal minima wins; across tiles a later tile
    must be strictly better, so ties always go to the smaller code index.
    """
    tile_d = tl.min(dist, axis=1)
    big = tl.full(dist.shape, 2147483647, tl.int32)
    tile_i = tl.min(tl.where(dist == tile_d[:, None], ks[None, :], big), axis=1)
    better = tile_d < best_d
    return tl.where(better, tile_d, best_d), tl.where(better, tile_i, best_i)


# ---------------------------------------------------------------------------------------------
# Greedy residual quantization
# ---------------------------------------------------------------------------------------------


@triton.jit
def _rq_encode_kernel(
    x_ptr,  # (N, D) f32/f16/bf16
    cb_ptr,  # (L, K, D) f32
    codes_ptr,  # (N, L) i64 out
    q_ptr,  # (N, D) f32 out (if STORE_Q)
    err_ptr,  # (N, L) f32 out (if STORE_ERR)
    work_ptr,  # (N, D) f32 residual scratch (if not IN_REGS; may alias q_ptr)
    N, D, K, L, level_stride,  # level_stride = K * D (host int; i64 when it needs to be)
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    IN_REGS: tl.constexpr, STORE_Q: tl.constexpr, STORE_ERR: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    rows64 = rows.to(tl.int64)
    dd = tl.arange(0, BLOCK_D)
    kk = tl.arange(0, BLOCK_K)

    if IN_REGS:
        # The whole (padded) residual row block stays in registers across all levels.
        d_mask = dd < D
        mask = row_mask[:, None] & d_mask[None, :]
        x_off = rows64[:, None] * D + dd[None, :]
        r = tl.load(x_ptr + x_off, mask=mask, other=0.0).to(tl.float32)
        cb_l = cb_ptr  # advanced by K * D per level: a 64-bit pointer never overflows
        for level in range(L):
            best_d = tl.full([BLOCK_N], float("inf"), tl.float32)
            best_i = tl.zeros([BLOCK_N], tl.int32)
            for k0 in range(0, K, BLOCK_K):
                ks = k0 + kk
                k_mask = ks < K
                c = tl.load(cb_l + ks.to(tl.int64)[:, None] * D + dd[None, :],
                            mask=k_mask[:, None] & d_mask[None, :], other=0.0)
                c_norm = tl.sum(c * c, axis=1)
                dots = tl.dot(r, tl.trans(c), input_precision="ieee")
                dist = tl.where(k_mask[None, :], c_norm[None, :] - 2.0 * dots, float("inf"))
                best_d, best_i = _argmin_update(dist, ks, best_d, best_i)
            chosen = tl.load(cb_l + best_i.to(tl.int64)[:, None] * D + dd[None, :],
                             mask=mask, other=0.0)
            r = r - chosen
            tl.store(codes_ptr + rows64 * L + level, best_i.to(tl.int64), mask=row_mask)
            if STORE_ERR:
                tl.store(err_ptr + rows64 * L + level, tl.sum(r * r, axis=1), mask=row_mask)
            cb_l += level_stride
        if STORE_Q:
            # quantized = x - final residual (= sum of the chosen codewords).
            x = tl.load(x_ptr + x_off, mask=mask, other=0.0).to(tl.float32)
            tl.store(q_ptr + x_off, x - r, mask=mask)
    else:
        # Wide D: the residual lives in the fp32 scratch, streamed in BLOCK_D-wide chunks.
        for d0 in range(0, D, BLOCK_D):
            cols = d0 + dd
            mask = row_mask[:, None] & (cols < D)[None, :]
            off = rows64[:, None] * D + cols[None, :]
            tl.store(work_ptr + off, tl.load(x_ptr + off, mask=mask, other=0.0).to(tl.float32),
                     mask=mask)
        tl.debug_barrier()  # scratch writes visible to every thread of the program
        cb_l = cb_ptr
        for level in range(L):
            best_d = tl.full([BLOCK_N], float("inf"), tl.float32)
            best_i = tl.zeros([BLOCK_N], tl.int32)
            for k0 in range(0, K, BLOCK_K):
                ks = k0 + kk
                k_mask = ks < K
                k_off = ks.to(tl.int64)[:, None] * D
                acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
                c_norm = tl.zeros([BLOCK_K], tl.float32)
                for d0 in range(0, D, BLOCK_D):
                    cols = d0 + dd
                    c_mask = cols < D
                    r = tl.load(work_ptr + rows64[:, None] * D + cols[None, :],
                                mask=row_mask[:, None] & c_mask[None, :], other=0.0)
                    c = tl.load(cb_l + k_off + cols[None, :],
                                mask=k_mask[:, None] & c_mask[None, :], other=0.0)
                    c_norm += tl.sum(c * c, axis=1)
                    acc = tl.dot(r, tl.trans(c), acc, input_precision="ieee")
                dist = tl.where(k_mask[None, :], c_norm[None, :] - 2.0 * acc, float("inf"))
                best_d, best_i = _argmin_update(dist, ks, best_d, best_i)
            tl.debug_barrier()  # all reads of this level's residual done before it is rewritten
            chosen_off = best_i.to(tl.int64)[:, None] * D
            err = tl.zeros([BLOCK_N], tl.float32)
            for d0 in range(0, D, BLOCK_D):
                cols = d0 + dd
                mask = row_mask[:, None] & (cols < D)[None, :]
                off = rows64[:, None] * D + cols[None, :]
                r = tl.load(work_ptr + off, mask=mask, other=0.0)
                r = r - tl.load(cb_l + chosen_off + cols[None, :], mask=mask, other=0.0)
                tl.store(work_ptr + off, r, mask=mask)
                err += tl.sum(r * r, axis=1)
            tl.debug_barrier()
            tl.store(codes_ptr + rows64 * L + level, best_i.to(tl.int64), mask=row_mask)
            if STORE_ERR:
                tl.store(err_ptr + rows64 * L + level, err, mask=row_mask)
            cb_l += level_stride
        if STORE_Q:
            # Elementwise, same layout for the load and the store: safe when work aliases q.
            for d0 in range(0, D, BLOCK_D):
                cols = d0 + dd
                mask = row_mask[:, None] & (cols < D)[None, :]
                off = rows64[:, None] * D + cols[None, :]
                x = tl.load(x_ptr + off, mask=mask, other=0.0).to(tl.float32)
                r = tl.load(work_ptr + off, mask=mask, other=0.0)
                tl.store(q_ptr + off, x - r, mask=mask)


def _rq_config(n: int, d: int, k: int, sms: int):
    """(BLOCK_N, BLOCK_K, BLOCK_D, IN_REGS, num_warps, num_stages) for the greedy kernel.

    Untuned heuristics for H100: fp32 'ieee' dots run on the FMA units, so tiles are sized to
    keep the residual + codebook tile + accumulator in the register file.
    """
    bd = _pow2(d)
    if bd <= 64:
        bn, bk, warps, stages, in_regs = 64, 64, 4, 3, True
    elif bd <= 128:
        bn, bk, warps, stages, in_regs = 64, 64, 8, 2, True
    elif bd <= _MAX_REG_DIM:
        bn, bk, warps, stages, in_regs = 32, 32, 8, 2, True
    else:
        bd, bn, bk, warps, stages, in_regs = 64, 64, 64, 8, 2, False
    bk = min(bk, _pow2(k))
    bn = min(bn, _pow2(n))
    # Few rows (e.g. a small catalogue with a big K): smaller row blocks -> more programs.
    while bn > 16 and triton.cdiv(n, bn) < 2 * sms:
        bn //= 2
    return bn, bk, bd, in_regs, warps, stages


def rq_encode(x: torch.Tensor, codebooks: torch.Tensor, codes: torch.Tensor,
              quantized: torch.Tensor | None, errors: torch.Tensor | None) -> None:
    """Greedy residual-quantization encode, all levels in one kernel launch.

    Args:
        x: (N, D) float32/float16/bfloat16, contiguous.
        codebooks: (L, K, D) float32, contiguous.
        codes: (N, L) int64 output: nearest codeword of each level's residual.
        quantized: (N, D) float32 output (sum of the chosen codewords) or None.
        errors: (N, L) float32 output (squared norm of the residual after each level) or None.
    """
    n, d = x.shape
    levels, k, _ = codebooks.shape
    if n == 0:
        return
    assert x.is_contiguous() and codebooks.is_contiguous() and codebooks.dtype == torch.float32
    bn, bk, bd, in_regs, warps, stages = _rq_config(n, d, k, num_sms(x))
    if in_regs:
        work = codes  # unused placeholder pointer
    elif quantized is not None:
        work = quantized  # the residual scratch doubles as the output buffer
    else:
        work = torch.empty((n, d), dtype=torch.float32, device=x.device)
    dummy = codes
    with on_device(x):
        _rq_encode_kernel[(triton.cdiv(n, bn),)](
            x, codebooks, codes,
            quantized if quantized is not None else dummy,
            errors if errors is not None else dummy,
            work, n, d, k, levels, k * d,
            BLOCK_N=bn, BLOCK_K=bk, BLOCK_D=bd, IN_REGS=in_regs,
            STORE_Q=quantized is not None, STORE_ERR=errors is not None,
            num_warps=warps, num_stages=stages,
        )


def rq_encode_sinkhorn(x: torch.Tensor, codebooks: torch.Tensor, sk_epsilons: list[float],
                       sk_iters: int, codes: torch.Tensor, quantized: torch.Tensor | None,
                       errors: torch.Tensor | None) -> None:
    """Greedy RQ whose levels with epsilon > 0 assign by Sinkhorn; outputs as rq_encode."""
    encode_sinkhorn_levels(rq_encode, sinkhorn_codes, x, codebooks, sk_epsilons, sk_iters,
                           codes, quantized, errors)


def kmeans_assign(x: torch.Tensor, centroids: torch.Tensor, codes: torch.Tensor,
                  dist: torch.Tensor) -> None:
    """Nearest centroid (N,) by the one-level greedy kernel; its exact squared distance."""
    rq_encode(x, centroids[None], codes[:, None], None, None)
    torch.sum((x - centroids[codes]) ** 2, dim=1, out=dist)


# ---------------------------------------------------------------------------------------------
# Beam-search residual quantization
# ---------------------------------------------------------------------------------------------


@triton.jit
def _beam_dist_kernel(
    res_ptr,  # (R, D) residual of every (row, beam) pair, f32 (or x's dtype at level 0)
    cb_ptr,  # (K, D) f32 codebook of this level
    val_ptr,  # (R, n_cols) f32 out: candidate total squared errors
    idx_ptr,  # (R, n_cols) i32 out: their code indices
    R, D, K, n_cols, tiles_per_prog,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    ONE_CHUNK: tl.constexpr, TOPB: tl.constexpr, SELECT: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_t = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < R
    rows64 = rows.to(tl.int64)
    dd = tl.arange(0, BLOCK_D)
    kk = tl.arange(0, BLOCK_K)

    # ||r||^2 of each residual, recomputed here (exact for the residual we actually hold).
    if ONE_CHUNK:
        d_mask = dd < D
        r = tl.load(res_ptr + rows64[:, None] * D + dd[None, :],
                    mask=row_mask[:, None] & d_mask[None, :], other=0.0).to(tl.float32)
        r_norm = tl.sum(r * r, axis=1)
    else:
        r_norm = tl.zeros([BLOCK_M], tl.float32)
        for d0 in range(0, D, BLOCK_D):
            cols = d0 + dd
            rc = tl.load(res_ptr + rows64[:, None] * D + cols[None, :],
                         mask=row_mask[:, None] & (cols < D)[None, :], other=0.0).to(tl.float32)
            r_norm += tl.sum(rc * rc, axis=1)

    n_tiles = tl.cdiv(K, BLOCK_K)
    t_start = pid_t * tiles_per_prog
    t_end = tl.minimum(t_start + tiles_per_prog, n_tiles)
    for t in range(t_start, t_end):
        ks = t * BLOCK_K + kk
        k_mask = ks < K
        k_off = ks.to(tl.int64)[:, None] * D
        if ONE_CHUNK:
            c = tl.load(cb_ptr + k_off + dd[None, :], mask=k_mask[:, None] & d_mask[None, :],
                        other=0.0)
            c_norm = tl.sum(c * c, axis=1)
            dots = tl.dot(r, tl.trans(c), input_precision="ieee")
        else:
            dots = tl.zeros([BLOCK_M, BLOCK_K], tl.float32)
            c_norm = tl.zeros([BLOCK_K], tl.float32)
            for d0 in range(0, D, BLOCK_D):
                cols = d0 + dd
                c_mask = cols < D
                rc = tl.load(res_ptr + rows64[:, None] * D + cols[None, :],
                             mask=row_mask[:, None] & c_mask[None, :], other=0.0).to(tl.float32)
                c = tl.load(cb_ptr + k_off + cols[None, :],
                            mask=k_mask[:, None] & c_mask[None, :], other=0.0)
                c_norm += tl.sum(c * c, axis=1)
                dots = tl.dot(rc, tl.trans(c), dots, input_precision="ieee")
        val = (r_norm[:, None] - 2.0 * dots) + c_norm[None, :]
        val = tl.where(k_mask[None, :], val, float("inf"))
        if SELECT:
            # Keep only this tile's TOPB best (exact for a global top-B with B <= TOPB).
            big = tl.full(val.shape, 2147483647, tl.int32)
            out = rows64 * n_cols + t * TOPB
            for j in range(TOPB):
                v = tl.min(val, axis=1)
                i = tl.min(tl.where(val == v[:, None], ks[None, :], big), axis=1)
                i = tl.where(i < K, i, 0)  # fewer than TOPB valid codes: inf value, index 0
                tl.store(val_ptr + out + j, v, mask=row_mask)
                tl.store(idx_ptr + out + j, i, mask=row_mask)
                val = tl.where(ks[None, :] == i[:, None], float("inf"), val)
        else:
            off = rows64[:, None] * n_cols + ks[None, :]
            tl.store(val_ptr + off, val, mask=row_mask[:, None])
            tl.store(idx_ptr + off, tl.where(k_mask, ks, 0)[None, :], mask=row_mask[:, None])


@triton.jit
def _beam_advance_kernel(
    res_ptr,  # (n * beams, D) parent residuals (f32, or x at level 0)
    new_res_ptr,  # (n * keep, D) f32 out
    cb_ptr,  # (K, D) f32 codebook of this level
    pos_ptr,  # (n, keep) i64: position of each kept candidate in its row's candidates
    idx_ptr,  # (n * beams, n_cols) i32 candidate codes
    hist_ptr,  # (n * beams, L) i64 parent code histories
    new_hist_ptr,  # (n * keep, L) i64 out
    n_new, keep, beams, n_cols, D, K, L, level,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
    UPDATE_RES: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = rows < n_new
    rows64 = rows.to(tl.int64)
    item = rows64 // keep
    pos = tl.load(pos_ptr + rows64, mask=row_mask, other=0)
    parent = pos // n_cols
    code = tl.load(idx_ptr + item * beams * n_cols + pos, mask=row_mask, other=0).to(tl.int64)
    src = item * beams + parent  # the parent's (row, beam) index

    ll = tl.arange(0, BLOCK_L)
    hist = tl.load(hist_ptr + src[:, None] * L + ll[None, :],
                   mask=row_mask[:, None] & (ll < level)[None, :], other=0)
    hist = tl.where((ll == level)[None, :], code[:, None], hist)
    tl.store(new_hist_ptr + rows64[:, None] * L + ll[None, :], hist,
             mask=row_mask[:, None] & (ll <= level)[None, :])

    if UPDATE_RES:
        dd = tl.arange(0, BLOCK_D)
        for d0 in range(0, D, BLOCK_D):
            cols = d0 + dd
            mask = row_mask[:, None] & (cols < D)[None, :]
            r = tl.load(res_ptr + src[:, None] * D + cols[None, :], mask=mask,
                        other=0.0).to(tl.float32)
            c = tl.load(cb_ptr + code[:, None] * D + cols[None, :], mask=mask, other=0.0)
            tl.store(new_res_ptr + rows64[:, None] * D + cols[None, :], r - c, mask=mask)


def rq_encode_beam(x: torch.Tensor, codebooks: torch.Tensor, beam_width: int,
                   codes: torch.Tensor) -> None:
    """Beam-search RQ encode (faiss ``ResidualQuantizer.max_beam_size`` semantics).

    Args:
        x: (N, D) float32/float16/bfloat16, contiguous.
        codebooks: (L, K, D) float32, contiguous.
        beam_width: B >= 1 partial encodings kept per row and level.
        codes: (N, L) int64 output: codes of the best beam after the last level.

    Rows are processed in chunks (workspace <= ``_BEAM_WORKSPACE_BYTES``). Per chunk and level:
    one distance kernel (per-tile top-B candidates), one ``torch.topk`` over the
    (chunk, beams * n_cols) candidates (bounded by the chunking), one advance kernel.
    """
    n, d = x.shape
    levels, k, _ = codebooks.shape
    if n == 0:
        return
    assert x.is_contiguous() and codebooks.is_contiguous() and codebooks.dtype == torch.float32
    b = int(beam_width)
    sms = num_sms(x)

    block_k = min(64, _pow2(k))
    topb = min(b, block_k)
    select = 2 * topb <= block_k  # extraction loop costs ~TOPB passes over the tile
    if not select:
        topb = block_k
    n_tiles = triton.cdiv(k, block_k)
    n_cols = n_tiles * topb
    if _pow2(d) <= 128:
        block_d, one_chunk = _pow2(d), True
    else:
        block_d, one_chunk = 64, False
    block_l = triton.next_power_of_2(levels)
    adv_block_d = min(128, triton.next_power_of_2(d))

    # Bytes per row: 2 residual buffers, 2 histories, candidate values + indices, topk output.
    per_row = b * (2 * d * 4 + 2 * levels * 8 + n_cols * 8 + 8)
    chunk = max(1, min(n, _BEAM_WORKSPACE_BYTES // per_row))
    dev = x.device
    res_bufs = [torch.empty(chunk * b * d, dtype=torch.float32, device=dev) for _ in range(2)]
    hist_bufs = [torch.empty(chunk * b * levels, dtype=torch.int64, device=dev)
                 for _ in range(2)]
    cand_val = torch.empty(chunk * b * n_cols, dtype=torch.float32, device=dev)
    cand_idx = torch.empty(chunk * b * n_cols, dtype=torch.int32, device=dev)

    with on_device(x):
        for c0 in range(0, n, chunk):
            nc = min(chunk, n - c0)
            res = x[c0:c0 + nc]  # level 0 reads x directly (one beam per row)
            hist = hist_bufs[1]  # not read at level 0
            beams = 1
            for level in range(levels):
                cb = codebooks[level]
                n_res = nc * beams
                block_m = min(64, _pow2(n_res))
                row_blocks = triton.cdiv(n_res, block_m)
                splits = max(1, min(n_tiles, triton.cdiv(4 * sms, row_blocks)))
                tiles_per_prog = triton.cdiv(n_tiles, splits)
                _beam_dist_kernel[(row_blocks, triton.cdiv(n_tiles, tiles_per_prog))](
                    res, cb, cand_val, cand_idx, n_res, d, k, n_cols, tiles_per_prog,
                    BLOCK_M=block_m, BLOCK_K=block_k, BLOCK_D=block_d, ONE_CHUNK=one_chunk,
                    TOPB=topb, SELECT=select, num_warps=4,
                )
                keep = min(b, beams * k)
                # Small per-level selection in torch: (nc, beams * n_cols), bounded by chunk.
                scores = cand_val[:n_res * n_cols].view(nc, beams * n_cols)
                pos = torch.topk(scores, keep, dim=1, largest=False, sorted=True).indices
                new_res = res_bufs[level % 2]
                new_hist = hist_bufs[level % 2]
                n_new = nc * keep
                block_r = 32
                _beam_advance_kernel[(triton.cdiv(n_new, block_r),)](
                    res, new_res, cb, pos, cand_idx, hist, new_hist,
                    n_new, keep, beams, n_cols, d, k, levels, level,
                    BLOCK_R=block_r, BLOCK_D=adv_block_d, BLOCK_L=block_l,
                    UPDATE_RES=level + 1 < levels, num_warps=4,
                )
                res, hist, beams = new_res, new_hist, keep
            # sorted=True: beam 0 holds the smallest total error.
            codes[c0:c0 + nc].copy_(hist[:nc * beams * levels].view(nc, beams, levels)[:, 0])


# ---------------------------------------------------------------------------------------------
# Product quantization
# ---------------------------------------------------------------------------------------------


@triton.jit
def _pq_encode_kernel(
    x_ptr,  # (N, M * DSUB) f32/f16/bf16
    cb_ptr,  # (M, K, DSUB) f32
    codes_ptr,  # (N, M) i64 out
    N, M, K, DSUB, sub_stride, subs_per_prog,  # sub_stride = K * DSUB
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    IN_REGS: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_g = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    rows64 = rows.to(tl.int64)
    dd = tl.arange(0, BLOCK_D)
    kk = tl.arange(0, BLOCK_K)
    row_off = rows64[:, None] * M * DSUB
    for j in range(subs_per_prog):
        m = pid_g * subs_per_prog + j
        if m < M:
            x_base = x_ptr + row_off + m * DSUB
            cb_m = cb_ptr + m.to(tl.int64) * sub_stride
            if IN_REGS:
                d_mask = dd < DSUB
                xs = tl.load(x_base + dd[None, :], mask=row_mask[:, None] & d_mask[None, :],
                             other=0.0).to(tl.float32)
            best_d = tl.full([BLOCK_N], float("inf"), tl.float32)
            best_i = tl.zeros([BLOCK_N], tl.int32)
            for k0 in range(0, K, BLOCK_K):
                ks = k0 + kk
                k_mask = ks < K
                k_off = ks.to(tl.int64)[:, None] * DSUB
                if IN_REGS:
                    c = tl.load(cb_m + k_off + dd[None, :],
                                mask=k_mask[:, None] & d_mask[None, :], other=0.0)
                    c_norm = tl.sum(c * c, axis=1)
                    dots = tl.dot(xs, tl.trans(c), input_precision="ieee")
                else:
                    # Wide sub-vectors: stream x chunks (read-only, cached) with the codebook.
                    dots = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
                    c_norm = tl.zeros([BLOCK_K], tl.float32)
                    for d0 in range(0, DSUB, BLOCK_D):
                        cols = d0 + dd
                        c_mask = cols < DSUB
                        xc = tl.load(x_base + cols[None, :],
                                     mask=row_mask[:, None] & c_mask[None, :],
                                     other=0.0).to(tl.float32)
                        c = tl.load(cb_m + k_off + cols[None, :],
                                    mask=k_mask[:, None] & c_mask[None, :], other=0.0)
                        c_norm += tl.sum(c * c, axis=1)
                        dots = tl.dot(xc, tl.trans(c), dots, input_precision="ieee")
                dist = tl.where(k_mask[None, :], c_norm[None, :] - 2.0 * dots, float("inf"))
                best_d, best_i = _argmin_update(dist, ks, best_d, best_i)
            tl.store(codes_ptr + rows64 * M + m, best_i.to(tl.int64), mask=row_mask)


def _pq_config(n: int, m: int, dsub: int, k: int, sms: int):
    """(BLOCK_N, BLOCK_K, BLOCK_D, IN_REGS, subs_per_prog, num_warps) for pq_encode."""
    bd = _pow2(dsub)
    if bd <= 64:
        bn, bk, warps, in_regs = 64, 64, 4, True
    elif bd <= 128:
        bn, bk, warps, in_regs = 64, 64, 8, True
    elif bd <= _MAX_REG_DIM:
        bn, bk, warps, in_regs = 32, 32, 8, True
    else:
        bd, bn, bk, warps, in_regs = 64, 64, 64, 8, False
    bk = min(bk, _pow2(k))
    bn = min(bn, _pow2(n))
    row_blocks = triton.cdiv(n, bn)
    # Group sub-spaces per program only while there remain >= 4 programs per SM.
    subs = max(1, min(m, (row_blocks * m) // (4 * sms)))
    return bn, bk, bd, in_regs, subs, warps


def pq_encode(x: torch.Tensor, codebooks: torch.Tensor, codes: torch.Tensor) -> None:
    """Product-quantization encode.

    Args:
        x: (N, D) float32/float16/bfloat16, contiguous (already rotated for OPQ).
        codebooks: (M, K, D/M) float32, contiguous.
        codes: (N, M) int64 output: nearest codeword of each sub-vector.
    """
    n, _ = x.shape
    m, k, dsub = codebooks.shape
    if n == 0:
        return
    assert x.is_contiguous() and codebooks.is_contiguous() and codebooks.dtype == torch.float32
    bn, bk, bd, in_regs, subs, warps = _pq_config(n, m, dsub, k, num_sms(x))
    with on_device(x):
        _pq_encode_kernel[(triton.cdiv(n, bn), triton.cdiv(m, subs))](
            x, codebooks, codes, n, m, k, dsub, k * dsub, subs,
            BLOCK_N=bn, BLOCK_K=bk, BLOCK_D=bd, IN_REGS=in_regs, num_warps=warps,
        )


# ---------------------------------------------------------------------------------------------
# Decode
# ---------------------------------------------------------------------------------------------


@triton.jit
def _rq_decode_kernel(
    codes_ptr,  # (N, L) i64
    cb_ptr,  # (L, K, D) f32
    out_ptr,  # (N, D) f32 out
    N, D, K, L,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    row_mask = rows < N
    col_mask = cols < D
    rows64 = rows.to(tl.int64)
    acc = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for level in range(L):
        code = tl.load(codes_ptr + rows64 * L + level, mask=row_mask, other=-1)
        ok = (code >= 0) & (code < K)  # a bad code reads nothing and adds zero
        safe = tl.where(ok, code, 0).to(tl.int64)
        c = tl.load(cb_ptr + (level * K + safe)[:, None] * D + cols[None, :],
                    mask=ok[:, None] & col_mask[None, :], other=0.0)
        acc += c
    tl.store(out_ptr + rows64[:, None] * D + cols[None, :], acc,
             mask=row_mask[:, None] & col_mask[None, :])


@triton.jit
def _pq_decode_kernel(
    codes_ptr,  # (N, M) i64
    cb_ptr,  # (M, K, DSUB) f32
    out_ptr,  # (N, M * DSUB) f32 out
    N, M, K, DSUB,
    BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr,
):
    # Tiles over the flattened output width, so tiny sub-vectors still give wide stores.
    width = M * DSUB
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    row_mask = rows < N
    col_mask = cols < width
    rows64 = rows.to(tl.int64)
    sub = cols // DSUB
    within = cols % DSUB
    mask = row_mask[:, None] & col_mask[None, :]
    code = tl.load(codes_ptr + rows64[:, None] * M + sub[None, :], mask=mask, other=-1)
    ok = mask & (code >= 0) & (code < K)  # a bad code reads nothing and gives zero
    safe = tl.where(ok, code, 0).to(tl.int64)
    c = tl.load(cb_ptr + (sub.to(tl.int64)[None, :] * K + safe) * DSUB + within[None, :],
                mask=ok, other=0.0)
    tl.store(out_ptr + rows64[:, None] * width + cols[None, :], c, mask=mask)


def _decode_blocks(width: int):
    block_w = min(128, triton.next_power_of_2(max(width, 1)))
    block_n = max(1, min(64, 4096 // block_w))
    return block_n, block_w


def rq_decode(codes: torch.Tensor, codebooks: torch.Tensor, out: torch.Tensor) -> None:
    """out (N, D) f32 = sum over l of codebooks[l, codes[:, l]].

    codes (N, L) int64 contiguous; codebooks (L, K, D) float32 contiguous. Codes outside
    [0, K) contribute zero (never read out of bounds).
    """
    n, levels = codes.shape
    _, k, d = codebooks.shape
    if n == 0 or d == 0:
        return
    assert codes.is_contiguous() and codebooks.is_contiguous() and out.is_contiguous()
    bn, bd = _decode_blocks(d)
    with on_device(codes):
        _rq_decode_kernel[(triton.cdiv(n, bn), triton.cdiv(d, bd))](
            codes, codebooks, out, n, d, k, levels, BLOCK_N=bn, BLOCK_D=bd, num_warps=4)


def pq_decode(codes: torch.Tensor, codebooks: torch.Tensor, out: torch.Tensor) -> None:
    """out (N, M * dsub) f32 = concatenation of codebooks[m, codes[:, m]] over m.

    codes (N, M) int64 contiguous; codebooks (M, K, dsub) float32 contiguous. Codes outside
    [0, K) give zeros (never read out of bounds).
    """
    n, m = codes.shape
    _, k, dsub = codebooks.shape
    width = m * dsub
    if n == 0 or width == 0:
        return
    assert codes.is_contiguous() and codebooks.is_contiguous() and out.is_contiguous()
    bn, bw = _decode_blocks(width)
    with on_device(codes):
        _pq_decode_kernel[(triton.cdiv(n, bn), triton.cdiv(width, bw))](
            codes, codebooks, out, n, m, k, dsub, BLOCK_N=bn, BLOCK_W=bw, num_warps=4)

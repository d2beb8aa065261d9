"""Triton backend of the ``longid`` family: holistic scoring of items with a fused top-k.

score[b, n] = sum over m = 0..M-1, in that order, of token_scores[b, m, codes[n, m]] (fp32,
one sequential add per position, so the sum is bit-identical to the reference), divided by
M with an IEEE division (``tl.div_rn``) for ``mean``.

Ranking through one int64 key
-----------------------------
Every scored (query, item) pair becomes ``key = (ord32(score) << 32) | (2**32 - 1 - item)``
where ``ord32`` maps the float's bits to an int32 with the same order (x >= 0: bits;
x < 0: bits ^ 0x7FFFFFFF; -0.0 is first turned into +0.0 so equal scores tie). A larger key
is a better item: higher score first, then the smaller item id, exactly the reference's
rule, so selecting the k largest keys (``torch.topk`` on int64 is exact) is the ranking.
Excluded items, padding candidates and out-of-range positions get the sentinel key
``int64 min``, which decodes to (score -inf, id -1); a real item scored -inf keeps a larger
key and its id, as in the reference. Keys are decoded back to (score, id) with a few torch
ops at the end.

Kernels
-------
``_scan_kernel`` (whole catalogue)
    A program owns a tile of ``BLOCK_B`` queries x ``BLOCK_N`` items. For m = 0..M-1 it reads
    the tile's codes once and gathers the table entries of all ``BLOCK_B`` queries with
    ``tl.load``. For B > 1 the launcher lays the table out query-interleaved,
    (ceil(B / BLOCK_B), M, K, BLOCK_B), so the ``BLOCK_B`` values of one code are contiguous
    (one wide load instead of ``BLOCK_B`` scattered ones); B = 1 reads token_scores as is.
    The table keeps its dtype (fp16/bf16 are upcast in the kernel). Narrow codes (uint8 with
    M % 4 == 0, int16 with M even) are read as int32 words holding 4 or 2 codes, unpacked
    with shifts. A code outside [0, K) reads nothing and adds zero (never out of bounds).
    Two variants (constexpr ``SELECT``):
    * k <= ``_SELECT_MAX_K``: each program walks several tiles and keeps a running top-k of
      keys per query in registers. A tile only costs extra work while some key in it beats
      the current k-th best (threshold): the best such key replaces the current minimum, one
      per iteration of a ``while`` loop, so after the first tile most tiles cost one max
      reduction. The program writes its k keys; ``torch.topk`` over (B, programs * k) picks
      the result. One launch, O(B * programs * k) memory. Exact: a global top-k item is in
      the top-k of its own program.
    * larger k: the kernel writes one key per (query, item) of a catalogue chunk, and
      ``torch.topk`` over [running top-k, chunk keys] keeps the running top-k. Chunks hold
      max(2**16, ``_WORKSPACE_BYTES`` / (8 B)) items, so memory is O(B * (k + chunk)),
      never (B, N) for a large catalogue.
``_candidates_kernel`` (``candidates`` given)
    Each row of candidates is first deduplicated on the device (sort, repeats -> -1); a
    program then scores ``BLOCK_C`` candidates of one query (the candidates' code rows are
    gathered) into keys, and ``torch.topk`` over the (B, C) keys picks the top k.

``item_mask`` ((N,) or (B, N) bool, True = exclude) is read in the kernels. Offsets that can
exceed 2**31 are int64. No host synchronisation anywhere (no ``.item()``, no data-dependent
shapes) and no ``triton.autotune`` (its first call benchmarks and synchronises). Tile sizes
are untuned heuristics for Hopper.

Limits: N <= 2**32 items (the id is the low 32 bits of the key; checked on the host);
K * 16 < 2**31 (per-position table offsets are int32; item, query and group offsets are
int64).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ... import _keys
from ._device import num_sms, on_device

__all__ = ["holistic_topk"]

_SENTINEL = _keys.SENTINEL  # key of an excluded / missing item: below every real key
_KEY_SENTINEL = tl.constexpr(_SENTINEL)
_KEY_MAX = tl.constexpr((1 << 63) - 1)
# The in-kernel running top-k (SELECT) is used up to this k; larger k write every key.
_SELECT_MAX_K = 64
# Key workspace of the write-every-key path, per chunk of the catalogue.
_WORKSPACE_BYTES = 64 << 20
_MIN_CHUNK = 1 << 16
_MAX_ITEMS = _keys.MAX_ITEMS
_MAX_GRID_Y = 65535  # CUDA's limit on grid y, the query axis of both kernels


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


@triton.jit
def _unpack(word, j: tl.constexpr, CPW: tl.constexpr):
    """Code j of an int32 word holding CPW codes (little-endian); CPW == 1: the value itself."""
    if CPW == 4:
        c = (word >> (8 * j)) & 0xFF  # uint8 lanes
    elif CPW == 2:
        c = (word << (16 - 16 * j)) >> 16  # int16 lanes, sign-extended by the arithmetic shift
    else:
        c = word
    return c


@triton.jit
def _safe_code(c, K, WIDE: tl.constexpr):
    """(int32 index, in-range flag): an out-of-range code is redirected to 0 and flagged."""
    if not WIDE:
        c = c.to(tl.int32)  # uint8 zero-extends, int16 sign-extends
    ok = (c >= 0) & (c < K)
    return tl.where(ok, c, 0).to(tl.int32), ok


@triton.jit
def _make_keys(score, items, valid):
    """Order-preserving int64 keys: higher score first, then the smaller item id."""
    score = tl.where(score == 0.0, 0.0, score)  # -0.0 == +0.0 must tie
    bits = score.to(tl.int32, bitcast=True)
    order = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    # (2**32 - 1) - item, written so that every literal is unambiguously int64.
    low = (4294967296 - items) - 1
    key = (order.to(tl.int64) << 32) | low
    return tl.where(valid, key, _KEY_SENTINEL)


# ---------------------------------------------------------------------------------------------
# Whole-catalogue scan
# ---------------------------------------------------------------------------------------------


@triton.jit
def _scan_kernel(
    tab_ptr,  # (G, M, K, BLOCK_B) query-interleaved table, or (B, M, K) when BLOCK_B == 1
    codes_ptr,  # (N, W) code rows: W int32 words of CPW codes, or M native codes (CPW == 1)
    mask_ptr,  # (N,) or (B, N) uint8, nonzero = exclude (if MASK_MODE)
    out_ptr,  # int64 keys: row q at out_ptr + q * ld
    B, N, M, K, W, n_start, n_stop, tiles_per_prog, ld, k_keep, m_div,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, CPW: tl.constexpr, WIDE: tl.constexpr,
    MASK_MODE: tl.constexpr, MEAN: tl.constexpr, SELECT: tl.constexpr, KEEP: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_b = tl.program_id(1)
    lane = tl.arange(0, BLOCK_B)
    q = pid_b * BLOCK_B + lane
    q_ok = q < B
    q64 = q.to(tl.int64)
    nn = tl.arange(0, BLOCK_N)
    tab_g = tab_ptr + pid_b.to(tl.int64) * M * K * BLOCK_B
    row_step = K * BLOCK_B
    first = n_start + pid_n.to(tl.int64) * tiles_per_prog * BLOCK_N

    if SELECT:
        slots = tl.arange(0, KEEP)
        # Slots >= k hold int64 max: never the minimum, never replaced, never stored.
        run = tl.where((slots < k_keep)[None, :], tl.full([BLOCK_B, KEEP], _KEY_SENTINEL, tl.int64),
                       _KEY_MAX)
        theta = tl.full([BLOCK_B], _KEY_SENTINEL, tl.int64)  # current k-th best key per query

    for t in range(tiles_per_prog):
        items = first + t * BLOCK_N + nn
        item_ok = items < n_stop
        code_ptr = codes_ptr + items * W
        acc = tl.zeros([BLOCK_B, BLOCK_N], tl.float32)
        row = tab_g
        # m = w * CPW + j runs 0..M-1 in order: one sequential fp32 add per position.
        for w in range(W):
            word = tl.load(code_ptr + w, mask=item_ok, other=0)
            for j in tl.static_range(CPW):
                c, ok = _safe_code(_unpack(word, j, CPW), K, WIDE)
                v = tl.load(row + c[None, :] * BLOCK_B + lane[:, None], mask=ok[None, :],
                            other=0.0)
                acc += v.to(tl.float32)
                row += row_step
        if MEAN:
            acc = tl.div_rn(acc, m_div)
        valid = q_ok[:, None] & item_ok[None, :]
        if MASK_MODE == 1:
            ex = tl.load(mask_ptr + items, mask=item_ok, other=1)
            valid = valid & (ex == 0)[None, :]
        elif MASK_MODE == 2:
            ex = tl.load(mask_ptr + q64[:, None] * N + items[None, :], mask=valid, other=1)
            valid = valid & (ex == 0)
        keys = _make_keys(acc, items[None, :], valid)

        if SELECT:
            # Insert, one per iteration, the tile's best key while it beats the k-th best.
            best = tl.max(keys, axis=1)
            while tl.max((best > theta).to(tl.int32), axis=0) > 0:
                take = best > theta
                slot = tl.argmin(run, axis=1)
                run = tl.where(take[:, None] & (slots[None, :] == slot[:, None]), best[:, None],
                               run)
                # Real keys are unique within a row (distinct ids): this removes one item.
                keys = tl.where(take[:, None] & (keys == best[:, None]), _KEY_SENTINEL, keys)
                theta = tl.min(run, axis=1)
                best = tl.max(keys, axis=1)
        else:
            cols = items - n_start
            tl.store(out_ptr + q64[:, None] * ld + cols[None, :], keys,
                     mask=q_ok[:, None] & item_ok[None, :])

    if SELECT:
        cols = pid_n.to(tl.int64) * k_keep + slots
        tl.store(out_ptr + q64[:, None] * ld + cols[None, :], run,
                 mask=q_ok[:, None] & (slots < k_keep)[None, :])


# ---------------------------------------------------------------------------------------------
# Candidates
# ---------------------------------------------------------------------------------------------


@triton.jit
def _candidates_kernel(
    tab_ptr,  # (B, M, K) token scores, any float dtype
    codes_ptr,  # (N, W) code rows (see _scan_kernel)
    cand_ptr,  # (B, C) int64 item ids, -1 = padding (deduplicated by the launcher)
    mask_ptr,  # (N,) or (B, N) uint8 (if MASK_MODE)
    out_ptr,  # (B, C) int64 keys out
    N, M, K, W, C, m_div,
    BLOCK_C: tl.constexpr, CPW: tl.constexpr, WIDE: tl.constexpr,
    MASK_MODE: tl.constexpr, MEAN: tl.constexpr,
):
    pid_c = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    col_ok = cols < C
    ids = tl.load(cand_ptr + b * C + cols, mask=col_ok, other=-1)
    ok_id = (ids >= 0) & (ids < N)  # anything else is padding: never dereferenced
    safe = tl.where(ok_id, ids, 0)
    code_ptr = codes_ptr + safe * W
    acc = tl.zeros([BLOCK_C], tl.float32)
    row = tab_ptr + b * M * K
    for w in range(W):
        word = tl.load(code_ptr + w, mask=ok_id, other=0)
        for j in tl.static_range(CPW):
            c, ok = _safe_code(_unpack(word, j, CPW), K, WIDE)
            acc += tl.load(row + c, mask=ok, other=0.0).to(tl.float32)
            row += K
    if MEAN:
        acc = tl.div_rn(acc, m_div)
    valid = ok_id
    if MASK_MODE == 1:
        valid = valid & (tl.load(mask_ptr + safe, mask=ok_id, other=1) == 0)
    elif MASK_MODE == 2:
        valid = valid & (tl.load(mask_ptr + b * N + safe, mask=ok_id, other=1) == 0)
    keys = _make_keys(acc, safe, valid)
    tl.store(out_ptr + b * C + cols, keys, mask=col_ok)


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------


def _code_rows(codes: torch.Tensor):
    """(tensor, W, CPW, WIDE): narrow codes as int32 words of CPW codes when M allows it."""
    codes = codes.contiguous()
    m = codes.shape[1]
    size = codes.element_size()
    if size < 4 and (m * size) % 4 == 0 and (codes.storage_offset() * size) % 4 == 0:
        return codes.view(torch.int32), m * size // 4, 4 // size, False
    return codes, m, 1, codes.dtype == torch.int64


def _mask_arg(item_mask, dummy):
    if item_mask is None:
        return dummy, 0
    mask = item_mask.contiguous().view(torch.uint8)
    return mask, 1 if mask.dim() == 1 else 2


def _interleave(table: torch.Tensor, block_b: int) -> torch.Tensor:
    """(B, M, K) -> (ceil(B / block_b), M, K, block_b), padded with zero queries."""
    b, m, kc = table.shape
    groups = triton.cdiv(b, block_b)
    out = table.new_zeros((groups, m, kc, block_b))
    view = out.permute(0, 3, 1, 2)  # (groups, block_b, M, K) view of the interleaved layout
    full = b // block_b
    if full:
        view[:full].copy_(table[:full * block_b].view(full, block_b, m, kc))
    if b > full * block_b:
        view[full, :b - full * block_b].copy_(table[full * block_b:])
    return out


def _scan_config(b: int, n: int):
    """(BLOCK_B, BLOCK_N, num_warps): about 4096 (query, item) pairs per tile."""
    block_b = 1 if b == 1 else min(16, triton.next_power_of_2(b))
    block_n = max(16, min(triton.next_power_of_2(n), 4096 // block_b))
    warps = 8 if block_b * block_n >= 4096 else 4
    return block_b, block_n, warps


def holistic_topk(token_scores: torch.Tensor, codes: torch.Tensor, k: int, mean: bool,
                  candidates: torch.Tensor | None, item_mask: torch.Tensor | None,
                  scores: torch.Tensor, ids: torch.Tensor,
                  packed: torch.Tensor | None = None) -> None:
    """Top-k items by holistic score (see ``semid_fast.reference.longid.holistic_topk``).

    Args:
        token_scores: (B, M, K) float32/float16/bfloat16.
        codes: (N, M) uint8/int16/int32/int64 item codes (codes outside [0, K) add zero).
        k: results per query, >= 1 (may exceed N: padded with -inf / -1).
        mean: divide the sum by M.
        candidates: None or (B, C) int64/int32 item ids (-1 = padding, repeats count once).
        item_mask: None or (N,) / (B, N) bool, True = exclude.
        scores, ids: (B, k) float32 and int64 outputs: best first, ties toward the smaller id.
        packed: the CPU scan's copy of uint8 codes; not read here.
    """
    b, m, kc = token_scores.shape
    n = codes.shape[0]
    dev = token_scores.device
    if n > _MAX_ITEMS:
        raise ValueError(f"holistic_topk (triton): at most 2**32 items, got N={n}")
    if b > _MAX_GRID_Y:  # one launch per slice of queries
        for i in range(0, b, _MAX_GRID_Y):
            rows = slice(i, i + _MAX_GRID_Y)
            holistic_topk(token_scores[rows], codes, k, mean,
                          None if candidates is None else candidates[rows],
                          item_mask if item_mask is None or item_mask.dim() == 1
                          else item_mask[rows], scores[rows], ids[rows])
        return
    no_items = n == 0 or (candidates is not None and candidates.shape[1] == 0)
    if b == 0 or no_items:
        scores.fill_(-torch.inf)
        ids.fill_(-1)
        return
    token_scores = token_scores.contiguous()
    code_rows, words, cpw, wide = _code_rows(codes)
    m_div = float(m) if mean else 1.0

    with on_device(token_scores):
        if candidates is not None:
            c = candidates.shape[1]
            cand_ids = _keys.dedupe_rows(candidates)
            keys = torch.empty((b, c), dtype=torch.long, device=dev)
            mask, mask_mode = _mask_arg(item_mask, keys)
            block_c = max(16, min(1024, triton.next_power_of_2(c)))
            _candidates_kernel[(triton.cdiv(c, block_c), b)](
                token_scores, code_rows, cand_ids, mask, keys, n, m, kc, words, c, m_div,
                BLOCK_C=block_c, CPW=cpw, WIDE=wide, MASK_MODE=mask_mode, MEAN=mean,
                num_warps=4)
            _keys.decode_keys(torch.topk(keys, min(k, c), dim=1).values, scores, ids)
            return

        block_b, block_n, warps = _scan_config(b, n)
        table = token_scores if block_b == 1 else _interleave(token_scores, block_b)
        b_tiles = triton.cdiv(b, block_b)
        n_tiles = triton.cdiv(n, block_n)
        mask, mask_mode = _mask_arg(item_mask, code_rows)

        if k <= _SELECT_MAX_K:
            # Enough programs for ~4 per SM; each keeps the running top-k of its tiles.
            progs = max(1, min(n_tiles, triton.cdiv(4 * num_sms(token_scores), b_tiles)))
            tiles_per_prog = triton.cdiv(n_tiles, progs)
            progs = triton.cdiv(n_tiles, tiles_per_prog)
            cand = torch.empty((b, progs * k), dtype=torch.long, device=dev)
            _scan_kernel[(progs, b_tiles)](
                table, code_rows, mask, cand, b, n, m, kc, words, 0, n, tiles_per_prog,
                cand.stride(0), k, m_div,
                BLOCK_B=block_b, BLOCK_N=block_n, CPW=cpw, WIDE=wide, MASK_MODE=mask_mode,
                MEAN=mean, SELECT=True, KEEP=triton.next_power_of_2(k), num_warps=warps)
            _keys.decode_keys(torch.topk(cand, k, dim=1).values, scores, ids)
            return

        # Large k: every key of a chunk, merged into the running top-k by torch.topk.
        keep = min(k, n)
        chunk = min(n, max(_MIN_CHUNK, _WORKSPACE_BYTES // (8 * b)))
        buf = torch.empty((b, keep + chunk), dtype=torch.long, device=dev)
        buf[:, :keep] = _SENTINEL
        top = None
        for n0 in range(0, n, chunk):
            n1 = min(n, n0 + chunk)
            _scan_kernel[(triton.cdiv(n1 - n0, block_n), b_tiles)](
                table, code_rows, mask, buf[:, keep:], b, n, m, kc, words, n0, n1, 1,
                buf.stride(0), keep, m_div,
                BLOCK_B=block_b, BLOCK_N=block_n, CPW=cpw, WIDE=wide, MASK_MODE=mask_mode,
                MEAN=mean, SELECT=False, KEEP=1, num_warps=warps)
            last = n1 == n
            top = torch.topk(buf[:, :keep + n1 - n0], keep, dim=1, sorted=last).values
            if not last:
                buf[:, :keep].copy_(top)
        _keys.decode_keys(top, scores, ids)

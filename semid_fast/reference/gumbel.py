"""Pure-PyTorch oracle of the gumbel family, drawing the very noise the kernels draw.

Noise stream (csrc/include/semid_fast/philox.h states it for every backend): element e of
the row-major (rows, vocab) layout (after moving ``dim`` last) takes word ``e & 3`` of
Philox4x32-10 on the counter (group lo, group hi, offset lo, offset hi), group = e >> 2,
with key (seed lo, seed hi) -- the function ``triton.language.philox``. Then
u = (2 (r >> 9) + 1) * 2^-24 and g = -log(-log(u)) with a float32 log made of single
IEEE operations in a fixed order (:func:`log_positive`), so every backend gets the same bits.

Philox runs here on int64 tensors holding 32-bit values (products split into 16-bit halves so
that nothing overflows), written for clarity, not speed.
"""

from __future__ import annotations

import torch

from .quantize import _level_epsilons, center_distances, sinkhorn_codes

__all__ = ["philox_bits", "log_positive", "gumbel_noise", "perturb", "gumbel_softmax",
           "gumbel_topk", "quantize_logits", "centred_logits", "sinkhorn_select",
           "quantize_levels", "gumbel_quantize"]

_MASK32 = 0xFFFFFFFF
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85
_ROUND_A, _ROUND_B = 0xD2511F53, 0xCD9E8D57


def _mul32(a: int, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) 32-bit words of the 64-bit product of the constant a and c (< 2^32)."""
    low_part = a * (c & 0xFFFF)  # < 2^48
    high_part = a * (c >> 16)  # < 2^48
    high = (high_part + (low_part >> 16)) >> 16
    low = (low_part + ((high_part & 0xFFFF) << 16)) & _MASK32
    return high, low


def philox_bits(seed: int, offset: int, start: int, n: int,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """The 32-bit noise words of elements [start, start + n) as int64 values in [0, 2^32)."""
    first, last = start >> 2, (start + n + 3) >> 2
    group = torch.arange(first, max(last, first), dtype=torch.int64, device=device)
    c0, c1 = group & _MASK32, group >> 32
    c2 = torch.full_like(group, offset & _MASK32)
    c3 = torch.full_like(group, offset >> 32)
    k0, k1 = seed & _MASK32, seed >> 32
    for _ in range(10):
        hi0, lo0 = _mul32(_ROUND_B, c2)
        hi2, lo2 = _mul32(_ROUND_A, c0)
        c0, c1, c2, c3 = hi0 ^ c1 ^ k0, lo0, hi2 ^ c3 ^ k1, lo2
        k0, k1 = (k0 + _KEY_A) & _MASK32, (k1 + _KEY_B) & _MASK32
    words = torch.stack([c0, c1, c2, c3], dim=1).reshape(-1)  # element order
    skip = start - 4 * first
    return words[skip:skip + n]


# Cephes logf's minimax coefficients of log(1 + f) (see philox.h for the exact recipe).
_LOG_POLY = (7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1,
             1.4249322787e-1, -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1,
             3.3333331174e-1)


def _f32(value: float, like: torch.Tensor) -> torch.Tensor:
    """A float32 constant as a 0-dim tensor: arithmetic with it rounds once, in float32."""
    return torch.tensor(value, dtype=torch.float32, device=like.device)


def log_positive(x: torch.Tensor) -> torch.Tensor:
    """The float32 log of philox.h, op by op (each torch op rounds once; no FMA)."""
    bits = x.view(torch.int32)
    k = (bits - 0x3F3504F3) >> 23  # int32 wraparound like the kernels' uint32 arithmetic
    m = (bits - k * 8388608).view(torch.float32)
    f = m - 1.0
    z = f * f
    p = torch.full_like(f, _LOG_POLY[0])
    for c in _LOG_POLY[1:]:
        p = p * f + _f32(c, f)
    kf = k.float()
    y = (p * f) * z
    y = y + kf * _f32(-2.12194440e-4, f)
    y = y + -(z * 0.5)
    return (f + y) + kf * _f32(0.693359375, f)


def gumbel_noise(seed: int, offset: int, rows: int, vocab: int,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """(rows, vocab) float32 Gumbel(0, 1) noise of the stream keyed by (seed, offset)."""
    bits = philox_bits(seed, offset, 0, rows * vocab, device)
    u = ((bits >> 9) * 2 + 1).float() * _f32(2.0 ** -24, bits.new_empty(0, dtype=torch.float32))
    return (-log_positive(-log_positive(u))).reshape(rows, vocab)


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _rows(logits: torch.Tensor, dim: int) -> torch.Tensor:
    """logits with `dim` moved last, as (rows, vocab)."""
    moved = logits.movedim(dim, -1)
    return moved.reshape(-1, moved.shape[-1])


def _per_row(value, rows: int, dtype: torch.dtype, device) -> torch.Tensor:
    """A float or a tensor of 1 or `rows` values as a (rows, 1) tensor (autograd kept).

    Always a tensor, never a Python scalar: torch may turn a division by a scalar into a
    multiplication by its reciprocal, which rounds differently from the kernels.
    """
    if not isinstance(value, torch.Tensor):
        value = torch.tensor(float(value), device=device)
    return value.to(dtype).reshape(-1, 1).expand(rows, 1)


def perturb(x: torch.Tensor, tau, noise_scale, seed: int, offset: int) -> torch.Tensor:
    """z = (x + noise_scale * g) / tau for x (rows, vocab), each operation rounded once."""
    dtype = _compute_dtype(x)
    rows, vocab = x.shape
    g = gumbel_noise(seed, offset, rows, vocab, x.device).to(dtype)
    scale = _per_row(noise_scale, rows, dtype, x.device)
    temperature = _per_row(tau, rows, dtype, x.device)
    return (x.to(dtype) + scale * g) / temperature


def gumbel_softmax(logits: torch.Tensor, tau=1.0, *, hard: bool = False, noise_scale=1.0,
                   dim: int = -1, seed: int = 0, offset: int = 0) -> torch.Tensor:
    """softmax((logits + noise_scale * g) / tau) along `dim`, g from the stream above.

    ``tau`` / ``noise_scale``: floats, one-value tensors or tensors of one value per row
    (any shape holding rows = logits.numel() / vocab values, in row order). hard=True gives
    ``y_hard - y_soft.detach() + y_soft`` (the straight-through estimator of
    torch.nn.functional.gumbel_softmax) with y_hard the one-hot of the first argmax of z.
    A row whose z is all -inf has no distribution: NaN soft, and hard the one-hot of index 0
    (z's first argmax), as the native kernels write it. Computed in float32 (float64 for float64 logits); returned in the logits' dtype.
    """
    z = perturb(_rows(logits, dim), tau, noise_scale, seed, offset)
    y = z.softmax(-1)
    if hard:
        y_hard = torch.zeros_like(y).scatter_(-1, z.argmax(-1, keepdim=True), 1.0)
        y = y_hard - y.detach() + y
        y = torch.where(torch.isneginf(z).all(-1, keepdim=True), y_hard, y)
    moved_shape = logits.movedim(dim, -1).shape
    return y.to(logits.dtype).reshape(moved_shape).movedim(-1, dim)


def gumbel_topk(logits: torch.Tensor, k: int, *, tau=1.0, seed: int = 0,
                offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Gumbel-top-k over the last dim: the k largest ``logits / tau + g`` per row.

    Returns (scores (..., k) float32, indices (..., k) int64), best first, ties toward the
    smaller index (a stable sort). A sample of k distinct indices without replacement from
    softmax(logits / tau) (Kool et al., 2019); k=1 is Gumbel-max sampling.
    """
    x = logits.reshape(-1, logits.shape[-1]).float()
    rows, vocab = x.shape
    g = gumbel_noise(seed, offset, rows, vocab, logits.device)
    scores = x / _per_row(tau, rows, torch.float32, logits.device) + g
    values, order = torch.sort(scores, dim=-1, descending=True, stable=True)
    out_shape = (*logits.shape[:-1], k)
    return values[:, :k].reshape(out_shape), order[:, :k].reshape(out_shape)


def quantize_logits(x: torch.Tensor, codebook: torch.Tensor, distance: str = "l2",
                    logit_scale=1.0) -> torch.Tensor:
    """(N, K) logits of x (N, D) against codebook (K, D): ``-||x - c||^2`` (expanded as
    ``2 x.c - |x|^2 - |c|^2``) or the cosine similarity, times ``logit_scale`` (a float,
    a one-value tensor, or one value per row: (N,) or (N, 1); autograd kept)."""
    if isinstance(logit_scale, torch.Tensor) and logit_scale.dim() == 1:
        logit_scale = logit_scale.reshape(-1, 1)
    if distance == "l2":
        logits = 2.0 * (x @ codebook.T) - (x * x).sum(-1, keepdim=True) - (codebook * codebook).sum(-1)
    else:
        logits = torch.nn.functional.normalize(x, dim=-1) @ torch.nn.functional.normalize(
            codebook, dim=-1).T
    return logits * logit_scale


def centred_logits(x: torch.Tensor, codebook: torch.Tensor, distance: str = "l2",
                   logit_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """DIGER's logits when it assigns by Sinkhorn (its vq.py replaces the distances by the
    centred ones before taking ``logits = -d``): (logits, d) with d = ``|x|^2 + |c|^2 - 2 x.c``
    (l2) or ``-cos(x, c)`` (cosine) and logits = ``-logit_scale * center_distances(d)``,
    differentiable through d and its global max and min as there."""
    if distance == "l2":
        dist = ((x * x).sum(1, keepdim=True) + (codebook * codebook).sum(1, keepdim=True).T
                - 2 * (x @ codebook.T))
    else:
        dist = -quantize_logits(x, codebook, distance)
    return -center_distances(dist) * logit_scale, dist


def sinkhorn_select(code: torch.Tensor, sk_code: torch.Tensor, noise_scale,
                    rows: int) -> torch.Tensor:
    """DIGER's choice between its sampled and its deterministic (Sinkhorn) codes: a row
    drawn without noise (noise_scale 0: a cold row of the adaptive selection) keeps the
    Sinkhorn code, a noisy row the argmax of its perturbed logits."""
    if not isinstance(noise_scale, torch.Tensor):
        return sk_code if float(noise_scale) == 0.0 else code
    quiet = (noise_scale.detach().reshape(-1) == 0).expand(rows)
    return torch.where(quiet, sk_code, code)


def quantize_levels(x: torch.Tensor, codebook: torch.Tensor, sample, sinkhorn, *,
                    hard: bool = True, distance: str = "l2", logit_scale=1.0, noise_scale=1.0,
                    sk_epsilon=0.0):
    """The residual level loop of :func:`gumbel_quantize`, with its two steps that a backend
    runs passed in (the ops run this very loop with their kernels):
    ``sample(logits, level) -> (soft, code)``, the Gumbel-softmax of a level's (N, K) logits
    and the first argmax of its perturbed logits, drawn at ``offset + level``; and
    ``sinkhorn(dist, epsilon) -> (N,) int64``, the balanced codes of a level's distances,
    called only at levels whose ``sk_epsilon`` is > 0. Returns what gumbel_quantize returns.
    """
    stack = codebook.dim() == 3
    books = codebook if stack else codebook.unsqueeze(0)
    dtype = _compute_dtype(x)
    residual = x.to(dtype)
    quantized = torch.zeros_like(residual)
    codes, softs = [], []
    for level, epsilon in enumerate(_level_epsilons(sk_epsilon, books.shape[0])):
        book = books[level].to(dtype)
        if epsilon > 0:
            logits, dist = centred_logits(residual, book, distance, logit_scale)
        else:
            logits = quantize_logits(residual, book, distance, logit_scale)
        soft, code = sample(logits, level)
        if epsilon > 0:
            code = sinkhorn_select(code, sinkhorn(dist, epsilon), noise_scale, code.shape[0])
        if hard:  # DIGER's (onehot(code) - soft.detach() + soft) @ book, its one-hot term exact
            level_q = book[code] + (soft - soft.detach()) @ book
        else:
            level_q = soft @ book
        quantized = quantized + level_q
        residual = residual - level_q
        codes.append(code)
        softs.append(soft)
    if not stack:
        return codes[0], quantized.to(x.dtype), softs[0].to(x.dtype)
    return torch.stack(codes, 1), quantized.to(x.dtype), torch.stack(softs, 1).to(x.dtype)


def gumbel_quantize(x: torch.Tensor, codebook: torch.Tensor, *, tau=1.0, hard: bool = True,
                    noise_scale=1.0, distance: str = "l2", logit_scale=1.0,
                    seed: int = 0, offset: int = 0, sk_epsilon=0.0, sk_iters: int = 50):
    """DIGER's differentiable semantic-ID step, one level (codebook (K, D)) or a residual
    stack (codebook (L, K, D), level l drawing its noise at offset + l).

    Per level: logits = quantize_logits(residual, codebook, distance, logit_scale); soft =
    the Gumbel-softmax of the logits over codewords; codes = the first argmax of the
    perturbed logits; the indicator straight-through
    ``y = onehot(codes) - soft.detach() + soft`` (soft itself when hard=False) and
    quantized = y @ codebook: the forward value is the chosen codeword (taken exactly, as
    ``codebook[codes]``), the backward pass is that of the soft assignment, reaching x and
    every codeword. The next level quantizes residual - quantized.

    A level with ``sk_epsilon`` > 0 (a float or one per level) follows DIGER with Sinkhorn:
    its logits are :func:`centred_logits`, and rows drawn without noise take the codes of
    :func:`semid_fast.reference.quantize.sinkhorn_codes` on the level's distances
    (:func:`sinkhorn_select`).

    Returns codes (N,) / (N, L) int64, quantized (N, D) in x's dtype (summed over levels)
    and soft (N, K) / (N, L, K) in x's dtype.
    """
    def sample(logits, level):
        z = perturb(logits, tau, noise_scale, seed, offset + level)
        return z.softmax(-1), z.argmax(-1)

    return quantize_levels(
        x, codebook, sample, lambda dist, epsilon: sinkhorn_codes(dist.detach(), epsilon, sk_iters),
        hard=hard, distance=distance, logit_scale=logit_scale, noise_scale=noise_scale,
        sk_epsilon=sk_epsilon)

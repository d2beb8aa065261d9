"""Pure-PyTorch oracle of the ``quantize`` family.

Written for clarity, not speed: the tests compare every backend with these functions and the
benchmarks use them as the baseline. All arithmetic is float32 whatever the input dtype, so
every backend is held to the choice that float32 makes.

Conventions
-----------
* Residual quantization (RQ) as in TIGER / RQ-VAE: level ``l`` picks the codeword nearest (L2)
  to the residual ``r_l`` and the next residual is ``r_{l+1} = r_l - e_l``, with ``r_0 = x``.
* Balanced assignment (``sk_epsilon > 0`` at a level), as LC-Rec / LETTER / DIGER's vq.py:
  the level's (N, K) float32 distances of the whole batch are centred to about [-1, 1]
  (:func:`center_distances`), Sinkhorn-Knopp runs on ``exp(-centred / eps)`` in float64
  (:func:`sinkhorn`) and each row takes the argmax of the resulting Q. Codes depend on the
  batch.
* Beam RQ encoding keeps the ``beam_width`` partial encodings of smallest total squared error
  at every level, as faiss ``ResidualQuantizer.max_beam_size`` does.
* Product quantization (PQ): the (optionally rotated) vector is cut into ``M`` sub-vectors of
  ``D / M`` dims, each quantized by its own codebook. An OPQ rotation ``R`` (D, D) is applied
  as ``x @ R.T`` (faiss ``OPQMatrix.A``), and undone as ``y @ R`` (R is orthonormal). A centre
  ``c`` (D,) is subtracted after the rotation and added back before it is undone, as faiss
  ``IndexIVFPQ`` with one list (by_residual) does with its coarse centroid.
"""

from __future__ import annotations

import torch

__all__ = ["rq_encode", "rq_decode", "rq_quantize", "pq_encode", "pq_decode", "squared_distances",
           "sk_distances", "center_distances", "sinkhorn", "sinkhorn_codes"]


def squared_distances(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """||x_n - c_k||^2 for x (N, D) and codebook (K, D), as (N, K) float32."""
    x = x.float()
    codebook = codebook.float()
    return (
        (x * x).sum(1, keepdim=True)
        - 2.0 * (x @ codebook.T)
        + (codebook * codebook).sum(1)[None, :]
    ).clamp_min_(0.0)


def sk_distances(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """(N, K) float32 ``|x|^2 + |c|^2 - 2 x.c`` in that order and unclamped, as the published
    vq.py computes the distances it centres."""
    x = x.float()
    codebook = codebook.float()
    return ((x * x).sum(1, keepdim=True) + (codebook * codebook).sum(1, keepdim=True).T
            - 2 * (x @ codebook.T))


def center_distances(dist: torch.Tensor) -> torch.Tensor:
    """``(dist - middle) / amplitude`` with middle the mean of the global max and min of the
    batch's distances and amplitude = max - middle + 1e-5, in dist's dtype
    (``center_distance_for_constraint`` of LC-Rec / LETTER / DIGER)."""
    if dist.numel() == 0:
        return dist.clone()
    top, bottom = dist.max(), dist.min()
    middle = (top + bottom) / 2
    amplitude = top - middle + 1e-5
    return (dist - middle) / amplitude


def sinkhorn(dist: torch.Tensor, epsilon: float, iters: int) -> torch.Tensor:
    """Sinkhorn-Knopp on ``Q = exp(-dist / epsilon)`` (dist (N, K), float64 in the published
    code): Q scaled to sum 1, then ``iters`` times rows scaled to sum 1/N and columns to
    1/K; finally times N."""
    q = torch.exp(-dist / epsilon)
    n, k = q.shape
    q = q / q.sum()
    for _ in range(iters):
        q = q / q.sum(dim=1, keepdim=True) / n
        q = q / q.sum(dim=0, keepdim=True) / k
    return q * n


def sinkhorn_codes(dist: torch.Tensor, epsilon: float, iters: int) -> torch.Tensor:
    """(N,) int64 balanced codes from (N, K) float32 distances: argmax over codewords of
    ``sinkhorn(center_distances(dist).double(), epsilon, iters)``."""
    return sinkhorn(center_distances(dist.float()).double(), epsilon, iters).argmax(dim=1)


def _level_epsilons(sk_epsilon, levels: int) -> list[float]:
    if isinstance(sk_epsilon, (int, float)):
        return [float(sk_epsilon)] * levels
    return [float(e) for e in sk_epsilon]


def _level_codes(residual, codebook, epsilon: float, iters: int) -> torch.Tensor:
    if epsilon > 0:
        return sinkhorn_codes(sk_distances(residual, codebook), epsilon, iters)
    return squared_distances(residual, codebook).argmin(dim=1)


def rq_encode(x: torch.Tensor, codebooks: torch.Tensor, beam_width: int = 1,
              sk_epsilon=0.0, sk_iters: int = 50) -> torch.Tensor:
    """Residual-quantization codes (N, L) int64 of x (N, D) with codebooks (L, K, D).

    ``sk_epsilon``: a float or one per level; a level with epsilon > 0 assigns by
    :func:`sinkhorn_codes` (``sk_iters`` iterations), the others by nearest codeword.
    """
    if beam_width > 1:
        return _rq_encode_beam(x, codebooks, beam_width)
    epsilons = _level_epsilons(sk_epsilon, codebooks.shape[0])
    residual = x.float()
    codes = []
    for codebook, epsilon in zip(codebooks.float(), epsilons):
        best = _level_codes(residual, codebook, epsilon, sk_iters)
        residual = residual - codebook[best]
        codes.append(best)
    return torch.stack(codes, dim=1) if codes else x.new_zeros((x.shape[0], 0), dtype=torch.long)


def _rq_encode_beam(x: torch.Tensor, codebooks: torch.Tensor, beam_width: int) -> torch.Tensor:
    n = x.shape[0]
    residuals = x.float()[:, None, :]  # (N, beams, D)
    errors = (residuals * residuals).sum(-1)  # (N, beams): squared norm of each residual
    codes = torch.zeros((n, 1, 0), dtype=torch.long, device=x.device)
    for codebook in codebooks.float():
        k = codebook.shape[0]
        beams = residuals.shape[1]
        # ||r - c||^2 = ||r||^2 - 2 r.c + ||c||^2 for every (beam, codeword) pair.
        candidate_errors = (
            errors[:, :, None] - 2.0 * residuals @ codebook.T + (codebook * codebook).sum(1)
        ).reshape(n, beams * k)
        keep = min(beam_width, beams * k)
        errors, flat = candidate_errors.topk(keep, dim=1, largest=False, sorted=True)
        parent, chosen = flat // k, flat % k
        residuals = residuals.gather(1, parent[..., None].expand(-1, -1, residuals.shape[2]))
        residuals = residuals - codebook[chosen]
        codes = torch.cat([codes.gather(1, parent[..., None].expand(-1, -1, codes.shape[2])),
                           chosen[..., None]], dim=2)
    return codes[:, 0, :]


def rq_decode(codes: torch.Tensor, codebooks: torch.Tensor) -> torch.Tensor:
    """Sum of the chosen codewords: codes (N, L) int, codebooks (L, K, D) -> (N, D)."""
    out = codebooks.new_zeros((codes.shape[0], codebooks.shape[2]))
    for level in range(codebooks.shape[0]):
        out = out + codebooks[level][codes[:, level].long()]
    return out


def rq_quantize(x: torch.Tensor, codebooks: torch.Tensor, beta: float = 0.25,
                reduction: str = "mean", sk_epsilon=0.0, sk_iters: int = 50):
    """The training-time quantization step of an RQ-VAE.

    Follows the RQ-VAE of TIGER as implemented by LC-Rec / LETTER / MiniOneRec: each level's
    residual is detached from the graph, so gradients reach the encoder only through the
    straight-through output and the first level's commitment term.

    loss_l = mean((sg(r_l) - e_l)^2) + beta * mean((r_l - sg(e_l))^2)
    loss = mean_l loss_l (reduction="mean", as those repos do) or sum_l loss_l ("sum").

    Codes as :func:`rq_encode` with ``sk_epsilon`` / ``sk_iters``.

    Returns (codes (N, L) int64, quantized (N, D) in x's dtype with straight-through gradient
    to x, loss () float32).
    """
    epsilons = _level_epsilons(sk_epsilon, codebooks.shape[0])
    x32 = x.float()
    residual = x32
    quantized = torch.zeros_like(x32)
    losses = []
    codes = []
    for codebook, epsilon in zip(codebooks.float(), epsilons):
        with torch.no_grad():
            best = _level_codes(residual, codebook, epsilon, sk_iters)
        chosen = codebook[best]
        losses.append(torch.mean((residual.detach() - chosen) ** 2)
                      + beta * torch.mean((residual - chosen.detach()) ** 2))
        quantized = quantized + chosen.detach()
        residual = (residual - chosen).detach()
        codes.append(best)
    loss = torch.stack(losses).sum()
    if reduction == "mean":
        loss = loss / len(losses)
    straight_through = x32 + (quantized - x32).detach()
    return torch.stack(codes, dim=1), straight_through.to(x.dtype), loss


def _split(x: torch.Tensor, m: int) -> torch.Tensor:
    return x.reshape(x.shape[0], m, x.shape[1] // m)


def pq_encode(x: torch.Tensor, codebooks: torch.Tensor, rotation: torch.Tensor | None = None,
              center: torch.Tensor | None = None, rows_per_chunk: int = 2048):
    """Product-quantization codes (N, M) int64 of x (N, D), codebooks (M, K, D/M).

    ``center`` (D,) is subtracted after the rotation, before the split: faiss IndexIVFPQ with
    one list encodes ``x @ R.T - c`` (the residual to its coarse centroid). Rows go in chunks
    so the (M, rows, K) distance block stays small.
    """
    x = x.float()
    if rotation is not None:
        x = x @ rotation.float().T
    if center is not None:
        x = x - center.float()
    m = codebooks.shape[0]
    codebooks = codebooks.float()
    codes = []
    for chunk in x.split(rows_per_chunk):
        parts = _split(chunk, m).transpose(0, 1)  # (M, rows, D/M)
        dist = ((parts * parts).sum(-1, keepdim=True)
                - 2.0 * parts @ codebooks.transpose(1, 2)
                + (codebooks * codebooks).sum(-1)[:, None, :])
        codes.append(dist.argmin(dim=2).T)
    return torch.cat(codes) if codes else x.new_zeros((0, m), dtype=torch.long)


def pq_decode(codes: torch.Tensor, codebooks: torch.Tensor, rotation: torch.Tensor | None = None,
              center: torch.Tensor | None = None):
    """Reconstruction (N, D) from PQ codes (N, M): ``center`` added back, then the rotation
    undone, in that order (faiss IndexIVFPQ.sa_decode, then the OPQ reverse transform)."""
    parts = [codebooks[m][codes[:, m].long()] for m in range(codebooks.shape[0])]
    out = torch.cat(parts, dim=1)
    if center is not None:
        out = out + center.to(out.dtype)
    if rotation is not None:
        out = out @ rotation.to(out.dtype)
    return out

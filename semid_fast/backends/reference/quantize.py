"""Reference launchers of the ``quantize`` family (and of k-means): the oracles of
semid_fast.reference.quantize and semid_fast.reference.kmeans, their results copied into the
op's outputs. Torch ops on the outputs' device, so they run wherever torch does; the other
backends' missing steps (rq_quantize's backward, the k-means update) run here too.
"""

from __future__ import annotations

import torch

from ...reference import kmeans as ref_kmeans
from ...reference import quantize as ref

__all__ = ["rq_encode", "rq_encode_beam", "rq_encode_sinkhorn", "sinkhorn_codes", "pq_encode",
           "rq_decode", "pq_decode", "rq_quantize_backward",
           "kmeanspp", "kmeans_assign", "kmeans_update"]


def _details(x, codebooks, codes, quantized, errors) -> None:
    """The sum of the chosen codewords and the squared residual norm after each level."""
    residual = x.float()
    total = torch.zeros_like(residual)
    for level in range(codebooks.shape[0]):
        chosen = codebooks[level][codes[:, level]]
        residual = residual - chosen
        total = total + chosen
        if errors is not None:
            errors[:, level] = (residual * residual).sum(1)
    if quantized is not None:
        quantized.copy_(total)


def rq_encode(x: torch.Tensor, codebooks: torch.Tensor, codes: torch.Tensor,
              quantized: torch.Tensor | None, errors: torch.Tensor | None) -> None:
    """Greedy RQ codes (N, L); optionally quantized (N, D) and errors (N, L)."""
    codes.copy_(ref.rq_encode(x, codebooks))
    _details(x, codebooks, codes, quantized, errors)


def rq_encode_beam(x: torch.Tensor, codebooks: torch.Tensor, beam_width: int,
                   codes: torch.Tensor) -> None:
    codes.copy_(ref.rq_encode(x, codebooks, beam_width))


def rq_encode_sinkhorn(x: torch.Tensor, codebooks: torch.Tensor, sk_epsilons: list[float],
                       sk_iters: int, codes: torch.Tensor, quantized: torch.Tensor | None,
                       errors: torch.Tensor | None) -> None:
    codes.copy_(ref.rq_encode(x, codebooks, 1, list(sk_epsilons), sk_iters))
    _details(x, codebooks, codes, quantized, errors)


def sinkhorn_codes(dist: torch.Tensor, epsilon: float, iters: int, codes: torch.Tensor) -> None:
    codes.copy_(ref.sinkhorn_codes(dist, epsilon, iters))


def pq_encode(x: torch.Tensor, codebooks: torch.Tensor, codes: torch.Tensor) -> None:
    codes.copy_(ref.pq_encode(x, codebooks))


def rq_decode(codes: torch.Tensor, codebooks: torch.Tensor, out: torch.Tensor) -> None:
    out.copy_(ref.rq_decode(codes, codebooks))


def pq_decode(codes: torch.Tensor, codebooks: torch.Tensor, out: torch.Tensor) -> None:
    out.copy_(ref.pq_decode(codes, codebooks))


def rq_quantize_backward(x: torch.Tensor, codebooks: torch.Tensor, codes: torch.Tensor,
                         grad_quantized: torch.Tensor | None, grad_loss: torch.Tensor,
                         beta: float, scale: float, grad_x: torch.Tensor,
                         grad_codebooks: torch.Tensor) -> None:
    """Float32 gradients of semid_fast.reference.quantize.rq_quantize for the given codes, in
    closed form (the oracle's autograd graph, without building it).

    With r_l the residual of level l, e_l its chosen codeword and `scale` = 2 / (N D), further
    divided by L for the "mean" reduction: the codebook term gives e_l the summed
    ``scale * (e_l - r_l)`` of its rows; the commitment term reaches x only through r_0 (later
    residuals are detached), ``-beta * scale * (e_0 - r_0)``; grad_quantized passes straight
    to x. grad_loss stays a tensor (no device sync).
    """
    residual = x.float()
    grad_codebooks.zero_()
    grad_x.zero_()
    for level in range(codebooks.shape[0]):
        chosen = codebooks[level][codes[:, level]]
        gap = chosen - residual
        if level == 0:
            grad_x.add_(gap * (-beta * scale) * grad_loss)
        grad_codebooks[level].index_add_(0, codes[:, level], gap)
        residual = residual - chosen
    grad_codebooks.mul_(scale * grad_loss)
    if grad_quantized is not None:
        grad_x.add_(grad_quantized.float())


# ---------------------------------------------------------------------------------------------
# k-means steps (x float32 contiguous)
# ---------------------------------------------------------------------------------------------


def kmeanspp(x: torch.Tensor, first: int, draws: torch.Tensor, picks: torch.Tensor) -> None:
    picks.copy_(ref_kmeans.kmeanspp_picks(x, first, draws))


def kmeans_assign(x: torch.Tensor, centroids: torch.Tensor, codes: torch.Tensor,
                  dist: torch.Tensor) -> None:
    got_codes, got_dist = ref_kmeans.assign(x, centroids)
    codes.copy_(got_codes)
    dist.copy_(got_dist)


def kmeans_update(x: torch.Tensor, codes: torch.Tensor, sums: torch.Tensor,
                  counts: torch.Tensor) -> None:
    got_sums, got_counts = ref_kmeans.update(x, codes, counts.shape[0])
    sums.copy_(got_sums)
    counts.copy_(got_counts)

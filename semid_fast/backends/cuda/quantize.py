"""CUDA launchers of the ``quantize`` family (and of k-means) over semid_fast._C_cuda.

Greedy RQ, PQ and the decoders are CUDA kernels. Sinkhorn has no kernel of its own: it runs
in torch ops on the device (:func:`sinkhorn_codes`, also the triton backend's), and
:func:`encode_sinkhorn_levels` runs an RQ with Sinkhorn levels level by level around a
backend's one-level encoder. There is no beam search here (no kernel: 'auto' takes triton),
and rq_quantize's backward and the k-means update run in the reference's torch ops.
"""

from __future__ import annotations

import torch

from ... import _native
from ...reference import quantize as ref

__all__ = ["rq_encode", "rq_encode_sinkhorn", "sinkhorn_codes", "pq_encode", "rq_decode",
           "pq_decode", "kmeans_assign"]


def _ptr(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def rq_encode(x: torch.Tensor, codebooks: torch.Tensor, codes: torch.Tensor,
              quantized: torch.Tensor | None, errors: torch.Tensor | None) -> None:
    """Greedy RQ codes (N, L) int64 of float32/float16/bfloat16 x; optionally quantized
    (N, D) and errors (N, L) float32."""
    levels, k, _ = codebooks.shape
    _native.call_cuda("rq_encode", _native._C_cuda.rq_encode, x.data_ptr(),
                      _native.DTYPE_CODES[x.dtype], x.shape[0], x.shape[1], codebooks.data_ptr(),
                      levels, k, codes.data_ptr(), _ptr(quantized), _ptr(errors), device=x.device)


def sinkhorn_codes(dist: torch.Tensor, epsilon: float, iters: int, codes: torch.Tensor) -> None:
    """The codes of semid_fast.reference.quantize.sinkhorn_codes in torch ops on dist's device.

    As the cpu kernel (csrc/cpu/quantize.cpp), Q is kept as the kernel scaled by a row and a
    column vector, so an iteration is two matrix-vector products and writes nothing of size
    (N, K): about three (N, K) float64 buffers in all (centred distances, kernel, final Q).
    """
    centred = ref.center_distances(dist).double()
    kern = torch.exp((centred.amin(dim=1, keepdim=True) - centred) / epsilon)
    if iters == 0:
        torch.argmax(kern, dim=1, out=codes)
        return
    b = kern.new_ones(kern.shape[1])
    for _ in range(iters):
        row = kern @ b
        a = torch.where(row > 0, 1.0 / row, 0.0)
        col = a @ kern
        b = torch.where(col > 0, 1.0 / col, 0.0)
        b = b / b.max().clamp_min(torch.finfo(torch.float64).tiny)
    # The last column normalisation as published: a column one row dominates gives it exactly 1.
    q = (a[:, None] * kern) / torch.where(col > 0, col, float("inf"))
    torch.argmax(q, dim=1, out=codes)


def encode_sinkhorn_levels(encode, sinkhorn, x, codebooks, sk_epsilons, sk_iters, codes,
                           quantized, errors) -> None:
    """rq_encode_sinkhorn from a backend's launchers: level by level, Sinkhorn codes of the
    residual's distances (`sinkhorn`) or the one-level greedy kernel (`encode`)."""
    residual = x.float()
    if quantized is not None:
        quantized.zero_()
    for level, epsilon in enumerate(sk_epsilons):
        book = codebooks[level]
        if epsilon > 0:
            code = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
            sinkhorn(ref.sk_distances(residual, book).contiguous(), epsilon, sk_iters, code)
        else:
            code = torch.empty((x.shape[0], 1), dtype=torch.long, device=x.device)
            encode(residual.contiguous(), codebooks[level:level + 1], code, None, None)
            code = code[:, 0]
        chosen = book[code]
        residual = residual - chosen
        codes[:, level] = code
        if quantized is not None:
            quantized += chosen
        if errors is not None:
            errors[:, level] = (residual * residual).sum(1)


def rq_encode_sinkhorn(x: torch.Tensor, codebooks: torch.Tensor, sk_epsilons: list[float],
                       sk_iters: int, codes: torch.Tensor, quantized: torch.Tensor | None,
                       errors: torch.Tensor | None) -> None:
    """Greedy RQ whose levels with epsilon > 0 assign by Sinkhorn; outputs as rq_encode."""
    encode_sinkhorn_levels(rq_encode, sinkhorn_codes, x, codebooks, sk_epsilons, sk_iters,
                           codes, quantized, errors)


def pq_encode(x: torch.Tensor, codebooks: torch.Tensor, codes: torch.Tensor) -> None:
    """Nearest codeword (N, M) int64 of each sub-vector of float32/float16/bfloat16 x."""
    m, k, _ = codebooks.shape
    _native.call_cuda("pq_encode", _native._C_cuda.pq_encode, x.data_ptr(),
                      _native.DTYPE_CODES[x.dtype], x.shape[0], x.shape[1], codebooks.data_ptr(),
                      m, k, codes.data_ptr(), device=x.device)


def _decode(fn, op: str, codes, codebooks, out) -> None:
    n, groups = codes.shape
    _native.call_cuda(op, fn, codes.data_ptr(), n, groups, codebooks.data_ptr(),
                      codebooks.shape[1], codebooks.shape[2], out.data_ptr(), device=codes.device)


def rq_decode(codes: torch.Tensor, codebooks: torch.Tensor, out: torch.Tensor) -> None:
    """out (N, D) float32 = sum over levels of the chosen codewords."""
    _decode(_native._C_cuda.rq_decode, "rq_decode", codes, codebooks, out)


def pq_decode(codes: torch.Tensor, codebooks: torch.Tensor, out: torch.Tensor) -> None:
    """out (N, M * D/M) float32 = the chosen codewords side by side."""
    _decode(_native._C_cuda.pq_decode, "pq_decode", codes, codebooks, out)


def kmeans_assign(x: torch.Tensor, centroids: torch.Tensor, codes: torch.Tensor,
                  dist: torch.Tensor) -> None:
    """Nearest centroid (N,) by the one-level rq_encode kernel; its exact squared distance."""
    rq_encode(x, centroids[None], codes[:, None], None, None)
    torch.sum((x - centroids[codes]) ** 2, dim=1, out=dist)

"""CPU launchers of the ``quantize`` family (and of k-means) over semid_fast._C.

The kernels take float32 rows: x of another dtype is converted here, so a float16/bfloat16
row gets the codes of its float32 value. Codebooks and outputs arrive float32/int64 and
contiguous from the ops.
"""

from __future__ import annotations

import torch

from ... import _checks, _native

__all__ = ["rq_encode", "rq_encode_beam", "rq_encode_sinkhorn", "sinkhorn_codes", "pq_encode",
           "rq_decode", "pq_decode", "rq_quantize_backward",
           "kmeanspp", "kmeans_assign", "kmeans_update"]


def _ptr(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def _rq_encode(x, codebooks, beam_width, epsilons, sk_iters, codes, quantized, errors, op):
    x32 = x.float().contiguous()
    levels, k, _ = codebooks.shape
    status = _native.cpu().rq_encode_f32(
        x32.data_ptr(), x.shape[0], x.shape[1], codebooks.data_ptr(), levels, k, beam_width,
        _ptr(epsilons), sk_iters, codes.data_ptr(), _ptr(quantized), _ptr(errors),
        _native.n_threads())
    _native.check_cpu_status(status, op)


def rq_encode(x: torch.Tensor, codebooks: torch.Tensor, codes: torch.Tensor,
              quantized: torch.Tensor | None, errors: torch.Tensor | None) -> None:
    """Greedy RQ: codes (N, L) int64; optionally quantized (N, D), the sum of the chosen
    codewords, and errors (N, L), the squared norm of the residual after each level."""
    _rq_encode(x, codebooks, 1, None, 0, codes, quantized, errors, "rq_encode")


def rq_encode_beam(x: torch.Tensor, codebooks: torch.Tensor, beam_width: int,
                   codes: torch.Tensor) -> None:
    """Beam-search RQ (faiss ``max_beam_size``): codes (N, L) of the best beam."""
    _rq_encode(x, codebooks, beam_width, None, 0, codes, None, None, "rq_encode")


def rq_encode_sinkhorn(x: torch.Tensor, codebooks: torch.Tensor, sk_epsilons: list[float],
                       sk_iters: int, codes: torch.Tensor, quantized: torch.Tensor | None,
                       errors: torch.Tensor | None) -> None:
    """Greedy RQ whose levels with epsilon > 0 assign by Sinkhorn; outputs as rq_encode."""
    epsilons = torch.tensor(sk_epsilons, dtype=torch.float64)
    _rq_encode(x, codebooks, 1, epsilons, sk_iters, codes, quantized, errors, "rq_encode")


def sinkhorn_codes(dist: torch.Tensor, epsilon: float, iters: int, codes: torch.Tensor) -> None:
    """Balanced codes (N,) int64 from (N, K) float32 contiguous distances. The kernel keeps Q
    as the (N, K) float64 kernel scaled by a row and a column vector (8 N K bytes)."""
    n, k = dist.shape
    status = _native.cpu().sinkhorn_codes_f32(dist.data_ptr(), n, k, float(epsilon), int(iters),
                                              codes.data_ptr(), _native.n_threads())
    _native.check_cpu_status(status, "sinkhorn")


def pq_encode(x: torch.Tensor, codebooks: torch.Tensor, codes: torch.Tensor) -> None:
    """Nearest codeword (N, M) int64 of each of the M sub-vectors of x."""
    x32 = x.float().contiguous()
    m, k, _ = codebooks.shape
    status = _native.cpu().pq_encode_f32(x32.data_ptr(), x.shape[0], x.shape[1],
                                         codebooks.data_ptr(), m, k, codes.data_ptr(),
                                         _native.n_threads())
    _native.check_cpu_status(status, "pq_encode")


# The decoders check every code in the kernel, so the ops skip their own pass over the codes
# (on (N, M) int64 codes that pass costs about as much as the decode).
rq_decode_checks_codes = pq_decode_checks_codes = True


def _decode(fn, op: str, codes, codebooks, out) -> None:
    n, groups = codes.shape
    status = fn(codes.data_ptr(), n, groups, codebooks.data_ptr(), codebooks.shape[1],
                codebooks.shape[2], out.data_ptr(), _native.n_threads())
    if status == _native.cpu().STATUS_CODE_OUT_OF_RANGE:
        raise _checks.codes_out_of_range(codes, codebooks.shape[1], "codes")
    _native.check_cpu_status(status, op)


def rq_decode(codes: torch.Tensor, codebooks: torch.Tensor, out: torch.Tensor) -> None:
    """out (N, D) float32 = sum over levels of the chosen codewords."""
    _decode(_native.cpu().rq_decode_f32, "rq_decode", codes, codebooks, out)


def pq_decode(codes: torch.Tensor, codebooks: torch.Tensor, out: torch.Tensor) -> None:
    """out (N, M * D/M) float32 = the chosen codewords side by side."""
    _decode(_native.cpu().pq_decode_f32, "pq_decode", codes, codebooks, out)


def rq_quantize_backward(x: torch.Tensor, codebooks: torch.Tensor, codes: torch.Tensor,
                         grad_quantized: torch.Tensor | None, grad_loss: torch.Tensor,
                         beta: float, scale: float, grad_x: torch.Tensor,
                         grad_codebooks: torch.Tensor) -> None:
    """rq_quantize's gradients in one pass without (N, D) temporaries; see the reference
    launcher for the formula. grad_loss is a CPU scalar, read without a device sync."""
    weight = float(grad_loss)
    x32 = x.float().contiguous()
    upstream = None if grad_quantized is None else grad_quantized.float().contiguous()
    levels, k, _ = codebooks.shape
    status = _native.cpu().rq_quantize_bwd_f32(
        x32.data_ptr(), x.shape[0], x.shape[1], codebooks.data_ptr(), levels, k,
        codes.data_ptr(), _ptr(upstream), -beta * scale * weight, scale * weight,
        grad_x.data_ptr(), grad_codebooks.data_ptr(), _native.n_threads())
    _native.check_cpu_status(status, "rq_quantize backward")


# ---------------------------------------------------------------------------------------------
# k-means steps (x float32 contiguous)
# ---------------------------------------------------------------------------------------------


def kmeanspp(x: torch.Tensor, first: int, draws: torch.Tensor, picks: torch.Tensor) -> None:
    """Greedy k-means++ picks (k,) int64 rows of x from the draws of
    semid_fast.reference.kmeans.kmeanspp_draws, one pass over x per pick."""
    k = picks.shape[0]
    status = _native.cpu().kmeanspp_f32(x.data_ptr(), x.shape[0], x.shape[1], k, first,
                                        draws.data_ptr(), draws.shape[1], picks.data_ptr(),
                                        _native.n_threads())
    _native.check_cpu_status(status, "kmeans")


def kmeans_assign(x: torch.Tensor, centroids: torch.Tensor, codes: torch.Tensor,
                  dist: torch.Tensor) -> None:
    """Nearest centroid (N,) int64 and its squared distance (N,) float32: the register-blocked
    kernel of rq_encode with one level, which never forms an (N, K) matrix."""
    _rq_encode(x, centroids[None], 1, None, 0, codes[:, None], None, dist[:, None], "kmeans")


def kmeans_update(x: torch.Tensor, codes: torch.Tensor, sums: torch.Tensor,
                  counts: torch.Tensor) -> None:
    """Cluster sums (K, D) float64 and counts (K,) int64, per-thread partial sums."""
    status = _native.cpu().kmeans_update_f32(x.data_ptr(), x.shape[0], x.shape[1],
                                             codes.data_ptr(), counts.shape[0], sums.data_ptr(),
                                             counts.data_ptr(), _native.n_threads())
    _native.check_cpu_status(status, "kmeans")

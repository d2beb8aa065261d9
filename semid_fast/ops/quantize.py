"""Residual and product quantization: item embeddings to semantic IDs and back.

Public functions check their arguments, pick a backend (DESIGN.md decision 4), and call one
``torch.library`` custom op per function, so ``torch.compile(fullgraph=True)`` sees one op
and ``torch.library.opcheck`` passes. Distances are always float32: a float16/bfloat16 ``x``
gets the codes that its float32 value gets.
"""

from __future__ import annotations

import torch

from .. import _backends, _checks, _native
from ..reference import quantize as ref

__all__ = ["rq_encode", "rq_decode", "rq_quantize", "pq_encode", "pq_decode"]

MAX_K = 65536
_MAX_BEAM_CANDIDATES = 1 << 26  # beam_width * K: the candidate scores of one row (256 MB)

# ---------------------------------------------------------------------------------------------
# Backend kernels. Each writes into outputs allocated here, on contiguous float32 codebooks.
# ---------------------------------------------------------------------------------------------


def _triton():
    from ..backends.triton import quantize as tq  # imported lazily: triton is optional

    return tq


def _encode(backend: str, x: torch.Tensor, codebooks: torch.Tensor, beam_width: int,
            with_details: bool, sk_epsilons=(), sk_iters: int = 0):
    """codes (N, L) int64 and, with_details, quantized (N, D) and errors (N, L) float32.

    with_details (the rq_quantize step) is greedy and never the reference: rq_quantize runs
    the reference through its own autograd graph. sk_epsilons: empty (no Sinkhorn level) or
    one epsilon per level (greedy only).
    """
    if backend == "reference":
        return ref.rq_encode(x, codebooks, beam_width, list(sk_epsilons) or 0.0,
                             sk_iters), None, None
    if sk_epsilons and backend != "cpu":
        return _encode_sk_device(backend, x, codebooks, sk_epsilons, sk_iters, with_details)
    n, d = x.shape
    levels = codebooks.shape[0]
    codes = torch.empty((n, levels), dtype=torch.long, device=x.device)
    quantized = _native.empty_output((n, d), device=x.device) if with_details else None
    errors = x.new_empty((n, levels), dtype=torch.float32) if with_details else None
    if backend == "cpu":
        x32 = x.float().contiguous()
        eps = torch.tensor(sk_epsilons, dtype=torch.float64) if sk_epsilons else None
        status = _native.cpu().rq_encode_f32(
            x32.data_ptr(), n, d, codebooks.data_ptr(), levels, codebooks.shape[1], beam_width,
            _ptr(eps), sk_iters, codes.data_ptr(), _ptr(quantized), _ptr(errors),
            _native.n_threads())
        _native.check_cpu_status(status, "rq_encode")
    elif backend == "cuda":
        _native.call_cuda("rq_encode", _native._C_cuda.rq_encode, x.data_ptr(),
                          _native.DTYPE_CODES[x.dtype], n, d, codebooks.data_ptr(), levels,
                          codebooks.shape[1], codes.data_ptr(), _ptr(quantized), _ptr(errors),
                          device=x.device)
    elif beam_width > 1:
        _triton().rq_encode_beam(x, codebooks, beam_width, codes)
    else:
        _triton().rq_encode(x, codebooks, codes, quantized, errors)
    return codes, quantized, errors


def _encode_sk_device(backend, x, codebooks, sk_epsilons, sk_iters, with_details):
    """Greedy RQ with Sinkhorn levels on a GPU backend: level by level in torch ops on the
    device (Sinkhorn levels) or the backend's one-level kernel (nearest-codeword levels)."""
    n, levels = x.shape[0], codebooks.shape[0]
    residual = x.float()
    codes = torch.empty((n, levels), dtype=torch.long, device=x.device)
    quantized = torch.zeros_like(residual) if with_details else None
    errors = x.new_empty((n, levels), dtype=torch.float32) if with_details else None
    for level, epsilon in enumerate(sk_epsilons):
        book = codebooks[level]
        if epsilon > 0:
            code = sinkhorn_codes(backend, ref.sk_distances(residual, book), epsilon, sk_iters)
        else:
            code = _encode(backend, residual.contiguous(), codebooks[level:level + 1], 1,
                           False)[0][:, 0]
        chosen = book[code]
        residual = residual - chosen
        codes[:, level] = code
        if with_details:
            quantized += chosen
            errors[:, level] = (residual * residual).sum(1)
    return codes, quantized, errors


def sinkhorn_codes(backend: str, dist: torch.Tensor, epsilon: float, iters: int) -> torch.Tensor:
    """(N,) int64 codes of :func:`semid_fast.reference.quantize.sinkhorn_codes` from (N, K)
    float32 distances (detached): the cpu kernel, or torch ops on dist's device.

    Both keep Q as the kernel scaled by a row and a column vector (see csrc/cpu/quantize.cpp),
    so an iteration is two matrix-vector products and writes nothing of size (N, K). Memory:
    the cpu path holds the (N, K) float64 kernel (8 N K bytes); the GPU path about three
    (N, K) float64 buffers (centred distances, kernel, final Q).
    """
    dist = dist.detach().float().contiguous()
    n, k = dist.shape
    if backend == "reference":
        return ref.sinkhorn_codes(dist, epsilon, iters)
    if backend == "cpu":
        codes = torch.empty(n, dtype=torch.long)
        status = _native.cpu().sinkhorn_codes_f32(dist.data_ptr(), n, k, float(epsilon),
                                                  int(iters), codes.data_ptr(),
                                                  _native.n_threads())
        _native.check_cpu_status(status, "sinkhorn")
        return codes
    centred = ref.center_distances(dist).double()
    kern = torch.exp((centred.amin(dim=1, keepdim=True) - centred) / epsilon)
    if iters == 0:
        return kern.argmax(dim=1)
    b = kern.new_ones(k)
    for _ in range(iters):
        row = kern @ b
        a = torch.where(row > 0, 1.0 / row, 0.0)
        col = a @ kern
        b = torch.where(col > 0, 1.0 / col, 0.0)
        b = b / b.max().clamp_min(torch.finfo(torch.float64).tiny)
    # The last column normalisation as published: a column one row dominates gives it exactly 1.
    q = (a[:, None] * kern) / torch.where(col > 0, col, float("inf"))
    return q.argmax(dim=1)


def _decode(backend: str, codes: torch.Tensor, codebooks: torch.Tensor, product: bool):
    """rq: sum over levels; pq: concatenation over sub-spaces. Float32 (N, D) out."""
    n, groups = codes.shape
    k, width = codebooks.shape[1], codebooks.shape[2]
    out_dim = groups * width if product else width
    if backend == "reference":
        return ref.pq_decode(codes, codebooks) if product else ref.rq_decode(codes, codebooks)
    out = _native.empty_output((n, out_dim), codebooks.dtype, codebooks.device)
    if backend == "cpu":
        fn = _native.cpu().pq_decode_f32 if product else _native.cpu().rq_decode_f32
        status = fn(codes.data_ptr(), n, groups, codebooks.data_ptr(), k, width, out.data_ptr(),
                    _native.n_threads())
        _native.check_cpu_status(status, "pq_decode" if product else "rq_decode")
    elif backend == "cuda":
        fn = _native._C_cuda.pq_decode if product else _native._C_cuda.rq_decode
        _native.call_cuda("pq_decode" if product else "rq_decode", fn, codes.data_ptr(), n,
                          groups, codebooks.data_ptr(), k, width, out.data_ptr(),
                          device=codes.device)
    else:
        (_triton().pq_decode if product else _triton().rq_decode)(codes, codebooks, out)
    return out


def _ptr(t):
    return 0 if t is None else t.data_ptr()


# ---------------------------------------------------------------------------------------------
# torch.library registration
# ---------------------------------------------------------------------------------------------


@torch.library.custom_op("semid_fast::rq_encode", mutates_args=())
def _rq_encode_op(x: torch.Tensor, codebooks: torch.Tensor, beam_width: int,
                  sk_epsilons: list[float], sk_iters: int, backend: str) -> torch.Tensor:
    return _encode(backend, x, codebooks, beam_width, False, sk_epsilons, sk_iters)[0]


@_rq_encode_op.register_fake
def _(x, codebooks, beam_width, sk_epsilons, sk_iters, backend):
    return x.new_empty((x.shape[0], codebooks.shape[0]), dtype=torch.long)


@torch.library.custom_op("semid_fast::pq_encode", mutates_args=())
def _pq_encode_op(x: torch.Tensor, codebooks: torch.Tensor, backend: str) -> torch.Tensor:
    n, m = x.shape[0], codebooks.shape[0]
    codes = torch.empty((n, m), dtype=torch.long, device=x.device)
    if backend == "reference":
        return ref.pq_encode(x, codebooks)
    if backend == "cpu":
        x32 = x.float().contiguous()
        status = _native.cpu().pq_encode_f32(x32.data_ptr(), n, x.shape[1], codebooks.data_ptr(),
                                             m, codebooks.shape[1], codes.data_ptr(),
                                             _native.n_threads())
        _native.check_cpu_status(status, "pq_encode")
    elif backend == "cuda":
        _native.call_cuda("pq_encode", _native._C_cuda.pq_encode, x.data_ptr(),
                          _native.DTYPE_CODES[x.dtype], n, x.shape[1], codebooks.data_ptr(), m,
                          codebooks.shape[1], codes.data_ptr(), device=x.device)
    else:
        _triton().pq_encode(x, codebooks, codes)
    return codes


@_pq_encode_op.register_fake
def _(x, codebooks, backend):
    return x.new_empty((x.shape[0], codebooks.shape[0]), dtype=torch.long)


@torch.library.custom_op("semid_fast::codebook_decode", mutates_args=())
def _decode_op(codes: torch.Tensor, codebooks: torch.Tensor, product: bool,
               backend: str) -> torch.Tensor:
    return _decode(backend, codes, codebooks, product)


@_decode_op.register_fake
def _(codes, codebooks, product, backend):
    width = codebooks.shape[2] * (codes.shape[1] if product else 1)
    return codebooks.new_empty((codes.shape[0], width))


def _decode_setup(ctx, inputs, output):
    codes, codebooks, product, _ = inputs
    ctx.save_for_backward(codes)
    ctx.product = product
    ctx.codebook_shape = codebooks.shape


def _decode_backward(ctx, grad_out):
    (codes,) = ctx.saved_tensors
    groups, k, width = ctx.codebook_shape
    grad = grad_out.new_zeros((groups, k, width))
    for g in range(groups):
        rows = grad_out[:, g * width:(g + 1) * width] if ctx.product else grad_out
        grad[g].index_add_(0, codes[:, g], rows)
    return None, grad, None, None


_decode_op.register_autograd(_decode_backward, setup_context=_decode_setup)


# Outputs are (quantized, loss, codes): float outputs first, as opcheck's autograd test sums
# the outputs into the first one's dtype.
@torch.library.custom_op("semid_fast::rq_quantize", mutates_args=())
def _rq_quantize_op(x: torch.Tensor, codebooks: torch.Tensor, beta: float, reduction: str,
                    sk_epsilons: list[float], sk_iters: int,
                    backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if backend == "reference":
        codes, quantized, loss = ref.rq_quantize(x, codebooks, beta, reduction,
                                                 list(sk_epsilons) or 0.0, sk_iters)
        return quantized.detach(), loss.detach(), codes
    codes, quantized, errors = _encode(backend, x, codebooks, 1, True, sk_epsilons, sk_iters)
    loss = errors.sum() * ((1.0 + beta) * _loss_scale(x, codebooks, reduction))
    return quantized.to(x.dtype), loss, codes


def _loss_scale(x: torch.Tensor, codebooks: torch.Tensor, reduction: str) -> float:
    """The factor of the summed squared errors in the loss: 1 / (N D), and 1 / L for "mean"."""
    levels = codebooks.shape[0] if reduction == "mean" else 1
    return 1.0 / (max(x.numel(), 1) * levels)


@_rq_quantize_op.register_fake
def _(x, codebooks, beta, reduction, sk_epsilons, sk_iters, backend):
    codes = x.new_empty((x.shape[0], codebooks.shape[0]), dtype=torch.long)
    return torch.empty_like(x), x.new_empty((), dtype=torch.float32), codes


@torch.library.custom_op("semid_fast::rq_quantize_backward", mutates_args=())
def _rq_quantize_backward_op(x: torch.Tensor, codebooks: torch.Tensor, codes: torch.Tensor,
                             grad_quantized: torch.Tensor | None, grad_loss: torch.Tensor,
                             beta: float, reduction: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The cpu kernel of rq_quantize's backward: float32 (grad_x, grad_codebooks)."""
    scale = 2.0 * _loss_scale(x, codebooks, reduction)
    weight = float(grad_loss)  # a CPU scalar: no device sync
    x32, books = x.float().contiguous(), codebooks.float().contiguous()
    codes = codes.long().contiguous()
    upstream = None if grad_quantized is None else grad_quantized.float().contiguous()
    grad_x = _native.empty_output(x.shape, device=x.device)
    grad_codebooks = torch.empty(codebooks.shape, dtype=torch.float32, device=x.device)
    status = _native.cpu().rq_quantize_bwd_f32(
        x32.data_ptr(), x.shape[0], x.shape[1], books.data_ptr(), codebooks.shape[0],
        codebooks.shape[1], codes.data_ptr(), _ptr(upstream), -beta * scale * weight,
        scale * weight, grad_x.data_ptr(), grad_codebooks.data_ptr(), _native.n_threads())
    _native.check_cpu_status(status, "rq_quantize backward")
    return grad_x, grad_codebooks


@_rq_quantize_backward_op.register_fake
def _(x, codebooks, codes, grad_quantized, grad_loss, beta, reduction):
    return (x.new_empty(x.shape, dtype=torch.float32),
            codebooks.new_empty(codebooks.shape, dtype=torch.float32))


def _quantize_setup(ctx, inputs, output):
    x, codebooks, beta, reduction, _, _, backend = inputs
    codes = output[2]
    ctx.mark_non_differentiable(codes)
    ctx.save_for_backward(x, codebooks, codes)
    ctx.beta, ctx.reduction, ctx.backend = beta, reduction, backend


def _quantize_backward(ctx, grad_quantized, grad_loss, grad_codes):
    """Gradients of the reference's loss, recomputing residuals from the saved codes."""
    x, codebooks, codes = ctx.saved_tensors
    scale = 2.0 * _loss_scale(x, codebooks, ctx.reduction)
    if ctx.backend == "cpu":  # one pass, no (N, D) temporaries
        weight = torch.zeros(()) if grad_loss is None else grad_loss
        grad_x, grad_codebooks = _rq_quantize_backward_op(x, codebooks, codes, grad_quantized,
                                                          weight, ctx.beta, ctx.reduction)
        return grad_x.to(x.dtype), grad_codebooks.to(codebooks.dtype), None, None, None, None, None
    residual = x.float()
    grad_codebooks = torch.zeros_like(codebooks, dtype=torch.float32)
    grad_x = None
    for level in range(codebooks.shape[0]):
        chosen = codebooks[level].float()[codes[:, level]]
        gap = chosen - residual  # e_l - r_l
        if level == 0:  # only the first residual is attached to x (commitment term)
            grad_x = (-ctx.beta * scale) * gap * grad_loss
        grad_codebooks[level].index_add_(0, codes[:, level], gap)
        residual = residual - chosen
    grad_codebooks = (grad_codebooks * (scale * grad_loss)).to(codebooks.dtype)
    if grad_x is None:
        grad_x = torch.zeros_like(x, dtype=torch.float32)
    if grad_quantized is not None:
        grad_x = grad_x + grad_quantized.float()
    return grad_x.to(x.dtype), grad_codebooks, None, None, None, None, None


_rq_quantize_op.register_autograd(_quantize_backward, setup_context=_quantize_setup)


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def _check_x_codebooks(op: str, x, codebooks, sub_dims: bool = False):
    _checks.tensor(x, "x", 2, _checks.FLOAT_DTYPES, "(N, D)")
    _checks.tensor(codebooks, "codebooks", 3, _checks.FLOAT_DTYPES,
                   "(M, K, D/M)" if sub_dims else "(L, K, D)")
    device = _checks.same_device(op, x=x, codebooks=codebooks)
    groups, k, width = codebooks.shape
    if groups == 0 or k == 0 or width == 0:
        raise ValueError(f"{op}: codebooks must have non-zero sizes, got {tuple(codebooks.shape)}")
    if k > MAX_K:
        raise ValueError(f"{op}: codebooks hold K={k} codewords; at most {MAX_K} are supported")
    expected = groups * width if sub_dims else width
    if x.shape[1] != expected:
        what = "M * D/M" if sub_dims else "D of codebooks"
        raise ValueError(f"{op}: x has D={x.shape[1]} but {what} is {expected} "
                         f"(codebooks {tuple(codebooks.shape)})")
    _checks.finite(codebooks, "codebooks")
    _checks.finite(x, "x")
    return device


def _check_codes(op: str, codes, codebooks, sub_dims: bool = False):
    _checks.tensor(codes, "codes", 2, _checks.INT_DTYPES, "(N, M)" if sub_dims else "(N, L)")
    _checks.tensor(codebooks, "codebooks", 3, _checks.FLOAT_DTYPES,
                   "(M, K, D/M)" if sub_dims else "(L, K, D)")
    device = _checks.same_device(op, codes=codes, codebooks=codebooks)
    if 0 in codebooks.shape:
        raise ValueError(f"{op}: codebooks must have non-zero sizes, got {tuple(codebooks.shape)}")
    if codes.shape[1] != codebooks.shape[0]:
        raise ValueError(f"{op}: codes have {codes.shape[1]} columns but codebooks have "
                         f"{codebooks.shape[0]} {'sub-spaces' if sub_dims else 'levels'}")
    _checks.codes_in_range(codes, codebooks.shape[1], "codes")
    return device


def _check_rotation(op: str, rotation, dim: int, device):
    if rotation is None:
        return
    _checks.tensor(rotation, "rotation", 2, _checks.FLOAT_DTYPES, "(D, D)")
    if tuple(rotation.shape) != (dim, dim):
        raise ValueError(f"{op}: rotation must have shape ({dim}, {dim}), got {tuple(rotation.shape)}")
    _checks.same_device(op, rotation=rotation, other=torch.empty(0, device=device))
    _checks.finite(rotation, "rotation")


def _check_center(op: str, center, dim: int, device):
    if center is None:
        return
    _checks.tensor(center, "center", 1, _checks.FLOAT_DTYPES, "(D,)")
    if tuple(center.shape) != (dim,):
        raise ValueError(f"{op}: center must have shape ({dim},), got {tuple(center.shape)}")
    _checks.same_device(op, center=center, other=torch.empty(0, device=device))
    _checks.finite(center, "center")


def _sk_epsilons(op: str, sk_epsilon, sk_iters, levels: int) -> list[float]:
    """One epsilon per level, or [] when no level uses Sinkhorn; checks sk_iters too."""
    if isinstance(sk_epsilon, (int, float)) and not isinstance(sk_epsilon, bool):
        epsilons = [float(sk_epsilon)] * levels
    elif isinstance(sk_epsilon, (list, tuple)) and all(
            isinstance(e, (int, float)) and not isinstance(e, bool) for e in sk_epsilon):
        epsilons = [float(e) for e in sk_epsilon]
        if len(epsilons) != levels:
            raise ValueError(f"{op}: sk_epsilon has {len(epsilons)} values but there are "
                             f"{levels} levels")
    else:
        raise TypeError(f"{op}: sk_epsilon must be a float or a sequence of one float per "
                        f"level, got {type(sk_epsilon).__name__}")
    if not all(0.0 <= e < float("inf") for e in epsilons):
        raise ValueError(f"{op}: sk_epsilon values must be finite and >= 0 (0 = off), "
                         f"got {epsilons}")
    if isinstance(sk_iters, bool) or not isinstance(sk_iters, int) or sk_iters < 0:
        raise ValueError(f"{op}: sk_iters must be an int >= 0, got {sk_iters!r}")
    return epsilons if any(e > 0 for e in epsilons) else []


_SK_DOC = """sk_epsilon: balanced assignment by Sinkhorn-Knopp, as the released configs of
            LC-Rec, LETTER and DIGER assign codes (their vq.py: center_distance_for_constraint,
            sinkhorn_algorithm, argmax of Q). A float for every level or a sequence of one
            float per level; 0 (the default) = nearest codeword at that level. At a level
            with epsilon > 0 the (N, K) float32 squared distances of the whole batch are
            centred, (d - m) / (max - m + 1e-5) with m the mean of their global max and min,
            and in float64 Q = exp(-centred / epsilon) is scaled alternately to rows of sum
            1/N and columns of sum 1/K, ``sk_iters`` times; each row takes Q's argmax (ties
            to the smaller code). The codes therefore depend on the whole batch, as in the
            published code. Their configs: LC-Rec's run.sh and LETTER's main.py 0 at every
            level but the last, 0.003 there; DIGER's 0.003 at every level. They apply it in
            the training forward pass; LC-Rec's and LETTER's generate_indices encode without
            it and use it (last level only) to re-encode the items of colliding IDs. Below
            epsilon ~ 1/710 the published code overflows exp to inf/NaN; here the kernel is
            taken relative to each row's smallest distance, so it stays finite.
        sk_iters: Sinkhorn iterations (50, as the three repos' configs; their vq.py default
            is 100). The kernel is (N, K) float64: 8 N K bytes of workspace on the cpu
            backend, about three times that on a GPU."""


def _f32(t: torch.Tensor) -> torch.Tensor:
    """Float32 contiguous; stays in the autograd graph of the caller's tensor."""
    return t.float().contiguous()


def rq_encode(x: torch.Tensor, codebooks: torch.Tensor, *, beam_width: int = 1,
              code_dtype: torch.dtype = torch.int64, sk_epsilon=0.0, sk_iters: int = 50,
              backend: str = "auto") -> torch.Tensor:
    """Residual-quantization codes of x.

    Args:
        x: (N, D) float32, float16 or bfloat16 embeddings.
        codebooks: (L, K, D) float codebooks, K <= 65536.
        beam_width: 1 for greedy per-level nearest codeword; B > 1 keeps the B partial
            encodings of smallest total squared error per level (faiss ``max_beam_size``).
        code_dtype: int64 (default), int32, int16 or uint8 (K <= 256) output.
        %s
            Greedy encoding only (beam_width > 1 with Sinkhorn raises ValueError).
        backend: "auto", "reference", "cpu", "cuda" or "triton".

    Returns:
        codes (N, L) of ``code_dtype``. Distances are computed in float32; ties go to the
        smaller code index in the native backends.
    """
    device = _check_x_codebooks("rq_encode", x, codebooks)
    _checks.positive_int(beam_width, "beam_width")
    levels, k = codebooks.shape[0], codebooks.shape[1]
    epsilons = _sk_epsilons("rq_encode", sk_epsilon, sk_iters, levels)
    if epsilons and beam_width > 1:
        raise ValueError("rq_encode: sk_epsilon > 0 (Sinkhorn) needs beam_width=1: the "
                         "published balanced assignment is greedy, level by level")
    beam_width = min(beam_width, k ** levels)  # no more beams than encodings exist
    if beam_width * k > _MAX_BEAM_CANDIDATES:
        raise ValueError(f"rq_encode: beam_width * K = {beam_width * k} candidate scores per row; "
                         f"at most {_MAX_BEAM_CANDIDATES} are supported")
    _checks.code_dtype(code_dtype, k)
    supported = _backends.BACKENDS if beam_width == 1 else ("reference", "cpu", "triton")
    name = _backends.resolve(backend, device, "rq_encode", gpu_order=("cuda", "triton"),
                             supported=supported)
    codes = _rq_encode_op(x.contiguous(), _f32(codebooks), beam_width, epsilons, sk_iters, name)
    return codes if code_dtype == torch.int64 else codes.to(code_dtype)


def rq_decode(codes: torch.Tensor, codebooks: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """Sum of the chosen codewords, differentiable with respect to ``codebooks``.

    Args:
        codes: (N, L) uint8/int16/int32/int64 codes in [0, K).
        codebooks: (L, K, D) float codebooks.

    Returns:
        (N, D) in the codebooks' dtype (accumulated in float32). The gradient of a codebook
        entry is the sum of the output gradients of the rows that use it.
    """
    device = _check_codes("rq_decode", codes, codebooks)
    name = _backends.resolve(backend, device, "rq_decode")
    out = _decode_op(codes.long().contiguous(), _f32(codebooks), False, name)
    return out.to(codebooks.dtype)


def rq_quantize(x: torch.Tensor, codebooks: torch.Tensor, *, beta: float = 0.25,
                reduction: str = "mean", sk_epsilon=0.0, sk_iters: int = 50,
                backend: str = "auto"):
    """The whole training-time quantization step of an RQ-VAE in one call.

    Greedy RQ encoding, the straight-through quantized vector and the RQ-VAE loss with each
    level's residual detached (the convention of TIGER's open RQ-VAEs: LC-Rec, LETTER,
    MiniOneRec). Per level ``loss_l = mean((sg(r_l) - e_l)^2) + beta * mean((r_l - sg(e_l))^2)``
    (means over N x D); then

    * ``reduction="mean"`` (default): ``loss = mean_l loss_l``, the mean over levels that
      LC-Rec, LETTER and MiniOneRec take (``torch.stack(all_losses).mean()`` in their rq.py);
    * ``reduction="sum"``: ``loss = sum_l loss_l`` (L times the mean, loss and gradients).

    EdoardoBotta's RQ-VAE-Recommender sums the squared errors over D and levels and averages
    over N only: that loss is ``D`` times the ``"sum"`` loss (multiply it by ``x.shape[1]``).
    See :func:`semid_fast.reference.quantize.rq_quantize` for the oracle.

    Args:
        x: (N, D) float32/float16/bfloat16 encoder output (requires grad in training).
        codebooks: (L, K, D) float codebooks (a parameter).
        beta: commitment weight.
        reduction: "mean" or "sum" over levels, as above.
        %s
            The loss and its gradients are those of the chosen codes, as in the published
            code.

    Returns:
        codes (N, L) int64; quantized (N, D) in x's dtype whose gradient passes straight to
        x; loss () float32 whose gradient reaches x (commitment) and codebooks (codebook term).
    """
    device = _check_x_codebooks("rq_quantize", x, codebooks)
    if isinstance(beta, bool) or not isinstance(beta, (int, float)):
        raise TypeError(f"beta must be a float, got {type(beta).__name__}")
    if not 0.0 <= beta < float("inf"):
        raise ValueError(f"rq_quantize: beta must be finite and >= 0, got {beta}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"rq_quantize: reduction must be 'mean' or 'sum', got {reduction!r}")
    epsilons = _sk_epsilons("rq_quantize", sk_epsilon, sk_iters, codebooks.shape[0])
    name = _backends.resolve(backend, device, "rq_quantize")
    if name == "reference":
        return ref.rq_quantize(x, codebooks, float(beta), reduction, epsilons or 0.0, sk_iters)
    quantized, loss, codes = _rq_quantize_op(x.contiguous(), _f32(codebooks), float(beta),
                                             reduction, epsilons, sk_iters, name)
    return codes, quantized, loss


if rq_encode.__doc__:  # None under python -OO
    rq_encode.__doc__ %= _SK_DOC
    rq_quantize.__doc__ %= _SK_DOC


def pq_encode(x: torch.Tensor, codebooks: torch.Tensor, *, rotation: torch.Tensor | None = None,
              center: torch.Tensor | None = None, code_dtype: torch.dtype = torch.int64,
              backend: str = "auto") -> torch.Tensor:
    """Product-quantization (optionally OPQ) codes of x.

    Args:
        x: (N, D) float32/float16/bfloat16.
        codebooks: (M, K, D/M) float, one codebook per sub-space.
        rotation: optional (D, D) OPQ rotation R applied first as ``x @ R.T`` (faiss
            ``OPQMatrix.A``).
        center: optional (D,) float vector subtracted after the rotation, before the split
            into sub-spaces: the coarse centroid of a faiss ``IndexIVFPQ`` with one list
            (``by_residual``), which RPG's ``OPQ32,IVF1,PQ32x8`` tokenizer encodes against.
            :func:`semid_fast.interop.pq_from_faiss` returns ``codebooks``, ``rotation`` and
            ``center`` of a faiss index.
        code_dtype: int64 (default), int32, int16 or uint8.

    Returns:
        codes (N, M) of ``code_dtype``: the nearest (L2) codeword of each sub-vector of
        ``x @ R.T - center`` in float32, ties toward the smaller code.
    """
    device = _check_x_codebooks("pq_encode", x, codebooks, sub_dims=True)
    _check_rotation("pq_encode", rotation, x.shape[1], device)
    _check_center("pq_encode", center, x.shape[1], device)
    _checks.code_dtype(code_dtype, codebooks.shape[1])
    name = _backends.resolve(backend, device, "pq_encode")
    if rotation is not None:
        x = x.float() @ rotation.float().T
        if center is not None:  # on the fresh product, rounded after it as faiss does
            x.sub_(center.float())
    elif center is not None:
        x = x - center.float()  # float32 out, also for half x
    codes = _pq_encode_op(x.contiguous(), _f32(codebooks), name)
    return codes if code_dtype == torch.int64 else codes.to(code_dtype)


def pq_decode(codes: torch.Tensor, codebooks: torch.Tensor, *,
              rotation: torch.Tensor | None = None, center: torch.Tensor | None = None,
              backend: str = "auto") -> torch.Tensor:
    """Reconstruction (N, D) from PQ codes (N, M): the concatenated codewords, plus ``center``
    (D,), then mapped back through ``rotation`` (``y @ R``), the order of faiss's
    ``IndexIVFPQ.sa_decode`` under an OPQ ``IndexPreTransform``.

    Differentiable with respect to ``codebooks`` (and ``rotation``, ``center``).
    """
    device = _check_codes("pq_decode", codes, codebooks, sub_dims=True)
    dim = codes.shape[1] * codebooks.shape[2]
    _check_rotation("pq_decode", rotation, dim, device)
    _check_center("pq_decode", center, dim, device)
    name = _backends.resolve(backend, device, "pq_decode")
    out = _decode_op(codes.long().contiguous(), _f32(codebooks), True, name)
    out = out.to(codebooks.dtype)
    if center is not None:
        out = out + center.to(out.dtype)
    return out if rotation is None else out @ rotation.to(out.dtype)

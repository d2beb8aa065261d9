"""Residual and product quantization: item embeddings to semantic IDs and back.

Public functions check their arguments, allocate the outputs, pick a backend (DESIGN.md
decision 4) and call one ``torch.library`` custom op per function, so
``torch.compile(fullgraph=True)`` sees one op and ``torch.library.opcheck`` passes. The op runs
the launcher of that backend (semid_fast/backends/<backend>/quantize.py). Distances are always
float32: a float16/bfloat16 ``x`` gets the codes that its float32 value gets.
"""

from __future__ import annotations

import torch

from .. import _backends, _checks, _native

__all__ = ["rq_encode", "rq_decode", "rq_quantize", "pq_encode", "pq_decode"]

FAMILY = "quantize"
MAX_K = 65536


def _launcher(backend: str, name: str):
    return _backends.launcher(backend, FAMILY, name)


def _encode_launcher(beam_width: int, sk_epsilons) -> str:
    """The launcher that _encode calls for these arguments."""
    if beam_width > 1:
        return "rq_encode_beam"
    return "rq_encode_sinkhorn" if sk_epsilons else "rq_encode"


def _encode(backend: str, x: torch.Tensor, codebooks: torch.Tensor, beam_width: int,
            sk_epsilons, sk_iters: int, with_details: bool):
    """codes (N, L) int64 and, with_details (greedy only), quantized (N, D) and errors (N, L)
    float32. sk_epsilons: empty (no Sinkhorn level) or one epsilon per level (greedy only)."""
    n, d = x.shape
    levels = codebooks.shape[0]
    codes = torch.empty((n, levels), dtype=torch.long, device=x.device)
    quantized = _native.empty_output((n, d), device=x.device) if with_details else None
    errors = x.new_empty((n, levels), dtype=torch.float32) if with_details else None
    if beam_width > 1:
        _launcher(backend, "rq_encode_beam")(x, codebooks, beam_width, codes)
    elif sk_epsilons:
        _launcher(backend, "rq_encode_sinkhorn")(x, codebooks, list(sk_epsilons), sk_iters,
                                                 codes, quantized, errors)
    else:
        _launcher(backend, "rq_encode")(x, codebooks, codes, quantized, errors)
    return codes, quantized, errors


def sinkhorn_codes(backend: str, dist: torch.Tensor, epsilon: float, iters: int) -> torch.Tensor:
    """(N,) int64 codes of :func:`semid_fast.reference.quantize.sinkhorn_codes` from (N, K)
    float32 distances (detached), by the launcher of `backend` (the backend the calling op
    chose; every backend has one). Memory: the cpu kernel holds the (N, K) float64 kernel
    (8 N K bytes); the GPU backends' torch ops about three (N, K) float64 buffers."""
    dist = dist.detach().float().contiguous()
    codes = torch.empty(dist.shape[0], dtype=torch.long, device=dist.device)
    _launcher(backend, "sinkhorn_codes")(dist, float(epsilon), int(iters), codes)
    return codes


# ---------------------------------------------------------------------------------------------
# torch.library registration
# ---------------------------------------------------------------------------------------------


@torch.library.custom_op("semid_fast::rq_encode", mutates_args=())
def _rq_encode_op(x: torch.Tensor, codebooks: torch.Tensor, beam_width: int,
                  sk_epsilons: list[float], sk_iters: int, backend: str) -> torch.Tensor:
    return _encode(backend, x, codebooks, beam_width, sk_epsilons, sk_iters, False)[0]


@_rq_encode_op.register_fake
def _(x, codebooks, beam_width, sk_epsilons, sk_iters, backend):
    return x.new_empty((x.shape[0], codebooks.shape[0]), dtype=torch.long)


@torch.library.custom_op("semid_fast::pq_encode", mutates_args=())
def _pq_encode_op(x: torch.Tensor, codebooks: torch.Tensor, backend: str) -> torch.Tensor:
    codes = torch.empty((x.shape[0], codebooks.shape[0]), dtype=torch.long, device=x.device)
    _launcher(backend, "pq_encode")(x, codebooks, codes)
    return codes


@_pq_encode_op.register_fake
def _(x, codebooks, backend):
    return x.new_empty((x.shape[0], codebooks.shape[0]), dtype=torch.long)


@torch.library.custom_op("semid_fast::codebook_decode", mutates_args=())
def _decode_op(codes: torch.Tensor, codebooks: torch.Tensor, product: bool,
               backend: str) -> torch.Tensor:
    """rq: sum over levels; pq: concatenation over sub-spaces. Float32 (N, D) out."""
    width = codebooks.shape[2] * (codes.shape[1] if product else 1)
    out = _native.empty_output((codes.shape[0], width), codebooks.dtype, codebooks.device)
    _launcher(backend, "pq_decode" if product else "rq_decode")(codes, codebooks, out)
    return out


@_decode_op.register_fake
def _(codes, codebooks, product, backend):
    width = codebooks.shape[2] * (codes.shape[1] if product else 1)
    return codebooks.new_empty((codes.shape[0], width))


@torch.library.custom_op("semid_fast::codebook_decode_out", mutates_args=("out",))
def _decode_out_op(codes: torch.Tensor, codebooks: torch.Tensor, product: bool, backend: str,
                   out: torch.Tensor) -> None:
    """_decode_op into a given float32 contiguous (N, D) ``out`` (no gradient)."""
    _launcher(backend, "pq_decode" if product else "rq_decode")(codes, codebooks, out)


@_decode_out_op.register_fake
def _(codes, codebooks, product, backend, out):
    return None


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
    codes, quantized, errors = _encode(backend, x, codebooks, 1, sk_epsilons, sk_iters, True)
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
                             beta: float, reduction: str,
                             backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """rq_quantize's backward from the saved codes: float32 (grad_x, grad_codebooks)."""
    grad_x = _native.empty_output(x.shape, device=x.device)
    grad_codebooks = torch.empty(codebooks.shape, dtype=torch.float32, device=x.device)
    _launcher(backend, "rq_quantize_backward")(
        x, codebooks.float().contiguous(), codes.long().contiguous(), grad_quantized, grad_loss,
        beta, 2.0 * _loss_scale(x, codebooks, reduction), grad_x, grad_codebooks)
    return grad_x, grad_codebooks


@_rq_quantize_backward_op.register_fake
def _(x, codebooks, codes, grad_quantized, grad_loss, beta, reduction, backend):
    return (x.new_empty(x.shape, dtype=torch.float32),
            codebooks.new_empty(codebooks.shape, dtype=torch.float32))


def _quantize_setup(ctx, inputs, output):
    x, codebooks, beta, reduction, _, _, backend = inputs
    codes = output[2]
    ctx.mark_non_differentiable(codes)
    ctx.save_for_backward(x, codebooks, codes)
    ctx.beta, ctx.reduction = beta, reduction
    ctx.backend = _backends.own_or_reference(backend, FAMILY, "rq_quantize_backward")


def _quantize_backward(ctx, grad_quantized, grad_loss, grad_codes):
    x, codebooks, codes = ctx.saved_tensors
    if grad_loss is None:
        grad_loss = x.new_zeros((), dtype=torch.float32)
    grad_x, grad_codebooks = _rq_quantize_backward_op(x, codebooks, codes, grad_quantized,
                                                      grad_loss, ctx.beta, ctx.reduction,
                                                      ctx.backend)
    return grad_x.to(x.dtype), grad_codebooks.to(codebooks.dtype), None, None, None, None, None


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
    return device


def _launcher_checks_codes(backend: str, name: str) -> bool:
    """Whether launcher `name` of `backend` checks every code itself (its module sets
    ``<name>_checks_codes``), raising codes_out_of_range's ValueError, so no scan is needed."""
    return bool(getattr(_backends._module(backend, FAMILY), f"{name}_checks_codes", False))


def _check_out(op: str, out, shape: tuple[int, int], codes, codebooks) -> None:
    """``out`` must be a tensor of the result's shape, dtype and device that shares no memory
    with the inputs, and it records no gradient."""
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{op}: out must be a torch.Tensor, got {type(out).__name__}")
    if tuple(out.shape) != shape or out.dtype != codebooks.dtype or out.device != codes.device:
        raise ValueError(f"{op}: out must have shape {shape}, dtype "
                         f"{str(codebooks.dtype).replace('torch.', '')} and device {codes.device}"
                         f", got {tuple(out.shape)}, {str(out.dtype).replace('torch.', '')}, "
                         f"{out.device}")
    taken = {codes.untyped_storage().data_ptr(), codebooks.untyped_storage().data_ptr()}
    if out.numel() and out.untyped_storage().data_ptr() in taken:
        raise ValueError(f"{op}: out must not share memory with codes or codebooks")
    if torch.is_grad_enabled() and (codebooks.requires_grad or out.requires_grad):
        raise ValueError(f"{op}: out= records no gradient; call {op} without out= to "
                         f"differentiate (or under torch.no_grad())")


def _decode(op: str, codes, codebooks, product: bool, backend: str, out) -> torch.Tensor:
    """rq_decode / pq_decode without rotation and center: checks, backend, kernel."""
    device = _check_codes(op, codes, codebooks, sub_dims=product)
    width = codebooks.shape[2] * (codes.shape[1] if product else 1)
    if out is not None:
        _check_out(op, out, (codes.shape[0], width), codes, codebooks)
    name = _backends.choose(backend, device, FAMILY, op, op=op)
    if _checks.scanning() and not _launcher_checks_codes(name, op):
        _checks.codes_in_range(codes, codebooks.shape[1], "codes")
    codes64, books = codes.long().contiguous(), _f32(codebooks)
    if out is None:
        return _decode_op(codes64, books, product, name).to(codebooks.dtype)
    if out.dtype == torch.float32 and out.is_contiguous():
        _decode_out_op(codes64, books, product, name, out)
    else:
        out.copy_(_decode_op(codes64, books, product, name))
    return out


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
    max_candidates = _native.cpu().RQ_MAX_BEAM_CANDIDATES  # one row's candidate scores
    if beam_width * k > max_candidates:
        raise ValueError(f"rq_encode: beam_width * K = {beam_width * k} candidate scores per row; "
                         f"at most {max_candidates} are supported")
    _checks.code_dtype(code_dtype, k)
    name = _backends.choose(backend, device, FAMILY, _encode_launcher(beam_width, epsilons),
                            op="rq_encode (beam_width > 1)" if beam_width > 1 else "rq_encode")
    codes = _rq_encode_op(x.contiguous(), _f32(codebooks), beam_width, epsilons, sk_iters, name)
    return codes if code_dtype == torch.int64 else codes.to(code_dtype)


def rq_decode(codes: torch.Tensor, codebooks: torch.Tensor, *, out: torch.Tensor | None = None,
              backend: str = "auto") -> torch.Tensor:
    """Sum of the chosen codewords, differentiable with respect to ``codebooks``.

    Args:
        codes: (N, L) uint8/int16/int32/int64 codes in [0, K).
        codebooks: (L, K, D) float codebooks.
        out: optional (N, D) tensor of the codebooks' dtype on their device, written in place
            and returned (no gradient: it raises under autograd when codebooks require grad).
            It must not share memory with codes or codebooks.

    Returns:
        (N, D) in the codebooks' dtype (accumulated in float32). The gradient of a codebook
        entry is the sum of the output gradients of the rows that use it.
    """
    return _decode("rq_decode", codes, codebooks, False, backend, out)


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
    name = _backends.choose(backend, device, FAMILY, _encode_launcher(1, epsilons),
                            op="rq_quantize")
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
    name = _backends.choose(backend, device, FAMILY, "pq_encode", op="pq_encode")
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
              out: torch.Tensor | None = None, backend: str = "auto") -> torch.Tensor:
    """Reconstruction (N, D) from PQ codes (N, M): the concatenated codewords, plus ``center``
    (D,), then mapped back through ``rotation`` (``y @ R``), the order of faiss's
    ``IndexIVFPQ.sa_decode`` under an OPQ ``IndexPreTransform``.

    Differentiable with respect to ``codebooks`` (and ``rotation``, ``center``) when ``out``
    is None. ``out``: optional (N, D) tensor of the codebooks' dtype on their device, written
    in place and returned (no gradient); it must not share memory with the inputs.
    """
    if rotation is None and center is None:
        return _decode("pq_decode", codes, codebooks, True, backend, out)
    device = _check_codes("pq_decode", codes, codebooks, sub_dims=True)
    dim = codes.shape[1] * codebooks.shape[2]
    _check_rotation("pq_decode", rotation, dim, device)
    _check_center("pq_decode", center, dim, device)
    if out is not None:
        _check_out("pq_decode", out, (codes.shape[0], dim), codes, codebooks)
        for name, t in (("rotation", rotation), ("center", center)):
            if t is not None and t.requires_grad and torch.is_grad_enabled():
                raise ValueError(f"pq_decode: out= records no gradient, but {name} requires grad")
    y = _decode("pq_decode", codes, codebooks, True, backend, None)
    if center is not None:
        y = y + center.to(y.dtype)
    if rotation is not None:
        y = y @ rotation.to(y.dtype)
    if out is None:
        return y
    return out.copy_(y)

"""Gumbel-softmax, Gumbel-top-k and DIGER's Gumbel quantization step, one pass each way.

Noise is counter-based (DESIGN.md decision 7): element e of the row-major (rows, vocab)
layout, after moving ``dim`` last, draws Philox4x32-10 keyed by (seed, offset, e) as stated
in ``csrc/include/semid_fast/philox.h``. Every backend draws the same 32-bit words and turns
them into float32 noise -log(-log(u)) with the same sequence of single IEEE operations, so
the noise agrees bit for bit across backends. The backward pass recomputes the noise from the seed:
nothing but the inputs is saved.

Each public function checks its arguments, picks a backend (decision 4) and calls
``torch.library`` custom ops (registered with fake implementations and autograd), so
``torch.compile(fullgraph=True)`` sees them as single ops; an op allocates its outputs and
runs the chosen backend's launcher. gumbel_quantize runs the reference's level loop
(:func:`semid_fast.reference.gumbel.quantize_levels`) with these ops as its sampling step.
"""

from __future__ import annotations

import math

import torch

from .. import _backends, _checks, _native
from ..reference import gumbel as ref
from . import quantize as _quantize

__all__ = ["gumbel_softmax", "gumbel_topk", "gumbel_quantize", "gumbel_noise"]

_SEED_HIGH = 2 ** 62  # seeds drawn from torch's generator lie in [0, 2^62)
_MAX_SEED = 2 ** 63 - 1
_FAMILY = "gumbel"  # the launchers live in semid_fast/backends/<backend>/gumbel.py


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 for float64 logits (the reference computes in it, the kernels convert around
    float32), else float32: the dtype of tau, noise_scale and the backward's outputs."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check_per_row(param: torch.Tensor, rows: int, name: str, dtype: torch.dtype) -> None:
    """The launchers read one value (stride 0) or param[row] for every row, so the custom
    ops check the length whatever ``check_values`` says (a shape check, no sync)."""
    if param.dtype != dtype or not param.is_contiguous() or param.numel() not in (1, rows):
        raise ValueError(f"{name} must be a contiguous {dtype} tensor of 1 or {rows} values, "
                         f"got {param.dtype} {tuple(param.shape)}")


# ---------------------------------------------------------------------------------------------
# torch.library registration: each op allocates its outputs and calls the launcher of the
# backend chosen by the public function. The seed travels as a (1,) int64 CPU tensor, so that
# a seed drawn from torch's generator needs no host read inside a compiled graph.
# ---------------------------------------------------------------------------------------------


@torch.library.custom_op("semid_fast::gumbel_softmax", mutates_args=())
def _softmax_op(x: torch.Tensor, tau: torch.Tensor, scale: torch.Tensor, seed: torch.Tensor,
                offset: int, hard: bool, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """y (rows, vocab) in x's dtype (one-hot when hard) and the argmax (rows,) int64 of the
    perturbed logits, for x (rows, vocab) and (1,) or (rows,) tau and scale of x's
    compute dtype."""
    rows, dtype = x.shape[0], _compute_dtype(x)
    _check_per_row(tau, rows, "tau", dtype)
    _check_per_row(scale, rows, "noise_scale", dtype)
    y = _native.empty_output(x.shape, x.dtype, x.device)
    argmax = torch.empty(rows, dtype=torch.long, device=x.device)
    if rows:
        _backends.launcher(backend, _FAMILY, "softmax_forward")(
            x.contiguous(), tau, scale, int(seed), offset, hard, y, argmax)
    return y, argmax


@_softmax_op.register_fake
def _(x, tau, scale, seed, offset, hard, backend):
    return torch.empty_like(x), x.new_empty((x.shape[0],), dtype=torch.long)


@torch.library.custom_op("semid_fast::gumbel_softmax_backward", mutates_args=())
def _softmax_backward_op(x: torch.Tensor, dy: torch.Tensor, tau: torch.Tensor,
                         scale: torch.Tensor, seed: torch.Tensor, offset: int, need_sums: bool,
                         backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dx (rows, vocab) and, when need_sums, the per-row sums sum(dz * g) and sum(dz * z)
    ((rows,), else empty) that the gradients of noise_scale and tau need."""
    rows, dtype = x.shape[0], _compute_dtype(x)
    _check_per_row(tau, rows, "tau", dtype)
    _check_per_row(scale, rows, "noise_scale", dtype)
    if dy.shape != x.shape:
        raise ValueError(f"gumbel_softmax backward: dy {tuple(dy.shape)} must have x's shape "
                         f"{tuple(x.shape)}")
    dx = _native.empty_output(x.shape, dtype, x.device)
    gz = torch.empty(rows if need_sums else 0, dtype=dtype, device=x.device)
    zz = torch.empty_like(gz)
    if rows:
        _backends.launcher(backend, _FAMILY, "softmax_backward")(
            x.contiguous(), dy.to(x.dtype).contiguous(), tau, scale, int(seed), offset, dx,
            gz if need_sums else None, zz if need_sums else None)
    return dx, gz, zz


@_softmax_backward_op.register_fake
def _(x, dy, tau, scale, seed, offset, need_sums, backend):
    rows = x.shape[0] if need_sums else 0
    dtype = _compute_dtype(x)
    return (x.new_empty(x.shape, dtype=dtype), x.new_empty((rows,), dtype=dtype),
            x.new_empty((rows,), dtype=dtype))


def _softmax_setup(ctx, inputs, output):
    x, tau, scale, seed, offset, hard, backend = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(x, tau, scale, seed)
    ctx.offset, ctx.backend = offset, backend


def _softmax_backward(ctx, grad_y, grad_argmax):
    x, tau, scale, seed = ctx.saved_tensors
    need_tau, need_scale = ctx.needs_input_grad[1], ctx.needs_input_grad[2]
    dx, gz, zz = _softmax_backward_op(x, grad_y, tau, scale, seed, ctx.offset,
                                      need_tau or need_scale, ctx.backend)
    grad_tau = grad_scale = None
    if need_scale:  # d z / d scale = g / tau
        grad_scale = _reduce_to(gz / tau, scale)
    if need_tau:  # d z / d tau = -z / tau
        grad_tau = _reduce_to(-zz / tau, tau)
    return dx.to(x.dtype), grad_tau, grad_scale, None, None, None, None


def _reduce_to(per_row: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    return per_row.sum().reshape(1) if param.numel() == 1 else per_row


_softmax_op.register_autograd(_softmax_backward, setup_context=_softmax_setup)


@torch.library.custom_op("semid_fast::gumbel_topk", mutates_args=())
def _topk_op(x: torch.Tensor, k: int, tau: torch.Tensor, seed: torch.Tensor, offset: int,
             backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores (rows, k) float32, indices (rows, k) int64) of x (rows, vocab), best first."""
    rows, vocab = x.shape
    if not 1 <= k <= vocab:
        raise ValueError(f"gumbel_topk: k={k} must be in [1, {vocab}]")
    _check_per_row(tau, rows, "tau", torch.float32)
    values = torch.empty((rows, k), dtype=torch.float32, device=x.device)
    indices = torch.empty((rows, k), dtype=torch.long, device=x.device)
    if rows:
        _backends.launcher(backend, _FAMILY, "topk")(
            x.float().contiguous(), k, tau, int(seed), offset, values, indices)
    return values, indices


@_topk_op.register_fake
def _(x, k, tau, seed, offset, backend):
    shape = (x.shape[0], k)
    return x.new_empty(shape, dtype=torch.float32), x.new_empty(shape, dtype=torch.long)


# ---------------------------------------------------------------------------------------------
# Argument handling
# ---------------------------------------------------------------------------------------------


def _check_logits(op: str, logits, name: str = "logits") -> None:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dtype not in _checks.FLOAT_DTYPES + (torch.float64,):
        raise TypeError(f"{op}: {name} must be float32, float16, bfloat16 or float64, "
                        f"got {logits.dtype}")
    if logits.dim() == 0:
        raise ValueError(f"{op}: {name} must have at least one dimension")


def _check_not_nan(op: str, t: torch.Tensor, name: str) -> None:
    """NaN and +inf are rejected; -inf (a masked entry) is allowed. One reduction pass."""
    if not (_checks.scanning() and t.numel()):
        return
    top = t.max()
    if bool(torch.isnan(top) | (top == float("inf"))):
        raise ValueError(f"{op}: {name} contains NaN or +inf (-inf is allowed: a masked entry)")


def _param(op: str, value, name: str, rows: int, batch_shape, device, positive: bool,
           dtype: torch.dtype = torch.float32):
    """A float or tensor parameter as a (1,) or (rows,) tensor of `dtype` on `device`."""
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point():
            raise TypeError(f"{op}: {name} must be a float or a floating-point tensor, "
                            f"got {value.dtype}")
        if value.numel() != 1 and value.shape not in (torch.Size(batch_shape),
                                                      torch.Size((rows,))):
            raise ValueError(
                f"{op}: {name} must be a float, a one-value tensor or one value per row: shape "
                f"{tuple(batch_shape)} or ({rows},), got {tuple(value.shape)}")
        if value.device != device:
            raise ValueError(f"{op}: {name} is on {value.device} but the logits on {device}")
        if _checks.scanning() and value.numel():
            bad = ~torch.isfinite(value).all() | ((value <= 0).any() if positive else
                                                  (value < 0).any())
            if bool(bad):
                raise ValueError(f"{op}: {name} must be finite and "
                                 f"{'> 0' if positive else '>= 0'} everywhere")
        return value.to(dtype).reshape(-1).contiguous()  # the launchers read value[row]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{op}: {name} must be a float or a tensor, got {type(value).__name__}")
    value = float(value)
    if not (value > 0 if positive else value >= 0) or value == float("inf"):
        raise ValueError(f"{op}: {name} must be finite and {'> 0' if positive else '>= 0'}, "
                         f"got {value}")
    return torch.full((1,), value, dtype=dtype, device=device)


def _seed(op: str, seed, offset) -> tuple[torch.Tensor, int]:
    """The seed as a (1,) int64 CPU tensor (drawn from torch's generator when None)."""
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset <= _MAX_SEED:
        raise ValueError(f"{op}: offset must be an int in [0, 2^63), got {offset!r}")
    if seed is None:
        return torch.randint(0, _SEED_HIGH, (1,), dtype=torch.long), offset
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= _MAX_SEED:
        raise ValueError(f"{op}: seed must be None or an int in [0, 2^63), got {seed!r}")
    return torch.tensor([seed], dtype=torch.long), offset


def gumbel_softmax(logits: torch.Tensor, tau=1.0, *, hard: bool = False, noise_scale=1.0,
                   dim: int = -1, seed: int | None = None, offset: int = 0,
                   backend: str = "auto") -> torch.Tensor:
    """Gumbel-softmax sample ``softmax((logits + noise_scale * g) / tau)`` along ``dim``.

    Args:
        logits: float32/float16/bfloat16 tensor of any shape (float64 runs in float32 on
            the cpu, cuda and triton backends, in float64 on the reference); -inf marks
            masked entries.
        tau: temperature > 0: a float, a one-value tensor, or one value per row (shape
            ``logits.shape`` without ``dim``, or (rows,)). A tensor that requires grad gets
            its gradient.
        hard: return the one-hot of the argmax, with the straight-through gradient of the
            soft sample (``y_hard - y_soft.detach() + y_soft``).
        noise_scale: multiplies the noise, >= 0, same forms as ``tau`` (0 turns the noise
            off for a row, as DIGER's frequency-based decay does); differentiable.
        dim: the category dimension.
        seed: Philox key in [0, 2^63); None draws one from torch's default generator, so
            ``torch.manual_seed`` makes runs reproducible.
        offset: Philox counter offset (e.g. the step), so one seed gives many streams.
        backend: "auto", "reference", "cpu", "cuda" or "triton".

    Returns:
        A tensor of the logits' shape and dtype (computed in float32). The noise is never
        stored: the backward pass draws it again from the seed.

    Agreement across backends: the noise and the perturbed logits z are bit for bit the
    same, so hard one-hots (the first argmax of z) are identical; soft outputs and gradients
    agree to float32 rounding (a few ulps; different exp and summation orders). The native
    backends return an exact one-hot for hard=True, the reference ``y_hard - y_soft + y_soft``
    (one-hot to within an ulp). A row whose logits are all -inf (nothing can be drawn) gives
    NaN soft outputs and, with hard=True, the one-hot of index 0 (the first argmax, as
    :func:`gumbel_topk` and ``torch.argmax`` pick), on every backend. Masked (-inf) entries contribute nothing to the gradient of a
    tensor ``tau`` in the native backends, where the reference's autograd gives NaN (0 * inf).
    """
    op = "gumbel_softmax"
    _check_logits(op, logits)
    if isinstance(dim, bool) or not isinstance(dim, int) or not -logits.dim() <= dim < logits.dim():
        raise ValueError(f"{op}: dim must be an int in [{-logits.dim()}, {logits.dim()}), got {dim!r}")
    if not isinstance(hard, bool):
        raise TypeError(f"{op}: hard must be a bool, got {type(hard).__name__}")
    moved = logits.movedim(dim, -1)
    vocab = moved.shape[-1]
    if vocab == 0:
        raise ValueError(f"{op}: the category dimension {dim} of logits is empty "
                         f"(shape {tuple(logits.shape)})")
    batch_shape = moved.shape[:-1]
    rows = moved.numel() // vocab
    dtype = _compute_dtype(logits)
    tau_t = _param(op, tau, "tau", rows, batch_shape, logits.device, True, dtype)
    scale_t = _param(op, noise_scale, "noise_scale", rows, batch_shape, logits.device, False,
                     dtype)
    seed_t, offset = _seed(op, seed, offset)
    name = _backends.choose(backend, logits.device, _FAMILY, "softmax_forward", op=op,
                            args={"rows": rows, "vocab": vocab})
    _check_not_nan(op, logits, "logits")
    x = moved.reshape(rows, vocab).contiguous()  # saved for backward as such
    y, _ = _softmax_op(x, tau_t, scale_t, seed_t, offset, hard, name)
    return y.reshape(moved.shape).movedim(-1, dim)


def gumbel_topk(logits: torch.Tensor, k: int, *, tau=1.0, seed: int | None = None,
                offset: int = 0, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """k distinct indices per row sampled without replacement (Gumbel-top-k).

    The perturbed scores ``logits / tau + g`` (g the Philox noise of the logits' row-major
    layout) are ranked over the last dim; the top k are a sample without replacement from
    ``softmax(logits / tau)``; k=1 is Gumbel-max sampling. No (rows, vocab) noise tensor is
    materialised.

    Args:
        logits: (..., V) float32/float16/bfloat16/float64; -inf entries are never drawn while
            a row has k finite entries.
        k: 1 <= k <= V.
        tau: sampling temperature > 0 (float, one-value tensor or one value per row).
        seed, offset, backend: as in :func:`gumbel_softmax`.

    Returns:
        (scores (..., k) float32, indices (..., k) int64), best first, ties toward the
        smaller index.
    """
    op = "gumbel_topk"
    _check_logits(op, logits)
    vocab = logits.shape[-1]
    if vocab == 0:
        raise ValueError(f"{op}: logits have empty rows (shape {tuple(logits.shape)})")
    k = _checks.positive_int(k, "k")
    if k > vocab:
        raise ValueError(f"{op}: k={k} is larger than the vocabulary ({vocab})")
    rows = logits.numel() // vocab
    tau_t = _param(op, tau, "tau", rows, logits.shape[:-1], logits.device, positive=True)
    seed_t, offset = _seed(op, seed, offset)
    name = _backends.choose(backend, logits.device, _FAMILY, "topk", op=op,
                            args={"rows": rows, "vocab": vocab, "k": k})
    _check_not_nan(op, logits, "logits")
    values, indices = _topk_op(logits.reshape(rows, vocab), k, tau_t, seed_t, offset, name)
    out_shape = (*logits.shape[:-1], k)
    return values.reshape(out_shape), indices.reshape(out_shape)


def _logit_scale(op: str, value, rows: int, device):
    """A float, or a tensor that broadcasts over (rows, K) logits: 0-dim or (rows, 1)."""
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point():
            raise TypeError(f"{op}: logit_scale must be a float or a floating-point tensor, "
                            f"got {value.dtype}")
        if value.numel() != 1 and value.shape != (rows,):
            raise ValueError(f"{op}: logit_scale must be a float, a one-value tensor or one "
                             f"value per row of x ({rows},), got {tuple(value.shape)}")
        if value.device != device:
            raise ValueError(f"{op}: logit_scale is on {value.device} but x on {device}")
        _checks.finite(value, "logit_scale")
        return value.reshape(()) if value.numel() == 1 else value.reshape(rows, 1)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{op}: logit_scale must be a float or a tensor, "
                        f"got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{op}: logit_scale must be finite, got {value}")
    return float(value)


def gumbel_quantize(x: torch.Tensor, codebook: torch.Tensor, *, tau=1.0, hard: bool = True,
                    noise_scale=1.0, distance: str = "l2", logit_scale=1.0,
                    seed: int | None = None, offset: int = 0, sk_epsilon=0.0,
                    sk_iters: int = 50, backend: str = "auto"):
    """DIGER's differentiable semantic-ID step: Gumbel-softmax over codewords with the
    indicator straight-through, in one call (per level, or a residual stack of levels).

    logits = ``logit_scale * -||x - c||^2`` (distance="l2") or ``logit_scale * cos(x, c)``
    ("cosine"); soft = gumbel_softmax(logits, tau, noise_scale); codes = argmax of the
    perturbed logits; quantized = y @ codebook with y = onehot(codes) - soft.detach() + soft
    (hard=True: the chosen codeword forward, the soft assignment's gradient backward) or
    y = soft (hard=False). Gradients reach x and every codeword as in
    :func:`semid_fast.reference.gumbel.gumbel_quantize`.

    Args:
        x: (N, D) float embeddings.
        codebook: (K, D) codewords, or (L, K, D) for a residual stack (level l quantizes the
            residual left by levels < l and draws its noise at ``offset + l``).
        tau, noise_scale: as in :func:`gumbel_softmax` (one value per row of x allowed).
        logit_scale: multiplies the logits of every level: a float, a one-value tensor or an
            (N,) tensor (one value per row of x). A tensor that requires grad gets its
            gradient on every backend (the logits are formed by torch ops before the Gumbel
            kernels): the variable-length semantic-ID paper learns it per step, as
            ``exp(log_scale[step])`` on cosine logits (its ``Encoder._get_logits``).
        seed, offset, backend: as in :func:`gumbel_softmax`.
        sk_epsilon, sk_iters: DIGER's Sinkhorn levels (its config: 0.003 at every level, 50
            iterations); a float or one per level, 0 = off (default). At such a level, as in
            DIGER's vq.py, the distances d of the batch are centred as
            :func:`semid_fast.rq_encode` describes, the logits are ``-logit_scale *
            centred d`` (gradients through d and its max and min, as there), and a row
            whose noise_scale is 0 (a cold row of DIGER's adaptive selection) takes the
            Sinkhorn code of the level while a noisy row takes its sampled code. (DIGER's
            learnable-sigma modules zero the noise of every row below sigma 1e-4; such rows
            take the argmax of their logits there, the Sinkhorn code here.) Codes depend on
            the batch.

    On a GPU, the NaN/inf scans of x, codebook and a ``logit_scale`` tensor sync with the host
    (one each) while ``semid_fast.config.check_values`` is on; turn it off in a trusted loop.

    Returns:
        codes (N,) or (N, L) int64; quantized (N, D) in x's dtype; soft (N, K) or (N, L, K)
        in x's dtype: the Gumbel-softmax assignment (for balance losses).
    """
    op = "gumbel_quantize"
    _checks.tensor(x, "x", 2, _checks.FLOAT_DTYPES + (torch.float64,), "(N, D)")
    if not isinstance(codebook, torch.Tensor) or codebook.dim() not in (2, 3):
        raise ValueError(f"{op}: codebook must be a (K, D) or (L, K, D) tensor, got "
                         f"{tuple(codebook.shape) if isinstance(codebook, torch.Tensor) else type(codebook).__name__}")
    _check_logits(op, codebook, "codebook")
    _checks.same_device(op, x=x, codebook=codebook)
    if codebook.shape[-1] != x.shape[1] or codebook.shape[-2] == 0 or x.shape[1] == 0:
        raise ValueError(f"{op}: codebook {tuple(codebook.shape)} must hold K >= 1 codewords "
                         f"of x's width D={x.shape[1]} >= 1")
    if codebook.dim() == 3 and codebook.shape[0] == 0:
        raise ValueError(f"{op}: a codebook stack needs L >= 1 levels, got {tuple(codebook.shape)}")
    if distance not in ("l2", "cosine"):
        raise ValueError(f"{op}: distance must be 'l2' or 'cosine', got {distance!r}")
    _checks.finite(x, "x")
    _checks.finite(codebook, "codebook")
    rows, vocab = x.shape[0], codebook.shape[-2]
    logit_scale = _logit_scale(op, logit_scale, rows, x.device)
    _quantize._sk_epsilons(op, sk_epsilon, sk_iters, codebook.shape[0] if codebook.dim() == 3 else 1)
    dtype = _compute_dtype(x)
    tau_t = _param(op, tau, "tau", rows, (rows,), x.device, True, dtype)
    scale_t = _param(op, noise_scale, "noise_scale", rows, (rows,), x.device, False, dtype)
    name = _backends.choose(backend, x.device, _FAMILY, "softmax_forward", op=op,
                            args={"rows": rows, "vocab": vocab})
    seed_t, offset = _seed(op, seed, offset)  # one seed for all levels: they differ by offset

    def sample(logits, level):
        return _softmax_op(logits, tau_t, scale_t, seed_t, offset + level, False, name)

    def sinkhorn(dist, epsilon):
        return _quantize.sinkhorn_codes(name, dist, epsilon, sk_iters)

    return ref.quantize_levels(x, codebook, sample, sinkhorn, hard=hard, distance=distance,
                               logit_scale=logit_scale, noise_scale=noise_scale,
                               sk_epsilon=sk_epsilon)


def gumbel_noise(shape, *, seed: int, offset: int = 0, device=None,
                 backend: str = "auto") -> torch.Tensor:
    """The float32 Gumbel(0, 1) noise that the ops above draw for logits of ``shape`` (after
    moving the category dim last), materialised: for inspection and tests.

    ``shape``: a sequence (or torch.Size) of non-negative ints whose product is < 2^62."""
    op = "gumbel_noise"
    if isinstance(shape, (str, bytes)) or not isinstance(shape, (tuple, list, torch.Size)):
        raise TypeError(f"{op}: shape must be a tuple of ints, got {type(shape).__name__}")
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in shape):
        raise TypeError(f"{op}: shape must hold ints, got {tuple(shape)!r}")
    shape = tuple(shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"{op}: shape must hold sizes >= 0, got {shape}")
    n = bound = 1
    for s in shape:
        n *= s
        bound *= max(s, 1)  # torch sizes even an empty tensor's shape in int64
    if bound >= 2**62:
        raise ValueError(f"{op}: shape {shape} is too large (the product of its sizes must "
                         f"be < 2**62)")
    seed_t, offset = _seed(op, seed, offset)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    name = _backends.choose(backend, dev, _FAMILY, "noise", op=op, args={"n": n})
    out = _native.empty_output(n, device=dev)
    if n:
        _backends.launcher(name, _FAMILY, "noise")(int(seed_t), offset, out, None)
    return out.reshape(shape)

"""Gumbel-softmax, Gumbel-top-k and DIGER's Gumbel quantization step, one pass each way.

Noise is counter-based (DESIGN.md decision 7): element e of the row-major (rows, vocab)
layout, after moving ``dim`` last, draws Philox4x32-10 keyed by (seed, offset, e) as stated
in ``csrc/include/semid_fast/philox.h``. Every backend draws the same 32-bit words and turns
them into float32 noise -log(-log(u)) with the same sequence of single IEEE operations, so
the noise agrees bit for bit across backends. The backward pass recomputes the noise from the seed:
nothing but the inputs is saved.

Each public function checks its arguments, picks a backend (decision 4) and calls
``torch.library`` custom ops (registered with fake implementations and autograd), so
``torch.compile(fullgraph=True)`` sees them as single ops.
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


def _triton():
    from ..backends.triton import gumbel as tg  # imported lazily: triton is optional

    return tg


def _stride(param: torch.Tensor, rows: int, name: str) -> int:
    """0 for one value, 1 for one per row. The kernels read param[i * stride] for every row,
    so the length is checked here, whatever ``check_values`` says (a shape check, no sync)."""
    if param.dtype != torch.float32 or not param.is_contiguous() or param.numel() not in (1, rows):
        raise ValueError(f"{name} must be a contiguous float32 tensor of 1 or {rows} values, "
                         f"got {param.dtype} {tuple(param.shape)}")
    return 0 if param.numel() == 1 else 1


# ---------------------------------------------------------------------------------------------
# Backend kernels on (rows, vocab) contiguous logits and float32 (1,) or (rows,) parameters.
# ---------------------------------------------------------------------------------------------


def _forward(backend, x, tau, scale, seed, offset, hard):
    """y (rows, vocab) in x's dtype (one-hot when hard) and argmax (rows,) int64."""
    rows, vocab = x.shape
    tau_stride, scale_stride = _stride(tau, rows, "tau"), _stride(scale, rows, "noise_scale")
    x = x.contiguous()
    argmax = torch.empty(rows, dtype=torch.long, device=x.device)
    if backend == "cpu":
        x32 = x.float()
        y = _native.empty_output(x32.shape, device=x32.device)
        if rows:
            status = _native.cpu().gumbel_softmax_fwd_f32(
                x32.data_ptr(), rows, vocab, tau.data_ptr(), tau_stride, scale.data_ptr(),
                scale_stride, seed, offset, int(hard), y.data_ptr(), argmax.data_ptr(),
                _native.n_threads())
            _native.check_cpu_status(status, "gumbel_softmax")
        return y.to(x.dtype), argmax
    y = _native.empty_output(x.shape, x.dtype, x.device)
    if rows == 0:
        return y, argmax
    if backend == "cuda":
        _native.call_cuda("gumbel_softmax", _native._C_cuda.gumbel_softmax_fwd, x.data_ptr(),
                          _native.DTYPE_CODES[x.dtype], rows, vocab, tau.data_ptr(), tau_stride,
                          scale.data_ptr(), scale_stride, seed, offset, int(hard), y.data_ptr(),
                          argmax.data_ptr(), device=x.device)
    else:
        _triton().softmax_forward(x, tau, scale, seed, offset, hard, y, argmax)
    return y, argmax


def _backward(backend, x, dy, tau, scale, seed, offset, need_sums):
    """dx (rows, vocab) float32 and, when need_sums, the per-row sums sum(dz * g) and
    sum(dz * z) (float32 (rows,)) that the gradients of noise_scale and tau need."""
    rows, vocab = x.shape
    tau_stride, scale_stride = _stride(tau, rows, "tau"), _stride(scale, rows, "noise_scale")
    if dy.shape != x.shape:
        raise ValueError(f"gumbel_softmax backward: dy {tuple(dy.shape)} must have x's shape "
                         f"{tuple(x.shape)}")
    x = x.contiguous()
    dx = _native.empty_output((rows, vocab), device=x.device)
    gz = torch.empty(rows if need_sums else 0, dtype=torch.float32, device=x.device)
    zz = torch.empty_like(gz)
    if rows == 0:
        return dx, gz, zz
    gz_ptr = gz.data_ptr() if need_sums else 0
    zz_ptr = zz.data_ptr() if need_sums else 0
    if backend == "cpu":
        x32, dy32 = x.float(), dy.float().contiguous()
        status = _native.cpu().gumbel_softmax_bwd_f32(
            x32.data_ptr(), dy32.data_ptr(), rows, vocab, tau.data_ptr(), tau_stride,
            scale.data_ptr(), scale_stride, seed, offset, dx.data_ptr(), gz_ptr, zz_ptr,
            _native.n_threads())
        _native.check_cpu_status(status, "gumbel_softmax backward")
    elif backend == "cuda":
        dy = dy.to(x.dtype).contiguous()
        _native.call_cuda("gumbel_softmax backward", _native._C_cuda.gumbel_softmax_bwd,
                          x.data_ptr(), dy.data_ptr(), _native.DTYPE_CODES[x.dtype], rows, vocab,
                          tau.data_ptr(), tau_stride, scale.data_ptr(), scale_stride, seed,
                          offset, dx.data_ptr(), gz_ptr, zz_ptr, device=x.device)
    else:
        _triton().softmax_backward(x, dy.to(x.dtype).contiguous(), tau, scale, seed, offset, dx,
                                   gz if need_sums else None, zz if need_sums else None)
    return dx, gz, zz


# ---------------------------------------------------------------------------------------------
# torch.library registration. The seed travels as a (1,) int64 CPU tensor, so that a seed
# drawn from torch's generator needs no host read inside a compiled graph.
# ---------------------------------------------------------------------------------------------


@torch.library.custom_op("semid_fast::gumbel_softmax", mutates_args=())
def _softmax_op(x: torch.Tensor, tau: torch.Tensor, scale: torch.Tensor, seed: torch.Tensor,
                offset: int, hard: bool, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    if backend == "reference":
        rows = x.shape[0]
        y = ref.gumbel_softmax(x, tau, hard=hard, noise_scale=scale, seed=int(seed),
                               offset=offset).detach()
        z = ref._perturb(x, tau, scale, int(seed), offset)
        return y, z.argmax(-1) if rows else torch.empty(0, dtype=torch.long, device=x.device)
    return _forward(backend, x, tau, scale, int(seed), offset, hard)


@_softmax_op.register_fake
def _(x, tau, scale, seed, offset, hard, backend):
    return torch.empty_like(x), x.new_empty((x.shape[0],), dtype=torch.long)


@torch.library.custom_op("semid_fast::gumbel_softmax_backward", mutates_args=())
def _softmax_backward_op(x: torch.Tensor, dy: torch.Tensor, tau: torch.Tensor,
                         scale: torch.Tensor, seed: torch.Tensor, offset: int, need_sums: bool,
                         backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if backend == "reference":
        return _reference_backward(x, dy, tau, scale, int(seed), offset, need_sums)
    return _backward(backend, x, dy, tau, scale, int(seed), offset, need_sums)


@_softmax_backward_op.register_fake
def _(x, dy, tau, scale, seed, offset, need_sums, backend):
    rows = x.shape[0] if need_sums else 0
    return (x.new_empty(x.shape, dtype=torch.float32), x.new_empty((rows,), dtype=torch.float32),
            x.new_empty((rows,), dtype=torch.float32))


def _reference_backward(x, dy, tau, scale, seed, offset, need_sums):
    """The kernels' outputs in plain torch: dz = y * (dy - sum(dy * y)), dx = dz / tau.
    (Custom ops run below autograd, so this spells out the softmax backward.)"""
    dtype = ref._compute_dtype(x)
    rows, vocab = x.shape
    z = ref._perturb(x, tau, scale, seed, offset)
    y = z.softmax(-1)
    dy = dy.to(dtype)
    dz = y * (dy - (dy * y).sum(-1, keepdim=True))
    dx = dz / tau.to(dtype).reshape(-1, 1)
    if not need_sums:
        return dx, dx.new_empty(0), dx.new_empty(0)
    g = ref.gumbel_noise(seed, offset, rows, vocab, x.device).to(dtype)
    return dx, (dz * g).sum(-1), (dz * z).sum(-1)


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
    rows, vocab = x.shape
    if backend == "reference" or rows == 0:
        values, indices = ref.gumbel_topk(x, k, tau=tau, seed=int(seed), offset=offset)
        return values.contiguous(), indices.contiguous()
    if not 1 <= k <= vocab:
        raise ValueError(f"gumbel_topk: k={k} must be in [1, {vocab}]")
    tau_stride = _stride(tau, rows, "tau")
    x = x.float().contiguous()
    values = torch.empty((rows, k), dtype=torch.float32, device=x.device)
    indices = torch.empty((rows, k), dtype=torch.long, device=x.device)
    if backend == "cpu":
        status = _native.cpu().gumbel_topk_f32(x.data_ptr(), rows, vocab, tau.data_ptr(),
                                               tau_stride, int(seed), offset, k,
                                               values.data_ptr(), indices.data_ptr(),
                                               _native.n_threads())
        _native.check_cpu_status(status, "gumbel_topk")
        return values, indices
    return _triton().topk(x, k, tau, int(seed), offset)


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


def _param(op: str, value, name: str, rows: int, batch_shape, device, positive: bool):
    """A float or tensor parameter as a float32 (1,) or (rows,) tensor on `device`."""
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
        return value.float().reshape(-1).contiguous()  # the kernels read value[row]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{op}: {name} must be a float or a tensor, got {type(value).__name__}")
    value = float(value)
    if not (value > 0 if positive else value >= 0) or value == float("inf"):
        raise ValueError(f"{op}: {name} must be finite and {'> 0' if positive else '>= 0'}, "
                         f"got {value}")
    return torch.full((1,), value, dtype=torch.float32, device=device)


def _seed(op: str, seed, offset) -> tuple[torch.Tensor, int]:
    """The seed as a (1,) int64 CPU tensor (drawn from torch's generator when None)."""
    if isinstance(seed, torch.Tensor):  # already drawn (gumbel_quantize's levels)
        return seed, offset
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
            the cpu backend, in float64 on the reference); -inf marks masked entries.
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
    (one-hot to within an ulp). Masked (-inf) entries contribute nothing to the gradient of a
    tensor ``tau`` in the native backends, where the reference's autograd gives NaN (0 * inf).
    """
    y, _ = _softmax_call("gumbel_softmax", logits, tau, hard, noise_scale, dim, seed, offset,
                         backend)
    return y


def _softmax_call(op, logits, tau, hard, noise_scale, dim, seed, offset, backend, scan=True):
    """Checks, runs the op on (rows, vocab) and returns (y in logits' layout, argmax (rows,))."""
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
    tau_t = _param(op, tau, "tau", rows, batch_shape, logits.device, positive=True)
    scale_t = _param(op, noise_scale, "noise_scale", rows, batch_shape, logits.device,
                     positive=False)
    seed_t, offset = _seed(op, seed, offset)
    name = _backends.resolve(backend, logits.device, op)
    if scan:
        _check_not_nan(op, logits, "logits")
    x = moved.reshape(rows, vocab)
    if name != "reference" and logits.dtype == torch.float64:
        x = x.float()
    y, argmax = _softmax_op(x.contiguous(), tau_t, scale_t, seed_t, offset, hard, name)
    return y.to(logits.dtype).reshape(moved.shape).movedim(-1, dim), argmax


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
    name = _backends.resolve(backend, logits.device, op, supported=("reference", "cpu", "triton"))
    _check_not_nan(op, logits, "logits")
    x = logits.reshape(rows, vocab)
    if name != "reference":
        x = x.float()
    values, indices = _topk_op(x.contiguous(), k, tau_t, seed_t, offset, name)
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
    if codebook.shape[-1] != x.shape[1] or codebook.shape[-2] == 0:
        raise ValueError(f"{op}: codebook {tuple(codebook.shape)} must hold K >= 1 codewords "
                         f"of x's width D={x.shape[1]}")
    if codebook.dim() == 3 and codebook.shape[0] == 0:
        raise ValueError(f"{op}: a codebook stack needs L >= 1 levels, got {tuple(codebook.shape)}")
    if distance not in ("l2", "cosine"):
        raise ValueError(f"{op}: distance must be 'l2' or 'cosine', got {distance!r}")
    _checks.finite(x, "x")
    _checks.finite(codebook, "codebook")
    logit_scale = _logit_scale(op, logit_scale, x.shape[0], x.device)
    epsilons = _quantize._sk_epsilons(op, sk_epsilon, sk_iters,
                                      codebook.shape[0] if codebook.dim() == 3 else 1)
    name = _backends.resolve(backend, x.device, op)
    seed_t, offset = _seed(op, seed, offset)  # one seed for all levels: they differ by offset
    if name == "reference":
        return ref.gumbel_quantize(x, codebook, tau=tau, hard=hard, noise_scale=noise_scale,
                                   distance=distance, logit_scale=logit_scale, seed=int(seed_t),
                                   offset=offset, sk_epsilon=epsilons or 0.0, sk_iters=sk_iters)
    stack = codebook.dim() == 3
    books = codebook if stack else codebook.unsqueeze(0)
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    residual = x.to(dtype)
    quantized = torch.zeros_like(residual)
    codes, softs = [], []
    for level in range(books.shape[0]):
        book = books[level].to(dtype)
        sk = bool(epsilons) and epsilons[level] > 0
        if sk:
            logits, dist = ref.centred_logits(residual, book, distance, logit_scale)
        else:
            logits = ref.quantize_logits(residual, book, distance, logit_scale)
        soft, code = _softmax_call(op, logits, tau, False, noise_scale, -1, seed_t,
                                   offset + level, name, scan=False)
        if sk:
            sk_code = _quantize.sinkhorn_codes(name, dist, epsilons[level], sk_iters)
            code = ref.sinkhorn_select(code, sk_code, noise_scale, code.shape[0])
        soft = soft.to(dtype)
        if hard:  # the chosen codeword forward, the soft assignment's gradient backward
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


def gumbel_noise(shape, *, seed: int, offset: int = 0, device=None,
                 backend: str = "auto") -> torch.Tensor:
    """The float32 Gumbel(0, 1) noise that the ops above draw for logits of ``shape`` (after
    moving the category dim last), materialised: for inspection and tests."""
    shape = tuple(shape)
    n = 1
    for s in shape:
        n *= s
    seed_t, offset = _seed("gumbel_noise", seed, offset)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    name = _backends.resolve(backend, dev, "gumbel_noise", supported=("reference", "cpu", "triton"))
    if name == "reference":
        return ref.gumbel_noise(int(seed_t), offset, 1, n, dev).reshape(shape)
    out = _native.empty_output(n, device=dev)
    if name == "cpu":
        _native.cpu().gumbel_noise(int(seed_t), offset, 0, n, 0, out.data_ptr(),
                                   _native.n_threads())
    else:
        _triton().noise(int(seed_t), offset, out, None)
    return out.reshape(shape)

"""Reference launchers of the gumbel family: the oracles of semid_fast.reference.gumbel,
written into the outputs that the op allocated."""

from __future__ import annotations

from ...reference import gumbel as ref

__all__ = ["noise", "softmax_forward", "softmax_backward", "topk"]


def noise(seed, offset, out, bits) -> None:
    """Fills the float32 noise `out` or the int32 words `bits` (the other is None) of the
    elements [0, n) of the stream keyed by (seed, offset)."""
    if out is not None:
        out.copy_(ref.gumbel_noise(seed, offset, 1, out.numel(), out.device).reshape(out.shape))
        return
    words = ref.philox_bits(seed, offset, 0, bits.numel(), bits.device)
    bits.copy_((words - ((words >> 31) << 32)).reshape(bits.shape))  # as two's complement int32


def softmax_forward(x, tau, scale, seed, offset, hard, y, argmax) -> None:
    """y (rows, vocab) in x's dtype and argmax (rows,) int64 of the perturbed logits."""
    y.copy_(ref.gumbel_softmax(x, tau, hard=hard, noise_scale=scale, seed=seed, offset=offset))
    argmax.copy_(ref.perturb(x, tau, scale, seed, offset).argmax(-1))


def softmax_backward(x, dy, tau, scale, seed, offset, dx, gz, zz) -> None:
    """The kernels' outputs in plain torch: dz = y * (dy - sum(dy * y)), dx = dz / tau, and
    when gz, zz are given the row sums sum(dz * g) and sum(dz * z). (Custom ops run below
    autograd, so this spells out the softmax backward.)"""
    z = ref.perturb(x, tau, scale, seed, offset)
    y = z.softmax(-1)
    dy = dy.to(z.dtype)
    dz = y * (dy - (dy * y).sum(-1, keepdim=True))
    dx.copy_(dz / tau.to(z.dtype).reshape(-1, 1))
    if gz is not None:
        g = ref.gumbel_noise(seed, offset, x.shape[0], x.shape[1], x.device).to(z.dtype)
        gz.copy_((dz * g).sum(-1))
        zz.copy_((dz * z).sum(-1))


def topk(x, k, tau, seed, offset, values, indices) -> None:
    """values (rows, k) float32 and indices (rows, k) int64 of Gumbel-top-k on x (rows, vocab)."""
    got_values, got_indices = ref.gumbel_topk(x, k, tau=tau, seed=seed, offset=offset)
    values.copy_(got_values)
    indices.copy_(got_indices)

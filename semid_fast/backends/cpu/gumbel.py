"""CPU launchers of the gumbel family over semid_fast._C. The kernels read and write float32;
other float dtypes are converted around them."""

from __future__ import annotations

import torch

from ... import _native

__all__ = ["noise", "softmax_forward", "softmax_backward", "topk"]


def _stride(param: torch.Tensor) -> int:
    """0 for one value shared by every row, 1 for one value per row."""
    return 0 if param.numel() == 1 else 1


def _ptr(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def noise(seed, offset, out, bits) -> None:
    """Fills the float32 noise `out` or the int32 words `bits` (the other is None) of the
    elements [0, n) of the stream keyed by (seed, offset)."""
    n = (out if out is not None else bits).numel()
    status = _native.cpu().gumbel_noise(seed, offset, 0, n, _ptr(bits), _ptr(out),
                                        _native.n_threads())
    _native.check_cpu_status(status, "gumbel_noise")


def softmax_forward(x, tau, scale, seed, offset, hard, y, argmax) -> None:
    """x, y (rows, vocab) contiguous of one dtype; tau, scale (1,) or (rows,), float32 (float64
    with float64 x); argmax (rows,) int64."""
    if y.dtype != torch.float32:  # the kernel reads and writes float32
        y32 = _native.empty_output(y.shape)
        softmax_forward(x.float(), tau.float(), scale.float(), seed, offset, hard, y32, argmax)
        y.copy_(y32)
        return
    rows, vocab = x.shape
    status = _native.cpu().gumbel_softmax_fwd_f32(
        x.data_ptr(), rows, vocab, tau.data_ptr(), _stride(tau), scale.data_ptr(), _stride(scale),
        seed, offset, int(hard), y.data_ptr(), argmax.data_ptr(), _native.n_threads())
    _native.check_cpu_status(status, "gumbel_softmax")


def softmax_backward(x, dy, tau, scale, seed, offset, dx, gz, zz) -> None:
    """x, dy (rows, vocab) contiguous of one dtype; dx (rows, vocab) and gz, zz (rows,) (or
    None: not wanted) float32, float64 with float64 x (as tau and scale)."""
    if x.dtype != torch.float32:  # the kernel reads and writes float32
        outs = (dx, gz, zz)
        bufs = [t if t is None or t.dtype == torch.float32 else torch.empty(t.shape)
                for t in outs]
        softmax_backward(x.float(), dy.float(), tau.float(), scale.float(), seed, offset, *bufs)
        for t, buf in zip(outs, bufs):
            if buf is not t:
                t.copy_(buf)
        return
    rows, vocab = x.shape
    status = _native.cpu().gumbel_softmax_bwd_f32(
        x.data_ptr(), dy.data_ptr(), rows, vocab, tau.data_ptr(), _stride(tau), scale.data_ptr(),
        _stride(scale), seed, offset, dx.data_ptr(), _ptr(gz), _ptr(zz), _native.n_threads())
    _native.check_cpu_status(status, "gumbel_softmax backward")


def topk(x, k, tau, seed, offset, values, indices) -> None:
    """x (rows, vocab) float32 contiguous; values (rows, k) float32, indices (rows, k) int64."""
    rows, vocab = x.shape
    status = _native.cpu().gumbel_topk_f32(
        x.data_ptr(), rows, vocab, tau.data_ptr(), _stride(tau), seed, offset, k,
        values.data_ptr(), indices.data_ptr(), _native.n_threads())
    _native.check_cpu_status(status, "gumbel_topk")

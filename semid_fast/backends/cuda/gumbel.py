"""CUDA launchers of the gumbel family over semid_fast._C_cuda. The kernels read float32,
float16 and bfloat16 and compute in float32; float64 is converted around them."""

from __future__ import annotations

import torch

from ... import _native

__all__ = ["softmax_forward", "softmax_backward"]


def _stride(param: torch.Tensor) -> int:
    """0 for one value shared by every row, 1 for one value per row."""
    return 0 if param.numel() == 1 else 1


def softmax_forward(x, tau, scale, seed, offset, hard, y, argmax) -> None:
    """x, y (rows, vocab) contiguous of one dtype; tau, scale (1,) or (rows,), float32 (float64
    with float64 x); argmax (rows,) int64."""
    if x.dtype == torch.float64:  # the kernels compute in float32
        y32 = torch.empty(y.shape, dtype=torch.float32, device=y.device)
        softmax_forward(x.float(), tau.float(), scale.float(), seed, offset, hard, y32, argmax)
        y.copy_(y32)
        return
    rows, vocab = x.shape
    _native.call_cuda("gumbel_softmax", _native._C_cuda.gumbel_softmax_fwd, x.data_ptr(),
                      _native.DTYPE_CODES[x.dtype], rows, vocab, tau.data_ptr(), _stride(tau),
                      scale.data_ptr(), _stride(scale), seed, offset, int(hard), y.data_ptr(),
                      argmax.data_ptr(), device=x.device)


def softmax_backward(x, dy, tau, scale, seed, offset, dx, gz, zz) -> None:
    """x, dy (rows, vocab) contiguous of one dtype; dx (rows, vocab) and gz, zz (rows,) (or
    None: not wanted) float32, float64 with float64 x (as tau and scale)."""
    if x.dtype == torch.float64:  # the kernels compute in float32
        outs = (dx, gz, zz)
        bufs = [None if t is None else torch.empty(t.shape, dtype=torch.float32, device=t.device)
                for t in outs]
        softmax_backward(x.float(), dy.float(), tau.float(), scale.float(), seed, offset, *bufs)
        for t, buf in zip(outs, bufs):
            if t is not None:
                t.copy_(buf)
        return
    rows, vocab = x.shape
    _native.call_cuda("gumbel_softmax backward", _native._C_cuda.gumbel_softmax_bwd,
                      x.data_ptr(), dy.data_ptr(), _native.DTYPE_CODES[x.dtype], rows, vocab,
                      tau.data_ptr(), _stride(tau), scale.data_ptr(), _stride(scale), seed,
                      offset, dx.data_ptr(), 0 if gz is None else gz.data_ptr(),
                      0 if zz is None else zz.data_ptr(), device=x.device)

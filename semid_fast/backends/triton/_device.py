"""Device helpers shared by the Triton launchers (host side only, no syncs)."""

from __future__ import annotations

import contextlib
import functools

import torch


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def num_sms(t: torch.Tensor) -> int:
    """SM count of t's GPU (host-side property, no sync); 1 under the interpreter on CPU."""
    if not t.is_cuda:
        return 1
    index = t.device.index if t.device.index is not None else torch.cuda.current_device()
    return _sm_count(index)


def on_device(t: torch.Tensor):
    """Launch on t's device (triton launches on the current device)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()

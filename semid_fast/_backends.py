"""The one dispatch rule of DESIGN.md (decision 4) and `available_backends()`."""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

from . import _native

BACKENDS = ("reference", "cpu", "cuda", "triton")


@functools.lru_cache(maxsize=None)
def _triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


def _triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _usable(backend: str, device: torch.device) -> str | None:
    """None when `backend` can run on `device`, else the reason it cannot."""
    if device.type == "cuda" and not torch.cuda.is_available():
        return "no CUDA device is available"
    if backend == "reference":
        return None
    if backend == "cpu":
        if device.type != "cpu":
            return f"it runs on CPU tensors, got tensors on {device}"
        return None if _native._C is not None else "semid_fast._C was not built"
    if backend == "cuda":
        if _native._C_cuda is None:
            return "semid_fast was built without CUDA (nvcc not found or SEMID_FAST_CUDA=OFF)"
        if device.type != "cuda":
            return f"it runs on CUDA tensors, got tensors on {device}"
        return None
    if backend == "triton":
        if not _triton_importable():
            return "triton is not installed (pip install 'semid_fast[triton]')"
        if device.type == "cuda" or (device.type == "cpu" and _triton_interpreted()):
            return None
        return f"it runs on CUDA tensors (or CPU tensors with TRITON_INTERPRET=1), got {device}"
    return f"unknown backend; expected 'auto' or one of {BACKENDS}"


def available_backends(device: str | torch.device | None = None) -> list[str]:
    """Backends usable here; for a device when given, else for CPU and (when present) CUDA."""
    if device is not None:
        dev = torch.device(device)
        return [b for b in BACKENDS if _usable(b, dev) is None]
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    return [b for b in BACKENDS if any(_usable(b, d) is None for d in devices)]


def resolve(backend: str, device: torch.device, op: str,
            gpu_order: tuple[str, ...] = ("cuda", "triton"),
            supported: tuple[str, ...] = BACKENDS) -> str:
    """The backend that runs `op` on `device`: 'auto' picks, a named one is checked."""
    if not isinstance(backend, str):
        raise TypeError(f"{op}: backend must be a str, got {type(backend).__name__}")
    if backend == "auto":
        order = gpu_order if device.type == "cuda" else ("cpu",)
        for name in order:
            if name in supported and _usable(name, device) is None:
                return name
        return "reference"
    if backend not in BACKENDS:
        raise ValueError(f"{op}: backend must be 'auto' or one of {BACKENDS}, got {backend!r}")
    if backend not in supported:
        raise ValueError(f"{op}: backend {backend!r} does not implement this call; "
                         f"use one of {supported}")
    reason = _usable(backend, device)
    if reason is not None:
        raise RuntimeError(f"{op}: backend {backend!r} is unavailable: {reason}")
    return backend

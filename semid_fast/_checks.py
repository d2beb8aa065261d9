"""Argument checks shared by the public ops: clear errors before any kernel runs."""

from __future__ import annotations

import torch

from . import _native

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INT_DTYPES = (torch.uint8, torch.int16, torch.int32, torch.int64)


class _Config:
    """check_values: scan inputs for NaN/inf and out-of-range codes.

    The scan costs a pass over the input and, on GPU, a host sync; turn it off in hot loops
    whose inputs are known to be valid. Native kernels never read out of bounds either way.
    Inside torch.compile the scan is skipped (a graph cannot branch on tensor values).
    """

    check_values: bool = True


config = _Config()


def scanning() -> bool:
    return config.check_values and not torch.compiler.is_compiling()


def tensor(t, name: str, ndim: int, dtypes, shape_doc: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {shape_doc}, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must have shape {shape_doc} ({ndim} dims), got {tuple(t.shape)}")
    if t.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have dtype in ({names}), got {str(t.dtype).replace('torch.', '')}")
    return t


def same_device(op: str, **tensors) -> torch.device:
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    first = next(iter(devices.values()))
    if any(d != first for d in devices.values()):
        listed = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"{op}: all tensors must be on one device, got {listed}")
    return first


def positive_int(value, name: str, minimum: int = 1) -> int:
    """value as an int in [minimum, 2**63) (sizes reach torch and the kernels as int64, where
    a larger Python int would fail in torch's argument parser)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if value >= 2**63:
        raise ValueError(f"{name} must be < 2**63, got {value}")
    return value


# Inputs up to this size are scanned by the extension's plain loops when they can be: a torch
# reduction and its host read cost a few microseconds each, most of a decode step's checks.
_NATIVE_SCAN_MAX = 1 << 16


def _native_scan(t: torch.Tensor, dtype: torch.dtype):
    """The _C module when t is a small contiguous CPU tensor of dtype, else None."""
    if (_native._C is None or t.device.type != "cpu" or t.dtype != dtype
            or t.numel() > _NATIVE_SCAN_MAX or not t.is_contiguous()):
        return None
    return _native._C


def below_inf(t: torch.Tensor) -> bool:
    """Whether every value of float tensor t is < +inf (False for a NaN; True when empty)."""
    lib = _native_scan(t, torch.float32)
    if lib is not None:
        return lib.max_f32(t.data_ptr(), t.numel()) < float("inf")
    # max() propagates NaN and shows +inf: one reduction, no boolean copies.
    return not t.numel() or bool(t.max() < torch.inf)


def min_max(t: torch.Tensor) -> tuple[int, int]:
    """The smallest and largest value of a non-empty integer tensor, as Python ints."""
    lib = _native_scan(t, torch.int64)
    if lib is not None:
        return lib.min_max_i64(t.data_ptr(), t.numel())
    lo, hi = torch.aminmax(t)
    return int(lo), int(hi)


def finite(t: torch.Tensor, name: str) -> None:
    if not (scanning() and t.numel()):
        return
    # min and max propagate NaN and show +-inf: one reduction pass, no boolean copy of t
    # (torch.isfinite(t).all() is ~20x slower on CPU).
    lo, hi = torch.aminmax(t)
    if not bool(torch.isfinite(lo) & torch.isfinite(hi)):
        raise ValueError(f"{name} contains NaN or inf")


def codes_in_range(codes: torch.Tensor, k: int, name: str) -> None:
    """A pass over the codes (skipped when not scanning()); decoders whose kernel checks every
    code itself skip it and raise codes_out_of_range's error on the kernel's status."""
    if scanning() and codes.numel():
        # One pass for both ends (min then max would read the codes twice).
        lo, hi = (int(v) for v in torch.aminmax(codes))
        if lo < 0 or hi >= k:
            raise codes_out_of_range(codes, k, name)


def codes_out_of_range(codes: torch.Tensor, k: int, name: str) -> ValueError:
    """The error for codes known to hold a value outside [0, k)."""
    lo, hi = (int(v) for v in torch.aminmax(codes))
    return ValueError(f"{name} must lie in [0, {k}), found values in [{lo}, {hi}]")


def code_dtype(dtype, k: int) -> torch.dtype:
    """Checks that the requested integer code dtype can hold codes in [0, k)."""
    limits = {torch.uint8: 256, torch.int16: 32768, torch.int32: 2**31, torch.int64: 2**63}
    if dtype not in limits:
        raise TypeError(f"code_dtype must be one of uint8, int16, int32, int64, got {dtype}")
    if k > limits[dtype]:
        raise ValueError(f"code_dtype {dtype} cannot hold codes of K={k} codewords")
    return dtype


class allocating:
    """Around the allocation of an op's outputs: torch's failure to allocate them (a size past
    what int64 bytes can count, or more memory than there is) becomes a MemoryError naming
    what they were for, instead of torch's RuntimeError. A plain class, not a
    contextlib.contextmanager: a generator-based one cost 0.7 us per decode step."""

    __slots__ = ("what",)

    def __init__(self, what: str):
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, error, traceback) -> bool:
        if kind is None or not issubclass(kind, RuntimeError):
            return False
        text = str(error)
        if not any(sign in text for sign in ("allocate", "overflow", "out of memory")):
            return False
        raise MemoryError(f"cannot allocate {self.what}: {text.splitlines()[0]}") from error

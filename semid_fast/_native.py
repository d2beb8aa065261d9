"""Loads the compiled extensions and turns their status codes into Python errors."""

from __future__ import annotations

import os

import torch

try:
    from . import _C
except ImportError as exc:  # a source checkout that was never built
    _C = None
    _C_IMPORT_ERROR = exc
else:
    _C_IMPORT_ERROR = None

try:
    from . import _C_cuda
except ImportError:  # built without nvcc
    _C_cuda = None

try:
    from . import _build_info
except ImportError:
    _build_info = None

# The kernels' status and dtype codes, as the extension modules export them.
CPU_STATUS = {} if _C is None else {
    _C.STATUS_CODE_OUT_OF_RANGE: "a code or item id outside its range was found (value checks "
                                 "off: semid_fast.config.check_values)",
    _C.STATUS_BAD_ARGUMENT: "bad argument (a size or option the kernel cannot take)"}

DTYPE_CODES = {} if _C_cuda is None else {torch.float32: _C_cuda.DTYPE_FLOAT32,
                                          torch.float16: _C_cuda.DTYPE_FLOAT16,
                                          torch.bfloat16: _C_cuda.DTYPE_BFLOAT16}


def cpu():
    """The _C module, or a clear error when the package was not built."""
    if _C is None:
        raise RuntimeError(
            "semid_fast._C is not built; install the package with `pip install .` "
            f"(import error: {_C_IMPORT_ERROR})"
        )
    return _C


_HUGE_PAGE_BYTES = 4 << 20  # at least one whole 2 MiB huge page inside


def empty_output(shape, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """torch.empty for a kernel's output. A large CPU one is advised for transparent huge pages
    before the kernel first touches it (numpy does the same for its large arrays): with 4 KiB
    pages, faulting in a fresh 64 MiB output costs about as much as a kernel that fills it.
    The advice belongs to the pages, not the tensor: where the allocator later reuses them
    (glibc's heap, once its mmap threshold has grown), other allocations get huge pages too."""
    out = torch.empty(shape, dtype=dtype, device=device)
    nbytes = out.numel() * out.element_size()
    if out.device.type == "cpu" and nbytes >= _HUGE_PAGE_BYTES and _C is not None:
        cpu().advise_huge_pages(out.data_ptr(), nbytes)
    return out


def cuda_device_count() -> int:
    return 0 if _C_cuda is None else int(_C_cuda.device_count())


def check_cpu_status(status: int, op: str) -> None:
    """Raises for a CPU kernel's failure status. Every status the kernels define means an input
    that the Python checks let through (value checks off, or a case they do not cover):
    ValueError, as if the check had run. An unknown status is a bug: RuntimeError."""
    if status == 0:
        return
    if status in CPU_STATUS:
        raise ValueError(f"semid_fast.{op} (cpu): {CPU_STATUS[status]}")
    raise RuntimeError(f"semid_fast.{op} (cpu): unknown kernel status {status}")


def check_cuda_status(status: int, op: str) -> None:
    if status != 0:
        raise RuntimeError(f"semid_fast.{op} (cuda): {_C_cuda.error_string(status)}")


def call_cuda(op: str, fn, *args, device: torch.device) -> None:
    """Runs a _C_cuda launcher with `device` current (kernels launch on the current device)
    and the current stream of that device appended, and raises on a CUDA error."""
    with torch.cuda.device(device):
        status = fn(*args, torch.cuda.current_stream(device).cuda_stream)
    check_cuda_status(status, op)


def n_threads() -> int:
    """CPU kernels use as many threads as torch, so comparisons with torch are fair."""
    return torch.get_num_threads()


def _one_thread_after_fork() -> None:
    # GNU OpenMP's thread pool does not survive fork(): in the child of a process that has run
    # a parallel region (ours or torch's, one runtime), the next multi-threaded region waits
    # forever for threads that no longer exist. One thread in the child, as DataLoader
    # workers set anyway; the parent keeps its count.
    torch.set_num_threads(1)


os.register_at_fork(after_in_child=_one_thread_after_fork)

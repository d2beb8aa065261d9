"""The one dispatch rule of DESIGN.md (decision 4), the table of which backend implements
which launcher, and `available_backends()`.

A backend is a package `semid_fast.backends.<backend>` with one module per op family; a
launcher is a function of such a module, and the same launcher name takes the same arguments
in every backend that defines it. Which backend implements what is read from the modules
themselves, so adding a launcher to a backend's module is all it takes to dispatch to it.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os

import torch

from . import _native

BACKENDS = ("reference", "cpu", "cuda", "triton")
_AUTO_ORDER = {"cpu": ("cpu",), "cuda": ("cuda", "triton")}  # the reference comes last anywhere


@torch.compiler.assume_constant_result  # torch.compile takes the answer, not the lookup
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


_MODULES: dict[tuple[str, str], object] = {}


def _module(backend: str, family: str):
    """semid_fast.backends.<backend>.<family>, or None when that backend has no such module.
    A plain dict cache: torch.compile traces its lookup (`implements`, which every dispatch
    asks first, does the import outside the trace)."""
    if (backend, family) not in _MODULES:
        name = f"{__package__}.backends.{backend}.{family}"
        try:
            _MODULES[backend, family] = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            _MODULES[backend, family] = None
    return _MODULES[backend, family]


@torch.compiler.assume_constant_result  # torch.compile takes the answer, not the import
def implements(backend: str, family: str, launcher: str) -> bool:
    """Whether `backend` defines `launcher` for `family` (imports that backend's module, so ask
    only about a backend that is usable: the triton modules import triton)."""
    module = _module(backend, family)
    return module is not None and callable(getattr(module, launcher, None))


def launcher(backend: str, family: str, name: str):
    """The function `name` of backend `backend` for op family `family`."""
    return getattr(_module(backend, family), name)


def refusal(backend: str, family: str, name: str, args: dict | None) -> str | None:
    """Why `backend` cannot take this call's arguments, or None. A backend module states its
    kernels' limits by defining `<name>_refuses(**args) -> str | None` beside the launcher."""
    refuses = getattr(_module(backend, family), f"{name}_refuses", None)
    return None if refuses is None or args is None else refuses(**args)


# Under torch.compile the choice is made at trace time (it imports backend modules, which
# dynamo cannot trace) and kept as a constant; the arguments it depends on are guarded.
@torch.compiler.assume_constant_result
def choose(backend: str, device: torch.device, family: str, name: str, *, op: str | None = None,
           args: dict | None = None) -> str:
    """The backend that runs launcher `name` of `family` on `device`.

    'auto' takes the first usable backend of the device's order that implements the launcher
    and does not refuse `args` (the call's size arguments, see `refusal`), else the reference.
    A named backend is checked, and a clear error names `op` (the public name; defaults to
    `name`) and the reason it cannot run. Answers are cached: decode steps ask thousands of
    times."""
    op = op or name
    if not isinstance(backend, str):
        raise TypeError(f"{op}: backend must be a str, got {type(backend).__name__}")
    return _chosen(backend, device, family, name, op, tuple(sorted((args or {}).items())))


@functools.lru_cache(maxsize=1024)
def _chosen(backend: str, device: torch.device, family: str, name: str, op: str,
            args: tuple) -> str:
    args = dict(args) if args else None
    if backend == "auto":
        for candidate in _AUTO_ORDER.get(device.type, ()):
            if (_usable(candidate, device) is None and implements(candidate, family, name)
                    and refusal(candidate, family, name, args) is None):
                return candidate
        return "reference"
    if backend not in BACKENDS:
        raise ValueError(f"{op}: backend must be 'auto' or one of {BACKENDS}, got {backend!r}")
    reason = _usable(backend, device)
    if reason is not None:
        raise RuntimeError(f"{op}: backend {backend!r} is unavailable: {reason}")
    if not implements(backend, family, name):
        raise ValueError(f"{op}: backend {backend!r} does not implement this op; use one of "
                         f"{tuple(b for b in BACKENDS if _implements_if_importable(b, family, name))}")
    reason = refusal(backend, family, name, args)
    if reason is not None:
        raise ValueError(f"{op}: backend {backend!r} cannot take this call: {reason}")
    return backend


@torch.compiler.assume_constant_result
def own_or_reference(backend: str, family: str, name: str) -> str:
    """`backend` when it defines launcher `name`, else the reference, whose torch ops run on any
    device: for the steps of an op that a backend has no kernel for (e.g. a GPU backend
    without a backward kernel)."""
    return backend if implements(backend, family, name) else "reference"


def _implements_if_importable(backend: str, family: str, name: str) -> bool:
    if backend == "triton" and not _triton_importable():
        return False
    if backend == "cuda" and _native._C_cuda is None:
        return False
    return implements(backend, family, name)


def table() -> dict[str, dict[str, tuple[str, ...]]]:
    """{family: {launcher: backends that implement it}}, read from the backend modules built
    and importable here (for docs and for tests that every backend is exercised)."""
    out: dict[str, dict[str, list[str]]] = {}
    for backend in BACKENDS:
        if backend == "triton" and not _triton_importable():
            continue
        package = importlib.import_module(f"{__package__}.backends.{backend}")
        for family in getattr(package, "FAMILIES", ()):
            module = _module(backend, family)
            for name in getattr(module, "__all__", ()):
                out.setdefault(family, {}).setdefault(name, []).append(backend)
    return {f: {n: tuple(b) for n, b in ops.items()} for f, ops in out.items()}

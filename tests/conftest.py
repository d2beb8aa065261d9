"""Test set-up: Triton runs under its CPU interpreter when no CUDA device exists.

TRITON_INTERPRET must be set before anything imports triton, so it is set here, at
collection time, before the test modules import semid_fast.

torch.compile tests get a fresh Inductor cache: its key does not cover the Python autograd
formula of a custom op, so a graph cached by an older semid_fast (another op signature) would
be replayed.
"""

import os
import tempfile
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="semid_fast_inductor_"))

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def shared_data() -> Path:
    """The real-data folder beside the repository (skips the test when it is absent)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (the ../shared/data folder)")
    return SHARED_DATA


# ---------------------------------------------------------------------------------------------
# Helpers of the quantize-family tests (test_quantize, test_sinkhorn, test_kmeans), imported
# as `from tests.conftest import ...`.
# ---------------------------------------------------------------------------------------------


def cpu_backends(reference: bool = False) -> list[str]:
    """The backends usable on CPU tensors here, the reference first when asked for."""
    import semid_fast

    return [b for b in semid_fast.available_backends("cpu") if reference or b != "reference"]


def backend_pairs(reference: bool = False) -> list:
    """pytest params (device, backend): every CPU backend usable here (the reference too when
    asked for), then cuda and triton on a GPU (marked gpu)."""
    out = [pytest.param("cpu", b, id=f"cpu-{b}") for b in cpu_backends(reference)]
    for b in ("cuda", "triton"):
        out.append(pytest.param("cuda", b, id=f"cuda-{b}", marks=pytest.mark.gpu))
    return out


def skip_unavailable(device: str, backend: str) -> None:
    import semid_fast

    if backend not in semid_fast.available_backends(device):
        pytest.skip(f"backend {backend} is not available on {device} in this build")


def rq_inputs(n: int, d: int, k: int, levels: int, device: str = "cpu", *, seed: int,
              dtype: torch.dtype = torch.float32):
    """x (N, D) and codebooks (L, K, D) scaled like the residuals of each level, as trained RQ
    codebooks are."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    scale = torch.tensor([0.7 ** level for level in range(levels)])[:, None, None]
    codebooks = torch.randn(levels, k, d, generator=g) * scale
    return x.to(device=device, dtype=dtype), codebooks.to(device)

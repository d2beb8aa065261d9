"""The build contains what `_build_info` claims, and nothing it denies."""

import importlib
import shutil

import pytest
import torch

import semid_fast
from semid_fast import _build_info, _native


def test_cpu_extension_is_built_and_loads():
    assert _build_info.CPU_BUILT
    assert _native._C is not None
    assert _native._C.isa() in _build_info.CPU_ISAS
    assert "cpu" in semid_fast.available_backends("cpu")


def test_cuda_extension_matches_build_info():
    if _build_info.CUDA_BUILT:
        module = importlib.import_module("semid_fast._C_cuda")
        assert _build_info.CUDA_ARCHS, "a CUDA build must name its architectures"
        assert all(a.isdigit() for a in _build_info.CUDA_ARCHS)
        # Without a GPU the module still imports and reports no device.
        assert module.device_count() == torch.cuda.device_count()
        assert module.runtime_version() > 0
    else:
        with pytest.raises(ImportError):
            importlib.import_module("semid_fast._C_cuda")
        assert _build_info.CUDA_ARCHS == ()


def test_cuda_is_built_where_nvcc_exists():
    """AUTO must build _C_cuda on a machine with nvcc (CI has one and no GPU)."""
    if _build_info.CUDA_REQUESTED == "OFF" or shutil.which("nvcc") is None:
        pytest.skip("this build was configured without CUDA or nvcc is absent")
    assert _build_info.CUDA_BUILT


def test_available_backends_follow_the_device():
    backends = semid_fast.available_backends()
    assert backends[0] == "reference"
    assert ("cuda" in semid_fast.available_backends("cuda")) == (
        _build_info.CUDA_BUILT and torch.cuda.is_available()
    )
    with pytest.raises(RuntimeError, match="cuda"):
        semid_fast.rq_encode(torch.randn(3, 4), torch.randn(1, 2, 4), backend="cuda")

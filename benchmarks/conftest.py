"""pytest set-up for the benchmark files (not part of the unit tests: `pytest` runs tests/).

Run them with ``pytest benchmarks/ --benchmark-only``. Options:
``--bench-sizes quick|default`` (default quick: the suite in seconds) and
``--bench-device cpu|cuda`` (default: cuda when present, else cpu). Each bench_<family>.py
sets ``FAMILY``; its cases are the very cases of `semid-fast bench`.
"""

import importlib

import pytest
import torch

from semid_fast.bench import FAMILIES, MIN_TIME_S, harness


def pytest_addoption(parser):
    group = parser.getgroup("semid_fast benchmarks")
    group.addoption("--bench-sizes", choices=("quick", "default"), default="quick",
                    help="case sizes of `semid-fast bench` (--quick) or its default sizes")
    group.addoption("--bench-device", choices=("cpu", "cuda"), default=None,
                    help="device of the cases (default: cuda when present, else cpu)")


def pytest_collect_file(file_path, parent):
    """Collects bench_*.py, which pytest's default test_*.py pattern would pass over."""
    if (file_path.suffix == ".py" and file_path.name.startswith("bench_")
            and not parent.session.isinitpath(file_path)):  # a named file is collected anyway
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def _device(config) -> str:
    device = config.getoption("--bench-device") or harness.default_device()
    if device == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("--bench-device cuda: no CUDA device is available")
    return device


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        family = metafunc.module.FAMILY
        quick = metafunc.config.getoption("--bench-sizes") == "quick"
        cases = importlib.import_module(FAMILIES[family]).cases(_device(metafunc.config), quick)
        metafunc.parametrize("case", cases, ids=[c.id for c in cases])


@pytest.fixture
def min_time_s(request) -> float:
    return MIN_TIME_S[request.config.getoption("--bench-sizes") == "quick"]

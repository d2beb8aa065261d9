"""pytest-benchmark timings of the quantize family: the very cases of `semid-fast bench`
(``semid_fast.bench.quantize``), timed by pytest-benchmark's clock."""

from semid_fast.bench import harness

FAMILY = "quantize"


def test_quantize(benchmark, case, min_time_s):
    harness.pytest_benchmark_case(benchmark, case, min_time_s)

"""pytest-benchmark timings of the gumbel family: the very cases of `semid-fast bench`
(``semid_fast.bench.gumbel``), timed by pytest-benchmark's clock."""

from semid_fast.bench import harness

FAMILY = "gumbel"


def test_gumbel(benchmark, case, min_time_s):
    harness.pytest_benchmark_case(benchmark, case, min_time_s)

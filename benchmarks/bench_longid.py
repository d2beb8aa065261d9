"""pytest-benchmark timings of the longid family: the very cases of `semid-fast bench`
(``semid_fast.bench.longid``), timed by pytest-benchmark's clock."""

from semid_fast.bench import harness

FAMILY = "longid"


def test_longid(benchmark, case, min_time_s):
    harness.pytest_benchmark_case(benchmark, case, min_time_s)

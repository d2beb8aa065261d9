"""pytest-benchmark timings of the trie family: the very cases of `semid-fast bench`
(``semid_fast.bench.trie``), timed by pytest-benchmark's clock."""

from semid_fast.bench import harness

FAMILY = "trie"


def test_trie(benchmark, case, min_time_s):
    harness.pytest_benchmark_case(benchmark, case, min_time_s)

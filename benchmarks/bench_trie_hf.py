"""pytest-benchmark timings of constrained generate (transformers prefix function vs
SemanticIDLogitsProcessor): the very cases of `semid-fast bench` (``semid_fast.bench.trie_hf``),
timed by pytest-benchmark's clock."""

from semid_fast.bench import harness

FAMILY = "trie_hf"


def test_trie_hf(benchmark, case, target_s):
    harness.pytest_benchmark_case(benchmark, case, target_s)

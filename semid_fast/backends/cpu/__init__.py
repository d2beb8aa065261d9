"""The C++ backend: launchers over semid_fast._C (OpenMP + SIMD kernels on raw pointers)."""

FAMILIES = ("quantize", "gumbel", "trie", "longid")

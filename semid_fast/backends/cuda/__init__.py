"""The CUDA backend: launchers over semid_fast._C_cuda (kernels on the current stream)."""

FAMILIES = ("quantize", "gumbel", "trie", "longid")

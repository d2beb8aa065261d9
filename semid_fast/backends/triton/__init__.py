"""The Triton backend: kernels and their launchers; imported only when the triton backend runs."""

FAMILIES = ("quantize", "gumbel", "longid")

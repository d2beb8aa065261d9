"""semid_fast: fast kernels for semantic-ID generative recommendation.

Families: ``quantize`` (RQ/PQ/OPQ encode, decode, fused RQ-VAE quantization step).
Every op takes ``backend="auto"`` (or "reference", "cpu", "cuda", "triton").
"""

from ._backends import available_backends
from ._checks import config
from .ops.quantize import pq_decode, pq_encode, rq_decode, rq_encode, rq_quantize

__version__ = "0.1.0"

__all__ = [
    "available_backends",
    "config",
    "pq_decode",
    "pq_encode",
    "rq_decode",
    "rq_encode",
    "rq_quantize",
]

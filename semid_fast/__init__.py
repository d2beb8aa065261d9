"""semid_fast: fast kernels for semantic-ID generative recommendation.

Families: ``quantize`` (RQ/PQ/OPQ encode, decode, fused RQ-VAE quantization step) and
``longid`` (holistic scoring with fused top-k, item graphs, graph-constrained decoding);
``schedules`` holds the temperature/noise decays of differentiable semantic-ID training.
Every op takes ``backend="auto"`` (or "reference", "cpu", "cuda", "triton").
"""

from . import interop, schedules
from ._backends import available_backends
from ._checks import config
from .ops.longid import ItemGraph, graph_decode, holistic_topk
from .ops.quantize import pq_decode, pq_encode, rq_decode, rq_encode, rq_quantize

__version__ = "0.1.0"

__all__ = [
    "ItemGraph",
    "available_backends",
    "config",
    "graph_decode",
    "holistic_topk",
    "interop",
    "pq_decode",
    "pq_encode",
    "rq_decode",
    "rq_encode",
    "rq_quantize",
    "schedules",
]

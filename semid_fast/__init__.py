"""semid_fast: fast kernels for semantic-ID generative recommendation.

Families: ``quantize`` (RQ/PQ/OPQ encode, decode, fused RQ-VAE quantization step) and
``longid`` (holistic scoring with fused top-k, item graphs, graph-constrained decoding) and
``gumbel`` (counter-based Gumbel-softmax, Gumbel-top-k sampling, DIGER's Gumbel quantization).
Every op takes ``backend="auto"`` (or "reference", "cpu", "cuda", "triton").
"""

from . import interop
from ._backends import available_backends
from ._checks import config
from .ops.gumbel import gumbel_noise, gumbel_quantize, gumbel_softmax, gumbel_topk
from .ops.longid import ItemGraph, graph_decode, holistic_topk
from .ops.quantize import pq_decode, pq_encode, rq_decode, rq_encode, rq_quantize

__version__ = "0.1.0"

__all__ = [
    "ItemGraph",
    "available_backends",
    "config",
    "graph_decode",
    "gumbel_noise",
    "gumbel_quantize",
    "gumbel_softmax",
    "gumbel_topk",
    "holistic_topk",
    "interop",
    "pq_decode",
    "pq_encode",
    "rq_decode",
    "rq_encode",
    "rq_quantize",
]

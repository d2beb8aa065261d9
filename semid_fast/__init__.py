"""semid_fast: fast kernels for semantic-ID generative recommendation.

Families: ``quantize`` (RQ/PQ/OPQ encode, decode, fused RQ-VAE quantization step, k-means
and RQ codebook initialisation ``kmeans``/``rq_init``),
``gumbel`` (counter-based Gumbel-softmax, Gumbel-top-k sampling, DIGER's Gumbel quantization),
``trie`` (semantic-ID tries on the device, constrained beam step and beam search) and
``longid`` (holistic scoring with fused top-k, item graphs, graph-constrained decoding).
``sid_files`` reads the semantic-ID files of LC-Rec/LETTER/MiniOneRec and MVIGER;
``semid_fast.hf`` (needs transformers, imported on demand) has
``SemanticIDLogitsProcessor``, the drop-in for ``generate(prefix_allowed_tokens_fn=...)``;
``schedules`` holds the temperature/noise decays of differentiable semantic-ID training.
Every op takes ``backend="auto"`` (or "reference", "cpu", "cuda", "triton").
"""

from . import interop, schedules, sid_files
from ._backends import available_backends
from ._checks import config
from .ops.gumbel import gumbel_noise, gumbel_quantize, gumbel_softmax, gumbel_topk
from .ops.kmeans import KMeansResult, kmeans, rq_init
from .ops.longid import ItemGraph, PackedCodes, graph_decode, holistic_topk
from .ops.quantize import pq_decode, pq_encode, rq_decode, rq_encode, rq_quantize
from .ops.trie import (SemanticIDTrie, constrained_beam_search, constrained_beam_step,
                       constrained_pool_update, dedup_suffix)

__version__ = "0.1.0"

__all__ = [
    "ItemGraph",
    "KMeansResult",
    "PackedCodes",
    "SemanticIDTrie",
    "available_backends",
    "config",
    "constrained_beam_search",
    "constrained_beam_step",
    "constrained_pool_update",
    "dedup_suffix",
    "graph_decode",
    "gumbel_noise",
    "gumbel_quantize",
    "gumbel_softmax",
    "gumbel_topk",
    "holistic_topk",
    "interop",
    "kmeans",
    "sid_files",
    "pq_decode",
    "pq_encode",
    "rq_decode",
    "rq_encode",
    "rq_init",
    "rq_quantize",
    "schedules",
]

"""Long semantic IDs (RPG, ACERec): holistic scoring with fused top-k, item graphs, and
RPG's graph-constrained decoding.

A model predicts all M codes of the next item at once as per-position log-probabilities
``token_scores`` (B, M, K); an item's holistic score is the sum (or mean) over m of
``token_scores[b, m, codes[n, m]]``. The kernels score items straight from their codes and
keep a running top-k, so no (B, N) score matrix exists for a whole catalog.
"""

from __future__ import annotations

import weakref
from pathlib import Path

import numpy as np
import torch

from .. import _backends, _checks, _keys
from ..reference.longid import token_similarity

__all__ = ["holistic_topk", "PackedCodes", "ItemGraph", "graph_decode"]

_FAMILY = "longid"


def _holistic(token_scores: torch.Tensor, codes: torch.Tensor, k: int, mean: bool,
              candidates: torch.Tensor | None, item_mask: torch.Tensor | None,
              backend: str, packed: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    b = token_scores.shape[0]
    with _checks.allocating(f"the ({b}, k={k}) top-k outputs"):
        scores = token_scores.new_empty((b, k), dtype=torch.float32)
        ids = token_scores.new_empty((b, k), dtype=torch.long)
    _backends.launcher(backend, _FAMILY, "holistic_topk")(token_scores, codes, k, mean,
                                                          candidates, item_mask, scores, ids,
                                                          packed)
    return scores, ids


@torch.library.custom_op("semid_fast::holistic_topk", mutates_args=())
def _holistic_topk_op(token_scores: torch.Tensor, codes: torch.Tensor, k: int, mean: bool,
                      candidates: torch.Tensor | None, item_mask: torch.Tensor | None,
                      backend: str, packed: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    return _holistic(token_scores, codes, k, mean, candidates, item_mask, backend, packed)


@_holistic_topk_op.register_fake
def _(token_scores, codes, k, mean, candidates, item_mask, backend, packed):
    b = token_scores.shape[0]
    return (token_scores.new_empty((b, k), dtype=torch.float32),
            token_scores.new_empty((b, k), dtype=torch.long))


def _topk(token_scores, codes, k, mean, candidates, item_mask, backend, packed=None):
    """The custom op under torch.compile (and where autograd would see it); else its body
    itself: in eager the op's dispatch costs about as much as a candidates step of
    graph_decode on the CPU (benchmarks/graph_decode_overhead.py)."""
    if torch.compiler.is_compiling() or token_scores.requires_grad:
        return _holistic_topk_op(token_scores, codes, k, mean, candidates, item_mask, backend,
                                 packed)
    return _holistic(token_scores, codes, k, mean, candidates, item_mask, backend, packed)


class PackedCodes:
    """A catalog's uint8 codes with a second copy in the layout of the CPU's bounded holistic
    scan, made once: ``holistic_topk`` over it skips the transpose each call does otherwise
    (the larger part of a call at B=1; see benchmarks/RESULTS.md).

    Args:
        codes: (N, M) uint8 item codes on the CPU. Do not modify them afterwards: the copy
            would not follow (an in-place torch write is caught, a write through numpy is not).

    Attributes:
        codes: the tensor given, for everything but the catalog scan.
        packed: uint8 tensor of floor(N / 512) * 512 * M bytes, or None where the CPU has no
            bounded scan (no AVX-512 VBMI, an M other than 16, 32, 64, 128, 192 or 256); then
            holistic_topk runs as with ``codes`` alone.
    """

    def __init__(self, codes: torch.Tensor):
        _checks.tensor(codes, "codes", 2, (torch.uint8,), "(N, M)")
        if codes.device.type != "cpu":
            raise ValueError(f"PackedCodes: codes must be on the CPU, got {codes.device}")
        self.codes = codes
        self._version = codes._version
        cpu = "cpu" in _backends.available_backends("cpu")
        self.packed = _backends.launcher("cpu", _FAMILY, "pack_codes")(codes) if cpu else None

    def _for_scan(self) -> torch.Tensor | None:
        if self.codes._version != self._version:
            raise ValueError("PackedCodes: the codes were written to after packing; make a "
                             "new PackedCodes from them")
        return self.packed


def _check_scores_codes(op, token_scores, codes):
    _checks.tensor(token_scores, "token_scores", 3, _checks.FLOAT_DTYPES, "(B, M, K)")
    _checks.tensor(codes, "codes", 2, _checks.INT_DTYPES, "(N, M)")
    device = _checks.same_device(op, token_scores=token_scores, codes=codes)
    b, m, k = token_scores.shape
    if codes.shape[1] != m:
        raise ValueError(f"{op}: token_scores have M={m} positions but codes have "
                         f"{codes.shape[1]} columns")
    if m == 0 or k == 0:
        raise ValueError(f"{op}: token_scores must have M > 0 and K > 0, got {tuple(token_scores.shape)}")
    if not (codes.dtype == torch.uint8 and k >= 256):  # uint8 codes always fit K >= 256
        _checks.codes_in_range(codes, k, "codes")
    if _checks.scanning() and token_scores.numel():
        # -inf is a legitimate log-probability (an impossible token); NaN and +inf are not.
        # max() propagates NaN and shows +inf: one reduction and no boolean copies (a fifth
        # of isnan | isposinf, which cost more than the whole scan of a 1k-item catalog).
        if not bool(token_scores.max() < torch.inf):
            raise ValueError("token_scores contains NaN or +inf")
    return device


def holistic_topk(token_scores: torch.Tensor, codes: torch.Tensor | PackedCodes, k: int, *,
                  reduce: str = "sum", candidates: torch.Tensor | None = None,
                  item_mask: torch.Tensor | None = None, backend: str = "auto"):
    """Top-k catalog items by holistic score, scoring and selection fused.

    Args:
        token_scores: (B, M, K) float32/float16/bfloat16 per-position scores (log-probs).
        codes: (N, M) uint8 (K <= 256), int16, int32 or int64 item codes; uint8 is fastest,
            and a PackedCodes of them faster still on the CPU for repeated calls.
        k: results per query; k > N pads with score -inf and id -1.
        reduce: "sum" or "mean" over the M positions.
        candidates: optional (B, C) int64 item ids to score instead of the whole catalog
            (-1 = padding; a repeated id counts once).
        item_mask: optional (N,) or (B, N) bool, True = exclude (seen, out of stock).

    Returns:
        (scores (B, k) float32, item ids (B, k) int64), best first, ties toward the smaller id.
    """
    packed = None
    if isinstance(codes, PackedCodes):
        codes, packed = codes.codes, codes._for_scan()
    device = _check_scores_codes("holistic_topk", token_scores, codes)
    _checks.positive_int(k, "k")
    if k >= 2**63:
        raise ValueError(f"k must be < 2**63, got {k}")
    if reduce not in ("sum", "mean"):
        raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")
    b, n = token_scores.shape[0], codes.shape[0]
    if candidates is not None:
        _checks.tensor(candidates, "candidates", 2, (torch.int32, torch.int64), "(B, C)")
        _checks.same_device("holistic_topk", candidates=candidates, codes=codes)
        if candidates.shape[0] != b:
            raise ValueError(f"candidates must have B={b} rows, got {candidates.shape[0]}")
        if _checks.scanning() and candidates.numel():
            lo, hi = int(candidates.min()), int(candidates.max())
            if lo < -1 or hi >= n:
                raise ValueError(f"candidates must lie in [-1, {n}), found [{lo}, {hi}]")
    if item_mask is not None:
        if not isinstance(item_mask, torch.Tensor) or item_mask.dtype != torch.bool:
            raise TypeError("item_mask must be a bool tensor of shape (N,) or (B, N)")
        _checks.same_device("holistic_topk", item_mask=item_mask, codes=codes)
        if item_mask.shape not in ((n,), (b, n)):
            raise ValueError(f"item_mask must have shape ({n},) or ({b}, {n}), got "
                             f"{tuple(item_mask.shape)}")
    if n >= _keys.MAX_ITEMS:
        raise ValueError(f"holistic_topk: at most 2**32 - 1 items, got N={n}")
    name = _backends.choose(backend, device, _FAMILY, "holistic_topk", op="holistic_topk",
                            args={"k": k})
    return _topk(token_scores, codes, k, reduce == "mean", candidates, item_mask, name, packed)


class ItemGraph:
    """Each item's ``n_edges`` most similar items, for RPG's graph-constrained decoding.

    ``neighbors`` is (N, n_edges) int64, most similar first, ties toward the smaller id; an
    item's own id is among its neighbours (as in RPG).
    """

    def __init__(self, neighbors: torch.Tensor):
        _checks.tensor(neighbors, "neighbors", 2, (torch.int64,), "(N, n_edges)")
        self.neighbors = neighbors
        self._valid = None  # weak reference and version of neighbours found in [0, N)

    def _checked(self) -> bool:
        valid = self._valid
        return (valid is not None and valid[0]() is self.neighbors
                and valid[1] == self.neighbors._version)  # in-place writes bump the version

    def _mark_checked(self) -> None:
        self._valid = (weakref.ref(self.neighbors), self.neighbors._version)

    def _check_ids(self) -> None:
        """graph_decode's check that the ids lie in [0, N): a scan of the whole graph (on a GPU
        also a host sync) that costs far more than a decode, so once per state of the tensor."""
        if _checks.scanning() and not self._checked():
            _checks.codes_in_range(self.neighbors, self.num_items, "graph.neighbors")
            self._mark_checked()

    @property
    def num_items(self) -> int:
        return self.neighbors.shape[0]

    @property
    def n_edges(self) -> int:
        return self.neighbors.shape[1]

    @classmethod
    def build(cls, codes: torch.Tensor, *, n_edges: int,
              token_embeddings: torch.Tensor | None = None, block_size: int = 256,
              backend: str = "auto") -> "ItemGraph":
        """Exact graph in O(N * n_edges) memory, built ``block_size`` items at a time.

        Args:
            codes: (N, M) integer item codes in [0, K).
            n_edges: neighbours per item, 1 <= n_edges < N.
            token_embeddings: optional (M, K, d) float: RPG's similarity, the mean over m of
                (1 + cos(E[m, codes[i, m]], E[m, codes[j, m]])) / 2. Without it, the number
                of equal code positions.
        Each block of items is a batch of holistic queries whose tables are rows of the
        per-position token-similarity tables, so the build reuses the holistic kernel.
        """
        _checks.tensor(codes, "codes", 2, _checks.INT_DTYPES, "(N, M)")
        n, m = codes.shape
        if m == 0:
            raise ValueError(f"ItemGraph.build: codes must have M >= 1 columns, "
                             f"got {tuple(codes.shape)}")
        _checks.positive_int(n_edges, "n_edges")
        if n_edges >= n:
            raise ValueError(f"n_edges must be < N={n}, got {n_edges}")
        _checks.positive_int(block_size, "block_size")
        if token_embeddings is not None:
            _checks.tensor(token_embeddings, "token_embeddings", 3, _checks.FLOAT_DTYPES, "(M, K, d)")
            if token_embeddings.shape[0] != m:
                raise ValueError(f"token_embeddings must have M={m} codebooks, got "
                                 f"{token_embeddings.shape[0]}")
            if 0 in token_embeddings.shape[1:]:
                raise ValueError(f"token_embeddings must have K >= 1 and d >= 1, got "
                                 f"{tuple(token_embeddings.shape)}")
            _checks.finite(token_embeddings, "token_embeddings")
            k = token_embeddings.shape[1]
            table = token_similarity(token_embeddings.to(codes.device))
        else:
            k = None
            table = None
        # Checked even with value checks off: the build indexes tables (or one-hots) by the
        # codes, and one pass over them is small beside the build.
        if codes.numel():
            lo, hi = (int(v) for v in torch.aminmax(codes))
            if lo < 0 or (k is not None and hi >= k):
                raise ValueError(f"ItemGraph.build: codes must lie in [0, "
                                 f"{k if k is not None else 'K'}), found values in [{lo}, {hi}]")
            k = hi + 1 if k is None else k
        k = 1 if k is None else k
        if n >= _keys.MAX_ITEMS:
            raise ValueError(f"ItemGraph.build: at most 2**32 - 1 items, got N={n}")
        # Checked once here; every block then calls the op directly (no per-block scans).
        name = _backends.choose(backend, codes.device, _FAMILY, "holistic_topk", op="ItemGraph.build",
                            args={"k": n_edges})
        positions = torch.arange(m, device=codes.device)
        blocks = []
        for start in range(0, n, block_size):
            block = codes[start:start + block_size].long()
            if table is None:
                queries = torch.nn.functional.one_hot(block, k).float()
                reduce = "sum"
            else:
                queries = table[positions[None, :], block]  # (Q, M, K)
                reduce = "mean"
            blocks.append(_topk(queries, codes, n_edges, reduce == "mean", None, None, name)[1])
        graph = cls(torch.cat(blocks))
        graph._mark_checked()  # ids of real items by construction
        return graph

    def to(self, device) -> "ItemGraph":
        moved = ItemGraph(self.neighbors.to(device))
        if self._checked():
            moved._mark_checked()
        return moved

    def save(self, path) -> None:
        """Writes the (N, n_edges) neighbours to ``path`` (torch.save of tensors only)."""
        torch.save({"neighbors": self.neighbors.cpu()}, Path(path))

    @classmethod
    def load(cls, path, map_location="cpu") -> "ItemGraph":
        """A graph written by :meth:`save`. The file is read with ``weights_only=True`` (no
        code runs from it); a damaged or foreign file raises ValueError naming it. The ids
        are checked against N by :func:`graph_decode` (value checks on)."""
        with open(Path(path), "rb") as f:
            try:
                data = torch.load(f, map_location=map_location, weights_only=True)
            except Exception as e:  # torch reports a damaged archive by many exception types
                raise ValueError(f"{path} is not a saved ItemGraph "
                                 f"({type(e).__name__}: {str(e)[:200]})") from None
        neighbors = data.get("neighbors") if isinstance(data, dict) else None
        if not isinstance(neighbors, torch.Tensor) or neighbors.dtype != torch.int64 or \
                neighbors.dim() != 2:
            raise ValueError(f"{path} is not a saved ItemGraph (expected a dict with an "
                             "(N, n_edges) int64 'neighbors' tensor)")
        return cls(neighbors)


def _check_walk(n: int, beam_width, steps, k) -> None:
    """The sizes of a graph walk over N items (also the sharded walk's)."""
    _checks.positive_int(beam_width, "beam_width")
    _checks.positive_int(steps, "steps")
    _checks.positive_int(k, "k")
    if beam_width > n:
        raise ValueError(f"beam_width must be <= N={n}, got {beam_width}")
    if k > beam_width:
        raise ValueError(f"k must be <= beam_width={beam_width}, got {k}")


def graph_decode(token_scores: torch.Tensor, codes: torch.Tensor, graph: ItemGraph, *,
                 beam_width: int, steps: int, k: int, reduce: str = "sum",
                 seed: int | None = None, init: torch.Tensor | str | None = None,
                 return_visited: bool = False, backend: str = "auto"):
    """RPG's graph-constrained decoding for a batch of queries.

    Start from ``beam_width`` items per query; then ``steps`` times score the beam and all
    its neighbours (duplicates once) with the holistic kernel and keep the best
    ``beam_width``. Every step has fixed shapes and no host sync.

    Args:
        token_scores: (B, M, K) float per-position scores (RPG: log-probabilities, with
            ``reduce="mean"``).
        codes: (N, M) integer item codes.
        graph: the catalog's :class:`ItemGraph`.
        beam_width, steps, k: beam size, propagation steps, results returned (k <= beam_width).
        reduce: "sum" or "mean" over the M positions.
        seed: seeds the start draw (None: torch's generator / a fresh seed, see ``init``).
        init: the start, one of

            * None or ``"distinct"``: ``beam_width`` distinct random items per query, drawn
              on the host with numpy's ``default_rng(seed)`` (seed None: a seed drawn from
              torch's CPU generator);
            * ``"rpg"``: uniform with replacement, as facebookresearch/RPG_KDD2025's
              ``graph_propagation`` draws it: ``torch.randint(0, N, (B, beam_width))`` on
              token_scores' device, from ``torch.Generator(device).manual_seed(seed)``, or
              from torch's default generator of that device when ``seed`` is None. RPG calls
              ``torch.randint(1, N + 1, ...)`` on 1-based ids; torch maps both ranges from
              the same random words, so after ``torch.manual_seed(s)`` RPG's start minus 1
              is exactly the start drawn here with ``seed=s`` (or with ``seed=None`` from the
              same default-generator state). A repeated item is scored once (RPG's visited
              set and candidate set count it once too);
            * a (B, beam_width) int32/int64 tensor of item ids.
        return_visited: also return how many distinct items each query scored over the
            whole walk (RPG's ``n_visited_items``: the start and every neighbour reached).

    Returns:
        (scores (B, k) float32, item ids (B, k) int64) sorted like :func:`holistic_topk`, and
        with ``return_visited`` also (B,) int64 visited counts.

    RPG scores only the beam's neighbours and keeps its top-k with ``torch.topk``; this scores
    the beam too (the same set whenever every item is among its own neighbours, as in RPG's
    and :meth:`ItemGraph.build`'s graphs for items with distinct codes) and breaks ties
    toward the smaller item id.
    """
    device = _check_scores_codes("graph_decode", token_scores, codes)
    if not isinstance(graph, ItemGraph):
        raise TypeError(f"graph must be an ItemGraph, got {type(graph).__name__}")
    b, n = token_scores.shape[0], codes.shape[0]
    if graph.num_items != n:
        raise ValueError(f"graph has {graph.num_items} items but codes have N={n}")
    _check_walk(n, beam_width, steps, k)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
    if seed is not None and not 0 <= seed < 2**63:
        raise ValueError(f"seed must be in [0, 2**63), got {seed}")
    if init is None or isinstance(init, str):
        if init not in (None, "distinct", "rpg"):
            raise ValueError(f"init must be 'distinct', 'rpg', None or a tensor, got {init!r}")
        if init == "rpg":
            gen = None if seed is None else torch.Generator(device).manual_seed(seed)
            init = torch.randint(0, n, (b, beam_width), generator=gen, device=device)
        else:
            if seed is None:
                seed = int(torch.randint(0, 2**62, (1,)))
            rng = np.random.default_rng(seed)
            init = torch.from_numpy(np.stack([rng.choice(n, beam_width, replace=False)
                                              for _ in range(b)]).astype(np.int64))
    else:
        _checks.tensor(init, "init", 2, (torch.int32, torch.int64), "(B, beam_width)")
        if tuple(init.shape) != (b, beam_width):
            raise ValueError(f"init must have shape ({b}, {beam_width}), got {tuple(init.shape)}")
        _checks.codes_in_range(init, n, "init")
    if reduce not in ("sum", "mean"):
        raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")
    name = _backends.choose(backend, device, _FAMILY, "holistic_topk", op="graph_decode",
                            args={"k": beam_width})
    beam = init.long().to(device)
    graph._check_ids()
    neighbors = graph.neighbors.to(device)
    scored = []
    scores = None
    # Inputs were checked once above; each step runs the top-k directly (no per-step scans,
    # so no host sync inside the loop).
    for _ in range(steps):
        # A beam slot can be empty (-1) when init repeats items: it has no neighbours.
        around = torch.where(beam[..., None] >= 0, neighbors[beam.clamp_min(0)], -1)
        candidates = torch.cat([beam, around.reshape(b, -1)], dim=1)
        if return_visited:
            scored.append(candidates)
        scores, beam = _topk(token_scores, codes, beam_width, reduce == "mean", candidates,
                             None, name)
    out = (scores[:, :k], beam[:, :k])
    if not return_visited:
        return out
    # Every item the walk scored is in some step's candidates (the start in the first).
    return (*out, _distinct_items(scored))


def _distinct_items(scored: list[torch.Tensor]) -> torch.Tensor:
    """(B,) int64: how many distinct item ids (>= 0) the (B, C_i) candidate lists hold."""
    ordered = torch.cat(scored, dim=1).sort(dim=1).values
    first = ordered >= 0
    first[:, 1:] &= ordered[:, 1:] != ordered[:, :-1]
    return first.sum(1)

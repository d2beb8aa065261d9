"""Catalog sharding and training-state sync on ``torch.distributed``.

The caller initialises the process group (``torch.distributed.init_process_group``, gloo on
CPU, NCCL on GPUs), as with DDP, and should give it a ``timeout``: a collective that a peer
never joins then fails after that time instead of hanging. Every collective here is wrapped so
that a failure (a peer raised and exited, died, or did not join in time) raises
:class:`CollectiveError` on every rank still waiting, naming the call and the rank.

Three uses:

- **Catalog sharding** (:class:`ShardedCatalog`): rank r holds the contiguous items
  ``[offset_r, offset_r + N_r)`` of an (N, M) long-ID catalog. :func:`sharded_holistic_topk`
  scores the shard with :func:`semid_fast.holistic_topk` and merges the (B, k) partials after
  one collective; :func:`sharded_graph_decode` runs RPG's graph decoding with the item graph
  sharded the same way. Results equal the single-process ops on the whole catalog: the same
  ids, scores equal bit for bit (an item's score does not depend on which rank computes it),
  ties toward the smaller global id.
- **Training state**: :func:`kmeans` / :func:`rq_init` fit on row shards (two ranks with half
  the rows each give the centroids of one rank with all rows, rows taken in rank order),
  :func:`code_counts` gives the global code histogram (dead codes: count 0), and
  ``FrequencyNoise(..., process_group=...)`` folds the global histogram into its usage EMA.
- **Data-parallel constrained decoding** needs nothing from this module: the trie is
  replicated and each rank decodes its slice of the batch (:func:`batch_slice`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from . import _backends, _checks
from .ops import kmeans as _kmeans_ops
from .ops.longid import ItemGraph, _check_walk, _distinct_items, holistic_topk
from .reference import kmeans as _kmeans_ref
from .reference.kmeans import KMeansResult

__all__ = ["CollectiveError", "ShardedCatalog", "batch_slice", "code_counts", "kmeans",
           "rq_init", "sharded_graph_decode", "sharded_holistic_topk"]

REDUCES = ("all_gather", "gather")
_ID_LAST = torch.iinfo(torch.int64).max  # sort key of padding (id -1): after every real item


class CollectiveError(RuntimeError):
    """A collective of :mod:`semid_fast.distributed` failed on this rank: a peer raised or
    died before joining it, the connection broke, or the group's timeout passed."""


def _group_info(group, op: str) -> tuple[int, int]:
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(f"{op}: torch.distributed is not initialised; call "
                           "torch.distributed.init_process_group (with a timeout) first")
    return dist.get_rank(group), dist.get_world_size(group)


def _collective(call: str, group, fn, *args, **kwargs):
    """Runs one collective; any failure becomes a CollectiveError on this rank."""
    try:
        return fn(*args, group=group, **kwargs)
    except RuntimeError as error:  # DistBackendError is a RuntimeError
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        raise CollectiveError(
            f"{call}: collective {fn.__name__} failed on rank {rank} of {world}: a peer rank "
            f"raised, exited or did not join within the group's timeout: {error}") from error


def _all_gather(op: str, group, t: torch.Tensor) -> list[torch.Tensor]:
    out = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
    _collective(op, group, dist.all_gather, out, t.contiguous())
    return out


def _all_reduce(op: str, group, t: torch.Tensor, reduce_op=None) -> torch.Tensor:
    _collective(op, group, dist.all_reduce, t, op=dist.ReduceOp.SUM if reduce_op is None
                else reduce_op)
    return t


def batch_slice(batch_size: int, *, group=None) -> slice:
    """This rank's rows of a batch split DDP-style: contiguous, sizes differing by at most
    one (the first ``batch_size % P`` ranks take one more). No collective."""
    _checks.positive_int(batch_size, "batch_size", minimum=0)
    rank, world = _group_info(group, "batch_slice")
    base, extra = divmod(batch_size, world)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


class ShardedCatalog:
    """This rank's contiguous slice of an (N, M) long-ID catalog.

    Args:
        codes_shard: (N_r, M) uint8/int16/int32/int64 codes of items ``offset .. offset+N_r-1``
            (N_r may be 0), on the device the group's backend communicates from (CPU for
            gloo, this rank's GPU for NCCL).
        offset: global id of the shard's first item. Shards must tile ``[0, N)`` in rank
            order: rank r's offset is the sum of the sizes of ranks < r.
        group: the process group (None: the default group).

    Construction runs one all-gather of (offset, N_r, M) on every rank and raises ValueError
    on every rank alike when the shards do not tile the catalog.
    """

    def __init__(self, codes_shard: torch.Tensor, *, offset: int, group=None):
        _checks.tensor(codes_shard, "codes_shard", 2, _checks.INT_DTYPES, "(N_r, M)")
        _checks.positive_int(offset, "offset", minimum=0)
        self.rank, self.world_size = _group_info(group, "ShardedCatalog")
        self.codes = codes_shard
        self.offset = offset
        self.group = group
        layout = torch.tensor([offset, codes_shard.shape[0], codes_shard.shape[1]],
                              dtype=torch.int64, device=codes_shard.device)
        rows = torch.stack(_all_gather("ShardedCatalog", group, layout)).cpu().tolist()
        self.offsets = [r[0] for r in rows]
        self.sizes = [r[1] for r in rows]
        expected = np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).tolist()
        if self.offsets != expected:
            raise ValueError(f"ShardedCatalog: shards must tile [0, N) in rank order; offsets "
                             f"{self.offsets} with sizes {self.sizes} (expected offsets "
                             f"{expected})")
        if len({r[2] for r in rows}) != 1:
            raise ValueError(f"ShardedCatalog: every shard needs the same M, got "
                             f"{[r[2] for r in rows]}")
        self.num_items = int(sum(self.sizes))

    @property
    def num_local(self) -> int:
        return self.codes.shape[0]

    def __repr__(self) -> str:
        return (f"ShardedCatalog(rank={self.rank}/{self.world_size}, items [{self.offset}, "
                f"{self.offset + self.num_local}) of {self.num_items}, M={self.codes.shape[1]})")


def _pack(scores: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """(B, 3k) int32: the float32 scores' bits, then the int64 ids as int32 pairs: 12 bytes
    per result, one tensor for one collective."""
    b = scores.shape[0]
    return torch.cat([scores.contiguous().view(torch.int32),
                      ids.contiguous().view(torch.int32).reshape(b, -1)], dim=1)


def _merge(parts: list[torch.Tensor], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best k of P packed (B, 3k') partials: score descending, ties toward the smaller id,
    padding (id -1) last."""
    width = parts[0].shape[1] // 3
    scores = torch.cat([p[:, :width].contiguous().view(torch.float32) for p in parts], dim=1)
    ids = torch.cat([p[:, width:].contiguous().view(torch.int64) for p in parts], dim=1)
    # Two stable sorts: by id, then by score; equal scores keep the id order.
    by_id = torch.where(ids >= 0, ids, _ID_LAST).sort(dim=1, stable=True).indices
    scores, ids = scores.gather(1, by_id), ids.gather(1, by_id)
    order = scores.sort(dim=1, descending=True, stable=True).indices[:, :k]
    return scores.gather(1, order), ids.gather(1, order)


def _padding(b: int, k: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.full((b, k), float("-inf"), device=device),
            torch.full((b, k), -1, dtype=torch.long, device=device))


def _to_global(ids: torch.Tensor, offset: int) -> torch.Tensor:
    return torch.where(ids >= 0, ids + offset, ids)


def _check_catalog(catalog) -> ShardedCatalog:
    if not isinstance(catalog, ShardedCatalog):
        raise TypeError(f"catalog must be a ShardedCatalog, got {type(catalog).__name__}")
    return catalog


def sharded_holistic_topk(token_scores: torch.Tensor, catalog: ShardedCatalog, k: int, *,
                          reduce: str = "all_gather", score_reduce: str = "sum",
                          item_mask: torch.Tensor | None = None, backend: str = "auto"):
    """:func:`semid_fast.holistic_topk` over a catalog sharded across the group's ranks.

    Every rank passes the same queries; each scores its shard with the fused kernel and keeps
    its top k, then one collective moves the (B, k) partials (12 bytes per result: P x B x k x
    12 bytes in all) and they are merged, ties toward the smaller global id. No host sync
    beyond the collective.

    Args:
        token_scores: (B, M, K) float32/float16/bfloat16, identical on every rank.
        catalog: this rank's :class:`ShardedCatalog`.
        k: results per query (k > N pads with score -inf and id -1).
        reduce: "all_gather" (every rank gets the result) or "gather" (rank 0 of the group
            gets it, the others None).
        score_reduce: "sum" or "mean" over the M positions (``holistic_topk``'s ``reduce``).
        item_mask: optional (N_r,) or (B, N_r) bool over this rank's items, True = exclude.
        backend: as :func:`semid_fast.holistic_topk`.

    Returns:
        (scores (B, k) float32, global item ids (B, k) int64), best first: the same ids and
        bit-identical scores as ``holistic_topk`` on the whole catalog; None on ranks other
        than 0 with ``reduce="gather"``.
    """
    catalog = _check_catalog(catalog)
    if reduce not in REDUCES:
        raise ValueError(f"reduce must be one of {REDUCES}, got {reduce!r}")
    if catalog.num_local:
        local_scores, local_ids = holistic_topk(token_scores, catalog.codes, k,
                                                reduce=score_reduce, item_mask=item_mask,
                                                backend=backend)
    else:  # an empty shard contributes padding only
        _checks.tensor(token_scores, "token_scores", 3, _checks.FLOAT_DTYPES, "(B, M, K)")
        _checks.positive_int(k, "k")
        local_scores, local_ids = _padding(token_scores.shape[0], k, catalog.codes.device)
    packed = _pack(local_scores, _to_global(local_ids, catalog.offset))
    op = "sharded_holistic_topk"
    if reduce == "all_gather":
        return _merge(_all_gather(op, catalog.group, packed), k)
    root = 0 if catalog.group is None else dist.get_global_rank(catalog.group, 0)
    parts = ([torch.empty_like(packed) for _ in range(catalog.world_size)]
             if catalog.rank == 0 else None)
    _collective(op, catalog.group, dist.gather, packed, parts, dst=root)
    return _merge(parts, k) if catalog.rank == 0 else None


def _start(init, seed, b: int, n: int, beam_width: int, device) -> torch.Tensor:
    """graph_decode's start, drawn alike on every rank (hence a seed is required)."""
    if init is None or isinstance(init, str):
        if init not in (None, "distinct", "rpg"):
            raise ValueError(f"init must be 'distinct', 'rpg', None or a tensor, got {init!r}")
        if seed is None:
            raise ValueError("sharded_graph_decode: pass a seed (or an init tensor) so that "
                             "every rank draws the same start")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        if not 0 <= seed < 2**63:
            raise ValueError(f"seed must be in [0, 2**63), got {seed}")
        if init == "rpg":
            gen = torch.Generator(device).manual_seed(seed)
            return torch.randint(0, n, (b, beam_width), generator=gen, device=device)
        rng = np.random.default_rng(seed)
        return torch.from_numpy(np.stack([rng.choice(n, beam_width, replace=False)
                                          for _ in range(b)]).astype(np.int64)).to(device)
    _checks.tensor(init, "init", 2, (torch.int32, torch.int64), "(B, beam_width)")
    if tuple(init.shape) != (b, beam_width):
        raise ValueError(f"init must have shape ({b}, {beam_width}), got {tuple(init.shape)}")
    _checks.codes_in_range(init, n, "init")
    return init.long().to(device)


def sharded_graph_decode(token_scores: torch.Tensor, catalog: ShardedCatalog,
                         graph_shard: ItemGraph | torch.Tensor, *, beam_width: int, steps: int,
                         k: int, reduce: str = "sum", seed: int | None = None,
                         init: torch.Tensor | str | None = None, return_visited: bool = False,
                         backend: str = "auto"):
    """:func:`semid_fast.graph_decode` with the codes and the item graph sharded by item.

    Rank r holds the neighbour lists of its own items. A step: every rank knows the beam and
    its neighbours; it scores the candidates that live in its shard (holistic kernel, top
    ``beam_width``) and all-gathers them together with their neighbour lists, so the merged
    beam (ties toward the smaller id) arrives with the neighbours of the next step: one
    collective per step (P x B x W x (12 + 8 E) bytes) plus one all-reduce for the start's
    neighbours. Candidates are sent whole to every rank rather than split by owner with an
    all-to-all: the split would need a size exchange (a second collective and a host sync) or
    fixed-size buffers as large as the whole list.

    Args:
        token_scores: (B, M, K) float scores, identical on every rank.
        catalog: this rank's :class:`ShardedCatalog`.
        graph_shard: the :class:`ItemGraph` rows (or (N_r, E) int64 neighbours) of this rank's
            items, with global neighbour ids in [0, N).
        beam_width, steps, k, reduce, init, return_visited, backend: as ``graph_decode``.
        seed: required unless ``init`` is a tensor (every rank must draw the same start);
            the draw is ``graph_decode``'s with the same seed.

    Returns:
        As ``graph_decode`` with the same start on the whole catalog, on every rank: (scores
        (B, k) float32, global ids (B, k) int64) and with ``return_visited`` the (B,) counts.
    """
    catalog = _check_catalog(catalog)
    neighbors = graph_shard.neighbors if isinstance(graph_shard, ItemGraph) else graph_shard
    _checks.tensor(neighbors, "graph_shard", 2, (torch.int64,), "(N_r, E)")
    n, n_local, offset = catalog.num_items, catalog.num_local, catalog.offset
    if neighbors.shape[0] != n_local:
        raise ValueError(f"graph_shard has {neighbors.shape[0]} rows but this rank's shard "
                         f"holds {n_local} items")
    _checks.codes_in_range(neighbors, n, "graph_shard")
    _checks.tensor(token_scores, "token_scores", 3, _checks.FLOAT_DTYPES, "(B, M, K)")
    _check_walk(n, beam_width, steps, k)
    if reduce not in ("sum", "mean"):
        raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")
    device = catalog.codes.device
    b, e, group = token_scores.shape[0], neighbors.shape[1], catalog.group
    beam = _start(init, seed, b, n, beam_width, device)
    neighbors = neighbors.to(device)
    op = "sharded_graph_decode"

    def around_of(items):  # (B, W, E) neighbour ids of the items this rank owns, else -1
        if n_local == 0:
            return torch.full((*items.shape, e), -1, dtype=torch.long, device=device)
        owned = (items >= offset) & (items < offset + n_local)
        rows = (items - offset).clamp(0, n_local - 1)
        return torch.where(owned[..., None], neighbors[rows], -1)

    around = _all_reduce(op, group, around_of(beam), dist.ReduceOp.MAX)
    scored, scores = [], None
    for _ in range(steps):
        candidates = torch.cat([beam, around.reshape(b, -1)], dim=1)
        if return_visited:
            scored.append(candidates)
        inside = (candidates >= offset) & (candidates < offset + n_local)
        local = torch.where(inside, candidates - offset, -1)
        if n_local:
            part_scores, part_ids = holistic_topk(token_scores, catalog.codes, beam_width,
                                                  reduce=reduce, candidates=local,
                                                  backend=backend)
            part_ids = _to_global(part_ids, offset)
        else:
            part_scores, part_ids = _padding(b, beam_width, device)
        part_around = around_of(part_ids).reshape(b, -1)
        packed = torch.cat([_pack(part_scores, part_ids),
                            part_around.view(torch.int32).reshape(b, -1)], dim=1)
        parts = _all_gather(op, group, packed)
        head = 3 * beam_width
        scores, beam = _merge([p[:, :head] for p in parts], beam_width)
        # The winners' neighbour lists: look each winner up among the gathered partials.
        all_ids = torch.cat([p[:, beam_width:head].contiguous().view(torch.int64)
                             for p in parts], dim=1)  # (B, P*W)
        all_around = torch.cat([p[:, head:].contiguous().view(torch.int64).reshape(b, beam_width, e)
                                for p in parts], dim=1)  # (B, P*W, E)
        match = (beam[:, :, None] == all_ids[:, None, :]) & (beam[:, :, None] >= 0)
        slot = match.int().argmax(dim=2)  # ids are distinct across shards: one match
        picked = all_around.gather(1, slot[..., None].expand(-1, -1, e))
        around = torch.where(beam[..., None] >= 0, picked, -1)
    out = (scores[:, :k], beam[:, :k])
    if not return_visited:
        return out
    return (*out, _distinct_items(scored))


def code_counts(codes: torch.Tensor, num_codes: int, *, group=None) -> torch.Tensor:
    """Global code histogram (dead-code statistics): one all-reduce of int64 counts (exact).

    Args:
        codes: (N_r,) or (N_r, L) integer codes in [0, num_codes) of this rank's rows.
        num_codes: K.
        group: the process group (None: default).

    Returns:
        (K,) or (L, K) int64 counts over every rank's rows; a code is dead where it is 0.
    """
    if not isinstance(codes, torch.Tensor) or codes.dim() not in (1, 2):
        raise ValueError("codes must be a (N,) or (N, L) integer tensor")
    _checks.tensor(codes, "codes", codes.dim(), _checks.INT_DTYPES, "(N,) or (N, L)")
    _checks.positive_int(num_codes, "num_codes")
    _checks.codes_in_range(codes, num_codes, "codes")
    _group_info(group, "code_counts")
    flat = codes.long().reshape(codes.shape[0], -1)
    levels = flat.shape[1]
    shifted = flat + torch.arange(levels, device=codes.device) * num_codes
    counts = torch.bincount(shifted.reshape(-1), minlength=levels * num_codes)
    counts = _all_reduce("code_counts", group, counts.reshape(levels, num_codes))
    return counts[0] if codes.dim() == 1 else counts


# k-means on row shards ------------------------------------------------------------------------

def _check_kmeans(op: str, x, k, iters, seed, init, tol, backend, group):
    _checks.tensor(x, "x", 2, _checks.FLOAT_DTYPES, "(N_r, D)")
    _kmeans_ops._check_options(op, k, iters, seed, init, tol)
    _checks.finite(x, "x")
    _group_info(group, op)
    # Every rank learns every shard's shape, so a bad layout fails alike everywhere.
    shapes = torch.stack(_all_gather(op, group, torch.tensor(x.shape, dtype=torch.int64,
                                                             device=x.device))).cpu()
    if len(set(shapes[:, 1].tolist())) != 1:
        raise ValueError(f"{op}: every rank's x needs the same D, got {shapes[:, 1].tolist()}")
    sizes = shapes[:, 0].tolist()
    n = sum(sizes)
    if k > n:
        raise ValueError(f"{op}: k={k} clusters need at least k rows, the ranks hold N={n}")
    name = _backends.choose(backend, x.device, "quantize", "kmeans_assign", op=op)
    start = sum(sizes[:dist.get_rank(group)])
    return x.detach().float().contiguous(), name, sizes, start


def _init(x, k, init, generator, name, sizes, start, group, op):
    """Single-process ``kmeans``'s starting centroids on the rows of all ranks (rank order),
    advancing ``generator`` the same way."""
    n = sum(sizes)
    if init == "random":
        picks = torch.randperm(n, generator=generator)[:k].to(x.device) - start
        mine = (picks >= 0) & (picks < x.shape[0])
        chosen = torch.zeros((k, x.shape[1]), dtype=torch.float32, device=x.device)
        chosen[mine] = x[picks[mine]]
        return _all_reduce(op, group, chosen)  # one owner per row: the sum is that row
    # k-means++ visits every row per pick: gather the rows once (init data is one batch).
    padded = torch.zeros((max(sizes), x.shape[1]), dtype=torch.float32, device=x.device)
    padded[:x.shape[0]] = x
    rows = _all_gather(op, group, padded)
    x_all = torch.cat([r[:s] for r, s in zip(rows, sizes)])
    return _kmeans_ops._init(name, x_all, k, init, generator)


def _fit(x, k, iters, seed, init, tol, name, sizes, start, group, op) -> KMeansResult:
    n = sum(sizes)
    generator = torch.Generator().manual_seed(seed)
    centroids = _init(x, k, init, generator, name, sizes, start, group, op).contiguous()
    limit = 0.0
    if tol > 0:  # scikit-learn's threshold: tol * mean per-dimension variance, two passes
        mean = _all_reduce(op, group, x.double().sum(0)) / n
        var = _all_reduce(op, group, ((x.double() - mean) ** 2).sum(0)) / n
        limit = float(var.mean()) * tol
    n_iter = 0
    for _ in range(iters):
        codes, _ = _kmeans_ops._assign(name, x, centroids)
        sums, counts = _kmeans_ops._update(name, x, codes, k)
        # Sums and counts in one float64 all-reduce (counts < 2**53 are exact).
        both = _all_reduce(op, group, torch.cat([sums, counts.double()[:, None]], dim=1))
        sums, counts = both[:, :-1], both[:, -1].long()
        previous = centroids
        centroids = _kmeans_ref.split_empty(_kmeans_ref.new_centroids(sums, counts, previous),
                                            counts.cpu(), generator).contiguous()
        n_iter += 1
        if tol > 0 and float(((centroids - previous) ** 2).sum()) <= limit:
            break
    codes, distance = _kmeans_ops._assign(name, x, centroids)
    inertia = _all_reduce(op, group, distance.double().sum())
    return KMeansResult(centroids, codes, inertia, n_iter)


def kmeans(x: torch.Tensor, k: int, *, iters: int = 20, seed: int = 0, init: str = "kmeans++",
           tol: float = 0.0, backend: str = "auto", group=None) -> KMeansResult:
    """:func:`semid_fast.kmeans` of the rows of every rank (taken in rank order).

    Each Lloyd step assigns the local rows, then one all-reduce adds the clusters' float64
    sums and counts; every rank then computes the same centroids, and the empty-cluster
    repairs draw from the same seeded generator. ``init="random"`` all-reduces the k chosen
    rows; ``"kmeans++"`` all-gathers the rows once (every pick visits all of them: meant for
    the one batch an RQ-VAE initialises on).

    Guarantee: equal to ``semid_fast.kmeans`` (same backend) on the concatenated rows whenever
    the float64 cluster sums are exact, which holds when, per cluster and dimension, the
    values' exponents span at most 29 - log2(rows) binades (float32 has 24 significant bits,
    float64 53); otherwise a sum may differ in its last float64 bit, which changes a float32
    centroid only if the mean lies that close to a float32 rounding midpoint. Counts are exact.
    With ``tol > 0`` the stopping threshold is computed in two passes rather than by
    ``torch.var``: equal up to float64 rounding.

    Args:
        x: (N_r, D) float rows of this rank (N_r may differ across ranks).
        k, iters, seed, init, tol, backend: as :func:`semid_fast.kmeans` (k <= total N).
        group: the process group (None: default).

    Returns:
        :class:`KMeansResult`: centroids (k, D) float32 (the same on every rank), this rank's
        assignments (N_r,) int64, the global inertia () float64, n_iter.
    """
    op = "distributed.kmeans"
    x32, name, sizes, start = _check_kmeans(op, x, k, iters, seed, init, tol, backend, group)
    return _fit(x32, k, iters, seed, init, float(tol), name, sizes, start, group, op)


def rq_init(x: torch.Tensor, levels: int, k: int, *, iters: int = 20, seed: int = 0,
            init: str = "kmeans++", tol: float = 0.0, backend: str = "auto",
            group=None) -> torch.Tensor:
    """:func:`semid_fast.rq_init` of the rows of every rank (rank order): level l is
    :func:`kmeans` (seed + l) of the residuals, which each rank keeps for its own rows.

    Returns the (L, k, D) float32 codebooks, the same on every rank; the guarantee is
    :func:`kmeans`'s.
    """
    _checks.positive_int(levels, "levels")
    op = "distributed.rq_init"
    x32, name, sizes, start = _check_kmeans(op, x, k, iters, seed, init, tol, backend, group)
    if seed + levels - 1 >= 2**63:
        raise ValueError(f"seed + levels - 1 must be < 2**63, got {seed + levels - 1}")
    residual = x32
    books = torch.empty((levels, k, x32.shape[1]), dtype=torch.float32, device=x32.device)
    for level in range(levels):
        fit = _fit(residual, k, iters, seed + level, init, float(tol), name, sizes, start,
                   group, op)
        books[level] = fit.centroids
        residual = (residual - fit.centroids[fit.assignments]).contiguous()
    return books

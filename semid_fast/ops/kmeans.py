"""k-means (Lloyd) and RQ-VAE codebook initialisation by k-means on successive residuals.

One driver runs every backend: the random numbers (initial rows, k-means++ draws,
empty-cluster splits) are drawn by :mod:`semid_fast.reference.kmeans` from a CPU generator
seeded with ``seed``, so a seed gives the same centroids on every backend up to float rounding
(and ties). The heavy steps are launchers of the quantize family
(semid_fast/backends/<backend>/quantize.py); a backend without a launcher for a step runs the
reference's, in torch ops on x's device:

- ``kmeanspp`` (pick by pick, each scoring every row against its candidates): ``cpu`` in C++,
  one pass over x per pick;
- ``kmeans_assign`` (nearest centroid in float32): the reference by a distance matrix; ``cpu``
  by the register-blocked AVX2 kernel of ``rq_encode`` with one level (never an (N, K)
  matrix); ``cuda``/``triton`` by their one-level ``rq_encode`` kernel;
- ``kmeans_update`` (cluster sums in float64 and counts): ``cpu`` by a C++ pass with
  per-thread sums; the reference by ``index_add_``/``bincount``.

Each iteration reads the cluster counts on the host (K integers, to find empty clusters):
one device sync per iteration on GPU. k-means is an initialisation, not a per-step op.
"""

from __future__ import annotations

import torch

from .. import _backends, _checks
from ..reference import kmeans as ref
from ..reference.kmeans import KMeansResult
from .quantize import FAMILY, MAX_K, _launcher

__all__ = ["KMeansResult", "kmeans", "rq_init"]

INITS = ("kmeans++", "random")


def _init(backend: str, x: torch.Tensor, k: int, init: str,
          generator: torch.Generator) -> torch.Tensor:
    if init == "random":
        return ref.init_centroids(x, k, init, generator)
    first, draws = ref.kmeanspp_draws(x.shape[0], k, generator)
    picks = torch.empty(k, dtype=torch.long, device=x.device)
    own = _backends.own_or_reference(backend, FAMILY, "kmeanspp")
    _launcher(own, "kmeanspp")(x, first, draws, picks)
    return x[picks]


def _assign(backend: str, x: torch.Tensor, centroids: torch.Tensor):
    codes = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    dist = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
    _launcher(backend, "kmeans_assign")(x, centroids, codes, dist)
    return codes, dist


def _update(backend: str, x: torch.Tensor, codes: torch.Tensor, k: int):
    sums = torch.empty((k, x.shape[1]), dtype=torch.float64, device=x.device)
    counts = torch.empty(k, dtype=torch.long, device=x.device)
    own = _backends.own_or_reference(backend, FAMILY, "kmeans_update")
    _launcher(own, "kmeans_update")(x, codes, sums, counts)
    return sums, counts


def _fit(x: torch.Tensor, k: int, iters: int, seed: int, init: str, tol: float,
         backend: str, max_points_per_centroid: int | None = None) -> KMeansResult:
    """Lloyd's loop on float32 contiguous x (the order of reference.kmeans); with
    max_points_per_centroid, on a subsample drawn first from the seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    fit_rows = x
    if max_points_per_centroid is not None and x.shape[0] > max_points_per_centroid * k:
        # faiss's Clustering rule: a uniform sample without replacement of that many rows.
        picks = torch.randperm(x.shape[0], generator=generator)[:max_points_per_centroid * k]
        fit_rows = x[picks.sort().values.to(x.device)]
    centroids = _init(backend, fit_rows, k, init, generator).contiguous()
    limit = ref.tolerance(fit_rows, tol)
    n_iter = 0
    for _ in range(iters):
        codes, _ = _assign(backend, fit_rows, centroids)
        sums, counts = _update(backend, fit_rows, codes, k)
        previous = centroids
        centroids = ref.split_empty(ref.new_centroids(sums, counts, previous), counts.cpu(),
                                    generator).contiguous()
        n_iter += 1
        if tol > 0 and float(((centroids - previous) ** 2).sum()) <= limit:
            break
    codes, dist = _assign(backend, x, centroids)
    return KMeansResult(centroids, codes, dist.double().sum(), n_iter)


def _check_options(op: str, k, iters, seed, init, tol) -> None:
    """The fit's options (also checked by the distributed fit, before it knows N)."""
    _checks.positive_int(k, "k")
    if k > MAX_K:
        raise ValueError(f"{op}: k={k}; at most {MAX_K} clusters are supported")
    _checks.positive_int(iters, "iters", minimum=0)
    _checks.positive_int(seed, "seed", minimum=0)
    if seed >= 2**63:
        raise ValueError(f"seed must be < 2**63, got {seed}")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol >= 0:
        raise ValueError(f"tol must be a float >= 0, got {tol!r}")


def _check(op: str, x, k, iters, seed, init, tol, backend) -> tuple[torch.Tensor, str]:
    _checks.tensor(x, "x", 2, _checks.FLOAT_DTYPES, "(N, D)")
    n, d = x.shape
    if n == 0 or d == 0:
        raise ValueError(f"{op}: x must have at least one row and one column, got {tuple(x.shape)}")
    _check_options(op, k, iters, seed, init, tol)
    if k > n:
        raise ValueError(f"{op}: k={k} clusters need at least k rows, x has N={n}")
    _checks.finite(x, "x")
    name = _backends.choose(backend, x.device, FAMILY, "kmeans_assign", op=op)
    return x.detach().float().contiguous(), name


def kmeans(x: torch.Tensor, k: int, *, iters: int = 20, seed: int = 0, init: str = "kmeans++",
           tol: float = 0.0, max_points_per_centroid: int | None = None,
           backend: str = "auto") -> KMeansResult:
    """Lloyd's k-means of the rows of x, deterministic from ``seed``.

    ``iters`` rounds of: assign each row to its nearest centroid (squared L2, float32), move
    each centroid to the mean of its rows (summed in float64), and repair empty clusters; then
    one last assignment, so ``assignments`` and ``inertia`` belong to the returned centroids.

    Args:
        x: (N, D) float32/float16/bfloat16 rows (used in float32; no gradient flows).
        k: clusters, 1 <= k <= min(N, 65536).
        iters: Lloyd updates (>= 0; 0 returns the initial centroids).
        seed: seeds a CPU ``torch.Generator`` for every random draw (>= 0).
        init: "kmeans++" (default): greedy k-means++ as scikit-learn's (2 + floor(ln k)
            candidates per centroid, keeping the one that lowers the total squared distance
            most); "random": k distinct rows drawn uniformly, as faiss's ``Clustering``.
        tol: 0 (default) runs exactly ``iters`` updates; tol > 0 stops once the squared
            Frobenius norm of the centroid shift is at most tol times the mean per-dimension
            variance of x (scikit-learn's rule, its default tol is 1e-4).
        max_points_per_centroid: None (default) fits on every row; an int m fits on a
            uniform sample without replacement of m * k rows when N is larger (faiss's
            ``Clustering`` rule; faiss's default m is 256), drawn first from the ``seed``'s
            generator, so a seed gives the same sample. ``assignments`` and ``inertia`` are
            still those of every row.
        backend: "auto", "reference", "cpu", "cuda" or "triton".

    Returns:
        :class:`KMeansResult` ``(centroids, assignments, inertia, n_iter)``: centroids (k, D)
        float32, assignments (N,) int64, inertia () float64 (sum of squared distances to the
        assigned centroid), n_iter the number of updates run; tensors on x's device.

    Empty clusters (after an update) are split from populated ones as faiss does
    (``split_clusters``): the donor is drawn with probability proportional to its size - 1,
    and the two centroids become the donor's scaled by (1 +- 1/1024) alternately by dimension.

    Reproducing the published initialisers (same algorithm; their own random streams differ):

    - faiss ``faiss.Kmeans(d, k, niter=n, seed=s)``: ``init="random", iters=n,
      max_points_per_centroid=256`` (faiss's default subsampling; ``None`` is faiss with
      ``max_points_per_centroid`` >= N / k).
    - LC-Rec (``index/models/layers.py`` ``kmeans``: scikit-learn ``KMeans(n_clusters=k,
      max_iter=kmeans_iters)``, kmeans_iters=100 in ``main.py``): ``init="kmeans++",
      iters=100, tol=1e-4``. scikit-learn >= 1.4 runs one k-means++ start (``n_init="auto"``);
      older versions keep the best of 10 starts, and relocate empty clusters to far rows.
    - EdoardoBotta's RQ-VAE-Recommender (``init/kmeans.py`` ``Kmeans``): ``init="random"``
      and enough ``iters`` to converge (it runs until no centroid moves by 1e-10; empty
      clusters take a random row there).
    """
    x32, name = _check("kmeans", x, k, iters, seed, init, tol, backend)
    if max_points_per_centroid is not None:
        _checks.positive_int(max_points_per_centroid, "max_points_per_centroid")
    return _fit(x32, k, iters, seed, init, float(tol), name, max_points_per_centroid)


def rq_init(x: torch.Tensor, levels: int, k: int, *, iters: int = 20, seed: int = 0,
            init: str = "kmeans++", tol: float = 0.0, backend: str = "auto") -> torch.Tensor:
    """Residual-quantization codebooks fitted by k-means on successive residuals.

    Level 0 is :func:`kmeans` of x; level l is :func:`kmeans` (seed ``seed + l``) of the
    residual left after subtracting each row's nearest centroid of every level before it
    (greedy RQ encoding with the codebooks fitted so far), which is what an RQ-VAE whose
    quantizers k-means-initialise on their first input computes in its first forward pass.

    Args:
        x: (N, D) float rows: the RQ-VAE encoder's output on the first batch.
        levels: L >= 1 codebooks. k, iters, seed, init, tol, backend: as :func:`kmeans`
            (k <= N).

    Returns:
        (L, k, D) float32 codebooks on x's device, e.g. to copy into the quantizer's weights
        or to pass to :func:`semid_fast.rq_quantize`.

    Reproducing the published RQ-VAEs:

    - LC-Rec (``index/models/vq.py`` ``VectorQuantizer.init_emb``, ``kmeans_init=True`` in
      ``index/main.py``): ``rq_init(encoder(first_batch), L, 256, init="kmeans++", iters=100,
      tol=1e-4)``; the first batch holds ``batch_size`` rows (1024 in ``run.sh``). Where a
      level's ``sk_epsilon`` > 0, LC-Rec's later residuals follow Sinkhorn's codes, not the
      nearest centroid used here.
    - EdoardoBotta's RQ-VAE-Recommender (``modules/quantize.py`` ``Quantize._kmeans_init``,
      called by ``train_rqvae.py`` on the first ``min(20000, N)`` training items):
      ``rq_init(encoder(x[:20000]), 3, 256, init="random", iters=...)``. Its STE mode
      subtracts the nearest codeword as here; its Gumbel-softmax mode subtracts a soft mix.
    """
    _checks.positive_int(levels, "levels")
    x32, name = _check("rq_init", x, k, iters, seed, init, tol, backend)
    if seed + levels - 1 >= 2**63:
        raise ValueError(f"seed + levels - 1 must be < 2**63, got {seed + levels - 1}")
    residual = x32
    with _checks.allocating(f"the (levels={levels}, k={k}, D={x32.shape[1]}) codebooks"):
        books = torch.empty((levels, k, x32.shape[1]), dtype=torch.float32, device=x32.device)
    for level in range(levels):
        fit = _fit(residual, k, iters, seed + level, init, float(tol), name)
        books[level] = fit.centroids
        residual = (residual - fit.centroids[fit.assignments]).contiguous()
    return books

"""Pure-PyTorch k-means (Lloyd) and residual codebook initialisation: the oracle of
``semid_fast.kmeans`` and ``semid_fast.rq_init``.

The pieces that draw random numbers (:func:`init_centroids`, :func:`split_empty`) are shared
with the native backends, so one seed gives every backend the same starting centroids and the
same empty-cluster repairs; the backends differ only in how they assign rows and sum clusters.
Random draws come from a CPU ``torch.Generator`` seeded with ``seed`` in a fixed order: the
initialisation first, then the repairs of each iteration.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

# faiss's relative perturbation of a split centroid (Clustering.cpp, EPS = 1 / 1024).
SPLIT_EPS = 1.0 / 1024


class KMeansResult(NamedTuple):
    """centroids (K, D) float32; assignments (N,) int64, the nearest returned centroid of each
    row; inertia () float64, the sum over rows of the squared distance to that centroid;
    n_iter, the number of Lloyd updates run (fewer than ``iters`` when ``tol`` stopped it)."""

    centroids: torch.Tensor
    assignments: torch.Tensor
    inertia: torch.Tensor
    n_iter: int


def _squared_distances(x: torch.Tensor, x_sq: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """(M, N) squared distances of the rows of c to the rows of x: ||x||^2 - 2 x.c + ||c||^2."""
    return (x_sq[None, :] - 2.0 * (c @ x.T) + (c * c).sum(1, keepdim=True)).clamp_min_(0.0)


def kmeanspp_trials(k: int) -> int:
    """Candidates per k-means++ pick, scikit-learn's ``2 + floor(ln k)``."""
    return 2 + int(math.log(k))


def kmeanspp_draws(n: int, k: int, generator: torch.Generator) -> tuple[int, torch.Tensor]:
    """The random numbers of one k-means++ run: the first row, then (k - 1, trials) float64
    uniforms in [0, 1), one per candidate (every backend draws them here, in this order)."""
    first = int(torch.randint(n, (1,), generator=generator))
    draws = torch.rand((k - 1, kmeanspp_trials(k)), generator=generator, dtype=torch.float64)
    return first, draws


def init_centroids(x: torch.Tensor, k: int, init: str, generator: torch.Generator) -> torch.Tensor:
    """(K, D) starting centroids, rows of x (float32).

    "random": K distinct rows drawn uniformly (a random permutation's first K, as faiss's
    ``Clustering`` samples them; EdoardoBotta's ``Kmeans._init_centroids`` draws the same way).
    "kmeans++": greedy k-means++ as scikit-learn's ``_kmeans_plusplus`` (LC-Rec's k-means is
    scikit-learn's ``KMeans``): the first centroid uniform, then each next one the best of
    ``2 + floor(ln K)`` candidates drawn with probability proportional to the squared distance
    to the nearest chosen centroid, best meaning smallest total squared distance afterwards
    (ties: the earlier candidate). Runs on x's device from :func:`kmeanspp_draws`.
    """
    n = x.shape[0]
    if init == "random":
        return x[torch.randperm(n, generator=generator)[:k].to(x.device)].clone()
    first, draws = kmeanspp_draws(n, k, generator)
    return x[kmeanspp_picks(x, first, draws)]


def kmeanspp_picks(x: torch.Tensor, first: int, draws: torch.Tensor) -> torch.Tensor:
    """The (K,) int64 rows of x that greedy k-means++ picks from :func:`kmeanspp_draws`'s
    first row and (K - 1, trials) draws, on x's device."""
    n = x.shape[0]
    draws = draws.to(x.device)
    x_sq = (x * x).sum(1)
    picks = torch.empty(draws.shape[0] + 1, dtype=torch.long, device=x.device)
    picks[0] = first
    closest = _squared_distances(x, x_sq, x[first:first + 1])[0].double()
    potential = closest.sum()
    for c in range(1, picks.shape[0]):
        # First row whose cumulative mass reaches the draw: a row at distance 0 is never picked
        # while the potential is positive.
        thresholds = draws[c - 1] * potential
        candidates = torch.searchsorted(torch.cumsum(closest, 0), thresholds).clamp_(max=n - 1)
        after = torch.minimum(closest[None, :],
                              _squared_distances(x, x_sq, x[candidates]).double())
        potentials = after.sum(1)
        best = torch.argmin(potentials)
        closest, potential = after[best], potentials[best]
        picks[c] = candidates[best]
    return picks


def split_empty(centroids: torch.Tensor, counts: torch.Tensor,
                generator: torch.Generator) -> torch.Tensor:
    """Gives every empty cluster half of a populated one, as faiss's ``split_clusters`` does.

    For each empty cluster i in order, a donor j is drawn with probability proportional to
    count_j - 1 (one uniform from ``generator``; faiss draws by a rejection scan instead, same
    target), centroid i becomes centroid j scaled by (1 + eps) on even dimensions and
    (1 - eps) on odd ones, centroid j the opposite, eps = 1/1024, and the two share j's count
    (i gets half, rounded down) for later draws. ``counts`` (K,) int64 on the CPU. Returns the
    centroids, repaired in place; nothing is drawn when no cluster is empty.
    """
    empty = (counts == 0).nonzero().flatten().tolist()
    if not empty:
        return centroids
    counts = counts.clone()
    d = centroids.shape[1]
    up = torch.full((d,), 1.0 + SPLIT_EPS, dtype=centroids.dtype, device=centroids.device)
    down = torch.full((d,), 1.0 - SPLIT_EPS, dtype=centroids.dtype, device=centroids.device)
    up[1::2], down[1::2] = 1.0 - SPLIT_EPS, 1.0 + SPLIT_EPS
    for i in empty:
        weights = (counts - 1).clamp_min(0).double()
        total = float(weights.sum())
        u = float(torch.rand((), generator=generator, dtype=torch.float64))
        if total > 0:
            cumulative = torch.cumsum(weights, 0)
            j = int(torch.searchsorted(cumulative, torch.tensor([u * total], dtype=torch.float64),
                                       right=True).clamp_(max=len(counts) - 1))
        else:  # every cluster holds at most one row: copy the first populated one
            j = int((counts > 0).nonzero()[0])
        donor = centroids[j].clone()
        centroids[i] = donor * up
        centroids[j] = donor * down
        counts[i] = counts[j] // 2
        counts[j] -= counts[i]
    return centroids


def assign(x: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid of each row (N,) int64 and its exact squared distance (N,) float32."""
    x_sq = (x * x).sum(1)
    codes = torch.argmin(_squared_distances(x, x_sq, centroids), dim=0)
    dist = ((x - centroids[codes]) ** 2).sum(1)
    return codes, dist


def update(x: torch.Tensor, codes: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cluster sums (K, D) float64 and row counts (K,) int64."""
    sums = torch.zeros((k, x.shape[1]), dtype=torch.float64, device=x.device)
    sums.index_add_(0, codes, x.double())
    return sums, torch.bincount(codes, minlength=k)


def new_centroids(sums: torch.Tensor, counts: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """Cluster means as float32; an empty cluster keeps its old centroid (split_empty moves it)."""
    means = sums / counts.clamp_min(1)[:, None].to(sums.dtype)
    return torch.where(counts[:, None] > 0, means.float(), old)


def tolerance(x: torch.Tensor, tol: float) -> float:
    """scikit-learn's stopping threshold: tol times the mean per-dimension variance of x."""
    return float(x.double().var(0, unbiased=False).mean()) * tol if tol > 0 else 0.0


def kmeans(x: torch.Tensor, k: int, iters: int = 20, seed: int = 0, init: str = "kmeans++",
           tol: float = 0.0) -> KMeansResult:
    """Lloyd's k-means: ``iters`` rounds of (assign each row to its nearest centroid, move each
    centroid to its rows' mean, split into empty clusters), then a last assignment.

    x (N, D) is used in float32. Stops early when tol > 0 and the squared Frobenius norm of the
    centroid shift is at most ``tolerance(x, tol)`` (scikit-learn's rule).
    """
    x = x.float()
    generator = torch.Generator().manual_seed(seed)
    centroids = init_centroids(x, k, init, generator)
    limit = tolerance(x, tol)
    n_iter = 0
    for _ in range(iters):
        codes, _ = assign(x, centroids)
        sums, counts = update(x, codes, k)
        previous = centroids
        centroids = split_empty(new_centroids(sums, counts, previous), counts.cpu(), generator)
        n_iter += 1
        if tol > 0 and float(((centroids - previous) ** 2).sum()) <= limit:
            break
    codes, dist = assign(x, centroids)
    return KMeansResult(centroids, codes, dist.double().sum(), n_iter)


def rq_init(x: torch.Tensor, levels: int, k: int, iters: int = 20, seed: int = 0,
            init: str = "kmeans++", tol: float = 0.0) -> torch.Tensor:
    """(L, K, D) float32 codebooks: level l is k-means (seed + l) on the residual after
    subtracting each row's nearest centroid of levels < l."""
    residual = x.float()
    books = []
    for level in range(levels):
        fit = kmeans(residual, k, iters, seed + level, init, tol)
        books.append(fit.centroids)
        residual = residual - fit.centroids[fit.assignments]
    return torch.stack(books)

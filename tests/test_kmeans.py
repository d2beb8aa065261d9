"""k-means and rq_init: every backend against the pure-PyTorch reference, the initialisers
against oracles of scikit-learn's and faiss's sampling, Lloyd against an oracle of
EdoardoBotta's, inertia against faiss.Kmeans on real embeddings, and bad inputs.

Assignments are compared up to ties: where two backends pick different centroids for a row,
its distances to both must agree to float rounding.
"""

import math

import numpy as np
import pytest
import torch

import semid_fast as sf
from semid_fast import _native
from semid_fast.reference import kmeans as ref
from tests.conftest import cpu_backends, skip_unavailable

CPU_BACKENDS = cpu_backends()

# (N, D, K): ragged sizes around the cpu kernel's 6-row tiles / 48-row blocks and 16-codeword
# panels, K = N, K = 1, D = 1.
SHAPES = [
    (1000, 32, 64),
    (517, 7, 13),
    (49, 17, 49),
    (300, 1, 5),
    (97, 64, 1),
    (200, 384, 17),
]


def pairs(shapes):
    out = []
    for backend in cpu_backends(reference=True):
        for shape in shapes:
            if backend == "triton" and shape[0] * shape[2] > 20_000:
                continue  # the interpreter runs about 12 ms per program instance
            out.append(pytest.param("cpu", backend, shape, id=f"cpu-{backend}-{shape}"))
    for backend in ("cuda", "triton"):
        for shape in shapes:
            out.append(pytest.param("cuda", backend, shape, id=f"cuda-{backend}-{shape}",
                                    marks=pytest.mark.gpu))
    return out


def blobs(n, d, seed, centers=8):
    g = torch.Generator().manual_seed(seed)
    means = 4 * torch.randn(centers, d, generator=g)
    return means[torch.randint(centers, (n,), generator=g)] + torch.randn(n, d, generator=g)


def assert_same_assignments(x, centroids, got, expected):
    """Equal except rows whose distances to the two picked centroids tie (float rounding)."""
    differ = (got != expected).nonzero().flatten()
    if differ.numel():
        rows = x[differ].double()
        c = centroids.double()
        d_got = ((rows - c[got[differ]]) ** 2).sum(1)
        d_exp = ((rows - c[expected[differ]]) ** 2).sum(1)
        torch.testing.assert_close(d_got, d_exp, rtol=1e-5, atol=1e-5)
    assert differ.numel() <= max(2, x.shape[0] // 100)


def assert_same_fit(x, got, expected):
    torch.testing.assert_close(got.centroids.cpu(), expected.centroids, rtol=1e-5, atol=1e-5)
    assert_same_assignments(x, expected.centroids, got.assignments.cpu(), expected.assignments)
    torch.testing.assert_close(got.inertia.cpu(), expected.inertia, rtol=1e-5, atol=1e-6)
    assert got.n_iter == expected.n_iter
    assert got.centroids.dtype == torch.float32 and got.assignments.dtype == torch.int64
    assert got.inertia.dtype == torch.float64


@pytest.mark.parametrize("device,backend,shape", pairs(SHAPES))
@pytest.mark.parametrize("init", ["kmeans++", "random"])
def test_kmeans_matches_reference(device, backend, shape, init):
    skip_unavailable(device, backend)
    n, d, k = shape
    x = blobs(n, d, seed=n + d + k)
    iters = 2 if backend == "triton" and device == "cpu" else 6
    expected = ref.kmeans(x, k, iters, 11, init)
    got = sf.kmeans(x.to(device), k, iters=iters, seed=11, init=init, backend=backend)
    assert got.centroids.device.type == device
    assert_same_fit(x, got, expected)


@pytest.mark.parametrize("device,backend,shape", pairs([(300, 16, 20), (101, 9, 7)]))
def test_rq_init_matches_reference(device, backend, shape):
    skip_unavailable(device, backend)
    n, d, k = shape
    x = blobs(n, d, seed=5)
    iters = 2 if backend == "triton" and device == "cpu" else 5
    expected = ref.rq_init(x, 3, k, iters, 2, "kmeans++")
    got = sf.rq_init(x.to(device), 3, k, iters=iters, seed=2, backend=backend)
    assert got.shape == (3, k, d) and got.dtype == torch.float32
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-5, atol=1e-5)


def test_seed_determinism_and_half_inputs():
    x = blobs(700, 24, seed=1)
    a = sf.kmeans(x, 30, iters=5, seed=4)
    b = sf.kmeans(x, 30, iters=5, seed=4)
    c = sf.kmeans(x, 30, iters=5, seed=5)
    assert torch.equal(a.centroids, b.centroids) and torch.equal(a.assignments, b.assignments)
    assert not torch.equal(a.centroids, c.centroids)
    half = x.to(torch.bfloat16)
    assert torch.equal(sf.kmeans(half, 30, iters=5, seed=4).centroids,
                       sf.kmeans(half.float(), 30, iters=5, seed=4).centroids)


# ---- the initialisers against oracles of the published sampling --------------------------


def kmeanspp_oracle(x, k, first, draws):
    """Greedy k-means++ as scikit-learn's sklearn.cluster._kmeans._kmeans_plusplus, in float64
    numpy, fed the same random numbers (first row, then per centroid one uniform per trial)."""
    x = x.double().numpy()
    picks = [first]
    closest = ((x - x[first]) ** 2).sum(1)
    for c in range(1, k):
        candidates = np.searchsorted(np.cumsum(closest), draws[c - 1] * closest.sum())
        candidates = np.minimum(candidates, len(x) - 1)
        dist = ((x[None, :, :] - x[candidates][:, None, :]) ** 2).sum(2)
        after = np.minimum(closest[None, :], dist)
        best = int(np.argmin(after.sum(1)))
        closest = after[best]
        picks.append(int(candidates[best]))
    return picks


@pytest.mark.parametrize("backend", ["reference"] + CPU_BACKENDS[:1])
def test_kmeanspp_init_follows_scikit_learn(backend):
    x = blobs(400, 5, seed=9, centers=12)
    k, seed = 12, 21
    g = torch.Generator().manual_seed(seed)
    first = int(torch.randint(400, (1,), generator=g))
    draws = torch.rand((k - 1, 2 + int(math.log(k))), generator=g, dtype=torch.float64).numpy()
    picks = kmeanspp_oracle(x, k, first, draws)
    got = sf.kmeans(x, k, iters=0, seed=seed, init="kmeans++", backend=backend)
    torch.testing.assert_close(got.centroids, x[picks])


def test_random_init_is_faiss_style_sampling():
    # faiss Clustering::train_encoded: the first k of a random permutation (k distinct rows).
    x = torch.randn(90, 4)
    got = sf.kmeans(x, 10, iters=0, seed=8, init="random")
    perm = torch.randperm(90, generator=torch.Generator().manual_seed(8))[:10]
    assert torch.equal(got.centroids, x[perm])
    assert len(set(perm.tolist())) == 10


def lloyd_oracle(x, centroids, iters):
    """Lloyd as EdoardoBotta/RQ-VAE-Recommender init/kmeans.py Kmeans._update_centroids
    (broadcast squared distances, argmin, mean of each cluster), in float64."""
    x, c = x.double(), centroids.double().clone()
    for _ in range(iters):
        codes = ((x[:, None, :] - c[None, :, :]) ** 2).sum(2).argmin(1)
        for j in range(c.shape[0]):
            members = x[codes == j]
            assert len(members), "the oracle run must not empty a cluster"
            c[j] = members.mean(0)
    return c


@pytest.mark.parametrize("backend", ["reference"] + CPU_BACKENDS[:1])
def test_lloyd_follows_published_algorithm(backend):
    x = blobs(600, 6, seed=3, centers=6)
    start = sf.kmeans(x, 6, iters=0, seed=1, init="kmeans++").centroids
    got = sf.kmeans(x, 6, iters=7, seed=1, init="kmeans++", backend=backend)
    torch.testing.assert_close(got.centroids.double(), lloyd_oracle(x, start, 7),
                               rtol=1e-5, atol=1e-5)


# ---- empty clusters and stopping ---------------------------------------------------------


def test_split_empty_follows_faiss_rule():
    centroids = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    counts = torch.tensor([0, 5, 1])
    out = ref.split_empty(centroids.clone(), counts, torch.Generator().manual_seed(0))
    # cluster 2 holds one row (weight 0), so cluster 1 is the only donor
    eps = ref.SPLIT_EPS
    torch.testing.assert_close(out[0], torch.tensor([4 * (1 + eps), 5 * (1 - eps), 6 * (1 + eps)]))
    torch.testing.assert_close(out[1], torch.tensor([4 * (1 - eps), 5 * (1 + eps), 6 * (1 - eps)]))
    torch.testing.assert_close(out[2], centroids[2])


@pytest.mark.parametrize("backend", ["reference"] + CPU_BACKENDS[:1])
def test_empty_clusters_are_split(backend, monkeypatch):
    # 6 distinct rows, each 40 times: random init must pick copies of one row twice or more,
    # and every later copy's cluster is empty after the first assignment (ties go to the
    # smaller index).
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(0)).repeat(40, 1)
    empties = []
    split = ref.split_empty

    def counting(centroids, counts, generator):
        empties.append(int((counts == 0).sum()))
        return split(centroids, counts, generator)

    monkeypatch.setattr(ref, "split_empty", counting)
    fit = sf.kmeans(x, 10, iters=4, seed=2, init="random", backend=backend)
    assert empties[0] >= 4
    assert torch.isfinite(fit.centroids).all()
    assert torch.unique(fit.centroids, dim=0).shape[0] == 10  # no centroid left a copy
    assert float(fit.inertia) < 1e-6 * float((x ** 2).sum())  # every row on a centroid


@pytest.mark.parametrize("backend", ["reference"] + CPU_BACKENDS[:1])
def test_tol_stops_early_like_scikit_learn(backend):
    x = blobs(800, 8, seed=4, centers=5)
    fit = sf.kmeans(x, 5, iters=100, seed=0, tol=1e-4, backend=backend)
    assert 1 <= fit.n_iter < 100
    longer = sf.kmeans(x, 5, iters=fit.n_iter + 5, seed=0, backend=backend)
    torch.testing.assert_close(longer.inertia, fit.inertia, rtol=1e-3, atol=0)


def test_inertia_never_increases_with_iterations():
    x = blobs(1500, 16, seed=6, centers=40)
    values = [float(sf.kmeans(x, 32, iters=i, seed=3, init="random").inertia) for i in range(6)]
    assert all(b <= a * (1 + 1e-6) for a, b in zip(values, values[1:])), values


# ---- faiss-style subsampling (max_points_per_centroid) ----------------------------------


@pytest.mark.parametrize("backend", ["reference"] + CPU_BACKENDS[:1])
def test_subsample_is_drawn_first_from_the_seed(backend):
    """max_points_per_centroid=m fits on m * k rows: a permutation drawn first from the seeded
    generator (faiss's rule), then the initial centroids from the same generator."""
    x = torch.randn(600, 8, generator=torch.Generator().manual_seed(2))
    k, m = 5, 40
    fit = sf.kmeans(x, k, iters=0, seed=7, init="random", max_points_per_centroid=m,
                    backend=backend)
    g = torch.Generator().manual_seed(7)
    sample = x[torch.randperm(600, generator=g)[:m * k].sort().values]
    assert torch.equal(fit.centroids, ref.init_centroids(sample, k, "random", g))
    # Assignments and inertia are those of every row.
    codes, dist = ref.assign(x, fit.centroids)
    assert fit.assignments.shape == (600,)
    assert float(fit.inertia) == pytest.approx(float(dist.double().sum()), rel=1e-6)
    again = sf.kmeans(x, k, iters=3, seed=7, init="random", max_points_per_centroid=m,
                      backend=backend)
    same = sf.kmeans(x, k, iters=3, seed=7, init="random", max_points_per_centroid=m,
                     backend=backend)
    other = sf.kmeans(x, k, iters=3, seed=8, init="random", max_points_per_centroid=m,
                      backend=backend)
    assert torch.equal(again.centroids, same.centroids)
    assert not torch.equal(again.centroids, other.centroids)


def test_no_subsample_when_n_is_at_most_m_times_k():
    x = torch.randn(200, 6, generator=torch.Generator().manual_seed(3))
    plain = sf.kmeans(x, 4, iters=5, seed=1)
    assert torch.equal(sf.kmeans(x, 4, iters=5, seed=1, max_points_per_centroid=50).centroids,
                       plain.centroids)


def test_subsampled_inertia_within_one_percent_of_faiss_subsampled():
    faiss = pytest.importorskip("faiss")
    # Unclustered data: no local optimum far from the others for one init to fall into.
    x = torch.randn(20_000, 32, generator=torch.Generator().manual_seed(4))
    k, iters, m = 64, 20, 64
    fit = sf.kmeans(x, k, iters=iters, seed=0, init="random", max_points_per_centroid=m)
    km = faiss.Kmeans(32, k, niter=iters, seed=0, max_points_per_centroid=m)
    km.train(x.numpy())
    theirs = float(ref.assign(x, torch.from_numpy(km.centroids))[1].double().sum())
    assert float(fit.inertia) <= 1.01 * theirs, (float(fit.inertia), theirs)


# ---- real embeddings: faiss and the RQ-VAE initialisation -------------------------------


@pytest.mark.parametrize("init", ["kmeans++", "random"])
def test_inertia_within_one_percent_of_faiss(shared_data, init):
    faiss = pytest.importorskip("faiss")
    x = torch.from_numpy(np.load(shared_data / "yelp" / "title_cat_minilm384.npy")).float()
    k, iters = 256, 20
    fit = sf.kmeans(x, k, iters=iters, seed=1, init=init)
    # faiss on every row (max_points_per_centroid above N: no subsampling), same iterations.
    km = faiss.Kmeans(x.shape[1], k, niter=iters, seed=1, max_points_per_centroid=10**9)
    km.train(x.numpy())
    faiss_inertia = float(ref.assign(x, torch.from_numpy(km.centroids))[1].double().sum())
    ours = float(fit.inertia)
    assert ours <= 1.01 * faiss_inertia, (ours, faiss_inertia)
    assert ours == pytest.approx(float(ref.assign(x, fit.centroids)[1].double().sum()), rel=1e-5)


def test_rq_init_levels_reduce_the_residual(shared_data):
    emb = np.load(shared_data / "amazon14_beauty" / "cf_emb64.npy")[1:-1]  # padding/mask rows
    x = torch.from_numpy(emb).float()
    books = sf.rq_init(x, 3, 256, iters=10, seed=0)
    assert books.shape == (3, 256, 64)
    # level 0 is k-means of x; level 1 is k-means (seed + 1) of the residual after level 0
    first = sf.kmeans(x, 256, iters=10, seed=0)
    torch.testing.assert_close(books[0], first.centroids)
    residual = x - first.centroids[first.assignments]
    torch.testing.assert_close(books[1], sf.kmeans(residual, 256, iters=10, seed=1).centroids)
    codes = sf.rq_encode(x, books)
    errors = [float(((x - sf.rq_decode(codes[:, :l], books[:l])) ** 2).sum()) for l in (1, 2, 3)]
    assert float((x ** 2).sum()) > errors[0] > errors[1] > errors[2], errors
    # the initialised codebooks encode better than random rows as codebooks
    g = torch.Generator().manual_seed(0)
    scales = torch.tensor([1.0, 4, 16])[:, None, None]
    rows = x[torch.randint(len(x), (3, 256), generator=g)] / scales
    random_codes = sf.rq_encode(x, rows)
    assert errors[2] < float(((x - sf.rq_decode(random_codes, rows)) ** 2).sum())


# ---- native bounds and bad inputs --------------------------------------------------------


@pytest.mark.skipif(_native._C is None, reason="semid_fast._C is not built")
def test_native_update_rejects_codes_out_of_range():
    x = torch.randn(10, 4)
    codes = torch.zeros(10, dtype=torch.long)
    codes[3] = 7
    sums = torch.empty((5, 4), dtype=torch.float64)
    counts = torch.empty(5, dtype=torch.long)
    status = _native.cpu().kmeans_update_f32(x.data_ptr(), 10, 4, codes.data_ptr(), 5,
                                             sums.data_ptr(), counts.data_ptr(), 2)
    assert status == 1


BAD = [
    (lambda: sf.kmeans(torch.randn(5, 3), 6), ValueError, "k=6"),
    (lambda: sf.kmeans(torch.randn(5, 3), 0), ValueError, "k must be >= 1"),
    (lambda: sf.kmeans(torch.randn(5, 3), True), TypeError, "k must be an int"),
    (lambda: sf.kmeans(torch.randn(5, 3), 2.0), TypeError, "k must be an int"),
    (lambda: sf.kmeans(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), 1), ValueError, "NaN"),
    (lambda: sf.kmeans(torch.tensor([[1.0, float("inf")], [0.0, 1.0]]), 1), ValueError, "inf"),
    (lambda: sf.kmeans(torch.randn(5), 2), ValueError, "x must have shape"),
    (lambda: sf.kmeans(torch.randn(2, 5, 3), 2), ValueError, "x must have shape"),
    (lambda: sf.kmeans(torch.ones(5, 3, dtype=torch.int64), 2), TypeError, "x must have dtype"),
    (lambda: sf.kmeans(torch.randn(5, 3).numpy(), 2), TypeError, "x must be a torch.Tensor"),
    (lambda: sf.kmeans(torch.randn(0, 3), 1), ValueError, "at least one row"),
    (lambda: sf.kmeans(torch.randn(5, 3), 2, iters=-1), ValueError, "iters"),
    (lambda: sf.kmeans(torch.randn(5, 3), 2, seed=-1), ValueError, "seed"),
    (lambda: sf.kmeans(torch.randn(5, 3), 2, init="kmeans||"), ValueError, "init"),
    (lambda: sf.kmeans(torch.randn(5, 3), 2, tol=-1.0), ValueError, "tol"),
    (lambda: sf.kmeans(torch.randn(5, 3), 2, max_points_per_centroid=0), ValueError,
     "max_points_per_centroid"),
    (lambda: sf.kmeans(torch.randn(5, 3), 2, max_points_per_centroid=2.5), TypeError,
     "max_points_per_centroid"),
    (lambda: sf.kmeans(torch.randn(5, 3), 2, backend="gpu"), ValueError, "backend"),
    (lambda: sf.rq_init(torch.randn(5, 3), 0, 2), ValueError, "levels"),
    (lambda: sf.rq_init(torch.randn(5, 3), 2, 9), ValueError, "k=9"),
]


@pytest.mark.parametrize("call,error,match", BAD)
def test_bad_inputs(call, error, match):
    with pytest.raises(error, match=match):
        call()

"""Balanced assignment by Sinkhorn-Knopp (``sk_epsilon``) in rq_encode, rq_quantize and
gumbel_quantize: every backend against an oracle of the published algorithm and against the
reference.

Backends compute the distances with their own float32 rounding and the Sinkhorn iterations in
their own order, so a row may get another code where the oracle's Q has two equal entries (up
to rounding): identical codewords, or a batch of fewer rows than codewords, where the last
column scaling leaves each row several entries equal to the last bit. The checks require each
disagreement, at the first level where any row differs (before that, every residual is the
same on both sides), to be such a tie of the oracle's Q, and every other row to agree.
"""

import numpy as np
import pytest
import torch

import semid_fast as sf
from semid_fast.ops import quantize as ops
from semid_fast.reference import gumbel as gref
from semid_fast.reference import quantize as ref
from tests.conftest import backend_pairs, cpu_backends, rq_inputs, skip_unavailable

CPU_BACKENDS = cpu_backends()
MIN_AGREEMENT = 0.999  # fraction of the rows that are no tie with all codes equal to the oracle's
TIE_RTOL = 1e-6  # a tie: the Q entry picked is within this (relative) of the row's largest


# ---------------------------------------------------------------------------------------------
# Oracle
# ---------------------------------------------------------------------------------------------


def published_sk_level(residual: np.ndarray, book: np.ndarray, epsilon: float, iters: int):
    """One level of LC-Rec's index/models/vq.py VectorQuantizer.forward with use_sk (the same
    in LETTER's RQ-VAE/models/vq.py and DIGER's vq.py), in numpy: float32 distances
    |r|^2 + |c|^2 - 2 r.c; center_distance_for_constraint in float32 (middle of the global
    max and min, amplitude max - middle + 1e-5); then in float64 layers.py's
    sinkhorn_algorithm (Q = exp(-d / eps) / its sum; per iteration rows to sum 1/B, columns to
    1/K; Q * B) and the argmax of each row. Returns (codes, Q, centred distances)."""
    r, c = residual.astype(np.float32), book.astype(np.float32)
    d = (r ** 2).sum(1, keepdims=True) + (c ** 2).sum(1, keepdims=True).T - 2 * (r @ c.T)
    top, bottom = d.max(), d.min()
    middle = (top + bottom) / np.float32(2)
    amplitude = top - middle + np.float32(1e-5)
    centred = ((d - middle) / amplitude).astype(np.float64)
    q = np.exp(-centred / epsilon)
    rows, cols = q.shape
    q /= q.sum()
    for _ in range(iters):
        q /= q.sum(axis=1, keepdims=True)
        q /= rows
        q /= q.sum(axis=0, keepdims=True)
        q /= cols
    q *= rows
    return q.argmax(axis=1), q, centred


def published_rq_encode(x: np.ndarray, codebooks: np.ndarray, epsilons, iters: int):
    """LC-Rec's index/models/rq.py ResidualVectorQuantizer.forward: level by level, the
    nearest codeword (epsilon 0) or the Sinkhorn code, subtracted from the residual.
    Returns codes (N, L) and, per level, Q (None for a nearest-codeword level)."""
    residual = x.astype(np.float32)
    codes, qs = [], []
    for book, epsilon in zip(codebooks.astype(np.float32), epsilons):
        if epsilon > 0:
            code, q, _ = published_sk_level(residual, book, epsilon, iters)
        else:
            d = ((residual ** 2).sum(1, keepdims=True) + (book ** 2).sum(1)[None, :]
                 - 2 * (residual @ book.T))
            code, q = d.argmin(axis=1), None
        residual = residual - book[code]
        codes.append(code)
        qs.append(q)
    return np.stack(codes, axis=1), qs


def assert_matches_oracle(ours: torch.Tensor, x, codebooks, epsilons, iters,
                          min_agreement=MIN_AGREEMENT):
    """Every row that differs at the first level with a difference picks a tie of the
    oracle's Q there, and of the other rows >= min_agreement have all codes equal to the
    oracle's. Returns (agreement, number of ties)."""
    want, qs = published_rq_encode(x.detach().cpu().numpy(), codebooks.detach().cpu().numpy(),
                                   epsilons, iters)
    got = ours.cpu().numpy()
    same = (got == want).all(axis=1)
    tie = np.zeros_like(same)
    differs = np.nonzero((got != want).any(axis=0))[0]
    if len(differs):
        level = differs[0]
        rows = np.nonzero(got[:, level] != want[:, level])[0]
        q = qs[level]
        assert q is not None, f"a nearest-codeword level ({level}) differs on rows {rows[:5]}"
        picked = q[rows, got[rows, level]]
        best = q[rows, want[rows, level]]
        assert (picked >= best * (1 - TIE_RTOL)).all(), (
            f"level {level}: rows {rows[:5]} pick Q {picked[:5]} where the oracle's is "
            f"{best[:5]}")
        tie[rows] = True
    agreement = same[~tie].mean() if (~tie).any() else 1.0
    assert agreement >= min_agreement, f"{agreement:.5f} of the rows that are no tie agree"
    return agreement, int(tie.sum())


# (N, D, K, L, sk_epsilon, sk_iters): N off the cpu row block (48) and tiny, K ragged and 256,
# LC-Rec's / LETTER's configs (0.003 at the last level only; here with vq.py's default of 100
# iterations), DIGER's (0.003 at every level, 50), LETTER's vq.py default 0.01, larger ones.
CASES = [
    (2, 8, 4, 2, 0.003, 50),
    (5, 32, 256, 3, [0.0, 0.0, 0.003], 50),  # a colliding group re-encoded (generate_indices)
    (37, 32, 256, 3, [0.0, 0.0, 0.003], 100),
    (49, 7, 5, 2, 0.01, 50),
    (130, 64, 100, 3, 0.003, 50),
    (400, 16, 64, 3, [0.1, 0.0, 0.05], 20),
    (1000, 32, 256, 3, 0.003, 50),
    (257, 24, 33, 1, 0.01, 0),
    (96, 384, 64, 2, [0.003, 0.02], 7),
]


# ---------------------------------------------------------------------------------------------
# rq_encode
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device,backend", backend_pairs(reference=True))
@pytest.mark.parametrize("n,d,k,levels,eps,iters", CASES)
def test_rq_encode_codes_equal_the_published_algorithm(device, backend, n, d, k, levels, eps,
                                                       iters):
    skip_unavailable(device, backend)
    x, codebooks = rq_inputs(n, d, k, levels, seed=n + 7 * k)
    codes = sf.rq_encode(x.to(device), codebooks.to(device), sk_epsilon=eps, sk_iters=iters,
                         backend=backend)
    assert codes.shape == (n, levels) and codes.dtype == torch.int64
    epsilons = eps if isinstance(eps, list) else [eps] * levels
    assert_matches_oracle(codes, x, codebooks, epsilons, iters)
    if n >= k:  # no ties by construction
        reference = ref.rq_encode(x, codebooks, sk_epsilon=eps, sk_iters=iters)
        assert (codes.cpu() == reference).all(1).float().mean() >= MIN_AGREEMENT


@pytest.mark.parametrize("backend", ["reference"] + CPU_BACKENDS)
def test_sinkhorn_codes_of_every_backend_equal_the_published_algorithm(backend):
    """The Sinkhorn step alone, on the oracle's own float32 distances."""
    g = torch.Generator().manual_seed(3)
    for n, k, eps, iters in [(500, 256, 0.003, 50), (333, 17, 0.05, 100), (64, 3, 0.01, 5)]:
        x = torch.randn(n, 12, generator=g)
        book = torch.randn(k, 12, generator=g)
        want, q, _ = published_sk_level(x.numpy(), book.numpy(), eps, iters)
        dist = ref.sk_distances(x, book)
        got = ops.sinkhorn_codes(backend, dist, eps, iters).numpy()
        rows = np.nonzero(got != want)[0]
        assert (q[rows, got[rows]] >= q[rows, want[rows]] * (1 - TIE_RTOL)).all()
        assert len(rows) <= n * (1 - MIN_AGREEMENT)


@pytest.mark.parametrize("backend", ["reference"] + CPU_BACKENDS)
def test_empty_and_one_row_batches(backend):
    x, codebooks = rq_inputs(1, 8, 5, 2, seed=1)
    for rows in (x[:0], x):
        codes = sf.rq_encode(rows, codebooks, sk_epsilon=0.01, backend=backend)
        assert codes.shape == (rows.shape[0], 2) and ((codes >= 0) & (codes < 5)).all()
        codes, quantized, loss = sf.rq_quantize(rows, codebooks, sk_epsilon=0.01, backend=backend)
        assert codes.shape == (rows.shape[0], 2) and quantized.shape == rows.shape
        codes, _, soft = sf.gumbel_quantize(rows, codebooks, sk_epsilon=0.01, seed=0,
                                            backend=backend)
        assert codes.shape == (rows.shape[0], 2) and soft.shape == (rows.shape[0], 2, 5)


def test_sinkhorn_balances_a_skewed_batch():
    """Rows crowded around a few codewords: Sinkhorn spreads them over more codes."""
    g = torch.Generator().manual_seed(8)
    book = torch.randn(1, 64, 16, generator=g)
    x = book[0, :4].repeat(250, 1) + 0.3 * torch.randn(1000, 16, generator=g)
    plain = sf.rq_encode(x, book, backend="cpu")[:, 0]
    balanced = sf.rq_encode(x, book, sk_epsilon=0.003, backend="cpu")[:, 0]
    assert balanced.unique().numel() > 2 * plain.unique().numel()
    assert balanced.bincount().max() < plain.bincount().max() / 2


# ---------------------------------------------------------------------------------------------
# rq_quantize
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device,backend", backend_pairs(reference=True))
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("n,d,k,levels,eps",
                         [(200, 16, 64, 3, 0.003), (61, 32, 10, 2, [0.0, 0.01])])
def test_rq_quantize_with_sinkhorn_equals_the_reference(device, backend, reduction, n, d, k,
                                                        levels, eps):
    skip_unavailable(device, backend)
    x, codebooks = rq_inputs(n, d, k, levels, seed=d + k)
    upstream = torch.randn(n, d, generator=torch.Generator().manual_seed(1))

    def run(fn, dev):
        xi = x.to(dev, copy=True).requires_grad_()
        cb = codebooks.to(dev, copy=True).requires_grad_()
        codes, quantized, loss = fn(xi, cb)
        ((quantized * upstream.to(dev)).sum() + 1.3 * loss).backward()
        return [t.detach().cpu() for t in (codes, quantized, loss, xi.grad, cb.grad)]

    ours = run(lambda xi, cb: sf.rq_quantize(xi, cb, beta=0.25, reduction=reduction,
                                             sk_epsilon=eps, sk_iters=30, backend=backend), device)
    theirs = run(lambda xi, cb: ref.rq_quantize(xi, cb, 0.25, reduction, eps, 30), "cpu")
    assert torch.equal(ours[0], theirs[0])
    epsilons = eps if isinstance(eps, list) else [eps] * levels
    assert_matches_oracle(ours[0], x, codebooks, epsilons, 30, min_agreement=1.0)
    for a, b in zip(ours[1:], theirs[1:]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert not torch.equal(ours[0], sf.rq_encode(x, codebooks, backend="cpu"))


# ---------------------------------------------------------------------------------------------
# gumbel_quantize
# ---------------------------------------------------------------------------------------------


def noise_patterns(n):
    per_row = (torch.arange(n) % 3 == 0).float() * 1.5  # DIGER's hot rows noisy, cold rows 0
    return {"noisy": 1.0, "quiet": 0.0, "per-row": per_row}


@pytest.mark.parametrize("device,backend", backend_pairs(reference=True))
@pytest.mark.parametrize("noise", ["noisy", "quiet", "per-row"])
@pytest.mark.parametrize("n,d,k,levels,eps",
                         [(150, 16, 32, 2, 0.003), (47, 8, 5, 3, [0.0, 0.01, 0.003])])
def test_gumbel_quantize_with_sinkhorn_equals_the_reference(device, backend, noise, n, d, k,
                                                            levels, eps):
    skip_unavailable(device, backend)
    x, codebooks = rq_inputs(n, d, k, levels, seed=3 * n)
    scale = noise_patterns(n)[noise]

    def run(fn, dev):
        xi = x.to(dev, copy=True).requires_grad_()
        cb = codebooks.to(dev, copy=True).requires_grad_()
        ns = scale.to(dev) if isinstance(scale, torch.Tensor) else scale
        codes, quantized, soft = fn(xi, cb, ns)
        (quantized.square().sum() + (soft * soft).sum()).backward()
        return [t.detach().cpu() for t in (codes, quantized, soft, xi.grad, cb.grad)]

    kwargs = dict(tau=2.0, seed=11, sk_epsilon=eps, sk_iters=50)
    ours = run(lambda xi, cb, ns: sf.gumbel_quantize(xi, cb, noise_scale=ns, backend=backend,
                                                     **kwargs), device)
    theirs = run(lambda xi, cb, ns: gref.gumbel_quantize(xi, cb, noise_scale=ns, **kwargs), "cpu")
    assert torch.equal(ours[0], theirs[0])
    for a, b in zip(ours[1:], theirs[1:]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", ["reference"] + CPU_BACKENDS)
def test_gumbel_quantize_quiet_rows_follow_digers_sinkhorn(backend):
    """DIGER's vq.py VectorQuantizer.forward (use_gumbel, sk_epsilon > 0): rows without noise
    take the Sinkhorn argmax on the centred distances, and the soft assignment is
    softmax(-centred / tau); noisy rows take the argmax of the perturbed centred logits."""
    x, codebooks = rq_inputs(300, 16, 64, 1, seed=5)
    scale = noise_patterns(300)["per-row"]
    codes, _, soft = sf.gumbel_quantize(x, codebooks[0], tau=2.0, noise_scale=scale, seed=4,
                                        sk_epsilon=0.003, backend=backend)
    want, _, centred = published_sk_level(x.numpy(), codebooks[0].numpy(), 0.003, 50)
    quiet = (scale == 0).numpy()
    assert (codes.numpy()[quiet] == want[quiet]).all()
    expected_soft = torch.from_numpy(-centred).float().div(2.0).softmax(-1)
    torch.testing.assert_close(soft[quiet], expected_soft[quiet], rtol=1e-4, atol=1e-6)
    logits = torch.from_numpy(-centred).float()
    noise = sf.gumbel_noise((300, 64), seed=4, offset=0)
    sampled = ((logits + 1.5 * noise) / 2.0).argmax(-1)
    noisy = ~torch.from_numpy(quiet)
    assert (codes[noisy] == sampled[noisy]).float().mean() > 0.99


# ---------------------------------------------------------------------------------------------
# real embeddings
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["reference"] + CPU_BACKENDS)
def test_real_embeddings_codes_equal_the_published_algorithm(shared_data, backend):
    """Yelp's MiniLM item embeddings, two levels of 256 distinct codewords taken from random
    rows (of x, then of the oracle's non-zero level-0 residuals), LC-Rec's / DIGER's epsilon
    0.003 and DIGER's 50 iterations."""
    path = shared_data / "yelp" / "title_cat_minilm384.npy"
    if not path.exists():
        pytest.skip(f"{path} not found")
    g = torch.Generator().manual_seed(0)
    full = torch.from_numpy(np.load(path)).float()
    x = full[torch.randperm(full.shape[0], generator=g)[:8192]]

    def distinct_rows(rows):
        rows = rows[rows.norm(dim=1) > 0].unique(dim=0)
        return rows[torch.randperm(rows.shape[0], generator=g)[:256]]

    level0 = distinct_rows(x)
    codes0, _ = published_rq_encode(x.numpy(), level0[None].numpy(), [0.003], 50)
    level1 = distinct_rows(x - level0[torch.from_numpy(codes0[:, 0])])
    codebooks = torch.stack([level0, level1])
    codes = sf.rq_encode(x, codebooks, sk_epsilon=0.003, sk_iters=50, backend=backend)
    agreement, ties = assert_matches_oracle(codes, x, codebooks, [0.003, 0.003], 50)
    assert ties <= 8  # identical rows of x split over codewords by rounding
    plain = sf.rq_encode(x, codebooks, backend="cpu")
    assert codes[:, 0].bincount().max() < plain[:, 0].bincount().max()  # more balanced


# ---------------------------------------------------------------------------------------------
# arguments
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("call,error,match", [
    (lambda x, cb: sf.rq_encode(x, cb, beam_width=4, sk_epsilon=0.003), ValueError, "beam_width"),
    (lambda x, cb: sf.rq_encode(x, cb, sk_epsilon=-0.1), ValueError, "sk_epsilon"),
    (lambda x, cb: sf.rq_encode(x, cb, sk_epsilon=float("nan")), ValueError, "sk_epsilon"),
    (lambda x, cb: sf.rq_encode(x, cb, sk_epsilon=[0.003]), ValueError, "sk_epsilon"),
    (lambda x, cb: sf.rq_encode(x, cb, sk_epsilon="0.003"), TypeError, "sk_epsilon"),
    (lambda x, cb: sf.rq_encode(x, cb, sk_epsilon=0.003, sk_iters=-1), ValueError, "sk_iters"),
    (lambda x, cb: sf.rq_quantize(x, cb, sk_epsilon=[0.1, 0.1, 0.1]), ValueError, "sk_epsilon"),
    (lambda x, cb: sf.rq_quantize(x, cb, sk_epsilon=0.01, sk_iters=2.5), ValueError, "sk_iters"),
    (lambda x, cb: sf.gumbel_quantize(x, cb, sk_epsilon=[0.1]), ValueError, "sk_epsilon"),
    (lambda x, cb: sf.gumbel_quantize(x, cb[0], sk_epsilon=True), TypeError, "sk_epsilon"),
])
def test_bad_sinkhorn_arguments_raise_clear_errors(call, error, match):
    x, codebooks = rq_inputs(10, 4, 3, 2, seed=0)
    with pytest.raises(error, match=match):
        call(x, codebooks)

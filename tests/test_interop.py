"""semid_fast.interop, and semid_fast's encoders against faiss-cpu and vector-quantize-pytorch.

faiss is the oracle nobody here wrote: the same codebooks loaded into a faiss
ResidualQuantizer / ProductQuantizer / OPQMatrix must give the same codes as
``rq_encode`` / ``pq_encode`` on every CPU backend. Codes may differ only where two choices
are a near-tie in exact (float64) arithmetic; `_rq_oracle64` / `_pq_oracle64` find those.
Inputs are fresh random each run; the seed is in every failure message.
"""

from __future__ import annotations

import contextlib
import secrets
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

faiss = pytest.importorskip("faiss")

import semid_fast  # noqa: E402
from semid_fast import interop  # noqa: E402

BACKENDS = semid_fast.available_backends("cpu")
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TIE_REL = 1e-6  # a gap below TIE_REL * scale in float64 is a near-tie float32 may break either way
TRITON_ROWS = 64  # the Triton interpreter runs ~12 ms per program: keep its grids small
ORACLE_ROWS = 512  # rows the float64 oracle checks besides every row that differs from faiss


@pytest.fixture
def seed():
    return secrets.randbelow(2**31)


def _rows(backend: str, n: int) -> int:
    """Rows to encode: few for the Triton interpreter, fewer for the slow reference."""
    return min(n, {"triton": TRITON_ROWS, "reference": 1000}.get(backend, 3000))


# ---------------------------------------------------------------------------------------------
# helpers: faiss codes, float64 oracles with near-tie detection, comparisons
# ---------------------------------------------------------------------------------------------


def faiss_rq_codes(rq, x: torch.Tensor) -> torch.Tensor:
    """(N, L) int64 codes from faiss's packed RQ codes."""
    packed = rq.compute_codes(np.ascontiguousarray(x.numpy(), dtype=np.float32))
    nbits = faiss.vector_to_array(rq.nbits).astype(int).tolist()
    return torch.from_numpy(faiss.unpack_bitstrings(packed, nbits).astype(np.int64))


def faiss_pq_codes(pq, x: np.ndarray) -> torch.Tensor:
    packed = pq.compute_codes(np.ascontiguousarray(x, dtype=np.float32))
    return torch.from_numpy(faiss.unpack_bitstrings(packed, pq.M, pq.nbits).astype(np.int64))


def _rq_oracle64(x: torch.Tensor, codebooks: torch.Tensor, beam: int):
    """Beam (beam=1: greedy) RQ encoding in float64.

    Returns codes (N, L) and per row the smallest gap, over all levels, between the last kept
    and the first dropped candidate (and, for beam > 1, between the two best final beams),
    relative to a scale of the squared norms involved.
    """
    x = x.double()
    cb = codebooks.double()
    n = x.shape[0]
    levels, k, _ = cb.shape
    residuals = x[:, None, :]
    errors = (residuals * residuals).sum(-1)
    codes = torch.zeros((n, 1, 0), dtype=torch.long)
    gap = torch.full((n,), float("inf"), dtype=torch.float64)
    for level in range(levels):
        c = cb[level]
        b = residuals.shape[1]
        cand = (errors[:, :, None] - 2.0 * residuals @ c.T + (c * c).sum(1)).reshape(n, b * k)
        keep = min(beam, b * k)
        vals, flat = cand.topk(min(keep + 1, b * k), dim=1, largest=False, sorted=True)
        if vals.shape[1] > keep:
            gap = torch.minimum(gap, vals[:, keep] - vals[:, keep - 1])
        errors, flat = vals[:, :keep], flat[:, :keep]
        parent, chosen = flat // k, flat % k
        residuals = residuals.gather(1, parent[..., None].expand(-1, -1, residuals.shape[2])) - c[chosen]
        codes = torch.cat([codes.gather(1, parent[..., None].expand(-1, -1, codes.shape[2])),
                           chosen[..., None]], dim=2)
    if errors.shape[1] > 1:
        gap = torch.minimum(gap, errors[:, 1] - errors[:, 0])
    scale = (x * x).sum(1) + (cb * cb).sum(2).amax(1).sum()
    return codes[:, 0, :], gap / scale


def _checked_rows(differ: torch.Tensor) -> torch.Tensor:
    """Rows the float64 oracle looks at: every differing row plus the first ORACLE_ROWS
    (inputs are random or shuffled), to keep the oracle cheap."""
    rows = torch.zeros_like(differ)
    rows[:ORACLE_ROWS] = True
    return (rows | differ).nonzero()[:, 0]


def check_rq_codes(ours, theirs, x, codebooks, beam: int, what: str, max_tie: float = 0.05):
    """ours == faiss except on near-tie rows; >= 99.9% of rows identical.

    max_tie: the largest fraction of near-tie rows (in the sample) at which the check still
    has power.
    """
    n = x.shape[0]
    differ = (ours != theirs).any(1)
    allowed = max(1, n // 1000)
    assert int(differ.sum()) <= allowed, (
        f"{what}: {int(differ.sum())}/{n} rows differ from faiss (rows {differ.nonzero()[:5, 0].tolist()})")
    rows = _checked_rows(differ)
    exact, rel_gap = _rq_oracle64(x[rows], codebooks, beam)
    tie = rel_gap <= TIE_REL
    sample = rows < ORACLE_ROWS
    assert tie[sample].float().mean() <= max_tie, (
        f"{what}: {int(tie[sample].sum())}/{int(sample.sum())} near-tie rows, test has no power")
    # faiss and the float64 oracle agree away from ties (checks the oracle, not us)
    assert torch.equal(theirs[rows][~tie], exact[~tie]), f"{what}: faiss differs from the float64 oracle"
    bad = differ[rows] & ~tie
    assert not bad.any(), (
        f"{what}: rows {rows[bad][:5].tolist()} differ from faiss without a near-tie; "
        f"ours {ours[rows][bad][:3].tolist()} faiss {theirs[rows][bad][:3].tolist()}")


def _pq_oracle64(x: torch.Tensor, codebooks: torch.Tensor, rotation=None, center=None):
    """PQ codes in float64 and, per (row, sub-space), the relative best/second-best gap."""
    x = _pq_input64(x, rotation, center)
    cb = codebooks.double()
    m, k, dsub = cb.shape
    parts = x.reshape(x.shape[0], m, dsub).transpose(0, 1)  # (M, N, dsub)
    dist = ((parts * parts).sum(-1, keepdim=True) - 2.0 * parts @ cb.transpose(1, 2)
            + (cb * cb).sum(-1)[:, None, :])  # (M, N, K)
    vals, idx = dist.topk(min(2, k), dim=2, largest=False, sorted=True)
    gap = (vals[..., 1] - vals[..., 0]) if k > 1 else torch.full_like(vals[..., 0], float("inf"))
    scale = (parts * parts).sum(-1) + (cb * cb).sum(-1).amax(1)[:, None]
    return idx[..., 0].T, (gap / scale).T


def _pq_input64(x, rotation=None, center=None):
    """What faiss cuts into sub-vectors, in float64: x @ R.T - c."""
    x = x.double()
    if rotation is not None:
        x = x @ rotation.double().T
    return x if center is None else x - center.double()


def check_pq_codes(ours, theirs, x, codebooks, rotation, what: str, center=None):
    """ours == faiss except on near-tie entries; >= 99.9% of codes identical.

    Returns the number of codes that differ (each one a near-tie)."""
    differ = ours != theirs
    allowed = max(1, ours.numel() // 1000)
    assert int(differ.sum()) <= allowed, f"{what}: {int(differ.sum())}/{ours.numel()} codes differ from faiss"
    rows = _checked_rows(differ.any(1))
    exact, rel_gap = _pq_oracle64(x[rows], codebooks, rotation, center)
    tie = rel_gap <= TIE_REL
    sample = rows < ORACLE_ROWS
    assert tie[sample].float().mean() <= 0.05, f"{what}: {int(tie[sample].sum())} near-tie codes, no power"
    assert torch.equal(theirs[rows][~tie], exact[~tie]), f"{what}: faiss differs from the float64 oracle"
    bad = differ[rows] & ~tie
    where = [(int(rows[i]), int(j)) for i, j in bad.nonzero()[:5]]
    assert not bad.any(), f"{what}: codes at (row, sub-space) {where} differ from faiss without a near-tie"
    if differ.any():  # and the total reconstruction error is faiss's (or better)
        xr = _pq_input64(x, rotation, center)
        cb = codebooks.double()
        errors = [sum(float(((xr[:, j * cb.shape[2]:(j + 1) * cb.shape[2]] - cb[j][c[:, j]]) ** 2).sum())
                      for j in range(cb.shape[0])) for c in (ours, theirs)]
        assert errors[0] <= errors[1] * (1 + 1e-4), f"{what}: total error {errors} (ours, faiss)"
    return int(differ.sum())


def random_rq_codebooks(gen, levels, k, d):
    """Codebooks whose scale shrinks with the level, like trained RQ codebooks."""
    scales = 0.5 ** torch.arange(levels, dtype=torch.float32)
    return torch.randn(levels, k, d, generator=gen) * scales[:, None, None]


def random_rotation(gen, d):
    q, r = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).float()


def clustered(gen, n, d, centers=32):
    """Gaussian-mixture data: something for faiss to train on."""
    c = torch.randn(centers, d, generator=gen)
    return c[torch.randint(0, centers, (n,), generator=gen)] + 0.3 * torch.randn(n, d, generator=gen)


@contextlib.contextmanager
def faiss_one_thread():
    """faiss training on one OpenMP thread: on a busy 2-core machine its OpenMP + BLAS
    threads oversubscribe (100x slower). faiss and torch share the OpenMP runtime, so
    torch's thread count is restored too."""
    torch_threads, faiss_threads = torch.get_num_threads(), faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(faiss_threads)
        torch.set_num_threads(torch_threads)


def train_faiss_rq(x: np.ndarray, levels: int, nbits: int, niter: int = 6):
    rq = faiss.ResidualQuantizer(x.shape[1], levels, nbits)
    rq.cp.niter = niter
    rq.train_type = faiss.ResidualQuantizer.Train_default  # plain k-means per level: quick
    rq.max_beam_size = 1  # cheap training; beam set again before encoding
    with faiss_one_thread():
        rq.train(np.ascontiguousarray(x, dtype=np.float32))
    return rq


def train_faiss_opq_pq(x: np.ndarray, m: int, nbits: int = 8, niter: int = 4, max_train: int = 4096):
    """OPQMatrix + ProductQuantizer with a small training budget (the OPQ alternation uses a
    4-bit inner PQ; the final PQ is 8-bit k-means on the rotated data)."""
    d = x.shape[1]
    x = np.ascontiguousarray(x[:max_train], dtype=np.float32)
    opq = faiss.OPQMatrix(d, m)
    opq.niter, opq.niter_pq, opq.niter_pq_0 = 3, 2, 2
    inner = faiss.ProductQuantizer(d, m, 4)  # kept alive by this frame while training
    opq.pq = inner
    pq = faiss.ProductQuantizer(d, m, nbits)
    pq.cp.niter = niter
    with faiss_one_thread():
        opq.train(x)
        pq.train(opq.apply_py(x))
    opq.pq = None  # don't leave a pointer to `inner` behind
    return opq, pq


# ---------------------------------------------------------------------------------------------
# round trips and conventions
# ---------------------------------------------------------------------------------------------


def test_rq_round_trip_and_layout(seed):
    gen = torch.Generator().manual_seed(seed)
    levels, nbits, d = 3, 5, 24
    cb = random_rq_codebooks(gen, levels, 1 << nbits, d)
    rq = interop.codebooks_to_faiss_rq(cb)
    assert rq.is_trained and rq.M == levels and rq.d == d and rq.max_beam_size == 1
    back = interop.codebooks_from_faiss_rq(rq)
    assert back.dtype == torch.float32 and back.shape == (levels, 1 << nbits, d)
    assert torch.equal(back, cb), f"seed={seed}"
    # layout: faiss decoding of random codes == our rq_decode with the same codebooks
    codes = torch.randint(0, 1 << nbits, (200, levels), generator=gen)
    packed = faiss.pack_bitstrings(codes.numpy().astype(np.int32), nbits)
    np.testing.assert_allclose(rq.decode(packed), semid_fast.rq_decode(codes, back).numpy(),
                               rtol=1e-5, atol=1e-5, err_msg=f"seed={seed}")

    # a faiss-trained quantizer, also given as an index: faiss -> ours -> faiss keeps its codes
    x = clustered(gen, 1500, d).numpy()
    index = faiss.IndexResidualQuantizer(d, levels, nbits)
    index.rq.cp.niter = 4
    index.rq.max_beam_size = 1
    index.rq.train_type = faiss.ResidualQuantizer.Train_default
    with faiss_one_thread():
        index.train(x)
    trained = interop.codebooks_from_faiss_rq(index)
    assert torch.equal(trained, interop.codebooks_from_faiss_rq(index.rq))
    again = interop.codebooks_to_faiss_rq(trained)
    assert torch.equal(interop.codebooks_from_faiss_rq(again), trained)
    assert np.array_equal(again.compute_codes(x), index.rq.compute_codes(x)), f"seed={seed}"


def test_rq_to_faiss_options():
    cb = torch.randn(2, 16, 8)
    rq = interop.codebooks_to_faiss_rq(cb, beam_width=7, use_beam_lut=True)
    assert rq.max_beam_size == 7 and rq.use_beam_LUT == 1
    assert faiss.vector_to_array(rq.codebook_cross_products).size > 0  # tables for the LUT
    # numpy input, float64, is accepted and stored as float32
    rq2 = interop.codebooks_to_faiss_rq(cb.double().numpy())
    assert torch.equal(interop.codebooks_from_faiss_rq(rq2), cb)


def test_pq_round_trip_and_layout(seed):
    gen = torch.Generator().manual_seed(seed)
    m, nbits, dsub = 4, 6, 5
    cb = torch.randn(m, 1 << nbits, dsub, generator=gen)
    pq = interop.codebooks_to_faiss_pq(cb)
    assert (pq.M, pq.ksub, pq.dsub, pq.d) == (m, 1 << nbits, dsub, m * dsub)
    back = interop.codebooks_from_faiss_pq(pq)
    assert torch.equal(back, cb), f"seed={seed}"
    codes = torch.randint(0, 1 << nbits, (100, m), generator=gen)
    packed = faiss.pack_bitstrings(codes.numpy().astype(np.int32), nbits)
    np.testing.assert_allclose(pq.decode(packed), semid_fast.pq_decode(codes, back).numpy(),
                               rtol=1e-6, atol=1e-6)

    x = clustered(gen, 1200, m * dsub).numpy()
    trained = faiss.ProductQuantizer(m * dsub, m, nbits)
    trained.cp.niter = 4
    with faiss_one_thread():
        trained.train(x)
    index = faiss.IndexPQ(m * dsub, m, nbits)
    index.pq = trained
    index.is_trained = True
    got = interop.codebooks_from_faiss_pq(trained)
    assert torch.equal(interop.codebooks_from_faiss_pq(index), got)
    again = interop.codebooks_to_faiss_pq(got)
    assert np.array_equal(again.compute_codes(x), trained.compute_codes(x)), f"seed={seed}"


def test_opq_convention_and_round_trip(seed):
    """faiss applies OPQMatrix.A as y = A x per vector: rows become x @ A.T."""
    gen = torch.Generator().manual_seed(seed)
    d, m = 16, 4
    x = clustered(gen, 600, d).numpy()
    opq, pq = train_faiss_opq_pq(x, m, nbits=5)
    r = interop.rotation_from_faiss_opq(opq)
    assert r.shape == (d, d) and r.dtype == torch.float32
    xt = torch.from_numpy(x)
    applied = torch.from_numpy(opq.apply_py(x))
    assert torch.allclose(applied, xt @ r.T, atol=1e-5), f"seed={seed}"
    assert not torch.allclose(applied, xt @ r, atol=1e-2), "trained rotation is symmetric?"
    assert torch.allclose(r @ r.T, torch.eye(d), atol=1e-5)  # OPQ rotations are orthonormal
    # ours -> faiss keeps the transform, and faiss's reverse is y @ R
    opq2 = interop.rotation_to_faiss_opq(r, m=m)
    assert opq2.is_trained and opq2.is_orthonormal
    assert torch.equal(interop.rotation_from_faiss_opq(opq2), r)
    np.testing.assert_array_equal(opq2.apply_py(x), opq.apply_py(x))
    y = applied.numpy()
    np.testing.assert_allclose(opq2.reverse_transform(y), (applied @ r).numpy(), atol=1e-5)
    # pq_decode(rotation=R) undoes the rotation the way faiss's reverse transform does
    codes = faiss_pq_codes(pq, y)
    cb = interop.codebooks_from_faiss_pq(pq)
    ours = semid_fast.pq_decode(codes, cb, rotation=r)
    theirs = opq.reverse_transform(pq.decode(pq.compute_codes(y)))
    np.testing.assert_allclose(ours.numpy(), theirs, atol=1e-5)


def test_from_faiss_index(seed):
    gen = torch.Generator().manual_seed(seed)
    d, m = 16, 4
    x = clustered(gen, 800, d).numpy()
    index = faiss.index_factory(d, f"OPQ{m},PQ{m}x5")
    opq = faiss.downcast_VectorTransform(index.chain.at(0))
    opq.niter, opq.niter_pq, opq.niter_pq_0 = 2, 2, 2
    opq.pq = inner = faiss.ProductQuantizer(d, m, 4)
    faiss.downcast_index(index.index).do_polysemous_training = False  # slow and not needed
    with faiss_one_thread():
        index.train(x)
    opq.pq = None
    del inner
    cb, r = interop.from_faiss_index(index)
    assert cb.shape == (m, 32, d // m) and r.shape == (d, d)
    index.add(x[:300])
    codes_faiss = faiss_pq_codes(faiss.downcast_index(index.index).pq, opq.apply_py(x[:300]))
    stored = faiss.vector_to_array(faiss.downcast_index(index.index).codes).reshape(300, -1)
    codes_index = torch.from_numpy(faiss.unpack_bitstrings(stored, m, 5).astype(np.int64))
    assert torch.equal(codes_index, codes_faiss)
    ours = semid_fast.pq_encode(torch.from_numpy(x[:300]), cb, rotation=r)
    check_pq_codes(ours, codes_faiss, torch.from_numpy(x[:300]), cb, r, f"index seed={seed}")
    # a bare IndexPQ: no rotation
    plain = faiss.downcast_index(index.index)
    cb2, r2 = interop.from_faiss_index(plain)
    assert r2 is None and torch.equal(cb2, cb)


# ---------------------------------------------------------------------------------------------
# same codes as faiss on random data (random and faiss-trained codebooks)
# ---------------------------------------------------------------------------------------------

RQ_CASES = [  # (levels, K, D, beam)
    (3, 256, 48, 1),
    (4, 16, 7, 1),
    (3, 256, 48, 4),
    (2, 64, 33, 8),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("levels,k,d,beam", RQ_CASES)
def test_rq_codes_match_faiss_random(backend, levels, k, d, beam, seed):
    gen = torch.Generator().manual_seed(seed)
    n = _rows(backend, 1500)
    cb = random_rq_codebooks(gen, levels, k, d)
    x = torch.randn(n, d, generator=gen)
    ours = None
    for lut in (False, True):  # faiss's two distance modes, one answer
        rq = interop.codebooks_to_faiss_rq(cb, beam_width=beam, use_beam_lut=lut)
        if ours is None:
            ours = semid_fast.rq_encode(x, interop.codebooks_from_faiss_rq(rq), beam_width=beam,
                                        backend=backend)
        check_rq_codes(ours, faiss_rq_codes(rq, x), x, cb, beam,
                       f"{backend} L={levels} K={k} D={d} beam={beam} lut={lut} seed={seed}")


@pytest.fixture(scope="module")
def trained_rq():
    seed = secrets.randbelow(2**31)
    gen = torch.Generator().manual_seed(seed)
    x = clustered(gen, 3000, 40)
    return seed, x, train_faiss_rq(x.numpy(), 3, 7)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("beam", [1, 4])
def test_rq_codes_match_faiss_trained(backend, beam, trained_rq, seed):
    train_seed, x, rq = trained_rq
    gen = torch.Generator().manual_seed(seed)
    x = x[torch.randperm(x.shape[0], generator=gen)[:_rows(backend, 2000)]]
    x = x + 0.05 * torch.randn(x.shape, generator=gen)  # fresh points, not the training set
    cb = interop.codebooks_from_faiss_rq(rq)
    rq.max_beam_size = beam
    theirs = faiss_rq_codes(rq, x)
    ours = semid_fast.rq_encode(x, cb, beam_width=beam, backend=backend)
    check_rq_codes(ours, theirs, x, cb, beam,
                   f"{backend} trained beam={beam} seeds={train_seed},{seed}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("m,k,dsub,rotate", [(8, 256, 6, False), (16, 256, 4, True), (3, 32, 7, True)])
def test_pq_codes_match_faiss_random(backend, m, k, dsub, rotate, seed):
    gen = torch.Generator().manual_seed(seed)
    n = _rows(backend, 2000)
    d = m * dsub
    cb = torch.randn(m, k, dsub, generator=gen)
    r = random_rotation(gen, d) if rotate else None
    x = torch.randn(n, d, generator=gen)
    pq = interop.codebooks_to_faiss_pq(cb)
    if rotate:
        opq = interop.rotation_to_faiss_opq(r, m=m)
        theirs = faiss_pq_codes(pq, opq.apply_py(x.numpy()))
    else:
        theirs = faiss_pq_codes(pq, x.numpy())
    ours = semid_fast.pq_encode(x, cb, rotation=r, backend=backend)
    check_pq_codes(ours, theirs, x, cb, r, f"{backend} M={m} K={k} rotate={rotate} seed={seed}")


@pytest.fixture(scope="module")
def trained_opq():
    seed = secrets.randbelow(2**31)
    gen = torch.Generator().manual_seed(seed)
    x = clustered(gen, 2500, 64)
    opq, pq = train_faiss_opq_pq(x.numpy(), 16)
    return seed, x, opq, pq


@pytest.mark.parametrize("backend", BACKENDS)
def test_opq_pq_codes_match_faiss_trained(backend, trained_opq, seed):
    train_seed, x, opq, pq = trained_opq
    gen = torch.Generator().manual_seed(seed)
    x = x[torch.randperm(x.shape[0], generator=gen)[:_rows(backend, 2000)]]
    x = x + 0.05 * torch.randn(x.shape, generator=gen)
    r = interop.rotation_from_faiss_opq(opq)
    cb = interop.codebooks_from_faiss_pq(pq)
    theirs = faiss_pq_codes(pq, opq.apply_py(x.numpy()))
    ours = semid_fast.pq_encode(x, cb, rotation=r, backend=backend)
    check_pq_codes(ours, theirs, x, cb, r, f"{backend} trained OPQ seeds={train_seed},{seed}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_half_inputs_get_the_codes_of_their_float_value(backend, seed):
    """A float16 / bfloat16 x gets the codes faiss gives its float32 value."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(_rows(backend, 500), 24, generator=gen)
    cb = random_rq_codebooks(gen, 3, 64, 24)
    rq = interop.codebooks_to_faiss_rq(cb, beam_width=2)
    x16 = x.half()
    ours = semid_fast.rq_encode(x16, cb, beam_width=2, backend=backend)
    check_rq_codes(ours, faiss_rq_codes(rq, x16.float()), x16.float(), cb, 2,
                   f"{backend} float16 seed={seed}")
    pcb = torch.randn(6, 32, 4, generator=gen)
    r = random_rotation(gen, 24)
    xb = x.bfloat16()
    y = interop.rotation_to_faiss_opq(r).apply_py(xb.float().numpy())
    ours = semid_fast.pq_encode(xb, pcb, rotation=r, backend=backend)
    check_pq_codes(ours, faiss_pq_codes(interop.codebooks_to_faiss_pq(pcb), y), xb.float(), pcb, r,
                   f"{backend} bfloat16 OPQ seed={seed}")


# ---------------------------------------------------------------------------------------------
# real embeddings from ../shared/data
# ---------------------------------------------------------------------------------------------

REAL = {
    # name: (file, rows to drop at the start and the end (README), PQ sub-spaces)
    "industrial_minilm384": ("amazon18_industrial/title_minilm384.npy", (0, 0), 16),
    "beauty_cf64": ("amazon14_beauty/cf_emb64.npy", (1, 1), 16),  # row 0 padding, last a mask
}


def _load_real(name: str) -> torch.Tensor:
    path, (head, tail), _ = REAL[name]
    file = DATA / path
    if not file.exists():
        pytest.skip(f"real data not found: {file} (../shared/data from the project root)")
    x = np.load(file).astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(x[head:x.shape[0] - tail]))


@pytest.fixture(scope="module", params=sorted(REAL))
def real_trained(request):
    """(name, data, faiss RQ L=3 K=256, OPQMatrix, PQ M=16 K=256), trained once per data set."""
    name = request.param
    x = _load_real(name)
    perm = torch.randperm(x.shape[0])
    train = x[perm[:3000]].numpy()
    rq = train_faiss_rq(train, 3, 8, niter=5)
    opq, pq = train_faiss_opq_pq(train, REAL[name][2], max_train=2000)
    return name, x, rq, opq, pq


@pytest.mark.parametrize("backend", BACKENDS)
def test_real_data_rq_matches_faiss(backend, real_trained, seed):
    name, x, rq, _, _ = real_trained
    x = x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))]
    x = x[:_rows(backend, x.shape[0])]
    cb = interop.codebooks_from_faiss_rq(rq)
    for beam in (1, 4):
        rq.max_beam_size = beam
        theirs = faiss_rq_codes(rq, x)
        ours = semid_fast.rq_encode(x, cb, beam_width=beam, backend=backend)
        # faiss k-means on ~3k real points leaves near-duplicate codewords at the last level
        # (residuals already ~0): up to ~10% of rows are exact-arithmetic near-ties there
        check_rq_codes(ours, theirs, x, cb, beam, f"{name} {backend} beam={beam} seed={seed}",
                       max_tie=0.25)


@pytest.mark.parametrize("backend", BACKENDS)
def test_real_data_opq_pq_matches_faiss(backend, real_trained, seed):
    name, x, _, opq, pq = real_trained
    x = x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))]
    x = x[:_rows(backend, x.shape[0])]
    r = interop.rotation_from_faiss_opq(opq)
    cb = interop.codebooks_from_faiss_pq(pq)
    y = opq.apply_py(x.numpy())
    theirs = faiss_pq_codes(pq, y)
    ours = semid_fast.pq_encode(x, cb, rotation=r, backend=backend)
    check_pq_codes(ours, theirs, x, cb, r, f"{name} {backend} OPQ seed={seed}")
    # and plain PQ on the already-rotated vectors
    ours_plain = semid_fast.pq_encode(torch.from_numpy(y), cb, backend=backend)
    check_pq_codes(ours_plain, theirs, torch.from_numpy(y), cb, None, f"{name} {backend} PQ seed={seed}")


# ---------------------------------------------------------------------------------------------
# pq_from_faiss: whole faiss PQ indexes, RPG's "OPQ32,IVF1,PQ32x8" among them
# ---------------------------------------------------------------------------------------------

# name: (OPQ in front, IVF1 coarse quantizer, by_residual, metric)
INDEX_KINDS = {
    "PQ": (False, False, True, faiss.METRIC_L2),
    "IVF1,PQ": (False, True, True, faiss.METRIC_L2),
    "OPQ,PQ": (True, False, True, faiss.METRIC_L2),
    "OPQ,IVF1,PQ": (True, True, True, faiss.METRIC_INNER_PRODUCT),  # RPG's index
    "OPQ,IVF1,PQ no residual": (True, True, False, faiss.METRIC_L2),
}


def train_faiss_index(x: np.ndarray, kind: str, m: int, nbits: int):
    """A trained faiss index of one of INDEX_KINDS, built by index_factory as RPG does, with
    small training budgets."""
    opq, ivf, by_residual, metric = INDEX_KINDS[kind]
    spec = (f"OPQ{m}," if opq else "") + ("IVF1," if ivf else "") + f"PQ{m}x{nbits}"
    index = faiss.index_factory(x.shape[1], spec, metric)
    inner = faiss.downcast_index(index.index) if opq else index
    helper = None
    if opq:
        transform = faiss.downcast_VectorTransform(index.chain.at(0))
        transform.niter, transform.niter_pq, transform.niter_pq_0 = 3, 2, 2
        transform.pq = helper = faiss.ProductQuantizer(x.shape[1], m, 4)
    inner.do_polysemous_training = False
    inner.pq.cp.niter = 5
    if ivf:
        inner.by_residual = by_residual
    with faiss_one_thread():
        index.train(np.ascontiguousarray(x, dtype=np.float32))
    if opq:
        transform.pq = None
    del helper
    return index


def faiss_index_codes(index, x: np.ndarray, m: int, nbits: int) -> torch.Tensor:
    """(N, M) int64 codes of faiss's standalone encoder (no list-number bytes with one list)."""
    packed = index.sa_encode(np.ascontiguousarray(x, dtype=np.float32))
    assert packed.shape[1] == (m * nbits + 7) // 8
    return torch.from_numpy(faiss.unpack_bitstrings(packed, m, nbits).astype(np.int64))


def shifted(gen, n, d, offset):
    """Clustered data away from the origin, so the coarse centroid matters."""
    return clustered(gen, n, d) + offset


@pytest.fixture(scope="module", params=sorted(INDEX_KINDS))
def faiss_pq_index(request):
    seed = secrets.randbelow(2**31)
    gen = torch.Generator().manual_seed(seed)
    d, m, nbits = 16, 8, 6
    offset = 3.0 * torch.randn(d, generator=gen)
    x = shifted(gen, 1500, d, offset).numpy()
    return request.param, seed, offset, train_faiss_index(x, request.param, m, nbits), m, nbits


@pytest.mark.parametrize("backend", BACKENDS)
def test_pq_from_faiss_gives_faiss_codes(backend, faiss_pq_index, seed):
    kind, train_seed, offset, index, m, nbits = faiss_pq_index
    opq, ivf, by_residual, _ = INDEX_KINDS[kind]
    what = f"{kind} {backend} seeds={train_seed},{seed}"
    kw = interop.pq_from_faiss(index)
    assert set(kw) == {"codebooks", "rotation", "center"}
    assert kw["codebooks"].shape == (m, 1 << nbits, 16 // m)
    assert (kw["rotation"] is not None) == opq
    assert (kw["center"] is not None) == (ivf and by_residual)
    gen = torch.Generator().manual_seed(seed)
    x = shifted(gen, _rows(backend, 2000), 16, offset)
    theirs = faiss_index_codes(index, x.numpy(), m, nbits)
    ours = semid_fast.pq_encode(x, **kw, backend=backend)
    check_pq_codes(ours, theirs, x, kw["codebooks"], kw["rotation"], what, kw["center"])
    if kw["center"] is not None:  # the centre decides codes: without it most rows differ
        plain = semid_fast.pq_encode(x, kw["codebooks"], rotation=kw["rotation"], backend=backend)
        assert (plain == theirs).all(1).float().mean() < 0.5, what
    # decoding: faiss's sa_decode (codewords + centroid, then the reverse OPQ transform)
    packed = index.sa_encode(x.numpy())
    decoded = semid_fast.pq_decode(theirs, **kw, backend=backend).numpy()
    if opq:  # faiss and torch multiply by R in different orders
        np.testing.assert_allclose(decoded, index.sa_decode(packed), rtol=1e-5, atol=1e-5,
                                   err_msg=what)
    else:
        np.testing.assert_array_equal(decoded, index.sa_decode(packed), err_msg=what)


@pytest.fixture(scope="module")
def beauty_rpg_index():
    """RPG's tokenizer index on the Beauty embeddings: OPQ32,IVF1,PQ32x8, inner product
    (facebookresearch/RPG_KDD2025, RPGTokenizer._generate_semantic_id_opq), 2-dim sub-vectors
    on these 64-dim embeddings; trained and filled with every item as RPG does."""
    path = DATA / "amazon14_beauty" / "cf_emb64.npy"
    if not path.exists():
        pytest.skip(f"real data not found: {path} (../shared/data from the project root)")
    x = np.ascontiguousarray(np.load(path).astype(np.float32)[1:-1])  # item i is row i + 1
    index = train_faiss_index(x, "OPQ,IVF1,PQ", 32, 8)
    index.add(x)
    return x, index


@pytest.mark.parametrize("backend", BACKENDS)
def test_pq_from_faiss_gives_rpg_semantic_ids_on_beauty(backend, beauty_rpg_index, seed):
    x, index = beauty_rpg_index
    assert x.shape == (12101, 64)
    # RPG reads the codes of every item from the single inverted list
    ivf = faiss.extract_index_ivf(index)
    lists = ivf.invlists
    stored = faiss.rev_swig_ptr(lists.get_codes(0), lists.list_size(0) * lists.code_size)
    rpg_ids = torch.from_numpy(faiss.unpack_bitstrings(
        stored.reshape(-1, lists.code_size), 32, 8).astype(np.int64))
    kw = interop.pq_from_faiss(index)
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    rows = order[:_rows(backend, x.shape[0])] if backend != "cpu" else order
    xt = torch.from_numpy(x)[rows]
    theirs = rpg_ids[rows]
    assert torch.equal(theirs, faiss_index_codes(index, xt.numpy(), 32, 8))
    ours = semid_fast.pq_encode(xt, **kw, backend=backend)
    differ = check_pq_codes(ours, theirs, xt, kw["codebooks"], kw["rotation"],
                            f"Beauty RPG {backend} seed={seed}", kw["center"])
    assert (ours == theirs).all(1).sum() >= rows.numel() - differ
    plain = semid_fast.pq_encode(xt, kw["codebooks"], rotation=kw["rotation"], backend=backend)
    assert (plain == theirs).all(1).float().mean() < 0.01  # without the centre: hardly a row
    decoded = semid_fast.pq_decode(theirs, **kw, backend=backend).numpy()
    np.testing.assert_allclose(decoded, index.sa_decode(index.sa_encode(xt.numpy())),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_pq_from_faiss_gives_rpg_semantic_ids_on_beauty(backend, beauty_rpg_index):
    if backend not in semid_fast.available_backends("cuda"):
        pytest.skip(f"backend {backend} is not available on CUDA in this build")
    x, index = beauty_rpg_index
    kw = interop.pq_from_faiss(index)
    theirs = faiss_index_codes(index, x, 32, 8)
    on_gpu = {key: None if value is None else value.cuda() for key, value in kw.items()}
    ours = semid_fast.pq_encode(torch.from_numpy(x).cuda(), **on_gpu, backend=backend).cpu()
    check_pq_codes(ours, theirs, torch.from_numpy(x), kw["codebooks"], kw["rotation"],
                   f"Beauty RPG {backend}", kw["center"])
    decoded = semid_fast.pq_decode(theirs.cuda(), **on_gpu, backend=backend).cpu().numpy()
    np.testing.assert_allclose(decoded, index.sa_decode(index.sa_encode(x)), rtol=1e-5, atol=1e-5)


def test_faiss_owners_stay_alive_while_copied(monkeypatch):
    """An index passed as a temporary is the caller's only reference to its C++ object; the
    downcast views and sub-objects read from it do not own it, so it must outlive the copy."""
    x = clustered(torch.Generator().manual_seed(0), 600, 16).numpy()
    alive = {"owner": False}
    copy = interop._vector

    def checked_copy(faiss_module, vec):
        assert alive["owner"], "the faiss owner was freed before its numbers were copied"
        return copy(faiss_module, vec)

    monkeypatch.setattr(interop, "_vector", checked_copy)

    def index_pq():
        index = faiss.IndexPQ(16, 4, 4)
        with faiss_one_thread():
            index.train(x)
        return index

    def index_rq():
        index = faiss.IndexResidualQuantizer(16, 2, 4)
        index.rq.train_type = faiss.ResidualQuantizer.Train_default
        index.rq.max_beam_size = 1
        with faiss_one_thread():
            index.train(x)
        return index

    calls = [
        (interop.pq_from_faiss, lambda: train_faiss_index(x, "OPQ,IVF1,PQ", 4, 4)),
        (interop.pq_from_faiss, index_pq),
        (interop.from_faiss_index, lambda: train_faiss_index(x, "OPQ,PQ", 4, 4)),
        (interop.codebooks_from_faiss_pq, index_pq),
        (interop.codebooks_from_faiss_rq, index_rq),
    ]
    for call, make in calls:
        held = [make()]
        alive["owner"] = True
        weakref.finalize(held[0], alive.__setitem__, "owner", False)
        call(held.pop())  # the argument is now the only reference
        assert not alive["owner"], f"{call.__name__}: the owner outlived the call: no power"


def test_pq_from_faiss_rejects_what_it_cannot_represent():
    x = clustered(torch.Generator().manual_seed(1), 600, 16).numpy()
    with pytest.raises(TypeError, match="faiss.Index"):
        interop.pq_from_faiss(faiss.ProductQuantizer(16, 4, 4))
    with pytest.raises(TypeError, match="IndexFlat"):
        interop.pq_from_faiss(faiss.IndexFlatL2(16))
    with pytest.raises(TypeError, match="IndexIVFFlat"):
        interop.pq_from_faiss(faiss.index_factory(16, "IVF1,Flat"))
    with pytest.raises(TypeError, match="IndexIVFPQR"):
        interop.pq_from_faiss(faiss.index_factory(16, "IVF1,PQ4+8"))
    with pytest.raises(ValueError, match="nlist=4"):
        interop.pq_from_faiss(faiss.index_factory(16, "IVF4,PQ4x4"))
    with pytest.raises(ValueError, match="not trained"):
        interop.pq_from_faiss(faiss.index_factory(16, "OPQ4,IVF1,PQ4x4"))
    with pytest.raises(ValueError, match="not trained"):
        interop.pq_from_faiss(faiss.IndexPQ(16, 4, 4))
    with pytest.raises(ValueError, match="one transform"):
        interop.pq_from_faiss(faiss.index_factory(16, "RR16,OPQ4,IVF1,PQ4x4"))
    with pytest.raises(ValueError, match="NormalizationTransform"):
        interop.pq_from_faiss(faiss.index_factory(16, "L2norm,IVF1,PQ4x4"))
    pca = faiss.index_factory(16, "PCA16,IVF1,PQ4x4")
    faiss.downcast_index(pca.index).do_polysemous_training = False
    with faiss_one_thread():
        pca.train(x)
    with pytest.raises(ValueError, match="bias"):
        interop.pq_from_faiss(pca)
    # a square linear map without bias that is not a rotation
    skew = faiss.LinearTransform(16, 16, False)
    faiss.copy_array_to_vector(np.random.default_rng(2).standard_normal(256).astype(np.float32),
                               skew.A)
    skew.is_trained = True
    pq_index = faiss.IndexPQ(16, 4, 4)
    with faiss_one_thread():
        pq_index.train(x)
    wrapped = faiss.IndexPreTransform(skew, pq_index)
    with pytest.raises(ValueError, match="orthonormal"):
        interop.pq_from_faiss(wrapped)


# ---------------------------------------------------------------------------------------------
# vector-quantize-pytorch ResidualVQ
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_residual_vq_matches(backend, seed):
    vqp = pytest.importorskip("vector_quantize_pytorch")
    d, k, n = 24, 64, _rows(backend, 500)
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # ResidualVQ draws its codebooks from the global generator
        rvq = vqp.ResidualVQ(dim=d, num_quantizers=3, codebook_size=k).eval()
    cb = interop.codebooks_from_residual_vq(rvq)
    assert cb.shape == (3, k, d) and cb.dtype == torch.float32 and not cb.requires_grad
    for i, layer in enumerate(rvq.layers):  # the buffers themselves, in level order
        assert torch.equal(cb[i], layer._codebook.embed.reshape(k, d))
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed + 1)) * cb[0].std() * 2
    with torch.no_grad():
        quantized, indices, _ = rvq(x[None])
    indices, quantized = indices[0], quantized[0]
    ours = semid_fast.rq_encode(x, cb, backend=backend)
    # ResidualVQ ranks by sqrt of the clamped expansion in float32: ties aside, same codes
    check_rq_codes(ours, indices, x, cb, 1, f"ResidualVQ {backend} seed={seed}")
    same = (ours == indices).all(1)
    decoded = semid_fast.rq_decode(ours, cb, backend=backend)
    assert torch.allclose(decoded[same], quantized[same], atol=1e-5), f"seed={seed}"


def test_residual_vq_shared_and_unsupported():
    vqp = pytest.importorskip("vector_quantize_pytorch")
    shared = vqp.ResidualVQ(dim=8, num_quantizers=2, codebook_size=16, shared_codebook=True)
    cb = interop.codebooks_from_residual_vq(shared)
    assert torch.equal(cb[0], cb[1])
    bad = {
        "projection": dict(codebook_dim=4),
        "cosine": dict(use_cosine_sim=True),
        "kmeans_init": dict(kmeans_init=True),
        "affine": dict(affine_param=True),
        "implicit neural codebook": dict(implicit_neural_codebook=True),
        "different shapes": dict(num_quantizers=None, codebook_size=(16, 32)),
    }
    for what, kwargs in bad.items():
        args = dict(dim=8, num_quantizers=2, codebook_size=16) | kwargs
        with pytest.raises(ValueError, match="rvq"):
            interop.codebooks_from_residual_vq(vqp.ResidualVQ(**args))
            pytest.fail(what)
    with pytest.raises(TypeError, match="rvq"):
        interop.codebooks_from_residual_vq(vqp.VectorQuantize(dim=8, codebook_size=16))


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------


def test_bad_codebooks_to_faiss():
    with pytest.raises(TypeError, match="codebooks"):
        interop.codebooks_to_faiss_rq([[[1.0]]])
    with pytest.raises(TypeError, match="codebooks"):
        interop.codebooks_to_faiss_rq(torch.zeros(2, 4, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="codebooks"):
        interop.codebooks_to_faiss_rq(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="power of two"):
        interop.codebooks_to_faiss_rq(torch.zeros(2, 100, 3))
    with pytest.raises(ValueError, match="codebooks"):
        interop.codebooks_to_faiss_rq(torch.zeros(2, 0, 3))
    nan = torch.zeros(2, 4, 3)
    nan[1, 2, 0] = float("nan")
    with pytest.raises(ValueError, match="codebooks contains NaN"):
        interop.codebooks_to_faiss_rq(nan)
    with pytest.raises(ValueError, match="beam_width"):
        interop.codebooks_to_faiss_rq(torch.zeros(2, 4, 3), beam_width=0)
    with pytest.raises(TypeError, match="beam_width"):
        interop.codebooks_to_faiss_rq(torch.zeros(2, 4, 3), beam_width=2.0)
    with pytest.raises(ValueError, match="codebooks"):
        interop.codebooks_to_faiss_pq(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="power of two"):
        interop.codebooks_to_faiss_pq(torch.zeros(2, 6, 4))
    with pytest.raises(TypeError, match="codebooks"):
        interop.codebooks_to_faiss_pq("codebooks")
    with pytest.raises(ValueError, match="rotation"):
        interop.rotation_to_faiss_opq(torch.eye(4)[None])
    with pytest.raises(TypeError, match="rotation"):
        interop.rotation_to_faiss_opq(None)
    with pytest.raises(ValueError, match="m must"):
        interop.rotation_to_faiss_opq(torch.eye(4), m=0)
    with pytest.raises(ValueError, match="divide"):
        interop.rotation_to_faiss_opq(torch.eye(6), m=4)
    with pytest.raises(ValueError, match="power of two"):
        interop.codebooks_to_faiss_rq(torch.zeros(2, 1, 3))


def test_missing_optional_dependencies(monkeypatch):
    """Without faiss / vector-quantize-pytorch: an ImportError naming the extra to install."""
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` raise ImportError
    monkeypatch.setitem(sys.modules, "vector_quantize_pytorch", None)
    with pytest.raises(ImportError, match=r"semid_fast\[bench\].*faiss-cpu"):
        interop.codebooks_to_faiss_rq(torch.zeros(2, 4, 3))
    with pytest.raises(ImportError, match=r"semid_fast\[bench\].*vector-quantize-pytorch"):
        interop.codebooks_from_residual_vq(object())


def test_bad_faiss_objects():
    with pytest.raises(ValueError, match="not trained"):
        interop.codebooks_from_faiss_rq(faiss.ResidualQuantizer(8, 2, 4))
    with pytest.raises(ValueError, match="not trained"):
        interop.codebooks_from_faiss_rq(faiss.IndexResidualQuantizer(8, 2, 4))
    nbits = faiss.UInt64Vector() if hasattr(faiss, "UInt64Vector") else faiss.Uint64Vector()
    nbits.push_back(4)
    nbits.push_back(6)
    variable = faiss.ResidualQuantizer(8, nbits)
    variable.is_trained = True
    with pytest.raises(ValueError, match="different nbits"):
        interop.codebooks_from_faiss_rq(variable)
    with pytest.raises(TypeError, match="rq"):
        interop.codebooks_from_faiss_rq(faiss.ProductQuantizer(8, 2, 4))
    with pytest.raises(TypeError, match="LocalSearchQuantizer"):
        interop.codebooks_from_faiss_rq(faiss.LocalSearchQuantizer(8, 2, 4))
    with pytest.raises(TypeError, match="rq"):
        interop.codebooks_from_faiss_rq(torch.zeros(2, 4, 8))
    with pytest.raises(ValueError, match="trained"):
        interop.codebooks_from_faiss_pq(faiss.ProductQuantizer(8, 2, 4))
    with pytest.raises(TypeError, match="pq"):
        interop.codebooks_from_faiss_pq(faiss.ResidualQuantizer(8, 2, 4))
    with pytest.raises(ValueError, match="not trained"):
        interop.rotation_from_faiss_opq(faiss.OPQMatrix(8, 2))
    with pytest.raises(TypeError, match="opq"):
        interop.rotation_from_faiss_opq(faiss.ProductQuantizer(8, 2, 4))
    with pytest.raises(TypeError, match="index"):
        interop.from_faiss_index(faiss.ProductQuantizer(8, 2, 4))
    with pytest.raises(TypeError, match="IndexPQ"):
        interop.from_faiss_index(faiss.IndexFlatL2(8))
    with pytest.raises(ValueError, match="not trained"):
        interop.from_faiss_index(faiss.IndexPQ(8, 2, 4))
    # a dimension-reducing OPQ (8 -> 4) is not a rotation pq_encode can take
    x = np.random.default_rng().standard_normal((300, 8)).astype(np.float32)
    reducing = faiss.index_factory(8, "OPQ2_4,PQ2x4")
    opq = faiss.downcast_VectorTransform(reducing.chain.at(0))
    opq.niter, opq.niter_pq, opq.niter_pq_0 = 1, 1, 1
    opq.pq = inner = faiss.ProductQuantizer(4, 2, 2)  # a small inner PQ: quick training
    faiss.downcast_index(reducing.index).do_polysemous_training = False
    with faiss_one_thread():
        reducing.train(x)
    opq.pq = None
    del inner
    with pytest.raises(ValueError, match="square"):
        interop.from_faiss_index(reducing)
    assert interop.rotation_from_faiss_opq(reducing.chain.at(0)).shape == (4, 8)

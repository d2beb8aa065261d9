"""The gumbel family: the Philox stream and the noise bit for bit across backends, every
backend against the reference (forward, backward, every parameter form), sampling
statistics, torch.library / torch.compile integration, determinism and bad input."""

import itertools
import math

import pytest
import torch

import semid_fast as sf
from semid_fast import _backends
from semid_fast.ops import gumbel as ops
from semid_fast.reference import gumbel as ref

CPU_BACKENDS = [b for b in ("cpu", "triton") if b in sf.available_backends("cpu")]
GPU_BACKENDS = ["cuda", "triton"]


# The softmax kernels' code paths on this machine: the CPU kernel, and Triton with rows held
# in registers ("fits") or streamed in 64-wide blocks ("streams", limits patched down).
SOFTMAX_PATHS = ["cpu"] + (["triton-fits", "triton-streams"] if "triton" in CPU_BACKENDS else [])


@pytest.fixture(params=SOFTMAX_PATHS)
def softmax_backend(request, monkeypatch):
    """The backend name of one softmax code path (patching Triton's limits for "streams")."""
    if request.param == "triton-streams":
        from semid_fast.backends.triton import gumbel as tg

        monkeypatch.setattr(tg, "FIT_LIMIT", 64)
        monkeypatch.setattr(tg, "CHUNK", 64)
    return request.param.split("-")[0]


def _bits(backend, seed, offset, start, n):
    """The 32-bit words of elements [start, start + n) from a backend's noise launcher."""
    out = torch.empty(start + n, dtype=torch.int32)
    _backends.launcher(backend, "gumbel", "noise")(seed, offset, None, out)
    return out[start:].long() & 0xFFFFFFFF


# ---------------------------------------------------------------------------------------------
# The noise stream
# ---------------------------------------------------------------------------------------------


def test_reference_philox_is_philox4x32_10():
    # Random123's known-answer vector for counter 0 and key 0.
    words = ref.philox_bits(0, 0, 0, 4).tolist()
    assert words == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]


@pytest.mark.parametrize("backend", ["reference"] + CPU_BACKENDS)
@pytest.mark.parametrize("seed,offset,start,n", [
    (0, 0, 0, 64), (1, 0, 3, 37), (2**40 + 12345, 7, 1, 1000), (2**63 - 1, 2**33 + 1, 5, 300),
    (99, 2**63 - 1, 0, 9)])
def test_philox_words_equal_the_reference(backend, seed, offset, start, n):
    assert torch.equal(_bits(backend, seed, offset, start, n), ref.philox_bits(seed, offset, start, n))


def test_cpu_words_far_into_the_stream():
    start = 2**35 + 3  # counter groups beyond 32 bits
    out = torch.empty(50, dtype=torch.int32)
    sf._native.cpu().gumbel_noise(5, 1, start, 50, out.data_ptr(), 0, 1)
    assert torch.equal(out.long() & 0xFFFFFFFF, ref.philox_bits(5, 1, start, 50))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_noise_floats_equal_the_reference_bit_for_bit(backend):
    n = 262_144 if backend == "cpu" else 20_000  # the moment checks below hold at >= 3.5 sd
    got = sf.gumbel_noise((n,), seed=1234, offset=5, backend=backend)
    want = ref.gumbel_noise(1234, 5, 1, n)[0]
    assert torch.equal(got, want)
    # And it is Gumbel(0, 1): mean = Euler's gamma, variance = pi^2 / 6.
    assert abs(want.double().mean().item() - 0.5772157) < 0.01
    assert abs(want.double().var().item() - math.pi**2 / 6) < 0.05


# ---------------------------------------------------------------------------------------------
# gumbel_softmax against the reference
# ---------------------------------------------------------------------------------------------

# Ragged rows, a row of one entry, rows on both sides of the streaming Triton path's limit
# (64) and rows of several blocks with a ragged last one. Few rows: the Triton interpreter
# runs each program (row) one after the other.
SHAPES = [(1, 1), (3, 7), (4, 64), (5, 65), (3, 256), (2, 300)]


def _param(kind, rows, low, generator):
    if kind == "float":
        return 0.5 + low
    if kind == "scalar":
        return torch.tensor(0.5 + low)
    return torch.rand(rows, generator=generator) + low


def _assert_softmax_close(got, want, hard):
    if hard:  # the reference's y_hard - y_soft + y_soft is one-hot up to rounding
        assert torch.equal(got.argmax(-1), want.argmax(-1))
        assert set(got.unique().tolist()) <= {0.0, 1.0}
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    else:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rows,vocab", SHAPES)
@pytest.mark.parametrize("hard", [False, True])
def test_softmax_forward_matches_reference(softmax_backend, rows, vocab, hard):
    backend = softmax_backend
    g = torch.Generator().manual_seed(rows * 31 + vocab)
    x = torch.randn(rows, vocab, generator=g) * 3
    for kind in ("float", "scalar", "row"):
        tau = _param(kind, rows, 0.1, g)
        scale = _param(kind, rows, 0.0, g)
        got = sf.gumbel_softmax(x, tau, hard=hard, noise_scale=scale, seed=rows + 7, offset=3,
                                backend=backend)
        want = ref.gumbel_softmax(x, tau, hard=hard, noise_scale=scale, seed=rows + 7, offset=3)
        _assert_softmax_close(got, want, hard)


@pytest.mark.parametrize("rows,vocab", [(3, 7), (3, 65), (2, 150)])
@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("kind", ["float", "scalar", "row"])
def test_softmax_backward_matches_reference(softmax_backend, rows, vocab, hard, kind):
    backend = softmax_backend
    g = torch.Generator().manual_seed(vocab + rows)
    x = torch.randn(rows, vocab, generator=g)
    weight = torch.randn(rows, vocab, generator=g)
    tau = _param(kind, rows, 0.2, g)
    scale = _param(kind, rows, 0.1, g)
    grads = []
    for fn in (lambda *a, **k: sf.gumbel_softmax(*a, backend=backend, **k), ref.gumbel_softmax):
        leaves = [x.clone().requires_grad_()]
        params = []
        for p in (tau, scale):
            if isinstance(p, torch.Tensor):
                p = p.clone().requires_grad_()
                leaves.append(p)
            params.append(p)
        y = fn(leaves[0], params[0], hard=hard, noise_scale=params[1], seed=11, offset=2)
        (y * weight).sum().backward()
        grads.append([leaf.grad for leaf in leaves])
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_tensor_parameters_without_grad_and_noise_off_rows(backend):
    x = torch.randn(6, 40)
    scale = torch.tensor([0.0, 1.0, 0.0, 2.0, 1.0, 0.0])  # DIGER: noise on some rows only
    xr = x.clone().requires_grad_()
    y = sf.gumbel_softmax(xr, torch.tensor(0.7), noise_scale=scale, seed=3, backend=backend)
    _assert_softmax_close(y.detach(), ref.gumbel_softmax(x, 0.7, noise_scale=scale, seed=3), False)
    torch.testing.assert_close(y[scale == 0].detach(), (x[scale == 0] / 0.7).softmax(-1))
    y.sum().backward()  # parameters that need no grad are simply skipped
    assert xr.grad is not None


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_dim_not_last_and_non_contiguous_draw_the_same_noise(backend):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 9, 6, generator=g)
    tau = torch.rand(4, 6, generator=g) + 0.5  # one per row of the dim=1 layout
    got = sf.gumbel_softmax(x, tau, dim=1, seed=5, backend=backend)
    want = ref.gumbel_softmax(x, tau, dim=1, seed=5)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    moved = sf.gumbel_softmax(x.movedim(1, -1).contiguous(), tau, seed=5, backend=backend)
    assert torch.equal(got.movedim(1, -1), moved)
    # A transposed (non-contiguous) view: same logical layout, same sample.
    xt = torch.randn(30, 6, generator=g).T
    assert not xt.is_contiguous()
    assert torch.equal(sf.gumbel_softmax(xt, seed=9, hard=True, backend=backend),
                       sf.gumbel_softmax(xt.contiguous(), seed=9, hard=True, backend=backend))
    _assert_softmax_close(sf.gumbel_softmax(xt, seed=9, backend=backend),
                          ref.gumbel_softmax(xt, seed=9), False)


@pytest.mark.parametrize("backend,dtype", [
    (b, d) for b in CPU_BACKENDS for d in (torch.float16, torch.bfloat16)
    if not (b == "triton" and d == torch.bfloat16)])  # no bfloat16 in the Triton interpreter
def test_half_inputs_against_the_float32_reference(backend, dtype):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, 100, generator=g).to(dtype)
    tol = {torch.float16: 2e-3, torch.bfloat16: 1e-2}[dtype]
    got = sf.gumbel_softmax(x, 0.5, seed=4, backend=backend)
    assert got.dtype == dtype
    want = ref.gumbel_softmax(x.float(), 0.5, seed=4)
    torch.testing.assert_close(got.float(), want, rtol=tol, atol=tol)
    xr = x.clone().requires_grad_()
    sf.gumbel_softmax(xr, 0.5, seed=4, backend=backend).float().pow(2).sum().backward()
    xf = x.float().requires_grad_()
    ref.gumbel_softmax(xf, 0.5, seed=4).pow(2).sum().backward()
    assert xr.grad.dtype == dtype
    torch.testing.assert_close(xr.grad.float(), xf.grad, rtol=5 * tol, atol=5 * tol)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_float64_logits_run_in_float32_on_the_kernels_and_float64_on_the_reference(backend):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(5, 30, dtype=torch.float64, generator=g)
    tau = (torch.rand(5, generator=g) + 0.5).double()
    weight = torch.randn(5, 30, dtype=torch.float64, generator=g)
    grads = []
    for fn in (lambda *a, **k: sf.gumbel_softmax(*a, backend=backend, **k), ref.gumbel_softmax):
        xr, tr = x.clone().requires_grad_(), tau.clone().requires_grad_()
        y = fn(xr, tr, noise_scale=0.7, seed=2)
        assert y.dtype == torch.float64
        (y * weight).sum().backward()
        grads.append((y.detach(), xr.grad, tr.grad))
    for got, want in zip(*grads):
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    # gumbel_quantize runs its levels in float64 around the float32 kernels.
    book = torch.randn(2, 6, 4, dtype=torch.float64, generator=g)
    got = sf.gumbel_quantize(x[:, :4], book, tau=0.8, seed=3, backend=backend)
    want = ref.gumbel_quantize(x[:, :4], book, tau=0.8, seed=3)
    assert torch.equal(got[0], want[0])
    for a, b in zip(got[1:], want[1:]):
        assert a.dtype == torch.float64
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_reference_backend_runs_the_oracle_through_the_custom_ops():
    # backend="reference" is one backend like the others: the custom ops call its launchers,
    # which return the oracle's forward bit for bit and spell out its backward.
    g = torch.Generator().manual_seed(6)
    x = torch.randn(4, 9, generator=g)
    tau, scale = torch.rand(4, generator=g) + 0.5, torch.tensor(0.8)
    for hard in (False, True):
        got = sf.gumbel_softmax(x, tau, hard=hard, noise_scale=scale, seed=5, backend="reference")
        assert torch.equal(got, ref.gumbel_softmax(x, tau, hard=hard, noise_scale=scale, seed=5))
    assert torch.equal(sf.gumbel_topk(x, 3, tau=tau, seed=5, backend="reference")[1],
                       ref.gumbel_topk(x, 3, tau=tau, seed=5)[1])
    assert torch.equal(sf.gumbel_noise((4, 9), seed=5, backend="reference"),
                       ref.gumbel_noise(5, 0, 4, 9))
    # float64 logits stay float64 there (tau and noise_scale are float32 on every backend).
    assert torch.autograd.gradcheck(
        lambda a: sf.gumbel_softmax(a, tau, noise_scale=scale, seed=1, backend="reference"),
        (x.double().requires_grad_(),))
    grads = []
    for fn in (lambda *a, **k: sf.gumbel_softmax(*a, backend="reference", **k),
               ref.gumbel_softmax):
        leaves = [t.clone().requires_grad_() for t in (x, tau, scale)]
        (fn(leaves[0], leaves[1], noise_scale=leaves[2], seed=1) * x).sum().backward()
        grads.append([t.grad for t in leaves])
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_every_backend_defines_the_launchers_of_the_ops_it_runs():
    table = _backends.table()["gumbel"]
    # The forward's backend runs the backward too.
    assert set(table["softmax_forward"]) == set(table["softmax_backward"])
    for launcher in ("noise", "softmax_forward", "softmax_backward", "topk"):
        assert "reference" in table[launcher] and "cpu" in table[launcher]
    if "triton" in CPU_BACKENDS:
        assert all("triton" in backends for backends in table.values())
    if sf._native._C_cuda is not None:
        assert set(n for n, backends in table.items() if "cuda" in backends) == {
            "softmax_forward", "softmax_backward"}


@pytest.mark.skipif("triton" not in CPU_BACKENDS, reason="triton is not importable")
def test_triton_refuses_a_grid_it_cannot_launch():
    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match="columns"):
        _backends.choose("triton", cpu, "gumbel", "topk", op="gumbel_topk",
                         args={"rows": 2, "vocab": 2**27, "k": 1})
    with pytest.raises(ValueError, match="rows"):
        _backends.choose("triton", cpu, "gumbel", "softmax_forward", op="gumbel_softmax",
                         args={"rows": 2**31, "vocab": 3})
    assert _backends.choose("triton", cpu, "gumbel", "topk",
                            args={"rows": 2**20, "vocab": 2**25, "k": 1}) == "triton"


# ---------------------------------------------------------------------------------------------
# gumbel_topk against the reference
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("rows,vocab,k", [(1, 1, 1), (3, 7, 7), (5, 100, 1), (4, 300, 10),
                                          (2, 2500, 40), (6, 64, 3)])
def test_topk_matches_reference_exactly(backend, rows, vocab, k):
    g = torch.Generator().manual_seed(vocab)
    x = torch.randn(rows, vocab, generator=g) * 2
    for tau in (1.0, torch.rand(rows, generator=g) + 0.3):
        got = sf.gumbel_topk(x, k, tau=tau, seed=vocab, offset=1, backend=backend)
        want = ref.gumbel_topk(x, k, tau=tau, seed=vocab, offset=1)
        assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0])
        assert all(len(set(r)) == k for r in got[1].tolist())


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_topk_batch_dims_and_masked_tail(backend):
    x = torch.randn(2, 3, 50)
    x[..., 10:] = -torch.inf
    scores, idx = sf.gumbel_topk(x, 12, seed=0, backend=backend)
    assert idx.shape == (2, 3, 12)
    want = ref.gumbel_topk(x, 12, seed=0)
    assert torch.equal(idx, want[1]) and torch.equal(scores, want[0])
    assert (idx[..., :10] < 10).all()  # the finite entries come first
    assert torch.isinf(scores[..., 10:]).all() and (idx[..., 10:] == torch.arange(10, 12)).all()


# ---------------------------------------------------------------------------------------------
# Sampling statistics (fixed seeds: deterministic)
# ---------------------------------------------------------------------------------------------


def _chi2(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


def test_hard_samples_follow_softmax_of_logits_over_noise_scale_whatever_tau():
    logits = torch.tensor([0.5, -1.0, 2.0, 0.0, 1.0, -0.5])
    draws = 100_000
    x = logits.expand(draws, -1)
    # Chi-square critical value for 5 degrees of freedom at p = 1e-4 is 25.7.
    for tau in (0.1, 1.0, 5.0):
        y = sf.gumbel_softmax(x, tau, hard=True, noise_scale=2.0, seed=42, backend="cpu")
        counts = y.sum(0).double()
        assert _chi2(counts, (logits / 2.0).softmax(0).double()) < 25.7
        # A sampler that ignored noise_scale (softmax(logits)) fails the same test.
        assert _chi2(counts, logits.softmax(0).double()) > 1000


def test_topk_inclusion_follows_sampling_without_replacement():
    logits = torch.tensor([1.0, 0.2, -0.5, 0.8, -1.5])
    tau = 0.5
    p = (logits.double() / tau).softmax(0)
    # Exact probability of every unordered pair {i, j} drawn without replacement.
    pairs = list(itertools.combinations(range(5), 2))
    exact = torch.tensor([p[i] * p[j] / (1 - p[i]) + p[j] * p[i] / (1 - p[j]) for i, j in pairs])
    draws = 100_000
    _, idx = sf.gumbel_topk(logits.expand(draws, -1), 2, tau=tau, seed=7, backend="cpu")
    lo, hi = idx.min(1).values, idx.max(1).values
    counts = torch.tensor([float(((lo == i) & (hi == j)).sum()) for i, j in pairs]).double()
    assert abs(exact.sum().item() - 1) < 1e-12
    assert _chi2(counts, exact) < 33.7  # 9 degrees of freedom, p = 1e-4
    # Ignoring tau (sampling from softmax(logits)) fails.
    q = logits.double().softmax(0)
    wrong = torch.tensor([q[i] * q[j] / (1 - q[i]) + q[j] * q[i] / (1 - q[j]) for i, j in pairs])
    assert _chi2(counts, wrong) > 1000


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_masked_logits_are_never_sampled(backend):
    rows = 20_000 if backend == "cpu" else 16
    x = torch.randn(rows, 8)
    x[:, [1, 4, 6]] = -torch.inf
    y = sf.gumbel_softmax(x, hard=True, noise_scale=5.0, seed=1, backend=backend)
    assert y[:, [1, 4, 6]].sum() == 0 and (y.sum(1) == 1).all()
    soft = sf.gumbel_softmax(x, seed=1, backend=backend)
    assert (soft[:, [1, 4, 6]] == 0).all()
    _, idx = sf.gumbel_topk(x, 5, tau=3.0, seed=2, backend=backend)
    assert not torch.isin(idx, torch.tensor([1, 4, 6])).any()


# ---------------------------------------------------------------------------------------------
# gumbel_quantize
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("distance", ["l2", "cosine"])
@pytest.mark.parametrize("hard", [True, False])
@pytest.mark.parametrize("levels", [None, 3])
def test_quantize_matches_reference(backend, distance, hard, levels):
    g = torch.Generator().manual_seed(5)
    n, k, d = (33 if backend == "cpu" else 7), 20, 8  # Triton's interpreter: few rows
    x = torch.randn(n, d, generator=g)
    book = torch.randn(*((levels,) if levels else ()), k, d, generator=g)
    outs = []
    for fn in (lambda *a, **kw: sf.gumbel_quantize(*a, backend=backend, **kw), ref.gumbel_quantize):
        xr, br = x.clone().requires_grad_(), book.clone().requires_grad_()
        scale = torch.full((n,), 0.5).requires_grad_()
        codes, quantized, soft = fn(xr, br, tau=0.7, hard=hard, noise_scale=scale,
                                    distance=distance, logit_scale=4.0, seed=3, offset=1)
        (quantized.pow(2).sum() + soft.pow(2).sum()).backward()
        outs.append((codes, quantized, soft, xr.grad, br.grad, scale.grad))
    (codes, *got), (want_codes, *want) = outs
    assert torch.equal(codes, want_codes)
    assert codes.shape == ((n, levels) if levels else (n,))
    for a, b in zip(got, want):  # float32 sums of terms up to ~50: tolerance scaled to them
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * max(1.0, b.abs().max().item()))
    if hard:  # the forward value is exactly the chosen codewords
        books = book if levels else book[None]
        chosen, residual = torch.zeros(n, d), x.clone()
        for lv in range(books.shape[0]):
            cl = codes[:, lv] if levels else codes
            chosen += books[lv][cl]
            residual -= books[lv][cl]
        torch.testing.assert_close(got[0], chosen, rtol=1e-6, atol=1e-6)


def _plain_quantize(x, books, tau, noise_scale, logit_scale, distance, hard, seed, offset):
    """gumbel_quantize as the formula, for torch autograd: per level l, logits = s * -||r - c||^2
    (differences, not the expanded form) or s * cos(r, c); z = (logits + noise_scale * g_l) / tau
    with g_l the stream at offset + l; y = softmax(z), plus onehot(argmax z) - y.detach() when
    hard; the level adds y @ c and the next level sees r - y @ c."""
    scale = logit_scale.reshape(-1, 1) if isinstance(logit_scale, torch.Tensor) else logit_scale
    residual, quantized, codes, softs = x, torch.zeros_like(x), [], []
    for level, book in enumerate(books):
        if distance == "l2":
            logits = -(residual[:, None, :] - book[None]).pow(2).sum(-1)
        else:
            logits = torch.nn.functional.cosine_similarity(residual[:, None, :], book[None], dim=-1)
        g = ref.gumbel_noise(seed, offset + level, *logits.shape).to(x.dtype)
        z = (scale * logits + noise_scale * g) / tau
        soft = z.softmax(-1)
        code = z.argmax(-1)
        y = torch.nn.functional.one_hot(code, book.shape[0]).to(x.dtype) - soft.detach() + soft \
            if hard else soft
        quantized = quantized + y @ book
        residual = residual - y @ book
        codes.append(code)
        softs.append(soft)
    return torch.stack(codes, 1), quantized, torch.stack(softs, 1)


@pytest.mark.parametrize("backend", CPU_BACKENDS + ["reference"])
@pytest.mark.parametrize("form", ["0-dim", "(1,)", "per row"])
@pytest.mark.parametrize("levels,distance", [(None, "cosine"), (3, "l2")])
@pytest.mark.parametrize("hard", [True, False])
def test_quantize_learned_logit_scale(backend, form, levels, distance, hard):
    # The variable-length semantic-ID paper learns the logit scale (exp of a parameter per
    # step, on cosine logits): a tensor logit_scale gets its gradient on every backend.
    g = torch.Generator().manual_seed(11)
    n, k, d = (29 if backend != "triton" else 6), 17, 8
    x = torch.randn(n, d, generator=g)
    book = torch.randn(*((levels,) if levels else ()), k, d, generator=g)
    base = {"0-dim": torch.tensor(1.7), "(1,)": torch.tensor([0.6]),
            "per row": torch.rand(n, generator=g) * 3 + 0.2}[form]
    if distance == "cosine":
        base = base * 8
    weight_q = torch.randn(n, d, generator=g)
    weight_s = torch.randn(n, *book.shape[:-1], generator=g)
    runs = {}
    for name in (backend, "reference", "plain"):
        dtype = torch.float64 if name == "plain" else torch.float32
        xr, br, sr = (t.to(dtype, copy=True).requires_grad_() for t in (x, book, base))
        if name == "plain":
            codes, quantized, soft = _plain_quantize(xr, br if levels else br[None], 0.8, 0.5, sr,
                                                     distance, hard, 7, 2)
            if not levels:
                codes, soft = codes[:, 0], soft[:, 0]
        else:
            codes, quantized, soft = sf.gumbel_quantize(xr, br, tau=0.8, noise_scale=0.5, hard=hard,
                                                        distance=distance, logit_scale=sr, seed=7,
                                                        offset=2, backend=name)
        ((quantized * weight_q.to(dtype)).sum() + (soft * weight_s.to(dtype)).sum()).backward()
        runs[name] = (codes, quantized, soft, xr.grad, br.grad, sr.grad)
    got = runs[backend]
    assert got[5].shape == base.shape and got[5].abs().sum() > 0
    for want, rtol in ((runs["reference"], 1e-4), (runs["plain"], 1e-3)):
        assert torch.equal(got[0], want[0])
        for a, b in zip(got[1:], want[1:]):
            b = b.float()
            torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * max(1.0, b.abs().max().item()))


def test_reference_gradcheck_in_logit_scale():
    xq = torch.randn(4, 3, dtype=torch.float64)
    book = torch.randn(2, 6, 3, dtype=torch.float64)
    for scale in (torch.tensor(1.3, dtype=torch.float64),
                  torch.tensor([0.5, 1.0, 2.0, 1.5], dtype=torch.float64)):
        assert torch.autograd.gradcheck(
            lambda s: ref.gumbel_quantize(xq, book, hard=False, logit_scale=s, seed=2)[1:],
            (scale.requires_grad_(),))


# ---------------------------------------------------------------------------------------------
# torch.library, torch.compile, gradcheck
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_opcheck(backend):
    x = torch.randn(4, 9, requires_grad=True)
    tau = torch.full((4,), 0.8, requires_grad=True)
    scale = torch.ones(1, requires_grad=True)
    seed = torch.tensor([3])
    for hard in (False, True):
        torch.library.opcheck(ops._softmax_op, (x, tau, scale, seed, 2, hard, backend))
    dy = torch.randn(4, 9)
    for sums in (False, True):
        torch.library.opcheck(ops._softmax_backward_op,
                              (x.detach(), dy, tau.detach(), scale.detach(), seed, 2, sums, backend))
    torch.library.opcheck(ops._topk_op, (x.detach(), 3, tau.detach(), seed, 0, backend))


def test_compiled_training_step_with_gumbel_quantize():
    torch.manual_seed(0)
    encoder = torch.nn.Linear(12, 8)
    book = torch.nn.Parameter(torch.randn(3, 16, 8))
    opt = torch.optim.SGD([*encoder.parameters(), book], lr=0.01)

    def forward(batch, seed):  # the loss of a DIGER-style step; AOT autograd traces backward
        codes, quantized, soft = sf.gumbel_quantize(encoder(batch), book, tau=0.5, seed=seed)
        loss = (quantized - encoder(batch)).pow(2).mean() + soft.pow(2).mean()
        return loss, codes

    compiled = torch.compile(forward, fullgraph=True, backend="aot_eager")
    batch = torch.randn(10, 12)
    loss_c, codes_c = compiled(batch, 5)
    loss_c.backward()
    grads_c = [p.grad.clone() for p in (encoder.weight, book)]
    opt.zero_grad()
    loss_e, codes_e = forward(batch, 5)
    loss_e.backward()
    assert torch.equal(codes_c, codes_e)
    torch.testing.assert_close(loss_c, loss_e)
    for a, b in zip(grads_c, (encoder.weight.grad, book.grad)):
        torch.testing.assert_close(a, b)


def test_compiled_seedless_call_draws_from_torch_generator_like_eager():
    # seed=None: the seed is drawn by torch.randint inside the graph (no host read, no graph
    # break), so compiled and eager calls after the same manual_seed agree.
    compiled = torch.compile(lambda t: sf.gumbel_softmax(t, 0.5, backend="cpu"), fullgraph=True,
                             backend="aot_eager")
    x = torch.randn(4, 10)
    torch.manual_seed(1)
    a, b = compiled(x), compiled(x)
    torch.manual_seed(1)
    assert torch.equal(a, sf.gumbel_softmax(x, 0.5, backend="cpu"))
    assert not torch.equal(a, b)  # the generator moved on between calls


def test_gradcheck_reference_float64():
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    tau = torch.tensor([0.7, 1.2, 0.9], dtype=torch.float64, requires_grad=True)
    scale = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, t, s: ref.gumbel_softmax(a, t, noise_scale=s, seed=1), (x, tau, scale))
    # hard=True is piecewise constant (numerical Jacobian 0): its straight-through gradient is
    # the soft one by construction, checked against the kernels above.
    xq = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    book = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, c: ref.gumbel_quantize(a, c, hard=False, seed=2)[1:], (xq, book))


def test_cpu_backward_passes_gradcheck_in_float64_through_float32_kernels():
    # The kernels compute in float32: a loose gradcheck still catches a wrong formula.
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    scale = torch.tensor([0.5, 1.0, 1.5], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, s: sf.gumbel_softmax(a, 1.3, noise_scale=s, seed=4, backend="cpu"), (x, scale),
        eps=1e-3, atol=2e-3, rtol=2e-3)


# ---------------------------------------------------------------------------------------------
# Determinism
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_same_seed_same_sample_and_manual_seed_reproduces(backend):
    x = torch.randn(5, 40)
    a = sf.gumbel_softmax(x, seed=123, backend=backend)
    assert torch.equal(a, sf.gumbel_softmax(x, seed=123, backend=backend))
    assert not torch.equal(a, sf.gumbel_softmax(x, seed=124, backend=backend))
    assert not torch.equal(a, sf.gumbel_softmax(x, seed=123, offset=1, backend=backend))
    torch.manual_seed(77)
    b = sf.gumbel_softmax(x, backend=backend)
    c = sf.gumbel_topk(x, 3, backend=backend)
    torch.manual_seed(77)
    assert torch.equal(b, sf.gumbel_softmax(x, backend=backend))
    assert torch.equal(c[1], sf.gumbel_topk(x, 3, backend=backend)[1])
    assert not torch.equal(b, sf.gumbel_softmax(x, backend=backend))  # the generator moved on


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def test_bad_input_gets_clear_errors():
    x = torch.randn(4, 6)
    with pytest.raises(ValueError, match="tau"):
        sf.gumbel_softmax(x, 0.0)
    with pytest.raises(ValueError, match="tau"):
        sf.gumbel_softmax(x, torch.tensor([1.0, -1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="noise_scale"):
        sf.gumbel_softmax(x, noise_scale=-1.0)
    with pytest.raises(ValueError, match="one value per row"):
        sf.gumbel_softmax(x, torch.ones(5))
    with pytest.raises(ValueError, match="one value per row"):
        sf.gumbel_quantize(torch.randn(4, 3), torch.randn(5, 3), noise_scale=torch.ones(2, 2))
    with pytest.raises(ValueError, match="L >= 1 levels"):
        sf.gumbel_quantize(torch.randn(4, 3), torch.randn(0, 5, 3))
    bad = x.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        sf.gumbel_softmax(bad)
    with pytest.raises(ValueError, match="NaN"):
        sf.gumbel_topk(bad, 2)
    with pytest.raises(ValueError, match="larger than the vocabulary"):
        sf.gumbel_topk(x, 7)
    with pytest.raises(ValueError, match="k must be >= 1"):
        sf.gumbel_topk(x, 0)
    with pytest.raises(ValueError, match="empty"):
        sf.gumbel_softmax(torch.randn(3, 0))
    with pytest.raises(ValueError, match="empty"):
        sf.gumbel_topk(torch.randn(3, 0), 1)
    with pytest.raises(ValueError, match="dim"):
        sf.gumbel_softmax(x, dim=2)
    with pytest.raises(ValueError, match="seed"):
        sf.gumbel_softmax(x, seed=-1)
    with pytest.raises(TypeError, match="logits"):
        sf.gumbel_softmax([1.0, 2.0])
    with pytest.raises(ValueError, match="distance"):
        sf.gumbel_quantize(torch.randn(4, 3), torch.randn(5, 3), distance="dot")
    with pytest.raises(ValueError, match="codebook"):
        sf.gumbel_quantize(torch.randn(4, 3), torch.randn(5, 4))
    for scale, error in ((torch.ones(3), ValueError), (torch.ones(4, 1), ValueError),
                         (torch.tensor(float("nan")), ValueError), (float("inf"), ValueError),
                         (torch.tensor(2), TypeError), ("2", TypeError), (True, TypeError)):
        with pytest.raises(error, match="logit_scale"):
            sf.gumbel_quantize(torch.randn(4, 3), torch.randn(5, 3), logit_scale=scale)
    with pytest.raises(ValueError, match="backend"):
        sf.gumbel_softmax(x, backend="tpu")
    # Empty batches are fine.
    assert sf.gumbel_softmax(torch.randn(0, 5), seed=1).shape == (0, 5)
    assert sf.gumbel_topk(torch.randn(0, 5), 2, seed=1)[1].shape == (0, 2)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_unchecked_inputs_never_reach_a_kernel_with_a_wrong_length(backend):
    # With value scans off, the shape checks still run: the kernels read tau[row] and
    # noise_scale[row] for every row, so a wrong length must fail before any kernel.
    x = torch.randn(4, 6)
    sf.config.check_values = False
    try:
        with pytest.raises(ValueError, match="tau"):
            sf.gumbel_softmax(x, torch.ones(3), backend=backend)
        with pytest.raises(ValueError, match="noise_scale"):
            sf.gumbel_softmax(x, noise_scale=torch.ones(8), backend=backend)
        with pytest.raises(ValueError, match="tau"):
            sf.gumbel_topk(x, 2, tau=torch.ones(2), backend=backend)
        # The custom ops themselves (reachable as torch.ops.semid_fast.*) check lengths too.
        seed = torch.tensor([1])
        with pytest.raises(ValueError, match="tau"):
            ops._softmax_op(x, torch.ones(2), torch.ones(1), seed, 0, False, backend)
        with pytest.raises(ValueError, match="noise_scale"):
            ops._softmax_backward_op(x, x, torch.ones(1), torch.ones(9), seed, 0, True, backend)
        with pytest.raises(ValueError, match="k="):
            ops._topk_op(x, 7, torch.ones(1), seed, 0, backend)
        # NaN rows (unchecked) still give an argmax inside the row.
        bad = torch.full((3, 70), float("nan"))
        _, argmax = ops._softmax_op(bad, torch.ones(1), torch.ones(1), seed, 0, True, backend)
        assert ((argmax >= 0) & (argmax < 70)).all()
        _, idx = sf.gumbel_topk(bad, 3, seed=1, backend=backend)
        assert torch.equal(idx, torch.arange(3).expand(3, 3))  # all NaN: ties, smaller first
    finally:
        sf.config.check_values = True


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_strided_per_row_parameters_are_read_by_row(backend):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 12, generator=g)
    both = torch.rand(5, 2, generator=g) + 0.3
    tau, scale = both[:, 0], both[:, 1]  # stride 2: not the layout the kernels read
    assert not tau.is_contiguous()
    got = sf.gumbel_softmax(x, tau, noise_scale=scale, seed=8, backend=backend)
    want = ref.gumbel_softmax(x, tau.contiguous(), noise_scale=scale.contiguous(), seed=8)
    _assert_softmax_close(got, want, False)


# ---------------------------------------------------------------------------------------------
# GPU: every GPU backend against the reference on CUDA tensors
# ---------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
# Both sides of the CUDA kernels' shared-memory row cache: 11776 floats forward, 5888 z and g
# pairs backward with tau / noise_scale gradients (46 KB).
@pytest.mark.parametrize("rows,vocab", [(1, 1), (5, 7), (64, 256), (3, 5888), (3, 5889),
                                        (4, 11776), (4, 11777), (2, 40000)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_gpu_softmax_matches_reference(backend, rows, vocab, dtype):
    g = torch.Generator().manual_seed(vocab)
    x = (torch.randn(rows, vocab, generator=g) * 3).to(dtype).cuda()
    tau = (torch.rand(rows, generator=g) + 0.2).cuda()
    scale = (torch.rand(rows, generator=g) + 0.1).cuda()
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}[dtype]
    for hard in (False, True):
        got = sf.gumbel_softmax(x, tau, hard=hard, noise_scale=scale, seed=9, offset=4,
                                backend=backend)
        want = ref.gumbel_softmax(x.float(), tau, hard=hard, noise_scale=scale, seed=9, offset=4)
        if dtype == torch.float32:
            _assert_softmax_close(got, want, hard)
        else:
            torch.testing.assert_close(got.float(), want, rtol=tol, atol=tol)
    leaves = [x.clone().requires_grad_(), tau.clone().requires_grad_(),
              scale.clone().requires_grad_()]
    ref_leaves = [x.float().clone().requires_grad_(), tau.clone().requires_grad_(),
                  scale.clone().requires_grad_()]
    weight = torch.randn(rows, vocab, generator=g).cuda()
    (sf.gumbel_softmax(leaves[0], leaves[1], noise_scale=leaves[2], seed=9, backend=backend)
     .float() * weight).sum().backward()
    (ref.gumbel_softmax(ref_leaves[0], ref_leaves[1], noise_scale=ref_leaves[2], seed=9)
     * weight).sum().backward()
    for a, b in zip(leaves, ref_leaves):
        torch.testing.assert_close(a.grad.float(), b.grad, rtol=max(1e-4, 10 * tol),
                                   atol=max(1e-5, 10 * tol))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_float64_logits_match_the_float64_reference(backend):
    # cuda converts float64 around its kernels; triton reads and writes float64 directly.
    x = torch.randn(6, 300, dtype=torch.float64, device="cuda", requires_grad=True)
    tau = torch.rand(6, dtype=torch.float64, device="cuda").add(0.5).requires_grad_()
    y = sf.gumbel_softmax(x, tau, noise_scale=0.7, seed=3, backend=backend)
    xr, tr = x.detach().clone().requires_grad_(), tau.detach().clone().requires_grad_()
    want = ref.gumbel_softmax(xr, tr, noise_scale=0.7, seed=3)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, want, rtol=1e-4, atol=1e-6)
    weight = torch.randn_like(want)
    (y * weight).sum().backward()
    (want * weight).sum().backward()
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(tau.grad, tr.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
def test_gpu_noise_and_topk_match_reference():
    n = 1_000_000
    got = sf.gumbel_noise((n,), seed=77, offset=2, device="cuda", backend="triton")
    assert torch.equal(got.cpu(), ref.gumbel_noise(77, 2, 1, n)[0])
    for rows, vocab, k in [(3, 7, 7), (64, 32768, 50), (8, 1000, 1)]:
        x = torch.randn(rows, vocab, device="cuda")
        got = sf.gumbel_topk(x, k, tau=0.8, seed=5, backend="triton")
        want = ref.gumbel_topk(x, k, tau=0.8, seed=5)
        assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0])


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_quantize_and_argmax_match_reference(backend):
    x = torch.randn(500, 32, device="cuda")
    book = torch.randn(2, 256, 32, device="cuda")
    codes, quantized, soft = sf.gumbel_quantize(x, book, tau=0.5, seed=1, backend=backend)
    want = ref.gumbel_quantize(x, book, tau=0.5, seed=1)
    assert torch.equal(codes, want[0])
    torch.testing.assert_close(quantized, want[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(soft, want[2], rtol=1e-4, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_quantize_learned_logit_scale_matches_reference(backend):
    x = torch.randn(500, 32, device="cuda")
    book = torch.randn(2, 256, 32, device="cuda")
    weight = torch.randn(500, 32, device="cuda")
    base = torch.rand(500, device="cuda") * 8 + 1
    runs = []
    for name in (backend, "reference"):
        scale, br = base.clone().requires_grad_(), book.clone().requires_grad_()
        codes, quantized, soft = sf.gumbel_quantize(x, br, tau=0.5, logit_scale=scale, seed=1,
                                                    distance="cosine", backend=name)
        ((quantized * weight).sum() + soft.pow(2).sum()).backward()
        runs.append((codes, quantized, soft, br.grad, scale.grad))
    assert torch.equal(runs[0][0], runs[1][0])
    for a, b in zip(runs[0][1:], runs[1][1:]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * max(1.0, b.abs().max().item()))

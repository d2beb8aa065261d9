"""The quantize family: every backend against the pure-PyTorch reference.

Encoders are compared through the distances of the chosen codewords (ties may pick different
indices); decoders exactly; gradients against the reference's autograd.
"""

import numpy as np
import pytest
import torch

import semid_fast as sf
from semid_fast import _backends
from semid_fast.ops import quantize as ops
from semid_fast.reference import quantize as ref
from tests.conftest import backend_pairs, cpu_backends, rq_inputs, skip_unavailable

CPU_BACKENDS = cpu_backends()

# (N, D, K, L): N off every block size, D in {7, 32, 64, 384}, K in {2, 256, 1024}, L in {1, 3, 4}.
SHAPES = [
    (1, 7, 2, 1),
    (37, 32, 256, 3),
    (130, 64, 256, 4),
    (61, 384, 256, 3),
    (50, 7, 1024, 4),
    (47, 32, 16, 2),   # cpu row block of 48, minus one
    (49, 32, 16, 2),   # plus one
    (65, 64, 100, 1),  # triton row block of 64, plus one; K off the codeword tile
]


def level_distances(x, codebooks, codes):
    """Per level: (distance of the chosen codeword, smallest distance) to that level's residual."""
    residual = x.float()
    chosen, best = [], []
    for level in range(codebooks.shape[0]):
        dist = ref.squared_distances(residual, codebooks[level])
        chosen.append(dist.gather(1, codes[:, level:level + 1].long())[:, 0])
        best.append(dist.min(dim=1).values)
        residual = residual - codebooks[level][codes[:, level].long()]
    return torch.stack(chosen, 1), torch.stack(best, 1)


def assert_greedy_optimal(x, codebooks, codes):
    chosen, best = level_distances(x, codebooks, codes)
    tol = 1e-4 * (1.0 + best.abs())
    assert ((chosen - best) <= tol).all(), f"max excess {(chosen - best).max().item()}"


# ---------------------------------------------------------------------------------------------
# encode
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device,backend", backend_pairs(reference=True))
@pytest.mark.parametrize("n,d,k,levels", SHAPES)
def test_rq_encode_picks_the_nearest_codeword_each_level(device, backend, n, d, k, levels):
    skip_unavailable(device, backend)
    x, codebooks = rq_inputs(n, d, k, levels, device, seed=n * 1000 + d)
    codes = sf.rq_encode(x, codebooks, backend=backend)
    assert codes.shape == (n, levels) and codes.dtype == torch.int64
    assert_greedy_optimal(x, codebooks, codes)
    expected = ref.rq_encode(x, codebooks)
    # On random data exact ties are absent, so nearly every code matches the reference too.
    assert (codes == expected).float().mean() >= 0.99


@pytest.mark.parametrize("device,backend,dtype", [
    pytest.param(*p.values, dtype, marks=p.marks, id=f"{p.id}-{str(dtype)[6:]}")
    for p in backend_pairs(reference=True) for dtype in (torch.float16, torch.bfloat16)
    if not (p.id == "cpu-triton" and dtype == torch.bfloat16)])  # the interpreter lacks bf16
def test_rq_encode_half_inputs_get_the_float32_choice(device, backend, dtype):
    skip_unavailable(device, backend)
    x, codebooks = rq_inputs(53, 64, 256, 3, device, seed=7, dtype=dtype)
    codes = sf.rq_encode(x, codebooks, backend=backend)
    assert_greedy_optimal(x.float(), codebooks, codes)


@pytest.mark.parametrize("device,backend",
                         [p for p in backend_pairs(reference=True) if p.id != "cuda-cuda"])
@pytest.mark.parametrize("beam_width", [2, 5])
@pytest.mark.parametrize("n,d,k,levels", [(29, 16, 64, 3), (7, 7, 2, 4), (33, 32, 256, 2)])
def test_rq_encode_beam_matches_reference(device, backend, beam_width, n, d, k, levels):
    skip_unavailable(device, backend)
    x, codebooks = rq_inputs(n, d, k, levels, device, seed=beam_width + n)
    codes = sf.rq_encode(x, codebooks, beam_width=beam_width, backend=backend)
    expected = ref.rq_encode(x, codebooks, beam_width=beam_width)
    ours = (x - ref.rq_decode(codes, codebooks)).pow(2).sum(1)
    theirs = (x - ref.rq_decode(expected, codebooks)).pow(2).sum(1)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    assert (codes == expected).float().mean() >= 0.95


def test_beam_wider_than_every_encoding_equals_the_exhaustive_beam():
    """B > K^L keeps every encoding, as B = K^L does (cpu and reference)."""
    x, codebooks = rq_inputs(40, 6, 3, 3, "cpu", seed=5)
    for backend in ("cpu", "reference"):
        exhaustive = sf.rq_encode(x, codebooks, beam_width=27, backend=backend)
        assert torch.equal(sf.rq_encode(x, codebooks, beam_width=1000, backend=backend), exhaustive)
    best = (x - ref.rq_decode(exhaustive, codebooks)).pow(2).sum(1)
    greedy = (x - ref.rq_decode(sf.rq_encode(x, codebooks), codebooks)).pow(2).sum(1)
    assert (best <= greedy + 1e-5).all()


# (N, D, K, L, B) large enough in N * B for the CPU kernel's cross-product tables (faiss's
# use_beam_LUT): D off the 8-float vectors, K off the 16-codeword panels, L = 5 past the
# unrolled depths; and beams past the vector width (16 lanes on AVX-512): B=2 and 33 split each
# beam's candidates into several groups at the first level, B=33 keeps more minima than one
# vector. "cpu" is in the test ids so the narrower ISA builds run them too (test_build).
LUT_SHAPES = [(300, 13, 100, 3, 3), (150, 24, 37, 5, 7), (200, 40, 64, 4, 16)] + [
    (n, d, k, levels, beam_width) for n, d, k, levels in [(300, 13, 37, 4), (200, 24, 100, 3)]
    for beam_width in (2, 16, 33)]


@pytest.mark.parametrize("n,d,k,levels,beam_width", LUT_SHAPES)
def test_rq_encode_beam_tables_on_cpu_match_reference(n, d, k, levels, beam_width):
    x, codebooks = rq_inputs(n, d, k, levels, "cpu", seed=n + levels + beam_width)
    codes = sf.rq_encode(x, codebooks, beam_width=beam_width, backend="cpu")
    expected = ref.rq_encode(x, codebooks, beam_width=beam_width)
    ours = (x - ref.rq_decode(codes, codebooks)).pow(2).sum(1)
    theirs = (x - ref.rq_decode(expected, codebooks)).pow(2).sum(1)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    # Ties aside (float rounding of near-equal candidates), the same codes.
    assert (codes == expected).all(dim=1).float().mean() >= 0.99


@pytest.mark.parametrize("n,d,nbits,levels,beam_width", [(400, 13, 4, 3, 4), (300, 40, 6, 4, 16)])
def test_rq_encode_beam_matches_faiss_beam_lut(n, d, nbits, levels, beam_width):
    faiss = pytest.importorskip("faiss")
    x, codebooks = rq_inputs(n, d, 2 ** nbits, levels, "cpu", seed=nbits)
    rq = faiss.ResidualQuantizer(d, levels, nbits)
    faiss.copy_array_to_vector(codebooks.numpy().reshape(-1), rq.codebooks)
    rq.is_trained = True
    rq.max_beam_size = beam_width
    rq.use_beam_LUT = 1
    rq.compute_codebook_tables()
    # Unpack faiss's codes: `levels` fields of nbits bits, least significant first.
    packed = torch.from_numpy(rq.compute_codes(x.numpy()).astype(np.int64))
    word = sum(packed[:, i] << (8 * i) for i in range(packed.shape[1]))
    theirs = torch.stack([(word >> (nbits * l)) & (2 ** nbits - 1) for l in range(levels)], 1)
    ours = sf.rq_encode(x, codebooks, beam_width=beam_width, backend="cpu")
    assert (ours == theirs).all(dim=1).float().mean() >= 0.99


def test_beam_search_beats_greedy_on_average():
    x, codebooks = rq_inputs(300, 16, 32, 4, "cpu", seed=3)
    err = {b: (x - sf.rq_decode(sf.rq_encode(x, codebooks, beam_width=b, backend="cpu"),
                                codebooks)).pow(2).sum() for b in (1, 8)}
    assert err[8] < err[1]


def test_beam_search_is_not_in_the_cuda_kernel():
    assert not _backends.implements("cuda", "quantize", "rq_encode_beam")


@pytest.mark.gpu
def test_beam_search_on_the_cuda_backend_raises():
    skip_unavailable("cuda", "cuda")
    x, codebooks = rq_inputs(5, 4, 8, 2, "cuda", seed=1)
    with pytest.raises(ValueError, match="does not implement"):
        sf.rq_encode(x, codebooks, beam_width=2, backend="cuda")


@pytest.mark.parametrize("device,backend", backend_pairs(reference=True))
# Sub-vectors of 1, 2, 4 and 8 dims take the CPU lane kernel (K=37 and K=9: a codebook that
# is not a whole number of the 4 or 2 codewords it scores side by side); 3, 16 and 96 the
# panel kernel.
@pytest.mark.parametrize("n,d,k,m", [(37, 32, 256, 4), (130, 64, 16, 16), (1, 7, 2, 7),
                                     (49, 64, 256, 8), (61, 384, 256, 4), (61, 12, 16, 4),
                                     (50, 64, 32, 4), (45, 64, 37, 8), (33, 16, 9, 8)])
def test_pq_encode_picks_the_nearest_codeword_per_subspace(device, backend, n, d, k, m):
    skip_unavailable(device, backend)
    g = torch.Generator().manual_seed(d + m)
    x = torch.randn(n, d, generator=g).to(device)
    codebooks = torch.randn(m, k, d // m, generator=g).to(device)
    codes = sf.pq_encode(x, codebooks, backend=backend)
    parts = x.reshape(n, m, d // m)
    for s in range(m):
        dist = ref.squared_distances(parts[:, s], codebooks[s])
        chosen = dist.gather(1, codes[:, s:s + 1])[:, 0]
        assert (chosen - dist.min(1).values <= 1e-4 * (1 + dist.min(1).values)).all()
    assert (codes == ref.pq_encode(x, codebooks)).float().mean() >= 0.99


@pytest.mark.parametrize("device,backend", backend_pairs(reference=True))
def test_pq_encode_and_decode_with_opq_rotation(device, backend):
    skip_unavailable(device, backend)
    g = torch.Generator().manual_seed(11)
    n, d, m, k = 45, 32, 8, 64
    rotation, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
    x = torch.randn(n, d, generator=g)
    codebooks = torch.randn(m, k, d // m, generator=g)
    x, rotation, codebooks = x.to(device), rotation.to(device), codebooks.to(device)
    codes = sf.pq_encode(x, codebooks, rotation=rotation, backend=backend)
    assert (codes == ref.pq_encode(x, codebooks, rotation)).float().mean() >= 0.99
    out = sf.pq_decode(codes, codebooks, rotation=rotation, backend=backend)
    torch.testing.assert_close(out, ref.pq_decode(codes, codebooks, rotation))
    # The rotation is orthonormal: decoding undoes it, so the error is measured in x's space.
    rotated_error = (x @ rotation.T - sf.pq_decode(codes, codebooks, backend=backend)).norm()
    torch.testing.assert_close((x - out).norm(), rotated_error, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device,backend", backend_pairs(reference=True))
@pytest.mark.parametrize("rotate", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pq_center_is_subtracted_after_the_rotation_and_added_back(device, backend, rotate, dtype):
    """faiss IndexIVFPQ with one list: codes of x @ R.T - c; decode adds c, then undoes R."""
    skip_unavailable(device, backend)
    g = torch.Generator().manual_seed(23 + rotate)
    n, d, m, k = 53, 32, 16, 32  # 2-dim sub-vectors, as RPG's OPQ32 on 64 dims
    center = 3.0 * torch.randn(d, generator=g)
    rotation = torch.linalg.qr(torch.randn(d, d, generator=g))[0] if rotate else None
    y = center + torch.randn(n, d, generator=g)  # data around the centre, in rotated space
    x = y @ rotation if rotate else y
    codebooks = torch.randn(m, k, d // m, generator=g)
    x = x.to(device=device, dtype=dtype)
    center, codebooks = center.to(device), codebooks.to(device)
    rotation = None if rotation is None else rotation.to(device)
    codes = sf.pq_encode(x, codebooks, rotation=rotation, center=center, backend=backend)
    # the same codes as the plain encoder on the centred float32 rows, bit for bit
    centred = (x.float() if rotation is None else x.float() @ rotation.T) - center
    assert torch.equal(codes, sf.pq_encode(centred, codebooks, backend=backend))
    assert (codes == ref.pq_encode(x, codebooks, rotation, center)).float().mean() >= 0.99
    assert not torch.equal(codes, sf.pq_encode(x, codebooks, rotation=rotation, backend=backend))

    books = codebooks.clone().requires_grad_()
    shift = center.clone().requires_grad_()
    turn = None if rotation is None else rotation.clone().requires_grad_()
    out = sf.pq_decode(codes, books, rotation=turn, center=shift, backend=backend)
    weights = torch.randn(out.shape, generator=g).to(device)
    grads = torch.autograd.grad((out * weights).sum(), [t for t in (books, shift, turn) if t is not None])
    books_r = codebooks.clone().requires_grad_()
    shift_r = center.clone().requires_grad_()
    turn_r = None if rotation is None else rotation.clone().requires_grad_()
    want = ref.pq_decode(codes, books_r, turn_r, shift_r)
    grads_r = torch.autograd.grad((want * weights).sum(), [t for t in (books_r, shift_r, turn_r) if t is not None])
    torch.testing.assert_close(out, want)
    for got_grad, want_grad in zip(grads, grads_r):
        torch.testing.assert_close(got_grad, want_grad)
    if rotation is None:  # the codewords plus the centre, rounded once
        assert torch.equal(out.detach(), sf.pq_decode(codes, codebooks, backend=backend) + center)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("code_dtype", [torch.uint8, torch.int16, torch.int32])
def test_narrow_code_dtypes(backend, code_dtype):
    x, codebooks = rq_inputs(20, 8, 256, 2, "cpu", seed=5)
    wide = sf.rq_encode(x, codebooks, backend=backend)
    narrow = sf.rq_encode(x, codebooks, code_dtype=code_dtype, backend=backend)
    assert narrow.dtype == code_dtype and torch.equal(narrow.long(), wide)
    pq_narrow = sf.pq_encode(x, codebooks[:1].reshape(2, 256, 4), code_dtype=code_dtype,
                             backend=backend)
    torch.testing.assert_close(sf.pq_decode(pq_narrow, codebooks[:1].reshape(2, 256, 4),
                                            backend=backend),
                               ref.pq_decode(pq_narrow.long(), codebooks[:1].reshape(2, 256, 4)))


@pytest.mark.parametrize("backend", ["reference"] + CPU_BACKENDS)
def test_empty_batch_returns_empty(backend):
    x, codebooks = rq_inputs(0, 8, 4, 2, "cpu", seed=1)
    assert sf.rq_encode(x, codebooks, backend=backend).shape == (0, 2)
    assert sf.pq_encode(x, codebooks[0].reshape(2, 4, 4), backend=backend).shape == (0, 2)
    codes, quantized, loss = sf.rq_quantize(x, codebooks, backend=backend)
    assert codes.shape == (0, 2) and quantized.shape == (0, 8)
    assert sf.rq_decode(codes, codebooks, backend=backend).shape == (0, 8)


def test_encode_is_deterministic_and_thread_count_independent():
    x, codebooks = rq_inputs(500, 32, 256, 3, "cpu", seed=9)
    first = sf.rq_encode(x, codebooks, backend="cpu")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = sf.rq_encode(x, codebooks, backend="cpu")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(first, single)
    assert torch.equal(first, sf.rq_encode(x, codebooks, backend="cpu"))


def test_ties_go_to_the_smaller_code():
    codebooks = torch.zeros(1, 32, 4)
    codebooks[0, 5] = codebooks[0, 21] = torch.tensor([1.0, 0.0, 0.0, 0.0])
    codebooks[0, :5] = codebooks[0, 6:21] = codebooks[0, 22:] = 10.0
    x = torch.tensor([[1.0, 0.0, 0.0, 0.0]] * 7)
    for backend in CPU_BACKENDS:
        assert (sf.rq_encode(x, codebooks, backend=backend) == 5).all(), backend


# ---------------------------------------------------------------------------------------------
# decode and the fused training step
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device,backend", backend_pairs(reference=True))
@pytest.mark.parametrize("n,d,k,levels", [(37, 32, 256, 3), (130, 7, 2, 4), (1, 384, 1024, 1)])
def test_rq_decode_and_its_gradient(device, backend, n, d, k, levels):
    skip_unavailable(device, backend)
    g = torch.Generator().manual_seed(n + k)
    codes = torch.randint(0, k, (n, levels), generator=g).to(device)
    codebooks = torch.randn(levels, k, d, generator=g).to(device)
    upstream = torch.randn(n, d, generator=g).to(device)
    ours_cb = codebooks.clone().requires_grad_()
    out = sf.rq_decode(codes.int(), ours_cb, backend=backend)
    (out * upstream).sum().backward()
    ref_cb = codebooks.clone().requires_grad_()
    expected = ref.rq_decode(codes, ref_cb)
    (expected * upstream).sum().backward()
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours_cb.grad, ref_cb.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device,backend", backend_pairs(reference=True))
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("n,d,k,levels", [(37, 32, 256, 3), (130, 7, 2, 4), (20, 64, 64, 1)])
def test_rq_quantize_forward_and_backward_equal_the_reference(device, backend, n, d, k, levels,
                                                              reduction):
    skip_unavailable(device, backend)
    x, codebooks = rq_inputs(n, d, k, levels, device, seed=levels * 31 + d)
    g = torch.Generator().manual_seed(2)
    upstream = torch.randn(n, d, generator=g).to(device)
    loss_weight = 1.7

    def run(fn):
        xi = x.clone().requires_grad_()
        cb = codebooks.clone().requires_grad_()
        codes, quantized, loss = fn(xi, cb)
        ((quantized * upstream).sum() + loss_weight * loss).backward()
        return codes, quantized.detach(), loss.detach(), xi.grad, cb.grad

    ours = run(lambda xi, cb: sf.rq_quantize(xi, cb, beta=0.3, reduction=reduction,
                                             backend=backend))
    theirs = run(lambda xi, cb: ref.rq_quantize(xi, cb, beta=0.3, reduction=reduction))
    assert torch.equal(ours[0], theirs[0])
    for a, b in zip(ours[1:], theirs[1:]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", ["reference"] + CPU_BACKENDS)
@pytest.mark.parametrize("use", ["loss", "quantized"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_rq_quantize_backward_of_one_output_equals_the_reference(backend, use, reduction):
    x, codebooks = rq_inputs(300, 24, 16, 3, "cpu", seed=9)
    grads = []
    for fn in (lambda *a: sf.rq_quantize(*a, beta=0.4, reduction=reduction, backend=backend),
               lambda *a: ref.rq_quantize(*a, beta=0.4, reduction=reduction)):
        xi, cb = x.clone().requires_grad_(), codebooks.clone().requires_grad_()
        _, quantized, loss = fn(xi, cb)
        (loss * 3.0 if use == "loss" else quantized.square().sum()).backward()
        grads.append((xi.grad, cb.grad))
    for got, want in zip(*grads):
        if want is None:
            assert got is None or not got.any()
        else:
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def lcrec_rq_step(x, codebooks, beta):
    """Oracle of one RQ-VAE quantization step as LC-Rec's index/models/rq.py
    (ResidualVectorQuantizer.forward) and vq.py (VectorQuantizer.forward, use_sk off) do it:
    per level the nearest codeword of the residual, loss = codebook MSE + beta * commitment
    MSE with F.mse_loss, the straight-through output subtracted from the residual; the
    level losses averaged with torch.stack(...).mean()."""
    import torch.nn.functional as F

    residual, x_q, losses, codes = x, 0, [], []
    for book in codebooks:
        d = ((residual ** 2).sum(1, keepdim=True) + (book ** 2).sum(1, keepdim=True).t()
             - 2 * residual @ book.t())
        idx = d.argmin(-1)
        e = book[idx]
        losses.append(F.mse_loss(e, residual.detach()) + beta * F.mse_loss(e.detach(), residual))
        out = residual + (e - residual).detach()
        residual = residual - out
        x_q = x_q + out
        codes.append(idx)
    return torch.stack(codes, 1), x_q, torch.stack(losses).mean()


@pytest.mark.parametrize("backend", ["reference"] + CPU_BACKENDS)
@pytest.mark.parametrize("n,d,k,levels", [(257, 32, 64, 3), (40, 7, 5, 4)])
def test_rq_quantize_mean_matches_lcrec_rq_vae_step(backend, n, d, k, levels):
    x, codebooks = rq_inputs(n, d, k, levels, "cpu", seed=n + k)
    g = torch.Generator().manual_seed(5)
    upstream = torch.randn(n, d, generator=g)

    def run(fn):
        xi, cb = x.clone().requires_grad_(), codebooks.clone().requires_grad_()
        codes, quantized, loss = fn(xi, cb)
        ((quantized * upstream).sum() + 2.5 * loss).backward()
        return codes, quantized.detach(), loss.detach(), xi.grad, cb.grad

    ours = run(lambda xi, cb: sf.rq_quantize(xi, cb, beta=0.25, backend=backend))
    theirs = run(lambda xi, cb: lcrec_rq_step(xi, cb, 0.25))
    assert torch.equal(ours[0], theirs[0])
    for a, b in zip(ours[1:], theirs[1:]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    summed = sf.rq_quantize(x, codebooks, beta=0.25, reduction="sum", backend=backend)[2]
    torch.testing.assert_close(summed, theirs[2] * levels, rtol=1e-5, atol=1e-6)


def test_rq_quantize_keeps_half_dtype():
    x, codebooks = rq_inputs(16, 8, 4, 2, "cpu", seed=4, dtype=torch.bfloat16)
    codes, quantized, loss = sf.rq_quantize(x.requires_grad_(), codebooks, backend="cpu")
    assert quantized.dtype == torch.bfloat16 and loss.dtype == torch.float32
    quantized.float().sum().backward()
    assert x.grad.dtype == torch.bfloat16


# ---------------------------------------------------------------------------------------------
# torch.library and torch.compile
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["reference"] + CPU_BACKENDS)
def test_opcheck_every_registered_op(backend):
    x, codebooks = rq_inputs(13, 16, 32, 2, "cpu", seed=12)
    codes = ref.rq_encode(x, codebooks)
    torch.library.opcheck(ops._rq_encode_op, (x, codebooks, 1, [], 50, backend))
    torch.library.opcheck(ops._rq_encode_op, (x, codebooks, 1, [0.0, 0.01], 20, backend))
    torch.library.opcheck(ops._pq_encode_op, (x, codebooks[0].reshape(4, 32, 4), backend))
    torch.library.opcheck(ops._decode_op, (codes, codebooks.requires_grad_(), False, backend))
    torch.library.opcheck(ops._decode_op, (codes, codebooks.reshape(2, 32, 16, 1)[..., 0]
                                           .contiguous().requires_grad_(), True, backend))
    torch.library.opcheck(ops._decode_out_op, (codes, codebooks.detach(), False, backend,
                                               torch.empty(13, 16)))
    torch.library.opcheck(ops._rq_quantize_op,
                          (x.requires_grad_(), codebooks.detach().requires_grad_(), 0.25, "mean",
                           [], 50, backend))
    torch.library.opcheck(ops._rq_quantize_op,
                          (x, codebooks.detach().requires_grad_(), 0.25, "sum", [0.003, 0.05], 10,
                           backend))
    upstream, weight = torch.randn_like(x), torch.tensor(1.5)
    backward = _backends.own_or_reference(backend, "quantize", "rq_quantize_backward")
    torch.library.opcheck(ops._rq_quantize_backward_op,
                          (x.detach(), codebooks.detach(), codes, upstream, weight, 0.25, "mean",
                           backward))
    torch.library.opcheck(ops._rq_quantize_backward_op,
                          (x.detach(), codebooks.detach(), codes, None, weight, 0.25, "sum",
                           backward))


def test_torch_compile_fullgraph_rqvae_step_matches_eager():
    torch.manual_seed(0)
    encoder = torch.nn.Linear(12, 8)
    decoder = torch.nn.Linear(8, 12)
    codebooks = torch.nn.Parameter(torch.randn(3, 16, 8) * 0.5)
    batch = torch.randn(40, 12)

    def step(inp):
        z = encoder(inp)
        codes, quantized, rq_loss = sf.rq_quantize(z, codebooks, beta=0.25, backend="cpu")
        loss = ((decoder(quantized) - inp) ** 2).mean() + rq_loss
        return codes, loss

    def grads(fn):
        for p in (*encoder.parameters(), *decoder.parameters(), codebooks):
            p.grad = None
        codes, loss = fn(batch)
        loss.backward()
        return codes, loss.detach(), [p.grad.clone() for p in (encoder.weight, codebooks)]

    eager = grads(step)
    compiled = grads(torch.compile(step, fullgraph=True))
    assert torch.equal(eager[0], compiled[0])
    torch.testing.assert_close(eager[1], compiled[1])
    for a, b in zip(eager[2], compiled[2]):
        torch.testing.assert_close(a, b)


# ---------------------------------------------------------------------------------------------
# bad input: clear errors before any kernel runs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("call,error,match", [
    (lambda: sf.rq_encode(torch.randn(4), torch.randn(1, 2, 4)), ValueError, "x must have shape"),
    (lambda: sf.rq_encode(torch.randn(3, 4), torch.randn(2, 4)), ValueError, "codebooks must have shape"),
    (lambda: sf.rq_encode(torch.randn(3, 5), torch.randn(1, 2, 4)), ValueError, "D=5"),
    (lambda: sf.rq_encode(torch.randn(3, 1), torch.randn(1, 65537, 1)), ValueError, "65536"),
    (lambda: sf.rq_encode(torch.ones(3, 4, dtype=torch.long), torch.randn(1, 2, 4)), TypeError, "x must have dtype"),
    (lambda: sf.rq_encode([[1.0]], torch.randn(1, 2, 1)), TypeError, "x must be a torch.Tensor"),
    (lambda: sf.rq_encode(torch.tensor([[float("nan")] * 4]), torch.randn(1, 2, 4)), ValueError, "x contains NaN"),
    (lambda: sf.rq_encode(torch.randn(3, 4), torch.full((1, 2, 4), float("inf"))), ValueError, "codebooks contains NaN"),
    (lambda: sf.rq_encode(torch.randn(3, 4), torch.randn(1, 2, 4), beam_width=0), ValueError, "beam_width"),
    (lambda: sf.rq_encode(torch.randn(3, 4), torch.randn(1, 2, 4), beam_width=2.0), TypeError, "beam_width"),
    (lambda: sf.rq_encode(torch.randn(3, 4), torch.randn(2, 65536, 4), beam_width=1025), ValueError, "candidate scores"),
    (lambda: sf.rq_encode(torch.randn(3, 4), torch.randn(1, 300, 4), code_dtype=torch.uint8), ValueError, "cannot hold"),
    (lambda: sf.rq_encode(torch.randn(3, 4), torch.randn(1, 2, 4), code_dtype=torch.float32), TypeError, "code_dtype"),
    (lambda: sf.rq_encode(torch.randn(3, 4), torch.randn(1, 2, 4, device="meta")), ValueError, "one device"),
    (lambda: sf.rq_encode(torch.randn(3, 4), torch.randn(1, 2, 4), backend="gpu"), ValueError, "backend"),
    (lambda: sf.rq_encode(torch.randn(3, 4), torch.randn(0, 2, 4)), ValueError, "non-zero"),
    (lambda: sf.rq_decode(torch.tensor([[0, 2]]), torch.randn(2, 2, 4)), ValueError, r"\[0, 2\)"),
    (lambda: sf.rq_decode(torch.tensor([[-1, 0]]), torch.randn(2, 2, 4)), ValueError, r"\[0, 2\)"),
    (lambda: sf.rq_decode(torch.tensor([[0.0, 1.0]]), torch.randn(2, 2, 4)), TypeError, "codes must have dtype"),
    (lambda: sf.rq_decode(torch.tensor([[0, 1, 0]]), torch.randn(2, 2, 4)), ValueError, "3 columns"),
    (lambda: sf.pq_encode(torch.randn(3, 8), torch.randn(3, 2, 2)), ValueError, "M \\* D/M"),
    (lambda: sf.pq_encode(torch.randn(3, 8), torch.randn(2, 2, 4), rotation=torch.randn(8, 4)), ValueError, "rotation"),
    (lambda: sf.pq_decode(torch.tensor([[0, 5]]), torch.randn(2, 2, 4)), ValueError, "codes must lie"),
    (lambda: sf.pq_encode(torch.randn(3, 8), torch.randn(2, 2, 4), center=torch.randn(4)), ValueError, r"center must have shape \(8,\)"),
    (lambda: sf.pq_encode(torch.randn(3, 8), torch.randn(2, 2, 4), center=torch.zeros(8, dtype=torch.long)), TypeError, "center"),
    (lambda: sf.pq_encode(torch.randn(3, 8), torch.randn(2, 2, 4), center=torch.full((8,), float("nan"))), ValueError, "center contains NaN"),
    (lambda: sf.pq_decode(torch.tensor([[0, 1]]), torch.randn(2, 2, 4), center=torch.randn(1, 8)), ValueError, "center"),
    (lambda: sf.rq_quantize(torch.randn(3, 4), torch.randn(1, 2, 4), beta="0.25"), TypeError, "beta"),
    (lambda: sf.rq_quantize(torch.randn(3, 4), torch.randn(1, 2, 4), reduction="none"), ValueError,
     "reduction"),
    (lambda: sf.rq_quantize(torch.randn(3, 4), torch.randn(1, 2, 4), beta=float("nan")), ValueError, "beta"),
    (lambda: sf.rq_quantize(torch.randn(3, 4), torch.randn(1, 2, 4), beta=-0.5), ValueError, "beta"),
    (lambda: sf.rq_decode(torch.zeros(3, 0, dtype=torch.long), torch.randn(0, 2, 4)), ValueError, "non-zero"),
    (lambda: sf.pq_decode(torch.zeros(3, 2, dtype=torch.long), torch.randn(2, 0, 4)), ValueError, "non-zero"),
])
def test_bad_input_raises_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("device,backend", backend_pairs(reference=True))
@pytest.mark.parametrize("product", [False, True])
def test_decode_into_out_equals_the_fresh_result(device, backend, product):
    skip_unavailable(device, backend)
    g = torch.Generator().manual_seed(4)
    codebooks = torch.randn(3, 20, 5, generator=g).to(device)
    codes = torch.randint(0, 20, (53, 3), generator=g, dtype=torch.int32).to(device)
    decode = sf.pq_decode if product else sf.rq_decode
    want = decode(codes, codebooks, backend=backend)
    out = torch.full_like(want, float("nan"))
    assert decode(codes, codebooks, out=out, backend=backend) is out
    assert torch.equal(out, want)
    # A strided out (a transposed buffer's view) gets the same values.
    strided = torch.empty(want.shape[1], want.shape[0], device=device).t()
    decode(codes, codebooks, out=strided, backend=backend)
    assert torch.equal(strided, want)


# Large CPU decodes: pq_decode prefetches the lines of outputs from 8 MiB (kPrefetchBytes)
# for writing, a few rows ahead of the stores. Rows just under and just over 8 MiB, widths of
# whole vectors and ragged ones (PQ 3 x 8: 8-float sub-vectors in a pair and one alone), a
# fresh output, an out= in memory shifted one float off the vectors' alignment, and a fresh
# out= (not yet in memory).
_PREFETCH_BYTES = 8 << 20


@pytest.mark.parametrize("product,groups,width", [(False, 2, 256), (False, 3, 13), (True, 3, 15),
                                                   (True, 3, 24)])
@pytest.mark.parametrize("over", [False, True])
@pytest.mark.parametrize("shift", [0, 1])
def test_cpu_decoders_of_large_outputs_match_the_reference(product, groups, width, over, shift):
    reaching = -(-_PREFETCH_BYTES // (4 * width))  # the fewest rows of at least 8 MiB
    n = reaching if over else reaching - 1
    g = torch.Generator().manual_seed(n)
    k = 7
    codebooks = torch.randn(groups, k, width // groups if product else width, generator=g)
    codes = torch.randint(0, k, (n, groups), generator=g)
    decode = sf.pq_decode if product else sf.rq_decode
    want = (ref.pq_decode if product else ref.rq_decode)(codes, codebooks)
    assert torch.equal(decode(codes, codebooks, backend="cpu"), want)
    buffer = torch.full((n * width + shift,), float("nan"))  # filled: in memory
    out = buffer[shift:].view(n, width)
    decode(codes, codebooks, out=out, backend="cpu")
    assert torch.equal(out, want)
    fresh = torch.empty(n, width)
    decode(codes, codebooks, out=fresh, backend="cpu")
    assert torch.equal(fresh, want)


@pytest.mark.parametrize("product", [False, True])
def test_cpu_decoders_of_large_outputs_check_codes_and_zero_bad_rows(product):
    """Value checks off, a large out= still gets every good row and zeros for a bad one."""
    n, width = _PREFETCH_BYTES // (4 * 64) + 5, 64
    codebooks = torch.randn(2, 5, width // 2 if product else width)
    codes = torch.randint(0, 5, (n, 2))
    codes[n // 2, 1] = 5
    decode = sf.pq_decode if product else sf.rq_decode
    out = torch.full((n, width), float("nan"))
    sf.config.check_values = False
    try:
        with pytest.raises(ValueError, match=r"codes must lie in \[0, 5\)"):
            decode(codes, codebooks, out=out, backend="cpu")
    finally:
        sf.config.check_values = True
    good = torch.ones(n, dtype=torch.bool)
    good[n // 2] = False
    want = (ref.pq_decode if product else ref.rq_decode)(codes[good], codebooks)
    assert torch.equal(out[good], want)
    assert torch.equal(out[n // 2], torch.zeros(width))


def test_decode_out_in_the_codebooks_dtype_and_with_center():
    g = torch.Generator().manual_seed(5)
    codebooks = torch.randn(4, 8, 2, generator=g)
    codes = torch.randint(0, 8, (9, 4), generator=g)
    center, rotation = torch.randn(8, generator=g), torch.randn(8, 8, generator=g)
    out = torch.empty(9, 8)
    sf.pq_decode(codes, codebooks, center=center, rotation=rotation, out=out)
    assert torch.equal(out, sf.pq_decode(codes, codebooks, center=center, rotation=rotation))
    half = codebooks.bfloat16()
    out16 = torch.empty(9, 8, dtype=torch.bfloat16)
    assert torch.equal(sf.pq_decode(codes, half, out=out16), sf.pq_decode(codes, half))


@pytest.mark.parametrize("make_out,match", [
    (lambda: torch.empty(6, 5), "shape"),
    (lambda: torch.empty(5, 4), "shape"),
    (lambda: torch.empty(5, 5, dtype=torch.float64), "dtype"),
    (lambda: torch.empty(5, 5, device="meta"), "device"),
])
def test_decode_out_of_the_wrong_shape_dtype_or_device_raises(make_out, match):
    codebooks, codes = torch.randn(2, 7, 5), torch.zeros(5, 2, dtype=torch.long)
    with pytest.raises(ValueError, match=match):
        sf.rq_decode(codes, codebooks, out=make_out())
    with pytest.raises(TypeError, match="out"):
        sf.rq_decode(codes, codebooks, out=np.zeros((5, 5), dtype=np.float32))


def test_decode_out_must_not_alias_the_inputs_nor_record_a_gradient():
    codebooks, codes = torch.randn(2, 7, 5), torch.zeros(5, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="share memory"):
        sf.rq_decode(codes, codebooks, out=codebooks[1, :5])
    leaf = codebooks.clone().requires_grad_(True)
    with pytest.raises(ValueError, match="no gradient"):
        sf.rq_decode(codes, leaf, out=torch.empty(5, 5))
    with torch.no_grad():
        out = sf.rq_decode(codes, leaf, out=torch.empty(5, 5))
    assert torch.equal(out, sf.rq_decode(codes, codebooks))
    # Without out=, the gradient still flows, eagerly and compiled.
    compiled = torch.compile(lambda c, b: sf.rq_decode(c, b).sum(), fullgraph=True)
    compiled(codes, leaf).backward()
    assert torch.equal(leaf.grad, torch.zeros_like(leaf).index_put_(
        (torch.tensor([0, 1]), torch.tensor([0, 0])), torch.full((2, 5), 5.0)))


@pytest.mark.parametrize("check_values", [True, False])
@pytest.mark.parametrize("product", [False, True])
def test_native_decoders_check_codes_in_the_kernel(check_values, product):
    """The CPU decoders skip the Python scan of the codes: the kernel checks every code, reads
    none out of bounds, and the op raises the scan's ValueError, value checks on or off."""
    codebooks = torch.randn(2, 4, 3)
    codes = torch.tensor([[0, 7], [-3, 1]])
    decode = sf.pq_decode if product else sf.rq_decode
    sf.config.check_values = check_values
    try:
        with pytest.raises(ValueError, match=r"codes must lie in \[0, 4\), found values in \[-3, 7\]"):
            decode(codes, codebooks, backend="cpu")
    finally:
        sf.config.check_values = True


# ---------------------------------------------------------------------------------------------
# real data
# ---------------------------------------------------------------------------------------------


def test_real_embeddings_encode_like_the_reference(shared_data):
    emb = torch.from_numpy(np.load(shared_data / "amazon18_industrial" / "title_minilm384.npy"))
    emb = emb.float()
    g = torch.Generator().manual_seed(0)
    # Codebooks drawn from the data's own residuals, so distances are realistic and close.
    residual, books = emb, []
    for _ in range(3):
        book = residual[torch.randperm(len(residual), generator=g)[:256]]
        books.append(book)
        residual = residual - book[ref.rq_encode(residual, book[None])[:, 0]]
    codebooks = torch.stack(books)
    for backend in CPU_BACKENDS:
        rows = emb if backend == "cpu" else emb[:64]
        codes = sf.rq_encode(rows, codebooks, backend=backend)
        assert_greedy_optimal(rows, codebooks, codes)
        assert (codes == ref.rq_encode(rows, codebooks)).float().mean() >= 0.99

"""Benchmark cases of the ``quantize`` family: every backend and every peer at the same sizes.

Sizes. CPU default: the headline size N=100,000, D=256, L=4, K=256 (fp32) for
``rq_encode``, ``pq_encode`` (M=32, 64), ``rq_decode`` and ``pq_decode``; beam encoding at
N=10,000 and the training step ``rq_quantize`` at N=16,384 (a large RQ-VAE batch) keep the
whole run within a few minutes on 2 cores. GPU default: N=1,000,000 (beam: 100,000), with
``rq_encode`` in fp32 and bf16. ``quick`` shrinks N to seconds in total.

Peers (same process, same inputs, same thread count): faiss-cpu ``ResidualQuantizer``
(``max_beam_size`` 1 and 4, ``use_beam_LUT`` 0 and 1) and ``ProductQuantizer`` (transposed
centroids) loaded with our codebooks, on CPU runs; vector-quantize-pytorch ``ResidualVQ``
loaded with our codebooks. Each peer's setup checks that its codes agree with the reference
on a sample, and the row's note says how many agreed.

k-means (``kmeans``, 20 Lloyd iterations, K=256, on the encode rows N; ``rq_init`` on the
training-step rows) against faiss-cpu ``faiss.Kmeans`` with the same iterations and random
init, twice: with its default subsampling (at most ``max_points_per_centroid`` = 256 rows per
centroid, 65,536 of 100,000 rows at K=256; ours with the same option) and on every row.

Goal rows (CPU): beam encoding at N=100,000 with B=4 and B=16 against faiss's table beam
search (``use_beam_LUT=1``), the group's baseline; the decoders also into a preallocated
output (``out=``; faiss's ``decode_c`` into a given array). Each row's note gives the inertia
of its centroids on all N rows, from one untimed fit.

Sinkhorn (``sk_epsilon``): ``rq_encode`` and the ``rq_quantize`` forward with LC-Rec / DIGER's
balanced assignment (epsilon 0.003 at every level, DIGER's 50 iterations) at N=16,384, D=64,
L=3, K=256 (quick: N=4,096). The baseline ``reference`` row is the published algorithm itself
in torch (vq.py's loop: float32 distances, centring, Sinkhorn on the float64 (N, K) matrix
with full-matrix normalisations, argmax).

Inputs are random from a fixed seed: x ~ N(0, 1); level l of the RQ codebooks ~ N(0, 0.5^l),
so deeper levels refine smaller residuals as in a trained RQ-VAE; PQ codebooks ~ N(0, 1).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch

import semid_fast

from .harness import Case

FAMILY = "quantize"
SEED = 20240611
AGREEMENT_ROWS = 1000


@dataclass(frozen=True)
class Sizes:
    n: int  # rows for encode and decode
    beam_n: int  # rows for beam encoding
    train_n: int  # rows for the rq_quantize training step
    d: int = 256
    levels: int = 4
    k: int = 256
    pq_m: tuple[int, ...] = (32, 64)
    beam: int = 4
    beam_goal_n: int = 100_000  # rows of the beam goal rows (ours vs faiss use_beam_LUT=1)
    beam_goal: tuple[int, ...] = (4, 16)
    encode_dtypes: tuple[torch.dtype, ...] = (torch.float32,)
    sk_n: int = 16_384  # rows of the Sinkhorn cases (one batch: codes depend on the batch)
    sk_d: int = 64
    sk_levels: int = 3
    sk_epsilon: float = 0.003
    sk_iters: int = 50


def sizes(device: str, quick: bool) -> Sizes:
    if device == "cuda":
        dtypes = (torch.float32, torch.bfloat16)
        if quick:
            return Sizes(n=100_000, beam_n=10_000, train_n=100_000, encode_dtypes=dtypes)
        return Sizes(n=1_000_000, beam_n=100_000, train_n=1_000_000, encode_dtypes=dtypes)
    if quick:
        return Sizes(n=2_000, beam_n=1_000, train_n=2_000, sk_n=4_096, beam_goal_n=2_000)
    return Sizes(n=100_000, beam_n=10_000, train_n=16_384)


_DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def _count(n: int) -> str:
    """100000 -> '100k', 1000000 -> '1M' (exact multiples only), else the digits."""
    if n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n % 1_000 == 0:
        return f"{n // 1_000}k"
    return str(n)


class Inputs:
    """Random inputs from a fixed seed, made on first use and shared by all cases of a shape."""

    def __init__(self, device: str):
        self.device = device
        self._cache: dict[tuple, torch.Tensor] = {}

    def _randn(self, key: tuple, shape: tuple[int, ...], scale: float = 1.0) -> torch.Tensor:
        if key not in self._cache:
            # crc32, not hash(): str hashes change from one process to the next.
            seed = SEED + zlib.crc32(repr(key).encode())
            gen = torch.Generator(device=self.device).manual_seed(seed)
            self._cache[key] = torch.randn(shape, generator=gen, device=self.device) * scale
        return self._cache[key]

    def x(self, n: int, d: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        x32 = self._randn(("x", n, d), (n, d))
        if dtype == torch.float32:
            return x32
        key = ("x", n, d, dtype)
        if key not in self._cache:
            self._cache[key] = x32.to(dtype)
        return self._cache[key]

    def rq_codebooks(self, levels: int, k: int, d: int) -> torch.Tensor:
        key = ("rq", levels, k, d)
        if key not in self._cache:
            scales = torch.tensor([0.5**level for level in range(levels)], device=self.device)
            raw = self._randn(("rq-raw",) + key, (levels, k, d))
            self._cache[key] = raw * scales[:, None, None]
        return self._cache[key]

    def pq_codebooks(self, m: int, k: int, dsub: int) -> torch.Tensor:
        return self._randn(("pq", m, k, dsub), (m, k, dsub))

    def codes(self, n: int, groups: int, k: int) -> torch.Tensor:
        key = ("codes", n, groups, k)
        if key not in self._cache:
            gen = torch.Generator(device=self.device).manual_seed(SEED + groups)
            self._cache[key] = torch.randint(0, k, (n, groups), generator=gen, device=self.device)
        return self._cache[key]


def _agreement(peer_codes: torch.Tensor, reference_codes: torch.Tensor) -> str:
    same = int((peer_codes.cpu().long() == reference_codes.cpu()).all(dim=1).sum())
    return f"codes equal to the reference's on {same}/{len(reference_codes)} sample rows"


def cases(device: str, quick: bool = False) -> list[Case]:
    """All quantize cases for device ('cpu' or 'cuda'); quick: small sizes."""
    s = sizes(device, quick)
    inputs = Inputs(device)
    ours = ("reference", "cpu", "triton") if device == "cpu" else ("reference", "cuda", "triton")
    out: list[Case] = []
    for dtype in s.encode_dtypes:
        out += _rq_encode_cases(inputs, device, ours, s, s.n, 1, dtype)
    out += _rq_encode_cases(inputs, device, ours, s, s.beam_n, s.beam, torch.float32)
    if device == "cpu":
        for beam in s.beam_goal:
            out += _beam_goal_cases(inputs, s, beam)
    for m in s.pq_m:
        out += _pq_encode_cases(inputs, device, ours, s, m)
    out += _decode_cases(inputs, device, ours, s, product=False)
    out += _decode_cases(inputs, device, ours, s, product=True)
    out += _rq_quantize_cases(inputs, device, ours, s, backward=False)
    out += _rq_quantize_cases(inputs, device, ours, s, backward=True)
    out += _kmeans_cases(inputs, device, ours, s)
    out += _sinkhorn_cases(inputs, device, ours, s, "rq_encode sk")
    out += _sinkhorn_cases(inputs, device, ours, s, "rq_quantize sk fwd")
    return out


def _faiss_skip(device: str) -> str | None:
    return None if device == "cpu" else "faiss-cpu is compared in CPU runs (--device cpu)"


def _faiss():
    import faiss

    faiss.omp_set_num_threads(torch.get_num_threads())  # the same threads as torch and ours
    return faiss


# --------------------------------------------------------------------------------- rq_encode


def _rq_encode_cases(inputs, device, ours, s: Sizes, n: int, beam: int, dtype) -> list[Case]:
    dname = _DTYPE_NAMES[dtype]
    shape = f"N={_count(n)} D={s.d} L={s.levels} K={s.k}" + (f" B={beam}" if beam > 1 else "")
    shape += f" {dname}"
    # The first level scores one beam, later levels `beam` beams against K codewords each.
    flops = 2.0 * n * s.k * s.d * (1 + beam * (s.levels - 1))
    common = dict(family=FAMILY, op="rq_encode", shape=shape, device=device, flops=flops,
                  dtype=dname)
    supported = ours if beam == 1 else tuple(b for b in ours if b != "cuda")
    out = [Case(impl=b, backend=b, setup=_rq_encode_setup(inputs, n, s, beam, dtype, b), **common)
           for b in supported]
    if dtype == torch.float32:
        for lut in (0, 1):
            out.append(Case(impl=f"faiss RQ beam={beam} LUT={lut}", requires=("faiss",),
                            skip=_faiss_skip(device),
                            setup=_faiss_rq_setup(inputs, n, s, beam, lut), **common))
        if beam == 1:
            out.append(Case(impl="vqpt ResidualVQ fwd", requires=("vector_quantize_pytorch",),
                            setup=_residual_vq_setup(inputs, n, s), **common))
    return out


def _beam_goal_cases(inputs, s: Sizes, beam: int) -> list[Case]:
    """Beam search at the goal size, our CPU kernel against faiss's table (LUT) beam search
    only: the reference and the interpreted Triton kernel would take minutes here."""
    n = s.beam_goal_n
    shape = f"N={_count(n)} D={s.d} L={s.levels} K={s.k} B={beam} fp32"
    peer = f"faiss RQ beam={beam} LUT=1"
    common = dict(family=FAMILY, op="rq_encode beam", shape=shape, device="cpu", dtype="fp32",
                  flops=2.0 * n * s.k * s.d * (1 + beam * (s.levels - 1)), baseline=peer)
    return [Case(impl="cpu", backend="cpu",
                 setup=_rq_encode_setup(inputs, n, s, beam, torch.float32, "cpu"), **common),
            Case(impl=peer, requires=("faiss",), setup=_faiss_rq_setup(inputs, n, s, beam, 1),
                 **common)]


def _rq_encode_setup(inputs, n, s, beam, dtype, backend):
    def setup():
        x, cb = inputs.x(n, s.d, dtype), inputs.rq_codebooks(s.levels, s.k, s.d)
        return lambda: semid_fast.rq_encode(x, cb, beam_width=beam, backend=backend)
    return setup


def _faiss_rq_setup(inputs, n, s, beam, lut):
    def setup():
        faiss = _faiss()
        x = inputs.x(n, s.d).numpy()
        cb = inputs.rq_codebooks(s.levels, s.k, s.d)
        rq = faiss.ResidualQuantizer(s.d, s.levels, s.k.bit_length() - 1)
        faiss.copy_array_to_vector(cb.numpy().reshape(-1), rq.codebooks)
        rq.is_trained = True
        rq.max_beam_size = beam
        rq.use_beam_LUT = lut
        if lut:
            rq.compute_codebook_tables()  # the codeword inner-product tables LUT encoding uses
        sample = x[:AGREEMENT_ROWS]
        # With 8-bit codes, faiss's packed code bytes are the codes themselves.
        peer = torch.from_numpy(rq.compute_codes(sample))
        ref = semid_fast.rq_encode(torch.from_numpy(sample), cb, beam_width=beam,
                                   backend="reference")
        return (lambda: rq.compute_codes(x)), _agreement(peer, ref)
    return setup


def _residual_vq_setup(inputs, n, s):
    def setup():
        from vector_quantize_pytorch import ResidualVQ

        x, cb = inputs.x(n, s.d), inputs.rq_codebooks(s.levels, s.k, s.d)
        rvq = ResidualVQ(dim=s.d, num_quantizers=s.levels, codebook_size=s.k).to(x.device)
        rvq.eval()  # no EMA codebook updates: a pure encoding pass
        try:
            with torch.no_grad():
                for level, layer in enumerate(rvq.layers):
                    layer._codebook.embed.copy_(cb[level][None])
            loaded = "our codebooks loaded"
        except (AttributeError, RuntimeError) as exc:
            loaded = f"could not load our codebooks ({exc}); its own random ones"

        def encode(rows):
            with torch.no_grad():
                return rvq(rows[None])

        ref = semid_fast.rq_encode(x[:AGREEMENT_ROWS], cb, backend="reference")
        peer = encode(x[:AGREEMENT_ROWS])[1][0]
        note = (f"vqpt ResidualVQ.forward (eval, no_grad: codes + quantized + loss), {loaded}; "
                + _agreement(peer, ref))
        return (lambda: encode(x)), note
    return setup


# --------------------------------------------------------------------------------- pq_encode


def _pq_encode_cases(inputs, device, ours, s: Sizes, m: int) -> list[Case]:
    shape = f"N={_count(s.n)} D={s.d} M={m} K={s.k} fp32"
    common = dict(family=FAMILY, op="pq_encode", shape=shape, device=device,
                  flops=2.0 * s.n * s.k * s.d)
    out = [Case(impl=b, backend=b, setup=_pq_encode_setup(inputs, s, m, b), **common)
           for b in ours]
    out.append(Case(impl="faiss PQ", requires=("faiss",), skip=_faiss_skip(device),
                    setup=_faiss_pq_setup(inputs, s, m), **common))
    return out


def _pq_encode_setup(inputs, s, m, backend):
    def setup():
        x, cb = inputs.x(s.n, s.d), inputs.pq_codebooks(m, s.k, s.d // m)
        return lambda: semid_fast.pq_encode(x, cb, backend=backend)
    return setup


def _faiss_product_quantizer(faiss, s, m, cb):
    pq = faiss.ProductQuantizer(s.d, m, s.k.bit_length() - 1)
    faiss.copy_array_to_vector(cb.numpy().reshape(-1), pq.centroids)
    note = ""
    if hasattr(pq, "sync_transposed_centroids"):
        pq.sync_transposed_centroids()  # faiss's faster encoding path
        note = "transposed centroids; "
    return pq, note


def _faiss_pq_setup(inputs, s, m):
    def setup():
        faiss = _faiss()
        x = inputs.x(s.n, s.d).numpy()
        cb = inputs.pq_codebooks(m, s.k, s.d // m)
        pq, note = _faiss_product_quantizer(faiss, s, m, cb)
        sample = x[:AGREEMENT_ROWS]
        peer = torch.from_numpy(pq.compute_codes(sample))
        ref = semid_fast.pq_encode(torch.from_numpy(sample), cb, backend="reference")
        return (lambda: pq.compute_codes(x)), note + _agreement(peer, ref)
    return setup


# ----------------------------------------------------------------------------------- decode


def _decode_cases(inputs, device, ours, s: Sizes, product: bool) -> list[Case]:
    groups = s.pq_m[0] if product else s.levels
    width = s.d // groups if product else s.d
    op = "pq_decode" if product else "rq_decode"
    shape = f"N={_count(s.n)} D={s.d} {'M' if product else 'L'}={groups} K={s.k} fp32"
    # int64 codes in, fp32 rows out, the codebooks read once (they stay in cache).
    traffic = s.n * groups * 8 + s.n * s.d * 4 + groups * s.k * width * 4
    common = dict(family=FAMILY, op=op, shape=shape, device=device, bytes=float(traffic))
    out = [Case(impl=b, backend=b, setup=_decode_setup(inputs, s, groups, width, product, b),
                **common)
           for b in ours]
    out.append(Case(impl=f"faiss {'PQ' if product else 'RQ'} decode", requires=("faiss",),
                    skip=_faiss_skip(device),
                    setup=_faiss_decode_setup(inputs, s, groups, width, product), **common))
    # Into a preallocated output: ours with out=, faiss's decode_c into a given array.
    common["op"] = f"{op} out="
    out += [Case(impl=b, backend=b, setup=_decode_setup(inputs, s, groups, width, product, b,
                                                          into=True), **common)
            for b in ours]
    out.append(Case(impl=f"faiss {'PQ' if product else 'RQ'} decode_c", requires=("faiss",),
                    skip=_faiss_skip(device),
                    setup=_faiss_decode_setup(inputs, s, groups, width, product, into=True),
                    **common))
    return out


def _decode_codebooks(inputs, s, groups, width, product):
    if product:
        return inputs.pq_codebooks(groups, s.k, width)
    return inputs.rq_codebooks(groups, s.k, width)


def _decode_setup(inputs, s, groups, width, product, backend, into=False):
    def setup():
        codes = inputs.codes(s.n, groups, s.k)
        cb = _decode_codebooks(inputs, s, groups, width, product)
        fn = semid_fast.pq_decode if product else semid_fast.rq_decode
        if into:
            out = torch.empty((s.n, s.d), device=codes.device)
            return lambda: fn(codes, cb, out=out, backend=backend)
        return lambda: fn(codes, cb, backend=backend)
    return setup


def _faiss_decode_setup(inputs, s, groups, width, product, into=False):
    def setup():
        faiss = _faiss()
        cb = _decode_codebooks(inputs, s, groups, width, product)
        # faiss takes its own packed uint8 codes; converting them is set-up, not timed.
        codes = inputs.codes(s.n, groups, s.k).to(torch.uint8).numpy()
        if product:
            quantizer, note = _faiss_product_quantizer(faiss, s, groups, cb)
        else:
            quantizer = faiss.ResidualQuantizer(s.d, groups, s.k.bit_length() - 1)
            faiss.copy_array_to_vector(cb.numpy().reshape(-1), quantizer.codebooks)
            quantizer.is_trained = True
            note = ""
        note += "uint8 codes in (faiss's code format)"
        if into:
            out = torch.empty((s.n, s.d)).numpy()

            def decode_into():  # the arrays stay referenced here: swig_ptr does not own them
                quantizer.decode_c(faiss.swig_ptr(codes), faiss.swig_ptr(out), s.n)

            return decode_into, note
        return (lambda: quantizer.decode(codes)), note
    return setup


# ------------------------------------------------------------------------------- rq_quantize


def _rq_quantize_cases(inputs, device, ours, s: Sizes, backward: bool) -> list[Case]:
    shape = f"N={_count(s.train_n)} D={s.d} L={s.levels} K={s.k} fp32"
    op = "rq_quantize fwd+bwd" if backward else "rq_quantize fwd"
    # Forward FLOPs only: the backward pass is memory-bound, so fwd+bwd reports no TFLOP/s.
    flops = None if backward else 2.0 * s.train_n * s.levels * s.k * s.d
    return [Case(family=FAMILY, op=op, shape=shape, impl=b, backend=b, device=device,
                 flops=flops, setup=_rq_quantize_setup(inputs, s, backward, b))
            for b in ours]


def _rq_quantize_setup(inputs, s, backward, backend):
    def setup():
        # Fresh leaves that require grad, as in a training step (the forward records a graph).
        x = inputs.x(s.train_n, s.d).clone().requires_grad_(True)
        cb = inputs.rq_codebooks(s.levels, s.k, s.d).clone().requires_grad_(True)
        if not backward:
            return lambda: semid_fast.rq_quantize(x, cb, backend=backend)
        grad_quantized = inputs.x(s.train_n, s.d)  # any fixed upstream gradient

        def step():
            x.grad = cb.grad = None  # no accumulation across repetitions
            _, quantized, loss = semid_fast.rq_quantize(x, cb, backend=backend)
            torch.autograd.backward((quantized, loss), (grad_quantized, None))

        return step
    return setup


# ------------------------------------------------------------------------------------ kmeans

KMEANS_ITERS = 20


def _inertia_note(x: torch.Tensor, centroids: torch.Tensor, what: str) -> str:
    from ..reference.kmeans import assign

    inertia = float(assign(x.float(), centroids.to(x.device).float())[1].double().sum())
    return f"{what}; inertia on all {len(x)} rows {inertia:.6g}"


def _kmeans_cases(inputs, device, ours, s: Sizes) -> list[Case]:
    n, k, d = s.n, s.k, s.d
    # Lloyd's assignment is the FLOP count: iterations plus the final assignment.
    flops = 2.0 * n * k * d * (KMEANS_ITERS + 1)
    common = dict(family=FAMILY, op="kmeans", device=device, flops=flops)
    shape = f"N={_count(n)} D={d} K={k} iters={KMEANS_ITERS} init=random"
    out = [Case(impl=b, backend=b, shape=shape, setup=_kmeans_setup(inputs, s, "random", b),
                **common) for b in ours]
    # faiss's default sampling (256 rows per centroid): the fair row against faiss subsampled.
    out += [Case(impl=f"{b} (max_points_per_centroid=256)", backend=b, shape=shape,
                 setup=_kmeans_setup(inputs, s, "random", b, per_centroid=256), **common)
            for b in ours if b != "reference"]
    for subsample in (True, False):
        impl = "faiss Kmeans" + (" (subsampled)" if subsample else " (all rows)")
        out.append(Case(impl=impl, shape=shape, requires=("faiss",), skip=_faiss_skip(device),
                        setup=_faiss_kmeans_setup(inputs, s, subsample), **common))
    # k-means++ costs a pass over x per centroid: ours only (the reference's torch loop is
    # the GPU path; faiss has no k-means++).
    shape_pp = f"N={_count(n)} D={d} K={k} iters={KMEANS_ITERS} init=kmeans++"
    out += [Case(impl=b, backend=b, shape=shape_pp, baseline=None,
                 setup=_kmeans_setup(inputs, s, "kmeans++", b), **common)
            for b in ours if b != "reference"]
    shape_rq = f"N={_count(s.train_n)} D={d} L={s.levels} K={k} iters={KMEANS_ITERS}"
    out += [Case(family=FAMILY, op="rq_init", shape=shape_rq, impl=b, backend=b, device=device,
                 flops=2.0 * s.train_n * k * d * (KMEANS_ITERS + 1) * s.levels,
                 setup=_rq_init_setup(inputs, s, b)) for b in ours]
    return out


def _kmeans_setup(inputs, s, init, backend, per_centroid=None):
    def setup():
        x = inputs.x(s.n, s.d)

        def fit():
            return semid_fast.kmeans(x, s.k, iters=KMEANS_ITERS, seed=0, init=init,
                                     max_points_per_centroid=per_centroid, backend=backend)

        what = f"init={init}"
        if per_centroid is not None:
            what += (f", max_points_per_centroid={per_centroid} (fits on "
                     f"{min(s.n, per_centroid * s.k)} rows)")
        return fit, _inertia_note(x, fit().centroids, what)
    return setup


def _faiss_kmeans_setup(inputs, s, subsample):
    def setup():
        faiss = _faiss()
        x = inputs.x(s.n, s.d)
        xn = x.numpy()
        # faiss's default is 256 rows per centroid; above N it fits on every row.
        per_centroid = 256 if subsample else s.n

        def fit():
            km = faiss.Kmeans(s.d, s.k, niter=KMEANS_ITERS, seed=0,
                              max_points_per_centroid=per_centroid)
            km.train(xn)
            return km

        rows = min(s.n, per_centroid * s.k)
        what = f"max_points_per_centroid={per_centroid} (fits on {rows} rows), random init"
        return fit, _inertia_note(x, torch.from_numpy(fit().centroids), what)
    return setup


def _rq_init_setup(inputs, s, backend):
    def setup():
        x = inputs.x(s.train_n, s.d)
        return lambda: semid_fast.rq_init(x, s.levels, s.k, iters=KMEANS_ITERS, seed=0,
                                          backend=backend)
    return setup


# ---------------------------------------------------------------------------------- Sinkhorn


def _sinkhorn_cases(inputs, device, ours, s: Sizes, op: str) -> list[Case]:
    shape = (f"N={_count(s.sk_n)} D={s.sk_d} L={s.sk_levels} K={s.k} eps={s.sk_epsilon} "
             f"iters={s.sk_iters} fp32")
    return [Case(family=FAMILY, op=op, shape=shape, impl=b, backend=b, device=device,
                 setup=_sinkhorn_setup(inputs, s, op, b))
            for b in ours]


def _sinkhorn_setup(inputs, s, op, backend):
    def setup():
        x = inputs.x(s.sk_n, s.sk_d)
        cb = inputs.rq_codebooks(s.sk_levels, s.k, s.sk_d)
        kwargs = dict(sk_epsilon=s.sk_epsilon, sk_iters=s.sk_iters, backend=backend)
        if op == "rq_encode sk":
            fn = lambda: semid_fast.rq_encode(x, cb, **kwargs)  # noqa: E731
        else:
            x_leaf = x.clone().requires_grad_(True)
            cb_leaf = cb.clone().requires_grad_(True)
            fn = lambda: semid_fast.rq_quantize(x_leaf, cb_leaf, **kwargs)  # noqa: E731
        if backend == "reference":
            return fn
        codes = semid_fast.rq_encode(x, cb, **kwargs)
        want = semid_fast.rq_encode(x, cb, sk_epsilon=s.sk_epsilon, sk_iters=s.sk_iters,
                                    backend="reference")
        same = int((codes == want).all(dim=1).sum())
        return fn, f"codes equal to the reference's on {same}/{len(want)} rows"
    return setup

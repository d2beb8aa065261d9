"""The longid family: holistic top-k, item graphs and graph decoding against the reference,
faiss as an outside oracle, and bad input."""

import json
import secrets
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import semid_fast as sf
from semid_fast.ops import longid as ops
from semid_fast.reference import longid as ref

CPU_BACKENDS = [b for b in ("cpu", "triton") if b in sf.available_backends("cpu")]


def topk_cases(backends, shapes):
    """(backend, dtype, b, m, k, n, topk) that exist: uint8 codes only for K <= 256, and the
    Triton interpreter (~10 ms per program step) only on small cases (B * N * M <= 40,000)."""
    return [(backend, dtype, *shape) for backend in backends for dtype in CODE_DTYPES
            for shape in shapes
            if not (dtype == torch.uint8 and shape[2] > 256)
            and not (backend == "triton" and not torch.cuda.is_available()
                     and shape[0] * shape[1] * shape[3] > 40_000)]
CODE_DTYPES = [torch.uint8, torch.int16, torch.int32, torch.int64]


def make(b, m, k, n, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(b, m, k, generator=g).log_softmax(-1)
    codes = torch.randint(0, k, (n, m), generator=g).to(dtype)
    return scores, codes


# (B, M, K, N, k): B of 1 (scalar scan), 2..17 (interleaved groups of 8, ragged), N off every
# chunk size (1024 items) and item block (256), M off the position slice (4 at K=256), k > N.
SHAPES = [(1, 8, 16, 37, 5), (3, 16, 256, 1000, 10), (9, 4, 7, 50, 60), (8, 64, 256, 2051, 100),
          (2, 3, 300, 200, 7), (1, 32, 256, 1025, 1), (17, 10, 256, 700, 20)]


@pytest.mark.parametrize("backend,dtype,b,m,k,n,topk", topk_cases(CPU_BACKENDS, SHAPES))
@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_holistic_topk_equals_reference_exactly(backend, dtype, b, m, k, n, topk, reduce):
    scores, codes = make(b, m, k, n, dtype, seed=b * 7 + n)
    got = sf.holistic_topk(scores, codes, topk, reduce=reduce, backend=backend)
    want = ref.holistic_topk(scores, codes, topk, reduce)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    if topk > n:
        assert (got[1][:, n:] == -1).all() and torch.isinf(got[0][:, n:]).all()


# The bounded catalog scan (AVX-512 VBMI CPUs: uint8 codes, K <= 256, M in 16, 32, 64, 128,
# 192, 256, N >= 4096 or packed; whole chunks of 512 items, the rest exact) must give the exact scan's results bit
# for bit, whatever the scores look like: N around the chunk size, peaked and flat tables, very
# low (masked) entries, -inf, equal scores. Elsewhere these run the exact scan.
# Whether this CPU runs the bounded scan (the AVX-512 build on a CPU with VBMI).
VBMI = (sf._native.cpu().isa() == "avx512" and sys.platform == "linux"
        and "avx512vbmi" in Path("/proc/cpuinfo").read_text())
BOUNDED_SHAPES = [(1, 16, 256, 4095), (3, 16, 256, 4096 + 77), (1, 32, 256, 4096),
                  (2, 32, 200, 4097), (1, 64, 256, 5000), (9, 64, 256, 4608), (1, 128, 256, 4350),
                  (4, 192, 256, 4100), (2, 256, 256, 4600)]


def bounded_table(kind, b, m, k, g):
    logits = torch.randn(b, m, k, generator=g)
    if kind == "peaked":
        logits = logits * 6
    scores = logits.log_softmax(-1)
    if kind == "masked":  # a fifth of the codes far below the rest, some -inf
        scores[:, :, : k // 5] = -1e9
        scores[:, 1, 7] = -torch.inf
    if kind == "flat":  # many entries equal to their position's best
        scores = scores.clamp_min(scores.median())
    return scores


@pytest.mark.parametrize("b,m,k,n", BOUNDED_SHAPES)
@pytest.mark.parametrize("kind", ["normal", "peaked", "masked", "flat"])
def test_bounded_scan_equals_reference_exactly(b, m, k, n, kind):
    g = torch.Generator().manual_seed(m * 1000 + n)
    scores = bounded_table(kind, b, m, k, g)
    codes = torch.randint(0, k, (n, m), generator=g, dtype=torch.uint8)
    codes[n // 2: n // 2 + 40] = codes[3]  # equal scores: ties toward the smaller id
    for topk, reduce in ((1, "sum"), (100, "mean"), (n + 3, "sum")):
        got = sf.holistic_topk(scores, codes, topk, reduce=reduce, backend="cpu")
        want = ref.holistic_topk(scores, codes, topk, reduce)
        assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0]), (topk, reduce)


@pytest.mark.parametrize("b,m,k,n", [(1, 16, 256, 511), (3, 16, 256, 2048 + 77), (1, 32, 256, 512),
                                     (2, 32, 256, 1025), (9, 64, 256, 1536), (1, 128, 256, 1030),
                                     (4, 192, 256, 600), (2, 256, 256, 4600), (2, 48, 256, 1100),
                                     (1, 64, 256, 300)])
def test_packed_codes_give_the_same_results(b, m, k, n):
    g = torch.Generator().manual_seed(n)
    scores = bounded_table("normal", b, m, k, g)
    codes = torch.randint(0, k, (n, m), generator=g, dtype=torch.uint8)
    packed = sf.PackedCodes(codes)
    if VBMI and m in (16, 32, 64, 128, 192, 256):  # this CPU has the bounded scan: it packs
        assert packed.packed is not None and packed.packed.numel() == (n - n % 512) * m
    else:
        assert packed.packed is None
    mask = torch.rand(n, generator=g) < 0.2
    for topk, reduce, item_mask in ((1, "sum", None), (60, "mean", mask), (n + 1, "sum", None)):
        got = sf.holistic_topk(scores, packed, topk, reduce=reduce, item_mask=item_mask,
                               backend="cpu")
        want = ref.holistic_topk(scores, codes, topk, reduce, item_mask=item_mask)
        assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0]), (topk, reduce)
    got = sf.holistic_topk(scores, packed, 5, backend="reference")  # other backends: the codes
    assert torch.equal(got[1], ref.holistic_topk(scores, codes, 5)[1])


def test_packed_codes_refuse_stale_or_wrong_codes():
    codes = torch.randint(0, 256, (1024, 16), dtype=torch.uint8)
    packed = sf.PackedCodes(codes)
    codes[5, 3] += 1
    with pytest.raises(ValueError, match="written to after packing"):
        sf.holistic_topk(torch.randn(1, 16, 256), packed, 3)
    with pytest.raises(TypeError, match="codes"):
        sf.PackedCodes(codes.int())
    with pytest.raises(ValueError, match="codes"):
        sf.PackedCodes(codes[:, 0])


@pytest.mark.parametrize("m", [16, 64])
def test_bounded_scan_is_exact_where_its_bounds_are_tight(m):
    # Entries -c/64 put every entry on the scan's grid (width 255/64, step 1/64), so an
    # item's bound is its exact score: a threshold off by one step drops items that belong.
    scores = -(torch.arange(256.0) / 64).expand(2, m, 256).contiguous()
    scores[1] = scores[1].roll(7, dims=-1)
    g = torch.Generator().manual_seed(m)
    codes = torch.randint(0, 4, (6000, m), generator=g, dtype=torch.uint8)
    codes[::7] += torch.randint(0, 250, (1, m), generator=g, dtype=torch.uint8)
    for topk in (1, 37, 500):
        got = sf.holistic_topk(scores, codes, topk, backend="cpu")
        want = ref.holistic_topk(scores, codes, topk)
        assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0]), topk


@pytest.mark.parametrize("b", [1, 3])
def test_bounded_scan_with_masks_and_unchecked_nan_and_inf_scores(b):
    g = torch.Generator().manual_seed(11)
    scores = bounded_table("normal", b, 64, 256, g)
    codes = torch.randint(0, 256, (5000, 64), generator=g, dtype=torch.uint8)
    mask = torch.rand(b, 5000, generator=g) < 0.3
    got = sf.holistic_topk(scores, codes, 50, item_mask=mask, backend="cpu")
    want = ref.holistic_topk(scores, codes, 50, item_mask=mask)
    assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0])
    nan, inf, dead = scores.clone(), scores.clone(), scores.clone()
    nan[:, 5, 9] = torch.nan  # items with that code score NaN and never rank
    inf[0, 2, 4] = torch.inf  # no upper bound: the exact scan
    dead[:, 3] = -torch.inf  # every score -inf: every item ranks, by id
    nan_items = codes[:, 5] == 9  # the native scans skip them; the reference pads for them
    sf.config.check_values = False
    try:
        for table, skipped in ((nan, nan_items), (inf, None), (dead, None)):
            got = sf.holistic_topk(table, codes, 50, backend="cpu")
            want = ref.holistic_topk(table, codes, 50, item_mask=skipped)
            assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0])
    finally:
        sf.config.check_values = True


def test_bounded_scan_reports_codes_past_k():
    codes = torch.randint(0, 200, (5000, 16), dtype=torch.uint8)
    codes[1500, 7] = 230  # inside a whole chunk
    sf.config.check_values = False
    try:
        with pytest.raises(ValueError, match="outside"):
            sf.holistic_topk(torch.randn(1, 16, 200), codes, 5, backend="cpu")
    finally:
        sf.config.check_values = True


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_ties_go_to_the_smaller_item_and_minus_inf_scores_are_items(backend):
    codes = torch.randint(0, 2, (300, 3), dtype=torch.uint8)
    scores = torch.zeros(9, 3, 256)
    scores[:, 1, 1] = -torch.inf  # items with code 1 at position 1 score -inf
    got_scores, got_ids = sf.holistic_topk(scores, codes, 300, backend=backend)
    finite = codes[:, 1] == 0
    expected = torch.cat([torch.nonzero(finite)[:, 0], torch.nonzero(~finite)[:, 0]])
    assert torch.equal(got_ids[0], expected)
    assert torch.isinf(got_scores[0, int(finite.sum()):]).all()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("b", [1, 5])
def test_masks_and_candidates(backend, b):
    scores, codes = make(b, 8, 32, 400, torch.int32, seed=3)
    g = torch.Generator().manual_seed(4)
    for mask in (torch.rand(400, generator=g) < 0.5, torch.rand(b, 400, generator=g) < 0.9):
        got = sf.holistic_topk(scores, codes, 50, item_mask=mask, backend=backend)
        want = ref.holistic_topk(scores, codes, 50, item_mask=mask)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        assert not mask.expand(b, 400).gather(1, got[1].clamp_min(0))[got[1] >= 0].any()
    cand = torch.randint(-1, 400, (b, 70), generator=g)
    cand[:, 1] = cand[:, 0]  # a duplicate counts once
    got = sf.holistic_topk(scores, codes, 40, candidates=cand, item_mask=mask, backend=backend)
    want = ref.holistic_topk(scores, codes, 40, candidates=cand, item_mask=mask)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    for row, ids in zip(cand, got[1]):
        kept = ids[ids >= 0]
        assert len(set(kept.tolist())) == len(kept) and set(kept.tolist()) <= set(row.tolist())


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_empty_catalog_returns_padding(backend):
    scores = torch.randn(3, 4, 16)
    got = sf.holistic_topk(scores, torch.zeros(0, 4, dtype=torch.uint8), 5, backend=backend)
    assert (got[1] == -1).all() and torch.isinf(got[0]).all() and got[0].shape == (3, 5)


def test_half_token_scores_are_read_as_float32():
    scores, codes = make(4, 16, 256, 500, torch.uint8, seed=5)
    for dtype in (torch.float16, torch.bfloat16):
        got = sf.holistic_topk(scores.to(dtype), codes, 20, backend="cpu")
        want = ref.holistic_topk(scores.to(dtype), codes, 20)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize("b", [1, 3])
def test_thread_count_does_not_change_results(b, monkeypatch):
    from semid_fast.backends.cpu import longid as cpu_longid

    # Every scan in parallel, however small (the launcher keeps small ones on one thread).
    monkeypatch.setattr(cpu_longid, "_PARALLEL_MIN_LOOKUPS", 0)
    scores, codes = make(b, 16, 256, 5000, torch.uint8, seed=6)
    first = sf.holistic_topk(scores, codes, 64, backend="cpu")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = sf.holistic_topk(scores, codes, 64, backend="cpu")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(first[0], single[0]) and torch.equal(first[1], single[1])


def test_faiss_indexpq_with_token_score_centroids_agrees():
    """An inner-product IndexPQ whose sub-space j of query b holds token_scores[b]: faiss's
    own scan computes the same holistic scores (an oracle nobody here wrote)."""
    faiss = pytest.importorskip("faiss")
    b, m, k, n, topk = 4, 16, 256, 3000, 25
    scores, codes = make(b, m, k, n, torch.uint8, seed=8)
    got_scores, got_ids = sf.holistic_topk(scores, codes, topk, backend="cpu")
    faiss_scores, faiss_ids = _faiss_holistic(faiss, scores, codes, topk)
    np.testing.assert_allclose(faiss_scores, got_scores.numpy(), rtol=1e-5, atol=1e-4)
    # faiss sums in another order: where scores are equal to rounding, ids may swap.
    assert (torch.from_numpy(faiss_ids) == got_ids).float().mean() >= 0.95


def _faiss_holistic(faiss, scores, codes, topk):
    b, m, k = scores.shape
    # Sub-space m of the index is b-dimensional: centroid c holds token_scores[:, m, c];
    # query b is one-hot on coordinate b of every sub-space.
    index = faiss.IndexPQ(m * b, m, 8, faiss.METRIC_INNER_PRODUCT)
    faiss.copy_array_to_vector(scores.permute(1, 2, 0).contiguous().numpy().ravel(),
                               index.pq.centroids)
    index.is_trained = True
    faiss.copy_array_to_vector(codes.numpy().ravel(), index.codes)
    index.ntotal = codes.shape[0]
    queries = np.zeros((b, m * b), dtype=np.float32)
    for q in range(b):
        queries[q, q::b] = 1.0
    distances, ids = index.search(queries, topk)
    return distances, ids


def test_faiss_agrees_on_real_semantic_ids(shared_data):
    faiss = pytest.importorskip("faiss")
    index = json.loads((shared_data / "amazon14_beauty" / "sid.index.json").read_text())
    rows = [index[str(i)] for i in range(len(index))]
    codes = torch.tensor([[int(tok.split("_")[1].rstrip(">")) for tok in row] for row in rows],
                         dtype=torch.uint8)
    g = torch.Generator().manual_seed(9)
    scores = torch.randn(3, codes.shape[1], 256, generator=g).log_softmax(-1)
    got_scores, got_ids = sf.holistic_topk(scores, codes, 30, backend="cpu")
    want = ref.holistic_topk(scores, codes, 30)
    assert torch.equal(got_scores, want[0]) and torch.equal(got_ids, want[1])
    faiss_scores, _ = _faiss_holistic(faiss, scores, codes, 30)
    np.testing.assert_allclose(faiss_scores, got_scores.numpy(), rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# item graph and graph decoding
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_embeddings", [False, True])
@pytest.mark.parametrize("n,m,k,n_edges,block", [(300, 4, 16, 7, 64), (97, 8, 5, 1, 256),
                                                 (130, 3, 40, 50, 17)])
def test_item_graph_equals_brute_force(with_embeddings, n, m, k, n_edges, block):
    g = torch.Generator().manual_seed(n)
    codes = torch.randint(0, k, (n, m), generator=g)
    emb = torch.randn(m, k, 6, generator=g) if with_embeddings else None
    graph = sf.ItemGraph.build(codes, n_edges=n_edges, token_embeddings=emb, block_size=block)
    assert graph.neighbors.shape == (n, n_edges)
    assert torch.equal(graph.neighbors, ref.item_graph(codes, n_edges, emb))


def test_item_graph_save_load_and_self_edges(tmp_path):
    codes = torch.randint(0, 256, (200, 8), dtype=torch.uint8)
    graph = sf.ItemGraph.build(codes, n_edges=5)
    # With distinct codes an item is its own most similar item.
    distinct = torch.unique(codes, dim=0).shape[0] == 200
    if distinct:
        assert torch.equal(graph.neighbors[:, 0], torch.arange(200))
    graph.save(tmp_path / "g.pt")
    assert torch.equal(sf.ItemGraph.load(tmp_path / "g.pt").neighbors, graph.neighbors)


GRAPH_CASES = [(5, 300, 6, 3, 4), (1, 50, 1, 1, 1), (3, 120, 10, 4, 10)]  # b, n, beam, steps, k


def graph_cases():
    """(backend, case): the Triton interpreter on the smallest case only."""
    return [(backend, case) for backend in ["reference"] + CPU_BACKENDS for case in GRAPH_CASES
            if backend != "triton" or torch.cuda.is_available() or case[1] <= 50]


@pytest.mark.parametrize("reduce", ["sum", "mean"])
@pytest.mark.parametrize("backend,case", graph_cases())
@pytest.mark.parametrize("start", ["given", "rpg"])
def test_graph_decode_equals_reference_given_the_same_start(reduce, backend, case, start):
    b, n, beam, steps, topk = case
    g = torch.Generator().manual_seed(n + beam)
    codes = torch.randint(0, 16, (n, 4), generator=g)
    scores = torch.randn(b, 4, 16, generator=g).log_softmax(-1)
    graph = sf.ItemGraph.build(codes, n_edges=min(8, n - 1))
    if start == "given":
        init = torch.stack([torch.randperm(n, generator=g)[:beam] for _ in range(b)])
        got = sf.graph_decode(scores, codes, graph, beam_width=beam, steps=steps, k=topk,
                              reduce=reduce, init=init, return_visited=True, backend=backend)
    else:
        got = sf.graph_decode(scores, codes, graph, beam_width=beam, steps=steps, k=topk,
                              reduce=reduce, init="rpg", seed=n, return_visited=True,
                              backend=backend)
        init = "rpg"
    want = ref.graph_decode(scores, codes, graph.neighbors, beam, steps, topk, reduce, init=init,
                            generator=torch.Generator().manual_seed(n), return_visited=True)
    for got_part, want_part in zip(got, want):
        assert torch.equal(got_part, want_part)
    assert ((got[2] >= 1) & (got[2] <= min(n, steps * beam * (1 + graph.n_edges)))).all()


def rpg_graph_propagation(token_scores, codes, adjacency, num_beams, steps, start):
    """Oracle of RPG's decoding, written from the algorithm of facebookresearch/RPG_KDD2025,
    genrec/models/RPG/model.py, RPG.graph_propagation (0-based ids here).

    The visited set starts as the start nodes; each step takes the distinct neighbours of the
    beam (neighbours only), adds them to the visited set, scores each as the mean over digits
    of its token log-probabilities, and keeps the best num_beams as the next beam. Returns the
    final beam (best first), its scores and the size of each visited set. torch.topk leaves
    the order of equal scores open; this oracle breaks ties toward the smaller id.
    """
    beams, beam_scores, visited = [], [], []
    for q in range(token_scores.shape[0]):
        beam = start[q]
        seen = set(beam.tolist())
        scores = None
        for _ in range(steps):
            cand = torch.unique(adjacency[beam].reshape(-1))  # sorted ascending
            seen.update(cand.tolist())
            item_scores = token_scores[q].gather(1, codes[cand].long().T).mean(0)
            order = torch.sort(item_scores, descending=True, stable=True).indices[:num_beams]
            beam, scores = cand[order], item_scores[order]
        beams.append(beam)
        beam_scores.append(scores)
        visited.append(len(seen))
    return torch.stack(beam_scores), torch.stack(beams), torch.tensor(visited)


def rpg_start(seed, b, n, num_beams):
    """RPG's start after torch.manual_seed(seed): torch.randint(1, n_items, ...) on 1-based
    ids (n_items = N + 1, id 0 is padding), shifted to 0-based."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return torch.randint(1, n + 1, (b, num_beams)) - 1


def exact_log_probs(b, m, k, g):
    """Log-probabilities on a 2**-10 grid: their sums are exact in float32 in any order, so
    RPG's mean and the kernels' ordered sum agree bit for bit."""
    return torch.round(torch.randn(b, m, k, generator=g).log_softmax(-1) * 1024) / 1024


def rpg_cases():
    for backend in ["reference"] + CPU_BACKENDS:
        for shape in [(40, 4, 8, 5, 3, 3), (300, 8, 16, 12, 6, 4)]:
            if backend == "triton" and not torch.cuda.is_available() and shape[0] > 40:
                continue  # the Triton interpreter runs the small case only
            yield (backend, *shape)


@pytest.mark.parametrize("backend,n,m,k,beam,edges,steps", list(rpg_cases()))
def test_graph_decode_follows_rpg_graph_propagation(backend, n, m, k, beam, edges, steps):
    seed = secrets.randbelow(2**31)
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, k, (n, m), generator=g)
    while torch.unique(codes, dim=0).shape[0] < n:  # distinct codes: every item is its own neighbour
        codes = torch.randint(0, k, (n, m), generator=g)
    graph = sf.ItemGraph.build(codes, n_edges=edges, token_embeddings=torch.randn(m, k, 5, generator=g))
    assert (graph.neighbors == torch.arange(n)[:, None]).any(1).all()
    scores = exact_log_probs(3, m, k, g)
    got = sf.graph_decode(scores, codes, graph, beam_width=beam, steps=steps, k=beam,
                          reduce="mean", init="rpg", seed=seed, return_visited=True,
                          backend=backend)
    want = rpg_graph_propagation(scores, codes, graph.neighbors, beam, steps,
                                 rpg_start(seed, 3, n, beam))
    for got_part, want_part, what in zip(got, want, ("scores", "ids", "visited")):
        assert torch.equal(got_part, want_part), f"{what} seed={seed}"


def test_graph_decode_follows_rpg_on_the_beauty_catalog(shared_data):
    """RPG's settings (50 beams, 50 edges, 3 steps, mean) on the 12,101 Beauty items."""
    index = json.loads((shared_data / "amazon14_beauty" / "sid.index.json").read_text())
    codes = torch.tensor([[int(tok.split("_")[1].rstrip(">")) for tok in index[str(i)]]
                          for i in range(len(index))], dtype=torch.uint8)
    n, m = codes.shape
    seed = secrets.randbelow(2**31)
    g = torch.Generator().manual_seed(seed)
    graph = sf.ItemGraph.build(codes, n_edges=50, token_embeddings=torch.randn(m, 256, 8, generator=g))
    assert (graph.neighbors == torch.arange(n)[:, None]).any(1).all()  # RPG's self edges
    scores = exact_log_probs(6, m, 256, g)
    want = rpg_graph_propagation(scores, codes, graph.neighbors, 50, 3, rpg_start(seed, 6, n, 50))
    for backend in ("reference", "cpu"):
        got = sf.graph_decode(scores, codes, graph, beam_width=50, steps=3, k=50, reduce="mean",
                              init="rpg", seed=seed, return_visited=True, backend=backend)
        for got_part, want_part, what in zip(got, want, ("scores", "ids", "visited")):
            assert torch.equal(got_part, want_part), f"{backend} {what} seed={seed}"


def test_rpg_start_is_torch_randint_with_replacement():
    """With only self edges one step scores exactly the start: its distinct items."""
    n, b, beam = 40, 6, 30
    scores, codes = make(b, 2, 8, n, torch.int64, seed=5)
    alone = sf.ItemGraph(torch.arange(n)[:, None])
    seed = secrets.randbelow(2**31)
    draw = torch.randint(0, n, (b, beam), generator=torch.Generator().manual_seed(seed))
    assert torch.equal(draw, rpg_start(seed, b, n, beam))  # RPG's 1-based draw, shifted
    _, ids, visited = sf.graph_decode(scores, codes, alone, beam_width=beam, steps=1, k=beam,
                                      init="rpg", seed=seed, return_visited=True)
    for row in range(b):
        distinct = set(draw[row].tolist())
        assert visited[row] == len(distinct) < beam  # with replacement: repeats at n=40
        assert set(ids[row, :len(distinct)].tolist()) == distinct
        assert (ids[row, len(distinct):] == -1).all()
    # seed=None draws from torch's default generator, as RPG does
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unseeded = sf.graph_decode(scores, codes, alone, beam_width=beam, steps=1, k=beam,
                                   init="rpg", return_visited=True)
    assert torch.equal(unseeded[1], ids) and torch.equal(unseeded[2], visited)
    # the default start: distinct items
    _, ids, visited = sf.graph_decode(scores, codes, alone, beam_width=beam, steps=1, k=beam,
                                      init="distinct", seed=seed, return_visited=True)
    assert (visited == beam).all() and (ids >= 0).all()


def test_visited_counts_distinct_items_over_the_whole_walk():
    """A full graph reaches every item in one step; more steps add nothing."""
    n = 64
    scores, codes = make(3, 4, 32, n, torch.int64, seed=6)
    full = sf.ItemGraph(torch.arange(n).expand(n, n).contiguous())
    for steps in (1, 3):
        *_, visited = sf.graph_decode(scores, codes, full, beam_width=5, steps=steps, k=5,
                                      init="rpg", seed=1, return_visited=True)
        assert (visited == n).all()


def test_graph_decode_with_a_repeated_start_keeps_empty_slots_empty():
    codes = torch.randint(0, 4, (6, 2), generator=torch.Generator().manual_seed(3))
    scores = torch.randn(1, 2, 4, generator=torch.Generator().manual_seed(4))
    graph = sf.ItemGraph(torch.tensor([[i, (i + 1) % 6] for i in range(6)]))
    init = torch.zeros(1, 4, dtype=torch.long)  # one item four times
    got = sf.graph_decode(scores, codes, graph, beam_width=4, steps=2, k=4, init=init,
                          backend="cpu")
    want = ref.graph_decode(scores, codes, graph.neighbors, 4, 2, 4, init=init)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    # Two steps from item 0 reach items 0, 1 and 2 only: the fourth slot stays empty.
    assert sorted(got[1][0, :3].tolist()) == [0, 1, 2] and got[1][0, 3] == -1


def test_graph_decode_is_reproducible_from_a_seed_and_finds_the_best_with_a_full_graph():
    codes = torch.randint(0, 32, (64, 4))
    scores = torch.randn(2, 4, 32).log_softmax(-1)
    full = sf.ItemGraph(torch.arange(64).expand(64, 64).contiguous())
    a = sf.graph_decode(scores, codes, full, beam_width=5, steps=1, k=5, seed=11)
    b = sf.graph_decode(scores, codes, full, beam_width=5, steps=1, k=5, seed=11)
    assert torch.equal(a[1], b[1])
    exhaustive = sf.holistic_topk(scores, codes, 5)
    assert torch.equal(a[1], exhaustive[1]) and torch.equal(a[0], exhaustive[0])


@pytest.mark.parametrize("backend", ["reference"] + CPU_BACKENDS)
def test_opcheck_holistic_topk(backend):
    scores, codes = make(3, 4, 16, 40, torch.uint8, seed=1)
    cand = torch.randint(-1, 40, (3, 9))
    big_scores, big_codes = make(2, 16, 256, 600, torch.uint8, seed=2)
    packed = sf.PackedCodes(big_codes).packed
    for args in ((scores, codes, 5, False, None, None, backend, None),
                 (scores, codes, 5, True, cand, torch.rand(40) < 0.2, backend, None),
                 (big_scores, big_codes, 7, False, None, None, backend, packed)):
        torch.library.opcheck(ops._holistic_topk_op, args)


def test_every_launcher_of_the_family_is_a_backend_tested_here():
    from semid_fast import _backends

    launchers = _backends.table()["longid"]
    assert set(launchers) == {"holistic_topk"}
    assert set(launchers["holistic_topk"]) <= {"reference", "cpu", "cuda", "triton"}


def test_compiled_holistic_topk_and_graph_decode_run_the_custom_op():
    # fullgraph: eager calls the op's body directly (raw pointers), which dynamo could not
    # trace, so a compiled call must go through the custom op.
    scores, codes = make(3, 4, 16, 60, torch.int64, seed=12)
    graph = sf.ItemGraph.build(codes, n_edges=6)
    init = torch.stack([torch.randperm(60, generator=torch.Generator().manual_seed(r))[:5]
                        for r in range(3)])

    def run(s):
        top = sf.holistic_topk(s, codes, 7, reduce="mean", backend="cpu")
        walk = sf.graph_decode(s, codes, graph, beam_width=5, steps=2, k=3, init=init,
                               backend="cpu")
        return (*top, *walk)

    compiled = torch.compile(run, fullgraph=True, backend="eager")
    for got, want in zip(compiled(scores), run(scores)):
        assert torch.equal(got, want)


def test_token_scores_that_require_grad_go_through_the_op_as_before():
    scores, codes = make(2, 4, 16, 30, torch.int64, seed=13)
    got, _ = sf.holistic_topk(scores.requires_grad_(), codes, 4, backend="cpu")
    with pytest.raises(RuntimeError, match="no autograd formula"):
        got.sum().backward()


def test_cuda_launcher_states_its_k_limit_from_the_extension(monkeypatch):
    from types import SimpleNamespace

    from semid_fast import _native
    from semid_fast.backends.cuda import longid as cuda_longid

    monkeypatch.setattr(_native, "_C_cuda", SimpleNamespace(HOLISTIC_MAX_K=4096))
    assert cuda_longid.holistic_topk_refuses(4096) is None
    assert "k <= 4096" in cuda_longid.holistic_topk_refuses(4097)


def _one_bad_score(value):
    """(2, 3, 4) log-probs with -inf entries (legitimate) and one bad value among them."""
    scores = torch.randn(2, 3, 4).log_softmax(-1)
    scores[0, 0, 0] = -torch.inf
    scores[1, 2, 3] = value
    return scores


@pytest.mark.parametrize("call,error,match", [
    (lambda: sf.holistic_topk(torch.randn(2, 3, 4), torch.full((5, 3), 4), 2), ValueError, r"\[0, 4\)"),
    (lambda: sf.holistic_topk(torch.randn(2, 3, 4), torch.zeros(5, 2, dtype=torch.long), 2), ValueError, "M=3"),
    (lambda: sf.holistic_topk(torch.full((2, 3, 4), float("nan")), torch.zeros(5, 3, dtype=torch.long), 2), ValueError, "NaN"),
    (lambda: sf.holistic_topk(_one_bad_score(float("nan")), torch.zeros(5, 3, dtype=torch.uint8), 2), ValueError, "NaN or \\+inf"),
    (lambda: sf.holistic_topk(_one_bad_score(float("inf")), torch.zeros(5, 3, dtype=torch.uint8), 2), ValueError, "NaN or \\+inf"),
    (lambda: sf.holistic_topk(torch.randn(2, 3, 4), torch.zeros(5, 3), 2), TypeError, "codes must have dtype"),
    (lambda: sf.holistic_topk(torch.randn(2, 3, 4), torch.zeros(5, 3, dtype=torch.long), 0), ValueError, "k must"),
    (lambda: sf.holistic_topk(torch.randn(2, 3, 4), torch.zeros(5, 3, dtype=torch.long), 2, reduce="max"), ValueError, "reduce"),
    (lambda: sf.holistic_topk(torch.randn(2, 3, 4), torch.zeros(5, 3, dtype=torch.long), 2, candidates=torch.tensor([[0, 5]] * 2)), ValueError, "candidates must lie"),
    (lambda: sf.holistic_topk(torch.randn(2, 3, 4), torch.zeros(5, 3, dtype=torch.long), 2, item_mask=torch.zeros(4, dtype=torch.bool)), ValueError, "item_mask"),
    (lambda: sf.holistic_topk(torch.randn(2, 3, 4), torch.zeros(5, 3, dtype=torch.long), 2**63), ValueError, "k must be < 2"),
    (lambda: sf.ItemGraph.build(torch.zeros(5, 3, dtype=torch.long), n_edges=5), ValueError, "n_edges must be < N"),
    (lambda: sf.ItemGraph.build(torch.zeros(5, 3, dtype=torch.long), n_edges=2, token_embeddings=torch.full((3, 4, 2), float("nan"))), ValueError, "token_embeddings contains NaN"),
    (lambda: sf.graph_decode(torch.randn(2, 3, 4), torch.zeros(5, 3, dtype=torch.long), sf.ItemGraph(torch.zeros(5, 2, dtype=torch.long)), beam_width=2, steps=1, k=1, init="rpg", seed=-1), ValueError, "seed"),
    (lambda: sf.graph_decode(torch.randn(2, 3, 4), torch.zeros(5, 3, dtype=torch.long), sf.ItemGraph(torch.zeros(5, 2, dtype=torch.long)), beam_width=2, steps=0, k=1), ValueError, "steps"),
    (lambda: sf.graph_decode(torch.randn(2, 3, 4), torch.zeros(5, 3, dtype=torch.long), sf.ItemGraph(torch.zeros(4, 2, dtype=torch.long)), beam_width=2, steps=1, k=1), ValueError, "graph has 4"),
    (lambda: sf.graph_decode(torch.randn(2, 3, 4), torch.zeros(5, 3, dtype=torch.long), sf.ItemGraph(torch.zeros(5, 2, dtype=torch.long)), beam_width=2, steps=1, k=3), ValueError, "k must be <="),
    (lambda: sf.graph_decode(torch.randn(2, 3, 4), torch.zeros(5, 3, dtype=torch.long), sf.ItemGraph(torch.zeros(5, 2, dtype=torch.long)), beam_width=2, steps=1, k=1, init="uniform"), ValueError, "init must be"),
    (lambda: sf.graph_decode(torch.randn(2, 3, 4), torch.zeros(5, 3, dtype=torch.long), sf.ItemGraph(torch.zeros(5, 2, dtype=torch.long)), beam_width=2, steps=1, k=1, init="rpg", seed="1"), TypeError, "seed"),
])
def test_bad_input_raises_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_graph_ids_are_checked_once_per_state_of_the_neighbors_tensor(monkeypatch):
    from semid_fast import _checks

    scores, codes = make(2, 4, 16, 30, torch.int64, seed=14)
    graph = sf.ItemGraph(torch.randint(0, 30, (30, 3), generator=torch.Generator().manual_seed(1)))
    scans = []
    real = _checks.codes_in_range
    monkeypatch.setattr(_checks, "codes_in_range",
                        lambda t, k, name: (scans.append(name), real(t, k, name)))

    def decode(g):
        return sf.graph_decode(scores, codes, g, beam_width=4, steps=2, k=2, seed=1)

    decode(graph)
    decode(graph)
    decode(graph.to("cpu"))
    assert scans.count("graph.neighbors") == 1
    graph.neighbors[3, 1] = 30  # an in-place write is seen
    with pytest.raises(ValueError, match=r"graph.neighbors must lie in \[0, 30\)"):
        decode(graph)
    graph.neighbors = torch.zeros(30, 3, dtype=torch.long)  # so is a new tensor
    decode(graph)
    assert scans.count("graph.neighbors") == 3
    built = sf.ItemGraph.build(codes, n_edges=3)  # valid by construction: never scanned
    decode(built)
    assert scans.count("graph.neighbors") == 3


def test_native_scan_never_reads_out_of_bounds():
    scores = torch.randn(2, 3, 4)
    codes = torch.tensor([[0, 1, 9], [0, -2, 1]], dtype=torch.int32)
    sf.config.check_values = False
    try:
        with pytest.raises(ValueError, match="outside"):
            sf.holistic_topk(scores, codes, 2, backend="cpu")
    finally:
        sf.config.check_values = True


# ---------------------------------------------------------------------------------------------
# GPU backends (run by benchmarks/run_gpu.sh on a GPU machine), against the CPU reference
# ---------------------------------------------------------------------------------------------

GPU_BACKENDS = [pytest.param(b, marks=pytest.mark.gpu) for b in ("cuda", "triton")]


def gpu_backend(backend):
    if backend not in sf.available_backends("cuda"):
        pytest.skip(f"backend {backend} is not available on CUDA in this build")


@pytest.mark.parametrize("backend,dtype,b,m,k,n,topk", [
    pytest.param(*case, marks=pytest.mark.gpu) for case in topk_cases(
        ("cuda", "triton"), SHAPES + [(64, 64, 256, 100_003, 100), (3, 16, 256, 70_001, 4096)])])
@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_gpu_holistic_topk_equals_reference_exactly(backend, dtype, b, m, k, n, topk, reduce):
    gpu_backend(backend)
    scores, codes = make(b, m, k, n, dtype, seed=b + n)
    got = sf.holistic_topk(scores.cuda(), codes.cuda(), topk, reduce=reduce, backend=backend)
    want = ref.holistic_topk(scores, codes, topk, reduce)
    assert torch.equal(got[0].cpu(), want[0]) and torch.equal(got[1].cpu(), want[1])


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_masks_candidates_and_graph_decode(backend):
    gpu_backend(backend)
    scores, codes = make(6, 8, 32, 3000, torch.int32, seed=21)
    g = torch.Generator().manual_seed(22)
    mask = torch.rand(6, 3000, generator=g) < 0.5
    cand = torch.randint(-1, 3000, (6, 300), generator=g)
    for kwargs in (dict(item_mask=mask), dict(candidates=cand), dict(candidates=cand, item_mask=mask[0])):
        got = sf.holistic_topk(scores.cuda(), codes.cuda(), 40, backend=backend,
                               **{key: v.cuda() for key, v in kwargs.items()})
        want = ref.holistic_topk(scores, codes, 40, **kwargs)
        assert torch.equal(got[0].cpu(), want[0]) and torch.equal(got[1].cpu(), want[1])
    graph = sf.ItemGraph.build(codes, n_edges=10)
    init = torch.stack([torch.randperm(3000, generator=g)[:16] for _ in range(6)])
    got = sf.graph_decode(scores.cuda(), codes.cuda(), graph.to("cuda"), beam_width=16, steps=3,
                          k=8, init=init.cuda(), backend=backend)
    want = ref.graph_decode(scores, codes, graph.neighbors, 16, 3, 8, init=init)
    assert torch.equal(got[0].cpu(), want[0]) and torch.equal(got[1].cpu(), want[1])
    gpu_graph = sf.ItemGraph.build(codes.cuda(), n_edges=10, backend=backend)
    assert torch.equal(gpu_graph.neighbors.cpu(), graph.neighbors)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_graph_decode_rpg_start_and_visited(backend):
    """On CUDA the start is drawn on the device: RPG's draw after torch.manual_seed, and the
    walk equals the CPU reference from that start."""
    gpu_backend(backend)
    n, m, k, beam = 3000, 8, 32, 50
    g = torch.Generator().manual_seed(31)
    codes = torch.randint(0, k, (n, m), generator=g)
    scores = exact_log_probs(6, m, k, g)
    graph = sf.ItemGraph.build(codes, n_edges=20, token_embeddings=torch.randn(m, k, 5, generator=g))
    seed = secrets.randbelow(2**31)
    with torch.random.fork_rng(devices=[torch.cuda.current_device()]):
        torch.manual_seed(seed)
        start = torch.randint(1, n + 1, (6, beam), device="cuda") - 1  # RPG's draw, 0-based
    got = sf.graph_decode(scores.cuda(), codes.cuda(), graph.to("cuda"), beam_width=beam,
                          steps=3, k=beam, reduce="mean", init="rpg", seed=seed,
                          return_visited=True, backend=backend)
    want = ref.graph_decode(scores, codes, graph.neighbors, beam, 3, beam, "mean",
                            init=start.cpu(), return_visited=True)
    for got_part, want_part in zip(got, want):
        assert torch.equal(got_part.cpu(), want_part)
    if (graph.neighbors == torch.arange(n)[:, None]).any(1).all():
        oracle = rpg_graph_propagation(scores, codes, graph.neighbors, beam, 3, start.cpu())
        for got_part, want_part in zip(got, oracle):
            assert torch.equal(got_part.cpu(), want_part)


@pytest.mark.skipif("triton" not in CPU_BACKENDS, reason="triton is not installed")
@pytest.mark.parametrize("with_candidates", [False, True])
def test_triton_launches_per_slice_of_queries_past_the_grid_limit(monkeypatch, with_candidates):
    # Grid y (queries) is capped at 65,535 on CUDA; shrink the cap to run the slicing here.
    from semid_fast.backends.triton import longid as triton_longid

    monkeypatch.setattr(triton_longid, "_MAX_GRID_Y", 2)
    scores, codes = make(5, 4, 16, 60, torch.int32, seed=8)
    g = torch.Generator().manual_seed(9)
    mask = torch.rand(5, 60, generator=g) < 0.3
    cand = torch.randint(-1, 60, (5, 20), generator=g) if with_candidates else None
    got = sf.holistic_topk(scores, codes, 7, item_mask=mask, candidates=cand, backend="triton")
    want = ref.holistic_topk(scores, codes, 7, item_mask=mask, candidates=cand)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize("backend", CPU_BACKENDS + ["reference"])
def test_empty_candidates_score_no_item(backend):
    # A (B, 0) candidate tensor has a null data pointer: it must not read as "no candidates".
    scores, codes = make(3, 4, 16, 50, torch.int32, seed=11)
    got = sf.holistic_topk(scores, codes, 5, candidates=torch.empty(3, 0, dtype=torch.long),
                           backend=backend)
    assert torch.equal(got[1], torch.full((3, 5), -1)) and torch.isinf(got[0]).all()

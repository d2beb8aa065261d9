"""Benchmark cases of the ``longid`` family: holistic top-k, graph build and graph decoding.

Sizes. The headline case: N=1,000,000 items, M=64, K=256, top-100, at B=1, 8 and 64 (CPU;
at B=64 without the reference, minutes a call there: faiss is that group's baseline) and
B=1, 64 (GPU); the item graph at N=10,000 (CPU default, against the dense N x N build;
100,000 items is a minutes-long run); graph decoding on a 100,000-item catalog. The graph
build's reference is RPG's public way: a dense (N, N) similarity matrix and topk. ``quick``
shrinks everything to seconds.

Peer: faiss ``IndexPQ`` with inner product: sub-space m of a B-dimensional PQ holds
token_scores[:, m, :] as centroids and query b is one-hot on coordinate b of every
sub-space, so faiss's own scan returns the holistic top-k of all B queries in one search.

Floors (CPU, kind "floor"; the table's "x floor" column divides each row by it):

* B=1: ``stream_read_floor``, a native sum of the same (N, M) uint8 code buffer (vector loads
  and prefetch, the bench's threads): the time to read the code table once, which no scan can
  beat (from L3 where the table fits there, as it does on a large server CPU).
* B>1, where the CPU scan is the bounded one (AVX-512 VBMI): ``holistic_steps_floor``, its
  summing of grid steps for B x N x M lookups with codes and table L1-resident, no transpose
  and no exact scores: the lookup throughput of this core for its work. Elsewhere
  ``holistic_lookup_floor_f32``, the exact scan's own lookups (B/8 x N x M eight-lane loads and
  adds, four items in flight) with every position reading one L1-resident (256, 8) table.

Rows "cpu" (codes as given) and "cpu, PackedCodes" (codes packed once for the bounded scan)
are both ours.

Inputs are random from a fixed seed: token scores are log-softmax of N(0, 1) logits, codes
uniform uint8.
"""

from __future__ import annotations

import numpy as np
import torch

import semid_fast
from semid_fast.reference import longid as ref

from .harness import Case

FAMILY = "longid"
SEED = 20240611


def _count(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else (
        f"{n // 1_000}k" if n % 1_000 == 0 else str(n))


def _inputs(device, b, m, k, n, seed=SEED):
    g = torch.Generator().manual_seed(seed + b)
    scores = torch.randn(b, m, k, generator=g).log_softmax(-1).to(device)
    codes = torch.randint(0, k, (n, m), generator=torch.Generator().manual_seed(seed),
                          dtype=torch.uint8).to(device)
    return scores, codes


def cases(device: str, quick: bool = False) -> list[Case]:
    ours = ("reference", "cpu") if device == "cpu" else ("reference",)
    n = 20_000 if quick else 1_000_000
    batches = (1, 8, 64) if device == "cpu" else (1, 64)
    out: list[Case] = []
    for b in batches:
        out += _topk_cases(device, ours, b, 64, 256, n, 100)
    out += _graph_build_cases(device, ours, 2_000 if quick else 10_000, 32, 256, 50)
    out += _graph_decode_cases(device, ours, 5_000 if quick else 100_000)
    return out


def _topk_cases(device, ours, b, m, k, n, topk) -> list[Case]:
    shape = f"B={b} N={_count(n)} M={m} K={k} top{topk} uint8"
    # One pass over the codes plus the tables; the lookups themselves are cache hits.
    common = dict(family=FAMILY, op="holistic_topk", shape=shape, device=device,
                  bytes=float(n * m + b * m * k * 4))

    def ours_setup(backend):
        def setup():
            scores, codes = _inputs(device, b, m, k, n)
            return lambda: semid_fast.holistic_topk(scores, codes, topk, backend=backend)
        return setup

    # On the CPU at B=64 x 1M items the reference takes minutes a call: faiss is the baseline.
    slow_reference = device == "cpu" and b * n > 10_000_000
    if slow_reference:
        common["baseline"] = "faiss IndexPQ (IP)"
    out = [Case(impl=be, backend=be, setup=ours_setup(be), **common) for be in ours
           if not (slow_reference and be == "reference")]
    if device == "cpu":
        def packed_setup():
            scores, codes = _inputs(device, b, m, k, n)
            packed = semid_fast.PackedCodes(codes)
            note = ("codes packed once for the bounded scan (PackedCodes)" if packed.packed
                    is not None else "no bounded scan on this CPU: PackedCodes holds the codes only")
            return (lambda: semid_fast.holistic_topk(scores, packed, topk, backend="cpu")), note
        out.append(Case(impl="cpu, PackedCodes", backend="cpu", setup=packed_setup, **common))
    out.append(Case(impl="faiss IndexPQ (IP)", requires=("faiss",),
                    setup=_faiss_setup(b, m, k, n, topk),
                    skip=None if device == "cpu" else "faiss-cpu is compared in CPU runs",
                    **common))
    out.append(_floor_case(device, b, m, k, n, common))
    return out


def _floor_case(device, b, m, k, n, common) -> Case:
    """The machine's floor for the group (see the module docstring)."""
    skip = None if device == "cpu" else "the floors are CPU micro-kernels"
    if b == 1:
        def read_setup():
            from .. import _native

            lib = _native.cpu()
            _, codes = _inputs("cpu", b, m, k, n)
            total = torch.zeros(1, dtype=torch.int64)
            note = (f"native sum of the {codes.numel() / 1e6:.0f} MB uint8 code table as "
                    f"64-bit words, {_native.n_threads()} threads: one read at full speed")
            return (lambda: lib.stream_read_floor(codes.data_ptr(), codes.numel(),
                                                  total.data_ptr(), _native.n_threads())), note
        return Case(impl="floor: read the codes once", kind="floor", setup=read_setup,
                    skip=skip, **common)

    def lookup_setup():
        from .. import _native

        lib = _native.cpu()
        total = torch.zeros(1, dtype=torch.int64)
        if lib.holistic_steps_floor(0, m, b, total.data_ptr(), 1) == lib.STATUS_OK:
            note = (f"the bounded scan's summing of grid steps for {b} x {n:,} x {m} lookups, "
                    f"codes and table L1-resident, no transpose or exact scores, "
                    f"{_native.n_threads()} threads: its lookups with no cache miss")
            return (lambda: lib.holistic_steps_floor(n, m, b, total.data_ptr(),
                                                     _native.n_threads())), note
        lanes = lib.HOLISTIC_QUERY_LANES
        _, codes = _inputs("cpu", b, m, k, n)
        table = torch.randn(256, lanes, generator=torch.Generator().manual_seed(SEED))
        out = torch.empty(-(-n // 1024))
        groups = -(-b // lanes)
        note = (f"{groups} x {n:,} x {m} {lanes}-lane table loads and adds over the same "
                f"codes, every position reading one L1-resident 8 KB table, no top-k, "
                f"{_native.n_threads()} threads: the scan's lookups with no cache miss")
        return (lambda: lib.holistic_lookup_floor_f32(table.data_ptr(), codes.data_ptr(), n, m,
                                                      groups, out.data_ptr(),
                                                      _native.n_threads())), note
    return Case(impl="floor: L1-resident lookups", kind="floor", setup=lookup_setup, skip=skip,
                **common)


def _faiss_setup(b, m, k, n, topk):
    def setup():
        import faiss

        faiss.omp_set_num_threads(torch.get_num_threads())
        scores, codes = _inputs("cpu", b, m, k, n)
        index = faiss.IndexPQ(m * b, m, int(np.log2(k)), faiss.METRIC_INNER_PRODUCT)
        faiss.copy_array_to_vector(scores.permute(1, 2, 0).contiguous().numpy().ravel(),
                                   index.pq.centroids)
        index.is_trained = True
        faiss.copy_array_to_vector(codes.numpy().ravel(), index.codes)
        index.ntotal = n
        queries = np.zeros((b, m * b), dtype=np.float32)
        for q in range(b):
            queries[q, q::b] = 1.0
        _, ids = index.search(queries, topk)
        ours = semid_fast.holistic_topk(scores, codes, topk)[1]
        same = float((torch.from_numpy(ids) == ours).float().mean())
        note = f"one search for all {b} queries; ids equal to ours at {same:.1%} of ranks"
        return (lambda: index.search(queries, topk)), note
    return setup


def _graph_build_cases(device, ours, n, m, k, n_edges) -> list[Case]:
    shape = f"N={_count(n)} M={m} K={k} edges={n_edges} RPG-sim"
    common = dict(family=FAMILY, op="ItemGraph.build", shape=shape, device=device)
    g = torch.Generator().manual_seed(SEED)
    codes = torch.randint(0, k, (n, m), generator=g, dtype=torch.uint8).to(device)
    emb = torch.randn(m, k, 16, generator=g).to(device)

    def ours_setup(backend):
        def setup():
            return lambda: semid_fast.ItemGraph.build(codes, n_edges=n_edges,
                                                      token_embeddings=emb, backend=backend)
        return setup

    def dense_setup():
        # RPG's public build: a dense (N, N) similarity matrix, then topk (N^2 memory).
        def build():
            table = ref.token_similarity(emb)
            sim = torch.zeros(n, n, device=device)
            for pos in range(m):
                sim += table[pos][codes[:, pos].long()[:, None], codes[:, pos].long()[None, :]]
            return (sim / m).topk(n_edges, dim=1).indices
        return lambda: build()

    out = [Case(impl=be, backend=be, setup=ours_setup(be), **common)
           for be in ours if be != "reference"]
    out.append(Case(impl="reference", backend="reference", setup=dense_setup, **common))
    return out


def _graph_decode_cases(device, ours, n) -> list[Case]:
    b, m, k, beam, steps, topk, edges = 8, 32, 256, 50, 5, 10, 50
    shape = f"B={b} N={_count(n)} M={m} beam={beam} steps={steps} edges={edges}"
    common = dict(family=FAMILY, op="graph_decode", shape=shape, device=device)
    scores, codes = _inputs(device, b, m, k, n)
    g = torch.Generator().manual_seed(SEED)
    # A random graph of the right shape: decoding cost does not depend on how it was built.
    graph = semid_fast.ItemGraph(torch.randint(0, n, (n, edges), generator=g).to(device))
    init = torch.randint(0, n, (b, beam), generator=g).to(device)

    def ours_setup(backend):
        def setup():
            return lambda: semid_fast.graph_decode(scores, codes, graph, beam_width=beam,
                                                   steps=steps, k=topk, init=init,
                                                   backend=backend)
        return setup

    def reference_setup():
        return lambda: ref.graph_decode(scores, codes, graph.neighbors, beam, steps, topk,
                                        init=init)

    out = [Case(impl=be, backend=be, setup=ours_setup(be), **common)
           for be in ours if be != "reference"]
    out.append(Case(impl="reference", backend="reference", setup=reference_setup, **common))
    return out

"""semid_fast.distributed against the single-process ops, in 2-4 processes on gloo (CPU).

Each check starts its processes once (spawn, a free port on 127.0.0.1, a group timeout) and
runs several comparisons in them: every rank computes the single-process op on the whole
input itself (same seed) and compares. Outcomes come back through a queue, so a failing rank
shows its traceback and a hanging one fails the test after a bounded wait.
"""

from __future__ import annotations

import datetime
import socket
import sys
import time
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import semid_fast as sf
from semid_fast import distributed as sfd
from semid_fast.schedules import FrequencyNoise

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

GROUP_TIMEOUT_S = 20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child(rank, world, port, timeout_s, check, args, queue):
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world,
                                timeout=datetime.timedelta(seconds=timeout_s))
        check(rank, world, *args)
        queue.put((rank, "ok", ""))
    except BaseException as error:  # report everything, the parent decides
        queue.put((rank, type(error).__name__, f"{error}\n{traceback.format_exc()}"))
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _launch(check, world, *args, timeout_s=GROUP_TIMEOUT_S, wait_s=90):
    """Runs check(rank, world, *args) in ``world`` processes; returns {rank: (kind, text)}
    and the seconds until the last outcome arrived."""
    # A spawned child unpickles its target from this module, which pytest names
    # tests.test_distributed: the repository root goes on the path the children inherit, last,
    # so that they still import the installed semid_fast rather than the source tree.
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.append(root)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_child, args=(r, world, port, timeout_s, check, args, queue))
             for r in range(world)]
    start = time.monotonic()
    for p in procs:
        p.start()
    outcomes = {}
    try:
        while len(outcomes) < world:
            left = wait_s - (time.monotonic() - start)
            if left <= 0:
                break
            try:
                rank, kind, text = queue.get(timeout=left)
            except Exception:
                break
            outcomes[rank] = (kind, text)
        elapsed = time.monotonic() - start
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
    return outcomes, elapsed


def _assert_all_ok(outcomes, world):
    assert sorted(outcomes) == list(range(world)), f"ranks that reported: {sorted(outcomes)}"
    failed = {r: text for r, (kind, text) in outcomes.items() if kind != "ok"}
    assert not failed, "\n".join(f"rank {r}: {t}" for r, t in failed.items())


def _bounds(n, world):
    """Uneven contiguous shards (sizes differ by more than one) tiling [0, n)."""
    weights = torch.arange(1, world + 1, dtype=torch.float64)
    cuts = (weights.cumsum(0) / weights.sum() * n).long().tolist()
    return [0] + cuts[:-1] + [n]


def _catalog(codes, rank, world):
    b = _bounds(codes.shape[0], world)
    return sfd.ShardedCatalog(codes[b[rank]:b[rank + 1]].clone(), offset=b[rank]), b


def _equal(got, want, what):
    assert got[0].dtype == want[0].dtype and torch.equal(got[0], want[0]), f"{what}: scores"
    assert torch.equal(got[1], want[1]), f"{what}: ids"


def _check_topk(rank, world):
    gen = torch.Generator().manual_seed(7)
    # Few distinct codes per position: many exact score ties across shards.
    codes = torch.randint(0, 3, (300, 4), generator=gen)
    scores = torch.randn(5, 4, 6, generator=gen).round(decimals=1)
    catalog, b = _catalog(codes, rank, world)
    lo, hi = b[rank], b[rank + 1]
    for k in (1, 7, 64, 400):  # 400 > N: padding
        want = sf.holistic_topk(scores, codes, k)
        _equal(sfd.sharded_holistic_topk(scores, catalog, k), want, f"all_gather k={k}")
        got = sfd.sharded_holistic_topk(scores, catalog, k, reduce="gather")
        if rank == 0:
            _equal(got, want, f"gather k={k}")
        else:
            assert got is None
    want = sf.holistic_topk(scores, codes, 9, reduce="mean")
    _equal(sfd.sharded_holistic_topk(scores, catalog, 9, score_reduce="mean"), want, "mean")
    mask = torch.rand(300, generator=gen) < 0.5
    rows_mask = torch.rand(5, 300, generator=gen) < 0.9
    for m in (mask, rows_mask):
        want = sf.holistic_topk(scores, codes, 40, item_mask=m)
        got = sfd.sharded_holistic_topk(scores, catalog, 40, item_mask=m[..., lo:hi].contiguous())
        _equal(got, want, f"item_mask {tuple(m.shape)}")
    # uint8 codes, K = 256, float16 scores: the fast path of the benchmark
    codes8 = torch.randint(0, 256, (500, 8), generator=gen).to(torch.uint8)
    scores16 = torch.randn(3, 8, 256, generator=gen).half()
    cat8, _ = _catalog(codes8, rank, world)
    _equal(sfd.sharded_holistic_topk(scores16, cat8, 20), sf.holistic_topk(scores16, codes8, 20),
           "uint8")
    # The last rank holds no item.
    cut = [0, 150, 300, 300][:world] + [300]
    empty = sfd.ShardedCatalog(codes[cut[rank]:cut[rank + 1]].clone(), offset=cut[rank])
    _equal(sfd.sharded_holistic_topk(scores, empty, 30), sf.holistic_topk(scores, codes, 30),
           "empty shard")
    graph = sf.ItemGraph.build(codes, n_edges=4)
    _equal(sfd.sharded_graph_decode(scores, empty, graph.neighbors[cut[rank]:cut[rank + 1]],
                                    beam_width=6, steps=2, k=6, seed=4),
           sf.graph_decode(scores, codes, graph, beam_width=6, steps=2, k=6, seed=4),
           "graph decode, empty shard")


def _check_graph(rank, world):
    gen = torch.Generator().manual_seed(11)
    codes = torch.randint(0, 4, (240, 3), generator=gen)
    scores = torch.randn(4, 3, 4, generator=gen).round(decimals=1)
    graph = sf.ItemGraph.build(codes, n_edges=6)
    catalog, b = _catalog(codes, rank, world)
    rows = graph.neighbors[b[rank]:b[rank + 1]].clone()
    start = torch.randint(0, 240, (4, 8), generator=gen)  # repeats: empty beam slots
    cases = [dict(init=start), dict(seed=3), dict(seed=5, init="rpg"),
             dict(seed=9, reduce="mean")]
    for case in cases:
        want = sf.graph_decode(scores, codes, graph, beam_width=8, steps=3, k=5,
                               return_visited=True, **case)
        got = sfd.sharded_graph_decode(scores, catalog, rows, beam_width=8, steps=3, k=5,
                                       return_visited=True, **case)
        _equal(got[:2], want[:2], f"graph_decode {sorted(case)}")
        assert torch.equal(got[2], want[2]), "visited"
    got = sfd.sharded_graph_decode(scores, catalog, sf.ItemGraph(rows), beam_width=8, steps=2,
                                   k=8, seed=1)
    _equal(got, sf.graph_decode(scores, codes, graph, beam_width=8, steps=2, k=8, seed=1),
           "ItemGraph shard")


def _check_training(rank, world):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(403, 6, generator=gen)
    # Exact duplicates: random starts repeat rows, so clusters empty and get split.
    dup = torch.randn(5, 6, generator=gen)[torch.randint(0, 5, (211,), generator=gen)]
    b = _bounds(403, world)
    lo, hi = b[rank], b[rank + 1]
    cases = [(x, dict(k=16, iters=6, init="kmeans++")),
             (x, dict(k=16, iters=50, init="random", tol=1e-3)),
             (dup, dict(k=8, iters=4, init="random", seed=2))]
    for data, kw in cases:
        db = _bounds(data.shape[0], world)
        want = sf.kmeans(data, **kw)
        got = sfd.kmeans(data[db[rank]:db[rank + 1]], **kw)
        assert torch.equal(got.centroids, want.centroids), f"kmeans {kw}: centroids"
        assert torch.equal(got.assignments, want.assignments[db[rank]:db[rank + 1]])
        assert torch.equal(got.inertia, want.inertia) and got.n_iter == want.n_iter, kw
    books = sfd.rq_init(x[lo:hi], 2, 8, iters=4, seed=1)
    assert torch.equal(books, sf.rq_init(x, 2, 8, iters=4, seed=1)), "rq_init"

    codes = torch.randint(0, 9, (403, 3), generator=gen)
    counts = sfd.code_counts(codes[lo:hi], 9)
    want = torch.stack([torch.bincount(codes[:, j], minlength=9) for j in range(3)])
    assert torch.equal(counts, want), "code_counts"
    assert torch.equal(sfd.code_counts(codes[lo:hi, 0], 9), want[0])

    book = torch.randn(8, 6, generator=gen)
    synced = FrequencyNoise(8, momentum=0.9, process_group=dist.group.WORLD)
    alone = FrequencyNoise(8, momentum=0.9)
    for step in range(6):
        batch = torch.randn(403, 6, generator=gen) + step * 0.1
        got, want = synced(batch[lo:hi], book), alone(batch, book)
        assert torch.equal(got, want[lo:hi]), f"FrequencyNoise scales, step {step}"
        assert torch.equal(synced.usage, alone.usage), f"FrequencyNoise usage, step {step}"
    step_codes = torch.randint(0, 8, (97,), generator=gen)
    s97 = _bounds(97, world)
    synced.update(step_codes[s97[rank]:s97[rank + 1]])
    alone.update(step_codes)
    assert torch.equal(synced.usage, alone.usage), "FrequencyNoise.update"


def _check_layout(rank, world):
    codes = torch.zeros((10, 2), dtype=torch.long)
    with pytest.raises(ValueError, match="tile"):
        sfd.ShardedCatalog(codes, offset=5 * rank + 1)
    assert sfd.batch_slice(7) == [slice(0, 4), slice(4, 7)][rank]


def _check_all(rank, world, names):
    for name in names:
        globals()[name](rank, world)


@pytest.mark.parametrize("world, names", [
    (2, ("_check_topk", "_check_graph", "_check_training", "_check_layout")),
    (3, ("_check_topk", "_check_graph", "_check_training")),
])
def test_distributed_equals_single_process(world, names):
    outcomes, _ = _launch(_check_all, world, names)
    _assert_all_ok(outcomes, world)


def _raise_on_rank_one(rank, world):
    codes = torch.zeros((4, 2), dtype=torch.long)
    if rank == 1:
        raise ValueError("rank 1 failed on purpose")
    catalog = sfd.ShardedCatalog(codes, offset=4 * rank)
    sfd.sharded_holistic_topk(torch.zeros(1, 2, 3), catalog, 2)


def _late_rank_one(rank, world, late_s):
    if rank == 1:
        time.sleep(late_s)  # misses rank 0's collective, which times out
    gen = torch.Generator().manual_seed(0)
    sfd.code_counts(torch.randint(0, 4, (6,), generator=gen), 4)


def test_a_rank_that_raises_fails_every_rank():
    outcomes, elapsed = _launch(_raise_on_rank_one, 2, wait_s=60)
    assert outcomes.get(1, ("",))[0] == "ValueError", outcomes
    kind, text = outcomes.get(0, ("missing", ""))
    assert kind == "CollectiveError", text
    assert "ShardedCatalog" in text and "rank 0 of 2" in text, text
    assert elapsed < 60


def test_a_rank_that_does_not_join_times_out_everywhere():
    timeout_s = 3
    outcomes, elapsed = _launch(_late_rank_one, 2, timeout_s + 3, timeout_s=timeout_s,
                                wait_s=60)
    assert [outcomes.get(r, ("missing",))[0] for r in (0, 1)] == ["CollectiveError"] * 2, outcomes
    assert "code_counts" in outcomes[0][1] and "timeout" in outcomes[0][1], outcomes[0][1]
    assert elapsed < 60


def test_outside_a_process_group_raises():
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="init_process_group"):
        sfd.ShardedCatalog(torch.zeros((2, 2), dtype=torch.long), offset=0)
    with pytest.raises(TypeError, match="catalog"):
        sfd.sharded_holistic_topk(torch.zeros(1, 2, 3), "codes", 1)
    with pytest.raises(TypeError, match="codes_shard"):
        sfd.ShardedCatalog([[0, 1]], offset=0)

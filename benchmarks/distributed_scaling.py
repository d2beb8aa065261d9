"""Scaling of semid_fast.distributed and semid_fast.ray on one machine, plus a model for 8 GPUs.

1. Sharded holistic top-k: P = 1, 2, 4 gloo processes on 127.0.0.1, each holding N/P items of
   an (N, M) uint8 catalog (K = 256 token scores per position), B queries, top k. Reported:
   median wall time per call on rank 0 (after a barrier), and the same call timed in two parts:
   the local scan, then the collective and the merge (the merge's share of their sum).
2. Ray encoding: N x D float32 embeddings in Parquet -> RQ codes (L levels, K = 256) in
   Parquet, with 1, 2 and 4 encoder actors on a local Ray cluster; against one in-process
   ``rq_encode`` of the same rows (its share of the Ray job's time is the encode share).
3. A model: bytes per sharded top-k call (P x B x k x 12), their time at given link
   bandwidths, and per-GPU memory of each structure for a 1B-item catalog on 8 GPUs, with the
   trie's bytes per million IDs measured on a trie built here.

Usage: python benchmarks/distributed_scaling.py [--items 4000000] [--ray-rows 1000000] ...
Prints a markdown report. Timings on a loaded 2-core machine are noisy (median of repeats).
"""

from __future__ import annotations

import argparse
import datetime
import os
import socket
import statistics
import tempfile
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import semid_fast as sf
from semid_fast import distributed as sfd


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _topk_rank(rank, world, port, args, queue):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=600))
    per = -(-args.items // world)
    lo, hi = rank * per, min(args.items, (rank + 1) * per)
    gen = torch.Generator().manual_seed(1000 + rank)  # each rank draws its own shard
    codes = torch.randint(0, 256, (hi - lo, args.m), generator=gen, dtype=torch.uint8)
    scores = torch.randn(args.batch, args.m, 256, generator=torch.Generator().manual_seed(0))
    catalog = sfd.ShardedCatalog(codes, offset=lo)
    totals, scans, merges = [], [], []
    for _ in range(args.repeats + 1):  # the first round warms up
        dist.barrier()
        t0 = time.perf_counter()
        sfd.sharded_holistic_topk(scores, catalog, args.topk)
        totals.append(time.perf_counter() - t0)
        # The same call in its two parts: the local scan, then the collective and the merge.
        dist.barrier()
        t0 = time.perf_counter()
        part = sf.holistic_topk(scores, codes, args.topk)
        t1 = time.perf_counter()
        packed = sfd._pack(part[0], sfd._to_global(part[1], lo))
        sfd._merge(sfd._all_gather("bench", None, packed), args.topk)
        t2 = time.perf_counter()
        scans.append(t1 - t0)
        merges.append(t2 - t1)
    if rank == 0:
        queue.put(tuple(statistics.median(v[1:]) for v in (totals, scans, merges)))
    dist.destroy_process_group()


def bench_topk(args):
    rows = []
    for world in args.procs:
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        port = _free_port()
        procs = [ctx.Process(target=_topk_rank, args=(r, world, port, args, queue))
                 for r in range(world)]
        for p in procs:
            p.start()
        total, scan, merge = queue.get(timeout=1800)
        for p in procs:
            p.join()
        rows.append((world, total, scan, merge))
    return rows


def bench_ray(args):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    from semid_fast.ray import EncodeBatch

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.ray_rows, args.dim, generator=gen)
    books = torch.randn(args.levels, 256, args.dim, generator=gen) * 0.5
    t0 = time.perf_counter()
    want = sf.rq_encode(x, books, code_dtype=torch.uint8)
    single = time.perf_counter() - t0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "embeddings")
        os.makedirs(src)
        part = -(-args.ray_rows // 8)
        for i, start in enumerate(range(0, args.ray_rows, part)):
            chunk = x[start:start + part].numpy()
            pq.write_table(pa.table({
                "id": pa.array(np.arange(start, start + len(chunk))),
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(chunk.reshape(-1)),
                                                               args.dim)}),
                os.path.join(src, f"part-{i}.parquet"))
        del x
        for actors in args.procs:
            ray.init(num_cpus=max(actors, os.cpu_count() or 1), include_dashboard=False,
                     log_to_driver=False, configure_logging=False)
            ray.data.DataContext.get_current().enable_progress_bars = False
            out = os.path.join(tmp, f"codes-{actors}")
            t0 = time.perf_counter()
            ds = ray.data.read_parquet(src, override_num_blocks=8).map_batches(
                EncodeBatch, fn_constructor_args=(ray.put(books.numpy()),),
                batch_format="pyarrow", batch_size=8192, num_cpus=0.5,
                compute=ray.data.ActorPoolStrategy(size=actors))
            ds.write_parquet(out)
            wall = time.perf_counter() - t0
            ray.shutdown()
            table = pq.read_table(out)
            ids = table.column("id").to_numpy()
            codes = np.stack(table.column("codes").to_numpy(zero_copy_only=False))
            assert len(ids) == args.ray_rows and np.array_equal(codes, want.numpy()[ids])
            rows.append((actors, wall))
    return single, rows


def trie_bytes_per_million(n=1_000_000):
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 256, (n, 3), generator=gen)
    ids, lengths = sf.dedup_suffix(codes)
    trie = sf.SemanticIDTrie.from_codes(ids, lengths=lengths)
    return trie.nbytes * 1e6 / n, trie.num_states / n, trie.depth


def model(args, trie_per_million):
    gpus, items, b, k = 8, 1_000_000_000, args.model_batch, args.topk
    per_call = gpus * b * k * 12
    lines = [f"- Sharded top-k on {gpus} GPUs, B = {b}, k = {k}: {per_call / 2**20:.2f} MiB "
             f"gathered per call (P x B x k x 12 bytes); "
             + ", ".join(f"{per_call / bw / 1e-6:.0f} us at {bw / 1e9:.0f} GB/s ({name})"
                         for name, bw in (("NVLink all-gather bus", 300e9),
                                          ("InfiniBand 400 Gb/s", 50e9),
                                          ("25 GbE", 3e9)))]
    codes = items * args.m  # uint8
    lines.append(f"- Codes table, {items / 1e9:.0f}B items x M = {args.m} uint8: "
                 f"{codes / 2**30:.1f} GiB in all, {codes / gpus / 2**30:.2f} GiB per GPU")
    for e in (16, 100):
        graph = items * e * 8
        lines.append(f"- Item graph, E = {e} int64 neighbours: {graph / 2**30:.0f} GiB in all, "
                     f"{graph / gpus / 2**30:.1f} GiB per GPU (sharded by item)")
    trie = items / 1e6 * trie_per_million
    lines.append(f"- Trie (replicated, 3 codes + dedup level): {trie_per_million / 2**20:.1f} MiB "
                 f"per million IDs -> {trie / 2**30:.1f} GiB per GPU for 1B IDs; an 80 GiB GPU "
                 f"holding 40 GiB for the trie fits {40 * 2**30 / trie_per_million:.0f}M IDs")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=4_000_000)
    parser.add_argument("--m", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--topk", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--procs", type=lambda s: [int(v) for v in s.split(",")],
                        default=[1, 2, 4])
    parser.add_argument("--ray-rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--model-batch", type=int, default=256)
    parser.add_argument("--skip", choices=("topk", "ray"), action="append", default=[])
    args = parser.parse_args()

    print(f"# distributed scaling ({datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} "
          f"UTC, {os.cpu_count()} CPUs, torch {torch.__version__})\n")
    if "topk" not in args.skip:
        print(f"## Sharded holistic top-k: N = {args.items:,} x M = {args.m} uint8, K = 256, "
              f"B = {args.batch}, k = {args.topk}, gloo on 127.0.0.1 (median of "
              f"{args.repeats})\n")
        print("| P | call (s) | local scan (s) | collective + merge (s) | merge share |")
        print("|---|---|---|---|---|")
        for world, total, scan, merge in bench_topk(args):
            print(f"| {world} | {total:.4f} | {scan:.4f} | {merge:.4f} | "
                  f"{merge / (scan + merge):.1%} |")
        print()
    if "ray" not in args.skip:
        single, rows = bench_ray(args)
        print(f"## Ray Data encoding: {args.ray_rows:,} x {args.dim} float32 Parquet -> RQ codes "
              f"(L = {args.levels}, K = 256) Parquet\n")
        print(f"In-process rq_encode of the same rows: {single:.2f} s "
              f"({args.ray_rows / single:,.0f} rows/s).\n")
        print("| actors | job wall (s) | rows/s | encode share (in-process time / job) |")
        print("|---|---|---|---|")
        for actors, wall in rows:
            print(f"| {actors} | {wall:.2f} | {args.ray_rows / wall:,.0f} | "
                  f"{min(single / wall, 1):.0%} |")
        print()
    per_million, states, depth = trie_bytes_per_million()
    print(f"## Model: 8 GPUs, 1B items\n\nTrie measured here: 1M random IDs of 3 codes "
          f"(K = 256) + a dedup level (depth {depth}): {states:.2f} states per ID.\n")
    for line in model(args, per_million):
        print(line)


if __name__ == "__main__":
    main()

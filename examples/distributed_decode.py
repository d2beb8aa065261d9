"""Catalog-sharded scoring and data-parallel constrained decoding with torch.distributed.

    python examples/distributed_decode.py --procs 2          # gloo on CPU, one machine
    torchrun --nproc-per-node 8 examples/distributed_decode.py --backend nccl   # GPUs

Each rank holds a contiguous slice of a toy long-ID catalog (codes and item graph) and
answers the same queries with ``sharded_holistic_topk`` and ``sharded_graph_decode``; rank 0
checks both against the single-process ops. Then the batch of a constrained (trie) decode is
split DDP-style: the trie is replicated, every rank decodes its rows, no communication.
"""

from __future__ import annotations

import argparse
import datetime
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import semid_fast as sf
from semid_fast import distributed as sfd


def run(rank: int, world: int, backend: str) -> None:
    device = torch.device(f"cuda:{rank % torch.cuda.device_count()}"
                          if backend == "nccl" else "cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=60))
    gen = torch.Generator().manual_seed(0)  # every rank builds the same toy catalog
    n, m = 20_000, 8
    codes = torch.randint(0, 256, (n, m), generator=gen, dtype=torch.uint8)
    token_scores = torch.randn(4, m, 256, generator=gen).log_softmax(-1)
    graph = sf.ItemGraph.build(codes, n_edges=8)

    part = sfd.batch_slice(n)  # this rank's items: a contiguous slice of the catalog
    catalog = sfd.ShardedCatalog(codes[part].to(device), offset=part.start)
    top = sfd.sharded_holistic_topk(token_scores.to(device), catalog, 10)
    walk = sfd.sharded_graph_decode(token_scores.to(device), catalog,
                                    graph.neighbors[part].to(device), beam_width=16, steps=3,
                                    k=10, seed=0)
    if rank == 0:
        want = sf.holistic_topk(token_scores, codes, 10)
        assert all(torch.equal(a.cpu(), b) for a, b in zip(top, want))
        want = sf.graph_decode(token_scores, codes, graph, beam_width=16, steps=3, k=10, seed=0)
        assert all(torch.equal(a.cpu(), b) for a, b in zip(walk, want))
        print(f"{world} ranks: sharded top-k and graph decode equal the single-process ops")

    # Data-parallel constrained decoding: a replicated trie, the batch split across ranks.
    sids, lengths = sf.dedup_suffix(torch.randint(0, 64, (5_000, 3), generator=gen))
    trie = sf.SemanticIDTrie.from_codes(sids, lengths=lengths).to(device)
    batch = 8
    rows = sfd.batch_slice(batch)
    logits = torch.randn(batch, trie.depth, trie.max_vocab, generator=gen).log_softmax(-1)
    width = 5

    def decode(rows_logits):
        def step_fn(step, tokens, parents):  # a stand-in model: fixed log-probs per step
            return rows_logits[:, step].repeat_interleave(width, dim=0)

        return sf.constrained_beam_search(step_fn, trie, batch_size=rows_logits.shape[0],
                                          beam_width=width)[0]

    items = decode(logits[rows].to(device))
    # Rows are decoded independently: this rank's slice equals the whole batch's rows.
    assert torch.equal(items, decode(logits.to(device))[rows])
    print(f"rank {rank}: decoded rows {rows.start}..{rows.stop - 1}, "
          f"trie {trie.nbytes / 2**20:.2f} MiB for {trie.num_items} IDs, best items "
          f"{items[:, 0].tolist()}")


def spawned(rank, world, port):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        run(rank, world, "gloo")
    finally:
        dist.destroy_process_group()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--backend", default="gloo", choices=("gloo", "nccl"))
    args = parser.parse_args()
    if "RANK" in os.environ:  # started by torchrun
        run(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), args.backend)
        dist.destroy_process_group()
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(spawned, args=(args.procs, port), nprocs=args.procs)


if __name__ == "__main__":
    main()

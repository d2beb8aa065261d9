"""End to end on Ray Data: Parquet files of item embeddings -> Parquet files of RQ codes.

    pip install "semid-fast[ray]"
    python examples/ray_encode_parquet.py --rows 100000 --workers 2 [--gpus-per-worker 1]

Writes a toy catalog of embeddings to ``<out>/embeddings/`` (one ``id`` and one fixed-size
list ``embedding`` column), fits RQ codebooks with :func:`semid_fast.rq_init` on a sample (or
load your trained RQ-VAE's), then encodes every row on ``--workers`` actors, each receiving
the codebooks once, and writes ``<out>/codes/``. On a cluster, call ``ray.init(address=...)``
and point ``--out`` at shared storage (s3://, gs://, a network file system).
"""

from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch

import semid_fast as sf
from semid_fast.ray import EncodeBatch


def write_embeddings(path: str, rows: int, dim: int, files: int = 8) -> None:
    os.makedirs(path, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    per = -(-rows // files)
    for i, start in enumerate(range(0, rows, per)):
        x = torch.randn(min(per, rows - start), dim, generator=gen).numpy()
        table = pa.table({"id": pa.array(np.arange(start, start + len(x))),
                          "embedding": pa.FixedSizeListArray.from_arrays(
                              pa.array(x.reshape(-1)), dim)})
        pq.write_table(table, os.path.join(path, f"part-{i:04d}.parquet"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cpus-per-worker", type=float, default=0.5,
                        help="keep workers * this below the cluster's CPUs: the read and "
                             "write tasks need CPUs too, or the job waits for ever")
    parser.add_argument("--gpus-per-worker", type=float, default=0)
    parser.add_argument("--out", default=None, help="output folder (default: a temporary one)")
    args = parser.parse_args()

    out = args.out or tempfile.mkdtemp(prefix="semid_ray_")
    src, dst = os.path.join(out, "embeddings"), os.path.join(out, "codes")
    write_embeddings(src, args.rows, args.dim)

    # Codebooks: k-means on a sample here; in practice your RQ-VAE's trained codebooks.
    sample = pq.read_table(os.path.join(src, "part-0000.parquet")).column("embedding")
    sample = torch.from_numpy(sample.combine_chunks().flatten().to_numpy().reshape(-1, args.dim))
    codebooks = sf.rq_init(sample[:20_000], args.levels, 256, iters=10)

    ray.init(ignore_reinit_error=True)
    books_ref = ray.put(codebooks.numpy())  # stored once; each actor fetches it once
    ds = ray.data.read_parquet(src).map_batches(
        EncodeBatch, fn_constructor_args=(books_ref,),
        fn_constructor_kwargs={"column": "embedding", "device": "auto"},
        batch_format="pyarrow", batch_size=8192, num_cpus=args.cpus_per_worker,
        num_gpus=args.gpus_per_worker,
        compute=ray.data.ActorPoolStrategy(size=args.workers))
    ds.write_parquet(dst)

    codes = pq.read_table(dst)
    assert codes.num_rows == args.rows, (codes.num_rows, args.rows)
    first = codes.slice(0, 5).to_pydict()
    print(f"{codes.num_rows} rows encoded to {dst}; first ids {first['id']}, "
          f"codes {first['codes']}")


if __name__ == "__main__":
    main()

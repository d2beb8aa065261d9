"""Per-step overhead of graph_decode: the holistic_topk custom op vs its body called directly.

A step of graph_decode scores beam * (1 + n_edges) candidates per query; with one query
this is a few microseconds of kernel, so the host cost of reaching the kernel decides the
step. Three ways to run one step's top-k, timed back to back in one process:

* ``op``: ``torch.ops.semid_fast.holistic_topk`` (what a compiled graph runs);
* ``body``: the op's body, outputs allocated + the backend's launcher (what eager runs);
* ``launcher``: the launcher alone into preallocated outputs (the floor);

and whole graph_decode calls through each of the first two with value checks off, and
eager with them on (the graph's ids are scanned once, then only when the tensor changes).
Each figure is the median of ``--calls`` timed calls, repeated ``--reps`` times; on a shared
machine, read the spread of the repetitions and the differences more than the absolute
times.

    python benchmarks/graph_decode_overhead.py [--device cuda] [--backend auto]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import semid_fast as sf
from semid_fast import _backends
from semid_fast.ops import longid as ops


def median_us(fn, calls: int, sync) -> float:
    for _ in range(max(10, calls // 10)):
        fn()
    sync()
    times = []
    for _ in range(calls):
        start = time.perf_counter_ns()
        fn()
        sync()
        times.append(time.perf_counter_ns() - start)
    return statistics.median(times) / 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--m", type=int, default=32)
    parser.add_argument("--k", type=int, default=256)
    parser.add_argument("--beam", type=int, default=10)
    parser.add_argument("--edges", type=int, default=50)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: as is)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    g = torch.Generator().manual_seed(0)
    n, beam = args.items, args.beam
    scores = torch.randn(1, args.m, args.k, generator=g).log_softmax(-1).to(device)
    codes = torch.randint(0, args.k, (n, args.m), generator=g).to(torch.uint8).to(device)
    # A random graph: building the exact one is not what is measured here.
    graph = sf.ItemGraph(torch.randint(0, n, (n, args.edges), generator=g).to(device))
    init = torch.randperm(n, generator=g)[:beam][None].to(device)
    cand = torch.cat([init, graph.neighbors[init].reshape(1, -1)], dim=1)

    backend = ops._choose(args.backend, device, "graph_decode", beam)
    launch = _backends.launcher(backend, "longid", "holistic_topk")
    out_scores = torch.empty((1, beam), device=device)
    out_ids = torch.empty((1, beam), dtype=torch.long, device=device)
    step = {
        "op": lambda: ops._holistic_topk_op(scores, codes, beam, True, cand, None, backend),
        "body": lambda: ops._holistic(scores, codes, beam, True, cand, None, backend),
        "launcher": lambda: launch(scores, codes, beam, True, cand, None, out_scores, out_ids),
    }
    assert torch.equal(step["op"]()[1], step["body"]()[1])

    def decode():
        return sf.graph_decode(scores, codes, graph, beam_width=beam, steps=args.steps,
                               k=beam, reduce="mean", init=init, backend=backend)

    eager_topk = ops._topk

    def decode_through_op():
        ops._topk = ops._holistic_topk_op
        try:
            return decode()
        finally:
            ops._topk = eager_topk

    print(f"device={device} backend={backend} torch={torch.__version__} "
          f"threads={torch.get_num_threads()} B=1 beam={beam} N={n} M={args.m} K={args.k} "
          f"edges={args.edges} candidates/step={cand.shape[1]} steps={args.steps}")
    print("rep  step: op  body  launcher  op-body (us)   graph_decode: op  eager  diff/step  "
          "eager+checks (us)")
    rows = []
    calls = max(1, args.calls // 4)
    for rep in range(args.reps):
        sf.config.check_values = False
        try:
            t = {name: median_us(fn, args.calls, sync) for name, fn in step.items()}
            d_op = median_us(decode_through_op, calls, sync)
            d_eager = median_us(decode, calls, sync)
        finally:
            sf.config.check_values = True
        d_checked = median_us(decode, calls, sync)
        rows.append((t["op"], t["body"], t["launcher"], d_op, d_eager, d_checked))
        print(f"{rep:3d}  {t['op']:9.1f} {t['body']:5.1f} {t['launcher']:9.1f} "
              f"{t['op'] - t['body']:9.1f}   {d_op:17.1f} {d_eager:6.1f} "
              f"{(d_op - d_eager) / args.steps:9.1f}  {d_checked:12.1f}")
    med = [statistics.median(col) for col in zip(*rows)]
    print(f"median of reps: step op {med[0]:.1f} us, body {med[1]:.1f} us, launcher "
          f"{med[2]:.1f} us (op adds {med[0] - med[1]:.1f} us); graph_decode through the op "
          f"{med[3]:.1f} us, eager {med[4]:.1f} us ({(med[3] - med[4]) / args.steps:.1f} us "
          f"per step), eager with value checks {med[5]:.1f} us")


if __name__ == "__main__":
    main()

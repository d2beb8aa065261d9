"""Reliability figures for RESULTS.md (not run in CI): peak memory of the 10M-item structures
and the number of fuzz cases per op.

    python benchmarks/reliability.py [--items 10000000] [--graph-build-items 10000]

Each structure is measured in a fresh child process: peak RSS (``ru_maxrss``) of the child,
the RSS once its inputs exist (so the difference is what the op itself needs), the size of
the structure's tensors and the wall time. Inputs are random codes (uniform, seed 0).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(what: str, n: int, graph_build_items: int) -> dict:
    import torch

    import semid_fast as sf

    torch.manual_seed(0)
    out = {"what": what}
    if what.startswith("trie"):
        depth = int(what[-1])
        codes = torch.randint(0, 256, (n, depth), dtype=torch.int64)
        out["inputs_rss_mib"] = rss_mib()
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # random 3-level IDs collide
            trie = sf.SemanticIDTrie.from_codes(codes, vocab_sizes=[256] * depth)
        out.update(seconds=time.perf_counter() - start, structure_mib=trie.nbytes / 2**20,
                   items=n, depth=depth, states=trie.num_states)
        # One decode step over 1,000 beams on the built trie.
        b, w = 100, 10
        states = torch.zeros(b, w, dtype=torch.long)
        sf.constrained_beam_step(torch.randn(b * w, 256).log_softmax(-1), torch.zeros(b, w),
                                 states, trie, w)
    elif what == "holistic":
        codes = torch.randint(0, 256, (n, 32), dtype=torch.uint8)
        scores = torch.randn(8, 32, 256).log_softmax(-1)
        out["inputs_rss_mib"] = rss_mib()
        start = time.perf_counter()
        sf.holistic_topk(scores, codes, 100)
        out.update(seconds=time.perf_counter() - start, structure_mib=codes.nbytes / 2**20,
                   items=n, positions=32, queries=8, k=100)
    elif what == "graph10m":
        # The graph of n items (k=16 neighbours) as graph_decode holds it, and decoding with
        # it; building it exactly at this size is out of reach (O(N^2 M)), see graph_build.
        codes = torch.randint(0, 256, (n, 32), dtype=torch.uint8)
        graph = sf.ItemGraph(torch.randint(0, n, (n, 16)))
        scores = torch.randn(8, 32, 256).log_softmax(-1)
        out["inputs_rss_mib"] = rss_mib()
        start = time.perf_counter()
        sf.graph_decode(scores, codes, graph, beam_width=100, steps=3, k=10, seed=0)
        out.update(seconds=time.perf_counter() - start,
                   structure_mib=graph.neighbors.nbytes / 2**20, items=n, n_edges=16)
    elif what == "graph_build":
        codes = torch.randint(0, 256, (graph_build_items, 32), dtype=torch.uint8)
        out["inputs_rss_mib"] = rss_mib()
        start = time.perf_counter()
        graph = sf.ItemGraph.build(codes, n_edges=16)
        out.update(seconds=time.perf_counter() - start,
                   structure_mib=graph.neighbors.nbytes / 2**20, items=graph_build_items,
                   n_edges=16)
    out["peak_rss_mib"] = peak_mib()
    return out


def fuzz_counts() -> dict:
    """Cases per op of tests/test_fuzz.py (valid and invalid, checks on and off)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "tests" / "test_fuzz.py"
    spec = importlib.util.spec_from_file_location("fuzz_cases", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.run_children(module.OPS)
    return {op: {**r["counts"], "failures": len(r["failures"]), "seconds": r.get("seconds")}
            for op, r in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000_000)
    parser.add_argument("--graph-build-items", type=int, default=10_000)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.items, args.graph_build_items)))
        return
    import torch

    import semid_fast as sf
    rows = []
    for what in ("trie3", "trie4", "holistic", "graph10m", "graph_build"):
        proc = subprocess.run([sys.executable, __file__, "--one", what, "--items",
                               str(args.items), "--graph-build-items",
                               str(args.graph_build_items)], capture_output=True, text=True)
        if proc.returncode:
            rows.append({"what": what, "error": proc.stderr[-500:]})
        else:
            rows.append(json.loads(proc.stdout.splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    fuzz = fuzz_counts()
    for op, c in fuzz.items():
        print(f"fuzz {op}: {c}")
    report = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus",
              "torch": torch.__version__, "threads": torch.get_num_threads(),
              "commit": getattr(getattr(sf._native, "_build_info", None), "GIT_COMMIT", None),
              "date": time.strftime("%Y-%m-%d", time.gmtime()), "memory": rows, "fuzz": fuzz}
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

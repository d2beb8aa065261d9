"""``semid-fast bench --scaling``: time against the catalog size N and the thread count, for
us and the peers, with the fitted log-log slope of every line.

Ops and shapes (CPU):

* ``rq_encode``: N x D=128 float32, L=4 levels of K=256 codewords, greedy; peer faiss
  ``ResidualQuantizer.compute_codes`` with the same codebooks.
* ``pq_encode``: N x D=128 float32, M=16 sub-spaces of K=256; peer faiss
  ``ProductQuantizer.compute_codes`` with the same centroids.
* ``holistic_topk``: B=1 query, N items of M=64 uint8 codes, K=256, top-100; peer faiss
  ``IndexPQ`` (inner product) holding the token scores as centroids, as in the main bench.
* ``SemanticIDTrie.from_codes``: N random IDs of L=4 levels over K=256 codes; faiss has no
  such op, so the peer is our pure-PyTorch reference backend.

Sizes: N = 10^4 .. 10^7 in decades (``quick``: 10^3 and 10^4), each at 1 and 2 threads
(torch's and faiss's thread counts are set together; our kernels use torch's). A point is
skipped, with the reason in its note, when its inputs would need more than a quarter of the
machine's memory, or when the line's previous point projects (linearly) past
``budget_s`` for one call. Each point is the median of calls repeated for ``min_time_s``
(at least 3; a call over 1 s is timed once, after no warm-up).

Slope: the least-squares slope of log(time) against log(N) over the measured points of a
line, and the slope of its last decade alone: 1 is linear; above 1 the op grows faster than
linearly there.

Writes ``semid_fast_scaling.json`` (rewritten after every point) and
``semid_fast_scaling.png`` (log-log, one panel per op) to the output folder, and prints one
table (time per N, slopes).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

SEED = 20240611
SIZES = {False: (10_000, 100_000, 1_000_000, 10_000_000), True: (1_000, 10_000)}
THREADS = (1, 2)
BUDGET_S = {False: 60.0, True: 2.0}  # the longest single call a line may project to
SLOW_CALL_S = 1.0
D, RQ_LEVELS, PQ_M, K, HOLISTIC_M, TOPK, TRIE_DEPTH = 128, 4, 16, 256, 64, 100, 4


@dataclass
class Line:
    """One implementation of one op: ``setup(n)`` makes its inputs (untimed) and returns
    the callable to time; ``nbytes(n)`` estimates the memory its inputs and outputs take."""

    op: str
    impl: str
    kind: str  # "ours", "reference" or "peer"
    setup: Callable[[int], Callable[[], object]]
    nbytes: Callable[[int], float]
    requires: tuple[str, ...] = ()


@dataclass
class Point:
    op: str
    impl: str
    kind: str
    threads: int
    n: int
    status: str  # "ok", "skipped" or "error"
    times_s: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def median_s(self) -> float | None:
        return statistics.median(self.times_s) if self.times_s else None

    def to_json(self) -> dict:
        return {"op": self.op, "impl": self.impl, "kind": self.kind, "threads": self.threads,
                "n": self.n, "status": self.status, "median_s": self.median_s,
                "times_s": self.times_s, "note": self.note}


def _g(offset: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(SEED + offset)


def _faiss():
    import faiss

    faiss.omp_set_num_threads(torch.get_num_threads())
    return faiss


def lines() -> list[Line]:
    """Every line of the sweep, ours first within each op."""
    import semid_fast

    def x_of(n):
        return torch.randn(n, D, generator=_g())

    rq_cb = torch.randn(RQ_LEVELS, K, D, generator=_g(1)) / math.sqrt(RQ_LEVELS)
    pq_cb = torch.randn(PQ_M, K, D // PQ_M, generator=_g(2))
    token_scores = torch.randn(1, HOLISTIC_M, K, generator=_g(3)).log_softmax(-1)

    def rq_ours(n):
        x = x_of(n)
        return lambda: semid_fast.rq_encode(x, rq_cb, backend="cpu")

    def rq_faiss(n):
        faiss = _faiss()
        x = x_of(n).numpy()
        rq = faiss.ResidualQuantizer(D, RQ_LEVELS, 8)
        faiss.copy_array_to_vector(rq_cb.numpy().reshape(-1), rq.codebooks)
        rq.is_trained = True
        rq.max_beam_size = 1
        return lambda: rq.compute_codes(x)

    def pq_ours(n):
        x = x_of(n)
        return lambda: semid_fast.pq_encode(x, pq_cb, backend="cpu")

    def pq_faiss(n):
        faiss = _faiss()
        x = x_of(n).numpy()
        pq = faiss.ProductQuantizer(D, PQ_M, 8)
        faiss.copy_array_to_vector(pq_cb.numpy().reshape(-1), pq.centroids)
        if hasattr(pq, "sync_transposed_centroids"):
            pq.sync_transposed_centroids()  # faiss's faster encoding path
        return lambda: pq.compute_codes(x)

    def item_codes(n):
        return torch.randint(0, K, (n, HOLISTIC_M), generator=_g(4), dtype=torch.uint8)

    def holistic_ours(n):
        codes = item_codes(n)
        return lambda: semid_fast.holistic_topk(token_scores, codes, TOPK, backend="cpu")

    def holistic_faiss(n):
        faiss = _faiss()
        codes = item_codes(n)
        index = faiss.IndexPQ(HOLISTIC_M, HOLISTIC_M, 8, faiss.METRIC_INNER_PRODUCT)
        faiss.copy_array_to_vector(token_scores[0].contiguous().numpy().ravel(),
                                   index.pq.centroids)
        index.is_trained = True
        faiss.copy_array_to_vector(codes.numpy().ravel(), index.codes)
        index.ntotal = n
        query = np.ones((1, HOLISTIC_M), dtype=np.float32)
        return lambda: index.search(query, TOPK)

    def trie(backend):
        def setup(n):
            import warnings

            ids = torch.randint(0, K, (n, TRIE_DEPTH), generator=_g(5))

            def build():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # random IDs collide a little
                    return semid_fast.SemanticIDTrie.from_codes(ids, backend=backend)
            return build
        return setup

    def embeddings(n):
        return 4.0 * n * D + 8.0 * n * RQ_LEVELS  # x, int64 codes

    return [
        Line("rq_encode", "cpu", "ours", rq_ours, embeddings),
        Line("rq_encode", "faiss ResidualQuantizer", "peer", rq_faiss, embeddings, ("faiss",)),
        Line("pq_encode", "cpu", "ours", pq_ours, embeddings),
        Line("pq_encode", "faiss ProductQuantizer", "peer", pq_faiss, embeddings, ("faiss",)),
        Line("holistic_topk", "cpu", "ours", holistic_ours, lambda n: float(n * HOLISTIC_M)),
        Line("holistic_topk", "faiss IndexPQ (IP)", "peer", holistic_faiss,
             lambda n: float(n * HOLISTIC_M), ("faiss",)),
        # The build sorts the IDs and keeps a few int64 arrays per ID.
        Line("SemanticIDTrie.from_codes", "cpu", "ours", trie("cpu"),
             lambda n: 8.0 * n * TRIE_DEPTH * 6),
        Line("SemanticIDTrie.from_codes", "reference", "reference", trie("reference"),
             lambda n: 8.0 * n * TRIE_DEPTH * 12),
    ]


def time_calls(fn: Callable[[], object], min_time_s: float) -> list[float]:
    """Seconds of each timed call: one warm-up call, then calls for min_time_s (at least 3);
    a call over SLOW_CALL_S is timed once (its first call)."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    if first > SLOW_CALL_S:
        return [first]
    times: list[float] = []
    deadline = time.perf_counter() + min_time_s
    while len(times) < 3 or time.perf_counter() < deadline:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def memory_bytes() -> float | None:
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def slopes(points: list[Point]) -> dict:
    """Least-squares slope of log time on log N over the ok points of one line, and the
    slope of its last segment; None where fewer than two points were measured."""
    ok = sorted((p.n, p.median_s) for p in points if p.status == "ok")
    if len(ok) < 2:
        return {"slope": None, "slope_last": None, "points": len(ok)}
    lx = np.log10([n for n, _ in ok])
    ly = np.log10([t for _, t in ok])
    slope = float(np.polyfit(lx, ly, 1)[0])
    last = float((ly[-1] - ly[-2]) / (lx[-1] - lx[-2]))
    return {"slope": round(slope, 3), "slope_last": round(last, 3), "points": len(ok)}


def run(quick: bool, out: Path, min_time_s: float, env: dict, argv: list[str],
        threads: tuple[int, ...] = THREADS) -> int:
    """Runs the sweep, prints its table and writes the JSON and PNG; returns the exit status
    (1 when a point failed, 130 when interrupted)."""
    import importlib.util

    sizes, budget = SIZES[quick], BUDGET_S[quick]
    memory = memory_bytes()
    cap = memory / 4 if memory else None
    json_path, png_path = out / "semid_fast_scaling.json", out / "semid_fast_scaling.png"
    png_path.unlink(missing_ok=True)
    settings = {"quick": quick, "sizes": list(sizes), "threads": list(threads),
                "min_time_s": min_time_s, "budget_s": budget, "memory_cap_bytes": cap,
                "argv": argv}
    points: list[Point] = []
    all_lines = lines()
    previous_threads = torch.get_num_threads()
    interrupted = False
    started = time.perf_counter()
    try:
        for line in all_lines:
            missing = [m for m in line.requires if importlib.util.find_spec(m) is None]
            for t in threads:
                last: Point | None = None
                for n in sizes:
                    point = Point(line.op, line.impl, line.kind, t, n, "skipped")
                    need = line.nbytes(n)
                    if missing:
                        point.note = f"peer not installed (import {missing[0]} failed)"
                    elif cap is not None and need > cap:
                        point.note = (f"needs ~{need / 2**30:.1f} GiB, over the cap of "
                                      f"{cap / 2**30:.1f} GiB (a quarter of this machine's "
                                      f"memory)")
                    elif last is not None and last.status == "ok" and \
                            last.median_s * n / last.n > budget:
                        point.note = (f"projected {last.median_s * n / last.n:.0f} s per call "
                                      f"(linear from N={last.n:,}), over the {budget:.0f} s "
                                      f"budget")
                    elif last is not None and last.status != "ok":
                        point.note = "the previous size was not measured"
                    else:
                        torch.set_num_threads(t)
                        fn = None
                        try:
                            fn = line.setup(n)
                            point.times_s = time_calls(fn, min_time_s)
                            point.status = "ok"
                        except Exception as exc:  # one failure must not hide the others
                            point.status, point.note = "error", f"{type(exc).__name__}: {exc}"
                        finally:
                            del fn
                            torch.set_num_threads(previous_threads)
                    points.append(point)
                    last = point
                    shown = (f"{point.median_s * 1e3:.2f} ms" if point.status == "ok"
                             else f"{point.status}: {point.note}")
                    print(f"{line.op} [{line.impl}, {t} thread{'s' * (t > 1)}] N={n:,}: "
                          f"{shown}", flush=True)
                    _write_json(json_path, env, settings, points, all_lines, complete=False)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        torch.set_num_threads(previous_threads)
    settings["total_wall_s"] = round(time.perf_counter() - started, 1)
    settings["interrupted"] = interrupted
    _write_json(json_path, env, settings, points, all_lines, complete=not interrupted)
    print()
    print(format_table(points, sizes))
    written = [str(json_path)]
    if write_chart(png_path, env, points):
        written.append(str(png_path))
    print(f"\nwrote {', '.join(written)}; total wall time {settings['total_wall_s']:.0f} s")
    if interrupted:
        return 130
    return 1 if any(p.status == "error" for p in points) else 0


def _line_keys(points: list[Point]) -> list[tuple[str, str, str, int]]:
    keys: list[tuple[str, str, str, int]] = []
    for p in points:
        key = (p.op, p.impl, p.kind, p.threads)
        if key not in keys:
            keys.append(key)
    return keys


def line_summaries(points: list[Point]) -> list[dict]:
    """One entry per (op, impl, threads): its slopes."""
    out = []
    for op, impl, kind, threads in _line_keys(points):
        mine = [p for p in points if (p.op, p.impl, p.threads) == (op, impl, threads)]
        out.append({"op": op, "impl": impl, "kind": kind, "threads": threads, **slopes(mine)})
    return out


def _write_json(path: Path, env: dict, settings: dict, points: list[Point], all_lines,
                complete: bool) -> None:
    payload = {"environment": env, "settings": settings, "complete": complete,
               "points": [p.to_json() for p in points], "lines": line_summaries(points)}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    os.replace(tmp, path)


def _fmt(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.2f} s" if seconds >= 1 else f"{seconds * 1e3:.2f} ms"


def format_table(points: list[Point], sizes) -> str:
    """One row per line: its median time at every N, then its slopes; then the notes of the
    points that were skipped or failed."""
    headers = ["op", "impl", "threads", *(f"N={n:,}" for n in sizes), "slope", "last decade"]
    rows, notes = [], []
    for summary in line_summaries(points):
        mine = {p.n: p for p in points if (p.op, p.impl, p.threads) ==
                (summary["op"], summary["impl"], summary["threads"])}
        cells = []
        for n in sizes:
            p = mine.get(n)
            if p is None:
                cells.append("")
            elif p.status == "ok":
                cells.append(_fmt(p.median_s))
            else:
                notes.append(f"{p.op} [{p.impl}, {p.threads} threads] N={n:,}: {p.status}: "
                             f"{p.note}")
                cells.append(f"({len(notes)})")
        slope, last = summary["slope"], summary["slope_last"]
        rows.append([summary["op"], summary["impl"], str(summary["threads"]), *cells,
                     "-" if slope is None else f"{slope:.2f}",
                     "-" if last is None else f"{last:.2f}"])
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def fmt_line(cells):
        return "  ".join(c.rjust(w) if i >= 2 else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [fmt_line(headers), fmt_line(["-" * w for w in widths])]
    for i, row in enumerate(rows):
        if i and row[0] != rows[i - 1][0]:
            out.append("")
        out.append(fmt_line(row))
    if notes:
        out.append("")
        out.extend(f"({i}) {note}" for i, note in enumerate(notes, 1))
    return "\n".join(out)


COLOURS = {"ours": "tab:blue", "reference": "tab:gray", "peer": "tab:orange"}


def write_chart(path: Path, env: dict, points: list[Point]) -> bool:
    """Log-log time against N, one panel per op, one line per (impl, threads): solid for
    the most threads, dashed for one; the legend gives each line's slope. False without
    matplotlib or without two measured points on some line."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    summaries = [s for s in line_summaries(points) if s["points"] >= 2]
    if not summaries:
        return False
    ops = list(dict.fromkeys(s["op"] for s in summaries))
    cols = min(2, len(ops))
    rows = -(-len(ops) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 4.2 * rows), squeeze=False)
    most = max(p.threads for p in points)
    for ax, op in zip(axes.flat, ops):
        for s in (s for s in summaries if s["op"] == op):
            ok = sorted((p.n, p.median_s) for p in points if p.status == "ok" and
                        (p.op, p.impl, p.threads) == (op, s["impl"], s["threads"]))
            ax.plot([n for n, _ in ok], [t for _, t in ok], marker="o",
                    color=COLOURS.get(s["kind"], "black"),
                    linestyle="-" if s["threads"] == most else "--",
                    label=f"{s['impl']}, {s['threads']} thr (slope {s['slope']:.2f})")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(op, fontsize=10)
        ax.set_xlabel("N (catalog items / vectors)")
        ax.set_ylabel("seconds per call")
        ax.grid(True, which="both", linewidth=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(ops):]:
        ax.axis("off")
    fig.suptitle(f"semid_fast scaling on {env.get('device_name', 'cpu')} "
                 f"(commit {env.get('git_commit')}, load {env.get('load_average')})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True

"""RPG end to end: OPQ long semantic IDs, a parallel head, graph-constrained decoding.

RPG (Hou et al., "Generating Long Semantic IDs in Parallel for Recommendation", KDD 2025)
gives each item M = 32 OPQ codes (K = 256), predicts the M codes of the next item at once
(one softmax per position), and decodes by walking a graph of similar items instead of
scoring the catalog. This pipeline:

1. trains RPG's tokenizer (faiss ``OPQ32,IVF1,PQ32x8``, inner product) on real item
   embeddings (``amazon14_beauty/cf_emb64.npy``) and encodes every item with
   :func:`semid_fast.pq_encode` given :func:`semid_fast.interop.pq_from_faiss` of that index
   (rotation, IVF1 centroid, codebooks), reporting on how many rows the codes equal faiss's;
2. scores users with a small randomly initialised parallel head (mean of the history's item
   embeddings -> MLP -> M x K log-probabilities) over the ``amazon14_beauty/inter.json``
   histories;
3. builds the item graph (:meth:`semid_fast.ItemGraph.build`, RPG's similarity with the PQ
   centroids as token embeddings) and decodes with :func:`semid_fast.graph_decode` against
   the pure-PyTorch loop of RPG's published algorithm and the exhaustive
   :func:`semid_fast.holistic_topk`;
4. reports latency per batch, items visited per query, and the overlap of the graph's top-k
   with the exact top-k, for several numbers of decoding steps.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np
import torch

import semid_fast as sf
from semid_fast import interop
from semid_fast.reference import longid as ref

from .common import (DataSource, Report, faiss_single_thread, fmt_time, item_embeddings,
                     median_time, require_faiss, timed_once, user_histories)

SYSTEM = "rpg"
TITLE = "RPG: OPQ long IDs + graph-constrained decoding"


@dataclass
class Settings:
    n_items: int = 12101        # the amazon14_beauty catalog
    dim: int = 64               # cf_emb64
    m: int = 32                 # codes per item
    k: int = 256                # codewords per code
    n_users: int = 256
    batch: int = 64             # users per decoding batch (the latency unit)
    history: int = 20
    hidden: int = 256           # width of the parallel head
    n_edges: int = 50
    beam_width: int = 32
    steps: int = 3
    sweep_steps: tuple = (1, 2, 3, 5, 8)
    topk: int = 10
    opq_iterations: int = 10
    reference_users: int = 64   # users decoded by the (slow) reference loop
    reps: int = 5
    seed: int = 0

    @classmethod
    def sized(cls, quick: bool, seed: int = 0) -> "Settings":
        if quick:
            return cls(n_items=3000, n_users=64, batch=32, reference_users=16,
                       sweep_steps=(1, 3), reps=3, opq_iterations=3, seed=seed)
        return cls(seed=seed)


def train_opq(x: torch.Tensor, m: int, k: int, iterations: int, seed: int):
    """RPG's tokenizer index, trained on x: faiss ``OPQ{m},IVF1,PQ{m}x8`` with the inner
    product metric (RPG's ``_generate_semantic_id_opq``). Returns (``pq_encode`` keyword
    arguments from :func:`semid_fast.interop.pq_from_faiss`: codebooks, rotation and the IVF1
    centroid as ``center``; the faiss index).

    Shorter than faiss's defaults (``iterations`` alternations of rotation and PQ instead of
    50, on at most 4,096 rows; the final PQ with 15 k-means iterations) so that the default
    run takes a minute; faiss runs single-threaded (see :func:`common.faiss_single_thread`).
    """
    faiss = require_faiss("rpg")
    nbits = k.bit_length() - 1
    index = faiss.index_factory(x.shape[1], f"OPQ{m},IVF1,PQ{m}x{nbits}",
                                faiss.METRIC_INNER_PRODUCT)
    opq = faiss.downcast_VectorTransform(index.chain.at(0))
    opq.niter, opq.niter_pq_0, opq.max_train_points = iterations, 10, 4096
    inner = faiss.ProductQuantizer(x.shape[1], m, nbits)
    inner.cp.min_points_per_centroid = 1  # small catalogs train without warnings
    inner.cp.seed = seed
    opq.pq = inner
    ivfpq = faiss.downcast_index(faiss.extract_index_ivf(index))
    ivfpq.do_polysemous_training = False
    ivfpq.pq.cp.niter, ivfpq.pq.cp.min_points_per_centroid, ivfpq.pq.cp.seed = 15, 1, seed
    with faiss_single_thread():
        index.train(x.numpy())
    opq.pq = None  # a raw pointer to `inner`, which dies with this function
    return interop.pq_from_faiss(index), index


def faiss_codes(index, x: torch.Tensor, m: int, nbits: int) -> torch.Tensor:
    """(N, M) codes of faiss's own encoder (with one inverted list, no list-number bytes)."""
    faiss = require_faiss("rpg")
    packed = index.sa_encode(x.numpy())
    return torch.from_numpy(faiss.unpack_bitstrings(packed, m, nbits).astype(np.int64))


class ParallelHead(torch.nn.Module):
    """RPG-style parallel head: one MLP, M softmaxes over K codes, all positions at once."""

    def __init__(self, dim: int, hidden: int, m: int, k: int):
        super().__init__()
        self.m, self.k = m, k
        self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.GELU(),
                                       torch.nn.Linear(hidden, m * k))

    def forward(self, item_emb: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """history (U, T) item ids, -1 = padding -> (U, M, K) log-probabilities."""
        valid = (history >= 0).unsqueeze(-1).float()
        pooled = (item_emb[history.clamp_min(0)] * valid).sum(1) / valid.sum(1).clamp_min(1)
        return self.mlp(pooled).view(-1, self.m, self.k).log_softmax(-1)


def run(settings: Settings, data: DataSource, device: str = "cpu", echo: bool = True) -> Report:
    s = settings
    report = Report(SYSTEM, TITLE, data, dataclasses.asdict(s), echo=echo)
    emb = item_embeddings(data, "amazon14_beauty", "cf_emb64.npy", s.n_items, s.dim, s.seed,
                          row_offset=1)  # row 0 of cf_emb64 is padding: item i is row i + 1
    users = user_histories(data, s.n_items, s.n_users, s.history, s.seed)
    report.say(f"items: {emb.origin}; users: {users.origin}")
    x = emb.value
    history, _ = users.value

    # 1. OPQ codes: RPG's faiss index, encoded by pq_encode with the index's own arguments.
    started = time.perf_counter()
    tokenizer, index = train_opq(x, s.m, s.k, s.opq_iterations, s.seed)
    report.metrics["opq_train_s"] = time.perf_counter() - started
    on_device = {name: None if t is None else t.to(device) for name, t in tokenizer.items()}
    codebooks = on_device["codebooks"]
    codes = sf.pq_encode(x.to(device), **on_device,
                         code_dtype=torch.uint8 if s.k <= 256 else torch.int16)
    encode_s = median_time(lambda: sf.pq_encode(x.to(device), **on_device), s.reps, device)
    theirs = faiss_codes(index, x, s.m, s.k.bit_length() - 1)
    same_rows = int((codes.cpu().long() == theirs).all(1).sum())
    ours_err = ((sf.pq_decode(codes, **on_device).cpu() - x) ** 2).sum(1)
    faiss_err = ((torch.from_numpy(index.sa_decode(index.sa_encode(x.numpy()))) - x) ** 2).sum(1)
    report.metrics["pq_encode_s"] = encode_s
    report.metrics["codes_equal_to_faiss"] = {"rows": same_rows, "of": s.n_items}
    report.metrics["reconstruction_mse"] = {"semid_fast": float(ours_err.mean()),
                                            "faiss": float(faiss_err.mean())}
    report.say(f"faiss OPQ{s.m},IVF1,PQ{s.m}x8 trained in "
               f"{fmt_time(report.metrics['opq_train_s'])}; pq_encode(x, "
               f"**interop.pq_from_faiss(index)) of {s.n_items} items in {fmt_time(encode_s)}: "
               f"faiss's codes on {same_rows} of {s.n_items} rows; reconstruction MSE "
               f"{float(ours_err.mean()):.5f} (faiss {float(faiss_err.mean()):.5f})")
    # Rows may differ only where two codewords tie in float32 (none on Beauty in our runs).
    report.check("pq_encode gives faiss's codes (RPG's tokenizer) on at least 99.9% of rows",
                 same_rows >= 0.999 * s.n_items, f"{same_rows} of {s.n_items}")
    report.check("pq_encode reconstruction no worse than faiss's encoding (every item)",
                 bool((ours_err <= faiss_err * (1 + 1e-4) + 1e-6).all()),
                 f"worst excess {float((ours_err - faiss_err).max()):.2e}")

    # 2. Per-position log-probabilities from a random parallel head.
    torch.manual_seed(s.seed)
    head = ParallelHead(s.dim, s.hidden, s.m, s.k)
    with torch.no_grad():
        token_scores = head(x, history).to(device)

    # 3. Graph and decoding.
    graph, build_s = timed_once(lambda: sf.ItemGraph.build(
        codes, n_edges=s.n_edges, token_embeddings=codebooks.to(device)))
    report.metrics["graph_build_s"] = build_s
    report.say(f"item graph: {s.n_items} items x {s.n_edges} edges built in {fmt_time(build_s)}")
    # RPG's start: beam_width items per user, uniform with replacement (graph_decode's
    # init="rpg"), drawn once here so that every decoder below starts from the same beams.
    init = torch.randint(0, s.n_items, (s.n_users, s.beam_width),
                         generator=torch.Generator().manual_seed(s.seed))

    def decode(rows, steps):
        return sf.graph_decode(token_scores[rows], codes, graph, beam_width=s.beam_width,
                               steps=steps, k=s.topk, init=init[rows].to(device),
                               return_visited=True)

    everyone = slice(0, s.n_users)
    g_scores, g_ids, visited = decode(everyone, s.steps)
    e_scores, e_ids = sf.holistic_topk(token_scores, codes, s.topk)
    few = slice(0, s.reference_users)
    cpu_scores, cpu_codes = token_scores.cpu(), codes.cpu()
    r_scores, r_ids = ref.graph_decode(cpu_scores[few], cpu_codes, graph.neighbors.cpu(),
                                       s.beam_width, s.steps, s.topk, init=init[few])
    re_scores, re_ids = ref.holistic_topk(cpu_scores, cpu_codes, s.topk)
    report.check(f"graph_decode equals the reference loop ({s.reference_users} users)",
                 torch.equal(g_ids[few].cpu(), r_ids)
                 and torch.equal(g_scores[few].cpu(), r_scores))
    report.check(f"exhaustive holistic_topk equals the reference ({s.n_users} users)",
                 torch.equal(e_ids.cpu(), re_ids) and torch.equal(e_scores.cpu(), re_scores))
    overlap = _overlap(g_ids.cpu(), e_ids.cpu())
    report.check("overlap of graph and exhaustive top-k lies in [0, 1]",
                 0.0 <= overlap <= 1.0, f"{overlap:.3f}")

    # 4. Latency per batch of users, and the steps sweep.
    batch = slice(0, s.batch)
    latency = {
        "graph_decode (semid_fast)": median_time(lambda: decode(batch, s.steps), s.reps, device),
        "graph_decode (reference loop)": timed_once(
            lambda: ref.graph_decode(cpu_scores[batch], cpu_codes, graph.neighbors.cpu(),
                                     s.beam_width, s.steps, s.topk, init=init[batch]))[1],
        "exhaustive holistic_topk (semid_fast)": median_time(
            lambda: sf.holistic_topk(token_scores[batch], codes, s.topk), s.reps, device),
        "exhaustive holistic_topk (reference)": timed_once(
            lambda: ref.holistic_topk(cpu_scores[batch], cpu_codes, s.topk))[1],
    }
    report.metrics["latency_per_batch_s"] = latency
    report.say(f"\nlatency per batch of {s.batch} users (top-{s.topk}, beam {s.beam_width}, "
               f"{s.steps} steps):")
    base = latency["graph_decode (reference loop)"]
    report.table(["method", "median", "vs reference loop"],
                 [[name, fmt_time(t), f"{base / t:.1f}x"] for name, t in latency.items()])

    sweep = []
    for steps in s.sweep_steps:
        _, ids_s, vis_s = decode(everyone, steps)
        sweep.append({"steps": steps, "visited_mean": float(vis_s.float().mean()),
                      "visited_share": float(vis_s.float().mean()) / s.n_items,
                      "overlap": _overlap(ids_s.cpu(), e_ids.cpu()),
                      "latency_s": median_time(lambda: decode(batch, steps), s.reps, device)})
    report.metrics["sweep"] = sweep
    report.metrics["visited_mean"] = float(visited.float().mean())
    report.metrics["overlap_at_k"] = overlap
    report.say(f"\ngraph decoding vs exhaustive top-{s.topk} ({s.n_users} users, catalog "
               f"{s.n_items}):")
    report.table(["steps", "distinct items visited/query", "/ catalog size",
                  f"overlap@{s.topk}", "latency/batch"],
                 [[p["steps"], f"{p['visited_mean']:.0f}", f"{100 * p['visited_share']:.1f}%",
                   f"{p['overlap']:.3f}", fmt_time(p["latency_s"])] for p in sweep])
    report.say("(the head is randomly initialised: its scores are nearly flat, the hardest "
               "case for a graph walk; a trained head concentrates them)")

    def chart(fig):
        left, right = fig.subplots(1, 2)
        names = list(latency)
        left.barh(names, [latency[n] * 1e3 for n in names],
                  color=["tab:blue", "tab:gray", "tab:blue", "tab:gray"])
        left.set_xscale("log")
        left.set_xlabel(f"ms per batch of {s.batch} users (log)")
        left.tick_params(axis="y", labelsize=7)
        left.invert_yaxis()
        right.plot([p["visited_share"] * 100 for p in sweep], [p["overlap"] for p in sweep], "o-")
        for p in sweep:
            right.annotate(f"{p['steps']} steps", (p["visited_share"] * 100, p["overlap"]),
                           fontsize=7)
        right.set_xlabel("distinct items visited per query (% of catalog)")
        right.set_ylabel(f"overlap@{s.topk} with exhaustive")
        right.set_ylim(0, 1.05)

    report.chart = chart
    return report


def _overlap(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over rows of |a_row & b_row| / k (ids -1 are not items)."""
    shared = ((a[:, :, None] == b[:, None, :]) & (a[:, :, None] >= 0)).any(2).sum(1)
    return float(shared.float().mean() / a.shape[1])

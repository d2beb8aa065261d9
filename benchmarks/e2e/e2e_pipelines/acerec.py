"""ACERec-style exact scoring: the exhaustive holistic top-k of long IDs, catalog-wide.

Long-ID recommenders that predict every code position at once (ACERec, RPG) can rank the
whole catalog exactly: an item's score is the mean over its M codes of the per-position
log-probabilities. This pipeline:

1. trains PQ (faiss, ``PQ32x8``) on real item embeddings (``yelp/title_cat_minilm384.npy``,
   20,033 businesses) and encodes them with :func:`semid_fast.pq_encode`;
2. forms per-position log-probabilities for a batch of users: each user is the mean of a few
   catalog items, and position m's distribution is a softmax over the negative squared
   distances of the user's m-th sub-vector to the K codewords (what a model trained to
   predict the codes of the items a user likes would approach);
3. ranks the catalog with :func:`semid_fast.holistic_topk` (``reduce="mean"``) against the
   pure-PyTorch reference, at the real catalog size and on the catalog tiled to 1M items
   (each copy after the first with a few codes per item redrawn, so items stay distinct).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

import semid_fast as sf
from semid_fast.reference import longid as ref

from .common import (DataSource, Report, faiss_single_thread, fmt_time, item_embeddings,
                     median_time, require_faiss, timed_once)

SYSTEM = "acerec"
TITLE = "ACERec-style exact scoring: holistic top-k over the whole catalog"


@dataclass
class Settings:
    n_items: int = 20033         # the yelp catalog
    dim: int = 384
    m: int = 32
    k: int = 256
    users: int = 64              # one batch of users
    items_per_user: int = 8
    temperature: float = 0.05    # of the per-position softmax over codeword distances
    tiled_items: int = 1_000_000
    redrawn_codes: int = 4       # codes redrawn per item in every tiled copy
    topk: int = 100
    reps: int = 5
    seed: int = 0

    @classmethod
    def sized(cls, quick: bool, seed: int = 0) -> "Settings":
        if quick:
            return cls(n_items=4000, users=16, tiled_items=100_000, reps=3, seed=seed)
        return cls(seed=seed)


def train_pq(x: torch.Tensor, m: int, k: int, seed: int) -> torch.Tensor:
    """faiss PQ codebooks (M, K, D/M) trained on x."""
    faiss = require_faiss("acerec")
    pq = faiss.ProductQuantizer(x.shape[1], m, k.bit_length() - 1)
    pq.cp.seed = seed
    pq.cp.min_points_per_centroid = 1  # small --quick catalogs train without faiss warnings
    with faiss_single_thread():
        pq.train(x.numpy())
    return sf.interop.codebooks_from_faiss_pq(pq)


def user_token_scores(x: torch.Tensor, codebooks: torch.Tensor, users: int, per_user: int,
                      temperature: float, seed: int) -> torch.Tensor:
    """(users, M, K) log-probabilities: softmax over -||u_m - c_mk||^2 / temperature."""
    g = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, x.shape[0], (users, per_user), generator=g)
    profile = x[picks].mean(1)
    m, k, sub = codebooks.shape
    parts = profile.view(users, m, 1, sub)
    distances = ((parts - codebooks[None]) ** 2).sum(-1)
    return (-distances / temperature).log_softmax(-1)


def tile_codes(codes: torch.Tensor, n: int, k: int, redrawn: int, seed: int) -> torch.Tensor:
    """The catalog's codes repeated to n rows; in every copy after the first, ``redrawn``
    random positions per item get a random code."""
    g = torch.Generator().manual_seed(seed)
    base, m = codes.shape
    tiled = codes.repeat(-(-n // base), 1)[:n].clone()
    rows = torch.arange(base, n)
    for _ in range(redrawn):
        position = torch.randint(0, m, (rows.numel(),), generator=g)
        value = torch.randint(0, k, (rows.numel(),), generator=g, dtype=torch.int64)
        tiled[rows, position] = value.to(tiled.dtype)
    return tiled


def run(settings: Settings, data: DataSource, device: str = "cpu", echo: bool = True) -> Report:
    s = settings
    report = Report(SYSTEM, TITLE, data, dataclasses.asdict(s), echo=echo)
    emb = item_embeddings(data, "yelp", "title_cat_minilm384.npy", s.n_items, s.dim, s.seed)
    report.say(f"items: {emb.origin}")
    x = emb.value
    codebooks = train_pq(x, s.m, s.k, s.seed)
    code_dtype = torch.uint8 if s.k <= 256 else torch.int16
    codes = sf.pq_encode(x.to(device), codebooks.to(device), code_dtype=code_dtype)
    scores = user_token_scores(x, codebooks, s.users, s.items_per_user, s.temperature, s.seed)
    tiled = tile_codes(codes.cpu(), s.tiled_items, s.k, s.redrawn_codes, s.seed)

    rows = []
    timings = {}
    for label, catalog in (("real", codes.cpu()), ("tiled", tiled)):
        n = catalog.shape[0]
        on_device = catalog.to(device)
        table = scores.to(device)
        ours = sf.holistic_topk(table, on_device, s.topk, reduce="mean")
        expected, slow = timed_once(
            lambda: ref.holistic_topk(scores, catalog, s.topk, reduce="mean"))
        report.check(f"holistic_topk (mean) equals the reference, {label} catalog N={n:,}",
                     torch.equal(ours[1].cpu(), expected[1])
                     and torch.equal(ours[0].cpu(), expected[0]))
        fast = median_time(lambda: sf.holistic_topk(table, on_device, s.topk, reduce="mean"),
                           s.reps, device)
        timings[label] = {"n_items": n, "semid_fast_s": fast, "reference_s": slow,
                          "items_per_s": n * s.users / fast}
        rows.append([f"{n:,}", fmt_time(fast), fmt_time(slow), f"{slow / fast:.1f}x",
                     f"{n * s.users / fast / 1e6:.0f}"])
    report.metrics["timings"] = timings
    report.say(f"\nexact top-{s.topk} for a batch of {s.users} users, M={s.m} K={s.k}, mean "
               "reduction:")
    report.table(["catalog", "semid_fast", "reference", "speed-up", "M item-scores/s"], rows)

    def chart(fig):
        ax = fig.subplots(1, 1)
        labels = [f"N={timings[key]['n_items']:,}" for key in timings]
        width = 0.38
        xs = range(len(labels))
        ax.bar([i - width / 2 for i in xs], [timings[key]["reference_s"] * 1e3 for key in timings],
               width, label="reference (PyTorch)", color="tab:gray")
        ax.bar([i + width / 2 for i in xs], [timings[key]["semid_fast_s"] * 1e3 for key in timings],
               width, label="semid_fast", color="tab:blue")
        ax.set_xticks(list(xs), labels)
        ax.set_yscale("log")
        ax.set_ylabel(f"ms per batch of {s.users} users (log)")
        ax.legend()

    report.chart = chart
    return report

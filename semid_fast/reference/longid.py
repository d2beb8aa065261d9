"""Pure-PyTorch oracle of the ``longid`` family (RPG / ACERec long semantic IDs).

Holistic score of item n for query b: ``score[b, n] = sum_m token_scores[b, m, codes[n, m]]``
(or the mean over m), summed in float32 over m = 0, 1, ..., M-1 in that order, so that the
native backends, which keep the same order, agree bit for bit.

Ranking everywhere: higher score first, ties toward the smaller item id; missing results are
padded with score -inf and item id -1.
"""

from __future__ import annotations

import torch

__all__ = ["holistic_scores", "holistic_topk", "item_graph", "graph_decode"]


def holistic_scores(token_scores: torch.Tensor, codes: torch.Tensor, reduce: str = "sum"):
    """(B, N) float32 scores of every item for every query."""
    table = token_scores.float()
    codes = codes.long()
    scores = table.new_zeros((table.shape[0], codes.shape[0]))
    for m in range(codes.shape[1]):
        scores = scores + table[:, m, codes[:, m]]
    if reduce == "mean":
        # A tensor divisor: torch on CUDA multiplies by the reciprocal of a Python scalar,
        # which is not the IEEE division the kernels do.
        return scores / scores.new_tensor(float(codes.shape[1]))
    return scores


def _rank(scores: torch.Tensor, ids: torch.Tensor, k: int):
    """Top k of each row of (scores, ids), higher score first, ties toward the smaller id.

    ids of -1 mark entries that are not items. torch.topk finds the k-th best score; every
    entry at least that good is then ordered exactly (two stable sorts: by id, then by score).
    """
    b = scores.shape[0]
    out_scores = scores.new_full((b, k), -torch.inf)
    out_ids = ids.new_full((b, k), -1)
    for row in range(b):
        valid = ids[row] >= 0
        s, i = scores[row][valid], ids[row][valid]
        if s.numel() > k:
            keep = s >= s.topk(k).values[-1]
            s, i = s[keep], i[keep]
        by_id = i.argsort(stable=True)
        s, i = s[by_id], i[by_id]
        by_score = s.argsort(descending=True, stable=True)[:k]
        out_scores[row, :len(by_score)] = s[by_score]
        out_ids[row, :len(by_score)] = i[by_score]
    return out_scores, out_ids


def holistic_topk(token_scores, codes, k, reduce="sum", candidates=None, item_mask=None):
    """Top-k items by holistic score: (scores (B, k) float32, item ids (B, k) int64).

    ``candidates`` (B, C) int64 restricts each query to those items (-1 entries are padding,
    duplicates count once); ``item_mask`` (N,) or (B, N) bool marks items to exclude.
    """
    b, n = token_scores.shape[0], codes.shape[0]
    scores = holistic_scores(token_scores, codes, reduce)
    excluded = torch.zeros((b, n), dtype=torch.bool)
    if item_mask is not None:
        excluded = excluded | item_mask.expand(b, n).cpu()
    scores = scores.cpu()
    if candidates is None:
        ids = torch.arange(n).expand(b, n)
        ids = torch.where(excluded, -1, ids)
        return _rank(scores, ids, k)
    cand = candidates.long().cpu()
    valid = cand >= 0
    safe = cand.clamp_min(0)
    cand_scores = scores.gather(1, safe)
    valid &= ~excluded.gather(1, safe)
    # Drop duplicates: keep the first occurrence of each id in a row.
    sorted_ids, order = torch.where(valid, cand, -1).sort(dim=1, stable=True)
    repeat = torch.zeros_like(valid)
    repeat_sorted = torch.zeros_like(valid)
    repeat_sorted[:, 1:] = (sorted_ids[:, 1:] == sorted_ids[:, :-1]) & (sorted_ids[:, 1:] >= 0)
    repeat.scatter_(1, order, repeat_sorted)
    ids = torch.where(valid & ~repeat, cand, -1)
    return _rank(cand_scores, ids, k)


def token_similarity(token_embeddings: torch.Tensor) -> torch.Tensor:
    """RPG's per-codebook token similarity (M, K, K): (1 + cos(E[m, a], E[m, b])) / 2."""
    unit = torch.nn.functional.normalize(token_embeddings.float(), dim=-1)
    return (1.0 + unit @ unit.transpose(1, 2)) / 2.0


def item_graph(codes: torch.Tensor, n_edges: int, token_embeddings=None) -> torch.Tensor:
    """(N, n_edges) int64: each item's most similar items, the item itself included.

    With ``token_embeddings`` (M, K, d): RPG's similarity, the mean over m of the token
    similarity of the two items' codes. Without: the number of equal code positions. Built
    here with a dense (N, N) matrix: this is the oracle for small N only.
    """
    codes = codes.long()
    n, m = codes.shape
    if token_embeddings is None:
        sim = (codes[:, None, :] == codes[None, :, :]).float().sum(-1)
    else:
        table = token_similarity(token_embeddings)
        sim = torch.zeros(n, n)
        for pos in range(m):
            sim = sim + table[pos][codes[:, pos][:, None], codes[:, pos][None, :]]
        sim = sim / m
    return _rank(sim, torch.arange(n).expand(n, n), n_edges)[1]


def graph_decode(token_scores, codes, neighbors, beam_width, steps, k, reduce="sum",
                 init=None, generator=None, return_visited=False):
    """RPG's graph-constrained decoding, one query at a time (a plain loop, for clarity).

    Start from ``init``: a (B, beam_width) tensor of item ids; None or "distinct" for
    beam_width distinct random items per query (``torch.randperm`` with ``generator``);
    "rpg" for RPG's uniform draw with replacement, ``torch.randint(0, N, (B, beam_width),
    generator=generator)``. ``steps`` times, score the beam and all the beam's neighbours
    (no duplicates) and keep the best beam_width. Returns the top k of the final beam and,
    with ``return_visited``, the number of distinct items scored per query over the walk.
    """
    b, n = token_scores.shape[0], codes.shape[0]
    if init == "rpg":
        init = torch.randint(0, n, (b, beam_width), generator=generator)
    elif init is None or isinstance(init, str):
        init = torch.stack([torch.randperm(n, generator=generator)[:beam_width] for _ in range(b)])
    scores_out, ids_out, visited = [], [], []
    for q in range(b):
        beam = init[q].long().cpu()
        beam_scores = None
        seen = set()
        for _ in range(steps):
            # Empty beam slots (-1, when the start repeats items) have no neighbours.
            cand = torch.cat([beam, neighbors[beam[beam >= 0]].reshape(-1).cpu()])[None]
            seen.update(i for i in cand[0].tolist() if i >= 0)
            beam_scores, beam_ids = holistic_topk(token_scores[q:q + 1], codes, beam_width,
                                                  reduce, candidates=cand)
            beam = beam_ids[0]
        scores_out.append(beam_scores[0, :k])
        ids_out.append(beam[:k])
        visited.append(len(seen))
    out = (torch.stack(scores_out), torch.stack(ids_out))
    return (*out, torch.tensor(visited)) if return_visited else out

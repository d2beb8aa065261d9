"""Reference launcher of the ``longid`` family: the oracle of semid_fast.reference.longid, its
result copied into the op's outputs (on the outputs' device)."""

from __future__ import annotations

import torch

from ...reference import longid as ref

__all__ = ["holistic_topk"]


def holistic_topk(token_scores: torch.Tensor, codes: torch.Tensor, k: int, mean: bool,
                  candidates: torch.Tensor | None, item_mask: torch.Tensor | None,
                  scores: torch.Tensor, ids: torch.Tensor,
                  packed: torch.Tensor | None = None) -> None:
    """Top-k items by holistic score into scores (B, k) float32 and ids (B, k) int64.
    ``packed`` (the CPU scan's copy of uint8 codes) is not read here."""
    # Torch indexing would raise IndexError (or wrap a negative code) where the native kernels
    # report a status: the same ValueError whether or not the op checked values first.
    for name, values, bound in (("codes", codes, token_scores.shape[-1]),
                                ("candidates", candidates, codes.shape[0])):
        if values is None or not values.numel():
            continue
        lo, hi = torch.aminmax(values.long())  # long: a uint8 compared with 256 wraps to 0
        if bool((lo < (-1 if name == "candidates" else 0)) | (hi >= bound)):
            raise ValueError(f"a code or item id outside its range was found in {name} "
                             f"(value checks off: semid_fast.config.check_values)")
    got_scores, got_ids = ref.holistic_topk(token_scores, codes, k, "mean" if mean else "sum",
                                            candidates, item_mask)
    scores.copy_(got_scores)
    ids.copy_(got_ids)

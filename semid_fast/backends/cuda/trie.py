"""CUDA backend of the ``trie`` family: the constrained beam step, the pool update of finished
IDs and the fused mask of the transformers logits processor, over ``semid_fast._C_cuda`` on
the current stream. The trie is built on the CPU and copied over (no build launcher here)."""

from __future__ import annotations

import torch

from ... import _native
from ...reference import trie as ref

__all__ = ["beam_step", "children_logsumexp", "pool_update", "constrain_logits"]


def beam_step_refuses(w_in, w_out) -> str | None:
    c = _native._C_cuda
    if w_out > c.TRIE_MAX_BEAMS or w_in > c.TRIE_MAX_BEAMS_IN:
        return (f"its kernel keeps at most {c.TRIE_MAX_BEAMS} beams and reads at most "
                f"{c.TRIE_MAX_BEAMS_IN} per row, got {w_out} and {w_in}")
    return None


def children_logsumexp(log_probs, states, child_offsets, child_codes, max_children, out):
    # No kernel of its own: one gather and a logsumexp, torch ops on the device.
    out.copy_(ref.children_logsumexp(log_probs, states, child_offsets, child_codes,
                                     max_children))


def beam_step(log_probs, beam_scores, states, shift, child_offsets, child_codes, terminal,
              max_children, scores, parents, tokens, next_states):
    b, w_in = beam_scores.shape
    lp = log_probs.float().contiguous()
    sc = beam_scores.float().contiguous()
    st = states.contiguous()
    sh = None if shift is None else shift.float().contiguous()
    _native.call_cuda("constrained_beam_step", _native._C_cuda.trie_beam_step,
                      lp.data_ptr(), sc.data_ptr(), st.data_ptr(),
                      0 if sh is None else sh.data_ptr(), b, w_in, lp.shape[1],
                      child_offsets.data_ptr(), child_codes.data_ptr(), terminal.data_ptr(),
                      terminal.shape[0], scores.shape[1], scores.data_ptr(), parents.data_ptr(),
                      tokens.data_ptr(), next_states.data_ptr(), device=lp.device)


def pool_update_refuses(p, w) -> str | None:
    limit = _native._C_cuda.TRIE_MAX_BEAMS
    if max(p, w) > limit:  # the kernel sorts P + W keys per row in shared memory
        return f"its kernel merges at most {limit} pool entries and beams, got P={p}, W={w}"
    return None


def pool_update(pool_scores, pool_states, scores, states, terminal, out_pool_scores,
                out_pool_states, out_states):
    b, p = pool_scores.shape
    w = scores.shape[1]
    if w == 0:  # nothing to merge and the kernel wants W >= 1: torch ops rank the old pool
        for o, r in zip((out_pool_scores, out_pool_states, out_states),
                        ref.pool_update(pool_scores, pool_states, scores, states, terminal)):
            o.copy_(r)
        return
    ps, pst = pool_scores.float().contiguous(), pool_states.contiguous()
    sc, st = scores.float().contiguous(), states.contiguous()
    _native.call_cuda("constrained_pool_update", _native._C_cuda.trie_pool_update,
                      ps.data_ptr(), pst.data_ptr(), sc.data_ptr(), st.data_ptr(), b, p, w,
                      terminal.data_ptr(), terminal.shape[0], out_pool_scores.data_ptr(),
                      out_pool_states.data_ptr(), out_states.data_ptr(), device=ps.device)


def constrain_logits_refuses(dtype) -> str | None:
    return None if dtype == torch.float32 else \
        f"its kernel takes float32 scores, got {dtype}"


def constrain_logits(input_ids, prev, trie, inverse, token_table, suffix, eos, num_beams,
                     start, dead, scores, out):
    """One fused kernel (two launches: match the previous rows, then walk and mask)."""
    rows, length = input_ids.shape
    match = None if prev is None else \
        torch.empty(rows, dtype=torch.int32, device=input_ids.device)
    _native.call_cuda(
        "SemanticIDLogitsProcessor", _native._C_cuda.sid_constrain_f32,
        input_ids.data_ptr(), rows, input_ids.stride(0), length,
        0 if prev is None else prev.data_ptr(), length - 1,
        0 if match is None else match.data_ptr(), start.data_ptr(), inverse.data_ptr(),
        inverse.shape[1], trie.depth, trie.child_offsets.data_ptr(), trie.child_codes.data_ptr(),
        trie.terminal.data_ptr(), trie.num_states, token_table.data_ptr(), token_table.shape[1],
        suffix.data_ptr(), suffix.shape[0] - 1, eos, num_beams, scores.data_ptr(),
        scores.shape[1], out.data_ptr(), dead.data_ptr(), device=scores.device)

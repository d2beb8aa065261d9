"""C++ backend of the ``trie`` family: the trie build (radix sort + one pass), the constrained
beam step, the children log-sum-exp of ``renormalize=True``, the pool update of finished IDs
and the fused mask of the transformers logits processor, all over ``semid_fast._C``."""

from __future__ import annotations

import torch

from ... import _native

__all__ = ["build", "beam_step", "children_logsumexp", "pool_update", "constrain_logits"]

# Below this many candidate slots (rows x beams x max children) a step takes well under a
# millisecond on one core: waking OpenMP threads would cost more than it saves.
_PARALLEL_MIN_WORK = 1 << 18


def _threads(work: int, rows: int) -> int:
    return max(1, min(_native.n_threads() if work >= _PARALLEL_MIN_WORK else 1, rows))


def build(codes, lengths, vocab_sizes):
    """CSR arrays of the trie of ``codes[i, :lengths[i]]`` (CPU int64 inputs), its edge keys,
    and (order, same_as_previous): the items in an order where equal IDs are adjacent in
    ascending item order, and per position whether the ID equals the previous one."""
    c = _native.cpu()
    n, depth = codes.shape
    vocab = torch.tensor(vocab_sizes, dtype=torch.long)
    order = torch.empty(n, dtype=torch.long)
    sorted_codes = torch.empty((n, depth), dtype=torch.long)
    sorted_lengths = torch.empty(n, dtype=torch.long)
    lcp = torch.empty(n, dtype=torch.long)
    counts = torch.empty(depth, dtype=torch.long)
    status = c.trie_sort(codes.data_ptr(), lengths.data_ptr(), n, depth, vocab.data_ptr(),
                         order.data_ptr(), sorted_codes.data_ptr(), sorted_lengths.data_ptr(),
                         lcp.data_ptr(), counts.data_ptr(), _native.n_threads())
    _native.check_cpu_status(status, "SemanticIDTrie.from_codes")
    level_starts = torch.zeros(depth + 2, dtype=torch.long)
    level_starts[1] = 1
    level_starts[2:] = 1 + counts.cumsum(0)
    n_states = int(level_starts[-1])
    child_offsets = torch.empty(n_states + 1, dtype=torch.long)
    child_codes = torch.empty(n_states - 1, dtype=torch.int32)
    edge_keys = torch.empty(n_states - 1, dtype=torch.long)
    terminal = torch.empty(n_states, dtype=torch.long)
    status = c.trie_fill(sorted_codes.data_ptr(), sorted_lengths.data_ptr(), n, depth,
                         order.data_ptr(), lcp.data_ptr(), level_starts.data_ptr(),
                         max(max(vocab_sizes), 1), child_offsets.data_ptr(),
                         child_codes.data_ptr(), edge_keys.data_ptr(), terminal.data_ptr())
    _native.check_cpu_status(status, "SemanticIDTrie.from_codes")
    same_as_previous = lcp == sorted_lengths  # the whole ID equals the previous item's
    return child_offsets, child_codes, terminal, level_starts, edge_keys, order, same_as_previous


def children_logsumexp(log_probs, states, child_offsets, child_codes, max_children, out):
    r = states.shape[0]
    lp = log_probs.float().contiguous()
    st = states.contiguous()
    threads = _native.n_threads() if r * lp.shape[1] >= _PARALLEL_MIN_WORK else 1
    status = _native.cpu().trie_children_logsumexp(
        lp.data_ptr(), st.data_ptr(), r, lp.shape[1], child_offsets.data_ptr(),
        child_codes.data_ptr(), child_offsets.shape[0] - 1, out.data_ptr(), threads)
    _native.check_cpu_status(status, "constrained_beam_step")


def beam_step(log_probs, beam_scores, states, shift, child_offsets, child_codes, terminal,
              max_children, scores, parents, tokens, next_states):
    b, w_in = beam_scores.shape
    lp = log_probs.float().contiguous()
    sc = beam_scores.float().contiguous()
    st = states.contiguous()
    sh = None if shift is None else shift.float().contiguous()
    status = _native.cpu().trie_beam_step(
        lp.data_ptr(), sc.data_ptr(), st.data_ptr(), 0 if sh is None else sh.data_ptr(), b,
        w_in, lp.shape[1], child_offsets.data_ptr(), child_codes.data_ptr(),
        terminal.data_ptr(), terminal.shape[0], scores.shape[1], scores.data_ptr(),
        parents.data_ptr(), tokens.data_ptr(), next_states.data_ptr(),
        _threads(b * w_in * max_children, b))
    _native.check_cpu_status(status, "constrained_beam_step")


def pool_update(pool_scores, pool_states, scores, states, terminal, out_pool_scores,
                out_pool_states, out_states):
    b, p = pool_scores.shape
    w = scores.shape[1]
    ps, pst = pool_scores.float().contiguous(), pool_states.contiguous()
    sc, st = scores.float().contiguous(), states.contiguous()
    status = _native.cpu().trie_pool_update(
        ps.data_ptr(), pst.data_ptr(), sc.data_ptr(), st.data_ptr(), b, p, w,
        terminal.data_ptr(), terminal.shape[0], out_pool_scores.data_ptr(),
        out_pool_states.data_ptr(), out_states.data_ptr(), _threads(b * (p + w), b))
    _native.check_cpu_status(status, "constrained_pool_update")


def constrain_logits_refuses(dtype) -> str | None:
    return None if dtype == torch.float32 else \
        f"its kernel takes float32 scores, got {dtype}"


def constrain_logits(input_ids, prev, trie, inverse, token_table, suffix, eos, num_beams,
                     start, dead, scores, out):
    """One fused pass: find the start, walk every row, write its masked scores."""
    rows, length = input_ids.shape
    # One OpenMP thread per 256k scores: a thread team costs more than masking a few beams
    # over a small vocabulary.
    threads = max(1, min(_native.n_threads(), scores.numel() >> 18))
    status = _native.cpu().sid_constrain_f32(
        input_ids.data_ptr(), rows, input_ids.stride(0), length,
        0 if prev is None else prev.data_ptr(), length - 1, 0, start.data_ptr(),
        inverse.data_ptr(), inverse.shape[1], trie.depth, trie.child_offsets.data_ptr(),
        trie.child_codes.data_ptr(), trie.terminal.data_ptr(), trie.num_states,
        token_table.data_ptr(), token_table.shape[1], suffix.data_ptr(), suffix.shape[0] - 1,
        eos, num_beams, scores.data_ptr(), scores.shape[1], out.data_ptr(), dead.data_ptr(),
        threads)
    _native.check_cpu_status(status, "SemanticIDLogitsProcessor")

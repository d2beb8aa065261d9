"""Reference backend of the ``trie`` family: launchers over the pure-PyTorch oracle of
``semid_fast.reference.trie``, and the torch path of the transformers logits processor
(fixed-shape torch ops on any device, no host sync)."""

from __future__ import annotations

import math

import torch

from ...reference import trie as ref

__all__ = ["build", "beam_step", "children_logsumexp", "pool_update", "constrain_logits"]


def build(codes, lengths, vocab_sizes):
    """As the cpu launcher: CSR arrays, edge keys (None: the trie derives them) and
    (order, same_as_previous) of the items sorted by the state their ID ends at."""
    child_offsets, child_codes, terminal, level_starts, item_state = ref.build(codes, lengths)
    order = torch.sort(item_state, stable=True).indices
    ended = item_state[order]
    same_as_previous = torch.cat([ended.new_zeros(1, dtype=torch.bool), ended[1:] == ended[:-1]])
    return child_offsets, child_codes, terminal, level_starts, None, order, same_as_previous


def children_logsumexp(log_probs, states, child_offsets, child_codes, max_children, out):
    out.copy_(ref.children_logsumexp(log_probs, states, child_offsets, child_codes,
                                     max_children))


def beam_step(log_probs, beam_scores, states, shift, child_offsets, child_codes, terminal,
              max_children, scores, parents, tokens, next_states):
    got = ref.beam_step(log_probs, beam_scores, states, child_offsets, child_codes, terminal,
                        max_children, scores.shape[1], shift)
    for o, r in zip((scores, parents, tokens, next_states), got):
        o.copy_(r)


def pool_update(pool_scores, pool_states, scores, states, terminal, out_pool_scores,
                out_pool_states, out_states):
    got = ref.pool_update(pool_scores, pool_states, scores, states, terminal)
    for o, r in zip((out_pool_scores, out_pool_states, out_states), got):
        o.copy_(r)


def constrain_logits(input_ids, prev, trie, inverse, token_table, suffix, eos, num_beams,
                     start, dead, scores, out):
    """The masks of the kernels (``semid_fast/trie_hf.h``) with torch ops.

    input_ids (R, T) int64 and prev (R, T - 1) or None (the previous call's rows): the call
    continues the previous generation when every row extends one of prev's rows (R * R * T
    booleans), else its ID starts after input_ids. start (1,) int64: where the current ID
    starts, updated in place; dead (1,) int32: or-ed with "a row had no allowed token".
    inverse (depth, M): token id -> code per level; token_table (depth + 1, K): code -> token
    per level; suffix: the forced suffix then eos (or -1); eos -1 and num_beams 0 for none.
    out gets scores with the disallowed tokens at -inf."""
    rows, length = input_ids.shape
    device = input_ids.device
    n_suffix = suffix.shape[0] - 1
    vocab_map = inverse.shape[1]
    if prev is None:
        start.fill_(length)
    else:
        extends = (input_ids[:, None, :length - 1] == prev[None]).all(dim=2).any(dim=1)
        start.copy_(torch.where(extends.all(), start, length))
    step = length - start  # (1,)

    # Walk: (state, suffix tokens read) per row over the at most depth + n_suffix
    # generated tokens a live row holds.
    longest = min(length, trie.depth + n_suffix)
    columns = (start + torch.arange(longest, device=device)).clamp(max=max(length - 1, 0))
    tokens = input_ids[:, columns] if longest else input_ids[:, :0]
    state = torch.zeros(rows, dtype=torch.int64, device=device)
    read = torch.full_like(state, -1)
    for j in range(longest):
        token = tokens[:, j]
        live = state >= 0
        complete = live & (trie.terminal_item(state) >= 0)
        in_suffix = live & (read >= 0)
        # inside the suffix: the next suffix token, else dead
        expected = suffix[read.clamp(0, n_suffix)]
        suffix_ok = (read < n_suffix) & (token == expected)
        # at a complete ID: the first suffix token enters the suffix
        enters = ~in_suffix & complete & (n_suffix > 0) & (token == suffix[0])
        if j < trie.depth:
            known = (token >= 0) & (token < vocab_map)
            code = torch.where(known, inverse[j, token.clamp(0, vocab_map - 1)], -1)
            child = trie.advance(state, code)
        else:
            child = torch.full_like(state, -1)
        new_state = torch.where(in_suffix, torch.where(suffix_ok, state, -1),
                                torch.where(enters, state, child))
        new_read = torch.where(in_suffix, torch.where(suffix_ok, read + 1, -1),
                               torch.where(enters, 1, -1))
        new_state = torch.where(token == eos, -1, new_state)
        active = j < step
        state = torch.where(active, new_state, state)
        read = torch.where(active, new_read, read)
    state = torch.where(step > trie.depth + n_suffix, -1, state)
    generated = torch.arange(length, device=device) >= start
    finished = ((input_ids == eos) & generated).any(dim=1) if eos >= 0 else \
        torch.zeros(rows, dtype=torch.bool, device=device)
    state = torch.where(finished, -1, state)

    # Allowed tokens as a (rows, V + 1) mask; column V takes the writes of "no token".
    vocab = scores.shape[1]
    in_id = (state >= 0) & (read < 0)
    children = trie.valid_next(torch.where(in_id, state, -1))  # (rows, max_vocab)
    level = token_table[step.clamp(max=trie.depth)]  # (1, k): the step's tokens
    child_tokens = level[:, :children.shape[1]].expand(rows, -1)
    has_token = children & (child_tokens >= 0)
    none = vocab
    after_id = suffix[0]  # the first suffix token, or eos (-1: none) without a suffix
    single = torch.full_like(state, none)
    complete = in_id & (trie.terminal_item(torch.where(in_id, state, -1)) >= 0)
    single = torch.where(complete, after_id, single)
    in_suffix = (state >= 0) & (read >= 0)
    single = torch.where(in_suffix, suffix[read.clamp(0, n_suffix)], single)
    single = torch.where(finished, eos, single)
    single = torch.where(single < 0, none, single)
    dead_rows = (single == none) & ~has_token.any(dim=1)
    if eos >= 0:
        single = torch.where(dead_rows, eos, single)
    dead |= dead_rows.any().int()
    mask = torch.zeros(rows, vocab + 1, dtype=torch.bool, device=device)
    mask.scatter_(1, torch.where(has_token, child_tokens, none), True)
    mask.scatter_(1, single[:, None], True)
    allowed = mask[:, :vocab]
    kept = torch.where(allowed, scores, -math.inf)
    if num_beams:
        # PrefixConstrainedLogitsProcessor's rule: a batch item whose allowed tokens are all
        # -inf in every beam gets score 0 on them.
        unsatisfiable = kept.amax(dim=1).isneginf().view(-1, num_beams).all(dim=1)
        unsatisfiable = unsatisfiable.repeat_interleave(num_beams)[:, None]
        kept = torch.where(unsatisfiable & allowed,
                           torch.zeros((), dtype=kept.dtype, device=device), kept)
    out.copy_(kept)

"""Pure-PyTorch oracle of the trie family: the trie build, one constrained beam step and the
pool update of finished IDs.

Written for clarity. The build numbers states level by level with ``torch.unique`` over
(parent state, code) pairs, which is breadth-first order with children sorted by code. The
beam step is the vectorised sparse-transition step that constrained decoders use (gather
each beam's children, add the beam score, keep the best ``beam_width`` of the row), with
the ranking of ``csrc/include/semid_fast/trie.h``: higher score first, ties toward the
smaller (parent beam, code), a "stop" candidate counting as code -1.
"""

from __future__ import annotations

import torch


def build(codes: torch.Tensor, lengths: torch.Tensor):
    """CSR trie of the IDs ``codes[i, :lengths[i]]``.

    Args:
        codes: (N, L) int64; lengths: (N,) int64 in [1, L].

    Returns:
        child_offsets (S + 1,) int64, child_codes (S - 1,) int32, terminal (S,) int64 (the
        smallest item whose ID ends at the state, else -1), level_starts (L + 2,) int64 and
        item_state (N,) int64 (the state where each item's ID ends).
    """
    n, depth = codes.shape
    item_state = torch.zeros(n, dtype=torch.long)
    at = torch.zeros(n, dtype=torch.long)  # the state each item has reached
    parents, child_codes, level_starts = [], [], [0, 1]
    for d in range(depth):
        going = lengths > d
        pairs = torch.stack([at[going], codes[going, d]], dim=1)
        unique, inverse = torch.unique(pairs, dim=0, return_inverse=True)
        at[going] = level_starts[-1] + inverse
        parents.append(unique[:, 0])
        child_codes.append(unique[:, 1])
        ending = lengths == d + 1
        item_state[ending] = at[ending]
        level_starts.append(level_starts[-1] + unique.shape[0])
    n_states = level_starts[-1]
    parents = torch.cat(parents)
    child_offsets = torch.zeros(n_states + 1, dtype=torch.long)
    child_offsets[1:] = torch.bincount(parents, minlength=n_states).cumsum(0)
    terminal = torch.full((n_states,), -1, dtype=torch.long)
    terminal.scatter_reduce_(0, item_state, torch.arange(n), "amin", include_self=False)
    return (child_offsets, torch.cat(child_codes).int(), terminal,
            torch.tensor(level_starts, dtype=torch.long), item_state)


def beam_step(log_probs, beam_scores, states, child_offsets, child_codes, terminal,
              max_children: int, beam_width: int, shift=None):
    """One constrained beam step (see ``semid_fast.constrained_beam_step``).

    Args:
        log_probs: (B * W, V) float; beam_scores: (B, W) float; states: (B * W,) int64.
        child_offsets, child_codes, terminal: the trie's CSR arrays; max_children: the
            largest number of children of a state.
        shift: optional (B * W,) float32 subtracted from each beam's log-probs before the
            beam score is added (``beam_score + (log_prob - shift)``); None: no shift.

    Returns:
        scores (B, beam_width) float32, parents (B, beam_width) int64 (beam in the row, -1),
        tokens (B, beam_width) int64 (-1: stop or empty), states (B, beam_width) int64.
    """
    b, w_in = beam_scores.shape
    v = log_probs.shape[1]
    n_states = terminal.shape[0]
    st = states.reshape(-1)
    live = (st >= 0) & (st < n_states)
    safe = torch.where(live, st, 0)
    done = ~st  # the state a finished hypothesis ended at
    finished = (st <= -2) & (done < n_states)
    finished &= terminal[torch.where(finished, done, 0)] >= 0
    # Column 0 of each beam: stop (live at a terminal state) or carry on (finished).
    stop = (live & (terminal[safe] >= 0)) | finished
    stop_state = torch.where(live, ~st, st)
    first = child_offsets[safe]
    degree = torch.where(live, child_offsets[safe + 1] - first, 0)
    slot = torch.arange(max_children, device=st.device)
    edge = first[:, None] + slot
    codes = child_codes[edge.clamp(max=max(child_codes.shape[0] - 1, 0))].long()
    child = (slot < degree[:, None]) & (codes < v)
    sigma = beam_scores.float().reshape(-1, 1)
    taken = log_probs.float().gather(1, codes.clamp(max=v - 1))
    if shift is not None:
        taken = taken - shift.float()[:, None]
    child_scores = sigma + taken

    width = w_in * (1 + max_children)  # candidates per row (explicit: B may be 0)
    valid = torch.cat([stop[:, None], child], 1).reshape(b, width)
    scores = torch.cat([sigma, child_scores], 1).reshape(b, width)
    tokens = torch.cat([torch.full_like(st[:, None], -1), codes], 1).reshape(b, width)
    nexts = torch.cat([stop_state[:, None], edge + 1], 1).reshape(b, width)
    # Candidates are laid out in rank order (beam, then stop before codes ascending), so two
    # stable sorts give the ranking: score descending, then valid before invalid.
    order = torch.sort(torch.where(valid, scores, -torch.inf), dim=1, descending=True,
                       stable=True).indices
    order = order.gather(1, torch.sort((~valid).gather(1, order).int(), dim=1,
                                       stable=True).indices)
    keep = order[:, :beam_width]
    ok = valid.gather(1, keep)
    pad = beam_width - keep.shape[1]
    out_scores = torch.where(ok, scores.gather(1, keep), -torch.inf)
    out_parents = torch.where(ok, keep // (1 + max_children), -1)
    out_tokens = torch.where(ok, tokens.gather(1, keep), -1)
    out_states = torch.where(ok, nexts.gather(1, keep), -1)
    if pad > 0:
        out_scores = torch.nn.functional.pad(out_scores, (0, pad), value=-torch.inf)
        out_parents, out_tokens, out_states = (
            torch.nn.functional.pad(t, (0, pad), value=-1)
            for t in (out_parents, out_tokens, out_states))
    return out_scores, out_parents, out_tokens, out_states


def _ranked(valid, scores):
    """Positions of each row's entries: valid first, higher score first, ties toward the
    smaller position (two stable sorts)."""
    order = torch.sort(torch.where(valid, scores, -torch.inf), dim=1, descending=True,
                       stable=True).indices
    return order.gather(1, torch.sort((~valid).gather(1, order).int(), dim=1,
                                      stable=True).indices)


def children_logsumexp(log_probs, states, child_offsets, child_codes, max_children: int):
    """(R,) float32 log-sum-exp of each live beam's log-probs over its children with a code
    below V; 0 where there is none or the result is +-inf (so that a shift by it leaves -inf
    scores -inf), NaN where a child's log-prob is NaN."""
    v = log_probs.shape[1]
    n_states = child_offsets.shape[0] - 1
    st = states.reshape(-1)
    live = (st >= 0) & (st < n_states)
    safe = torch.where(live, st, 0)
    first = child_offsets[safe]
    degree = torch.where(live, child_offsets[safe + 1] - first, 0)
    slot = torch.arange(max_children, device=st.device)
    edge = (first[:, None] + slot).clamp(max=max(child_codes.shape[0] - 1, 0))
    codes = child_codes[edge].long()
    child = (slot < degree[:, None]) & (codes < v)
    taken = log_probs.float().gather(1, codes.clamp(max=v - 1))
    lse = torch.logsumexp(torch.where(child, taken, -torch.inf), dim=1)
    return torch.where(torch.isfinite(lse) | torch.isnan(lse), lse, 0.0)


def pool_update(pool_scores, pool_states, scores, states, terminal):
    """Merges the IDs that completed in a step into a pool of finished IDs.

    Args:
        pool_scores (B, P) float, pool_states (B, P) int64: the pool (terminal states; an
            entry whose state is not a terminal state is empty).
        scores (B, W) float, states (B, W) int64: the beams after a step; a beam whose state
            is a terminal state has completed an ID.
        terminal: the trie's terminal array.

    Returns:
        pool_scores (B, P) float32 and pool_states (B, P) int64: the best P of the old pool
        and the completed beams, higher score first, ties toward the old pool, then toward
        the smaller beam index; empty entries (-inf, -1) last. states (B, W) int64: the
        beams' states with the completed ones emptied (-1).
    """
    n_states = terminal.shape[0]

    def is_id(st):
        ok = (st >= 0) & (st < n_states)
        return ok & (terminal[torch.where(ok, st, 0)] >= 0)

    done = is_id(states)
    valid = torch.cat([is_id(pool_states), done], 1)
    all_scores = torch.cat([pool_scores.float(), scores.float()], 1)
    all_states = torch.cat([pool_states, states], 1)
    keep = _ranked(valid, all_scores)[:, :pool_scores.shape[1]]
    ok = valid.gather(1, keep)
    return (torch.where(ok, all_scores.gather(1, keep), -torch.inf),
            torch.where(ok, all_states.gather(1, keep), -1),
            torch.where(done, -1, states))

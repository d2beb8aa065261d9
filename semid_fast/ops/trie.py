"""Semantic-ID tries: valid-ID constrained decoding with the whole trie on the device.

:class:`SemanticIDTrie` holds the IDs of a catalog as a CSR trie (layout in
``csrc/include/semid_fast/trie.h``): states numbered breadth-first (root 0), the children
of a state consecutive and sorted by code, the next state of edge ``e`` is ``e + 1``.
Fixed-length and variable-length IDs (an ID may be a prefix of another) are both exact.

Decoding (:func:`constrained_beam_step`, :func:`constrained_pool_update`,
:func:`constrained_beam_search`) keeps every beam's trie state on the device; a step is a
fixed-shape op with no host sync.

Beam states (int64): ``0 <= s < num_states`` a live hypothesis at state ``s``; ``-1`` an
empty slot; ``~s`` (``-1 - s``, ``s`` a terminal state) a *finished* hypothesis: an ID that
ended at ``s`` and carries its score unchanged through the remaining steps.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .. import _backends, _checks, _native

__all__ = ["SemanticIDTrie", "dedup_suffix", "constrained_beam_step", "constrained_pool_update",
           "constrained_beam_search"]

_FORMAT = "semid_fast.SemanticIDTrie/1"


def _as_long_tensor(x, name: str, ndim: int, shape_doc: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        if not np.issubdtype(x.dtype, np.integer):
            raise TypeError(f"{name} must hold integers, got numpy dtype {x.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(x).astype(np.int64, copy=False))
    _checks.tensor(x, name, ndim, _checks.INT_DTYPES, shape_doc)
    return x.long()


def _check_codes_lengths(codes, lengths):
    """codes (N, L) and lengths (N,) as int64 tensors on codes' device, lengths checked."""
    codes = _as_long_tensor(codes, "codes", 2, "(N, L)")
    n, depth = codes.shape
    if n == 0:
        raise ValueError("codes is empty: a trie needs at least one item (N >= 1)")
    if depth == 0:
        raise ValueError("codes must have L >= 1 levels, got shape (N, 0)")
    if lengths is None:
        lengths = torch.full((n,), depth, dtype=torch.long, device=codes.device)
    else:
        lengths = _as_long_tensor(lengths, "lengths", 1, "(N,)").to(codes.device)
        if lengths.shape[0] != n:
            raise ValueError(f"lengths must have N={n} entries, got {lengths.shape[0]}")
        lo, hi = int(lengths.min()), int(lengths.max())
        if lo < 1 or hi > depth:
            raise ValueError(f"lengths must lie in [1, L={depth}], found values in [{lo}, {hi}]")
    return codes, lengths


def _level_ranges(codes: torch.Tensor, lengths: torch.Tensor):
    """Per level: (min, max) code over the IDs that reach the level, or None."""
    if bool((lengths == codes.shape[1]).all()):
        lo, hi = codes.amin(0).tolist(), codes.amax(0).tolist()
        return list(zip(lo, hi))
    present = torch.arange(codes.shape[1], device=codes.device) < lengths[:, None]
    big = torch.iinfo(torch.long).max
    lo = torch.where(present, codes, big).amin(0).tolist()
    hi = torch.where(present, codes, -big).amax(0).tolist()
    return [(a, b) if a != big else None for a, b in zip(lo, hi)]


class SemanticIDTrie:
    """The semantic IDs of a catalog as a CSR trie on one device.

    Tensors (all on :attr:`device`): ``child_offsets`` (S + 1,) int64, ``child_codes``
    (S - 1,) int32, ``terminal`` (S,) int64 (item whose full ID ends at the state, the
    smallest item id when several share it; else -1), ``level_starts`` (L + 2,) int64
    (states of level d are ``[level_starts[d], level_starts[d + 1])``) and ``edge_keys``
    (S - 1,) int64 (``parent * max(vocab_sizes) + code`` of each edge, ascending: the
    lookup table of :meth:`advance`).

    Build with :meth:`from_codes` (or :meth:`load`). The constructor takes hand-made arrays
    and checks the whole layout (sizes, dtypes, one device, breadth-first levels, children
    sorted and unique per state, codes in range, items in [-1, N), every leaf terminal;
    ValueError/TypeError otherwise), since the kernels index by it. ``collisions`` lists the groups of
    items that share a full ID (int64 tensors of item ids, ascending; groups ordered by their
    smallest item), see :func:`dedup_suffix`. Sizes: ``num_states`` (S), ``num_items`` (N),
    ``depth`` (L), ``vocab_sizes``, ``max_vocab`` (max(vocab_sizes)) and ``max_children`` (the
    largest fan-out of a state).
    """

    def __init__(self, child_offsets, child_codes, terminal, level_starts, *, num_items: int,
                 vocab_sizes: Sequence[int], collisions=(), max_children: int | None = None,
                 edge_keys: torch.Tensor | None = None):
        # The kernels index by this layout, so a hand-made one is checked in full (O(S + N),
        # on the CPU); from_codes, load and to build through _trusted instead.
        layout = _checked_layout("SemanticIDTrie", (child_offsets, child_codes, terminal,
                                                    level_starts), num_items, vocab_sizes,
                                 collisions, max_children, edge_keys)
        self._setup(*layout)

    @classmethod
    def _trusted(cls, child_offsets, child_codes, terminal, level_starts, *, num_items,
                 vocab_sizes, collisions=(), max_children=None, edge_keys=None):
        """A trie from arrays that are valid by construction (no layout check)."""
        trie = cls.__new__(cls)
        trie._setup(child_offsets, child_codes, terminal, level_starts, num_items, vocab_sizes,
                    collisions, max_children, edge_keys)
        return trie

    def _setup(self, child_offsets, child_codes, terminal, level_starts, num_items, vocab_sizes,
               collisions, max_children, edge_keys):
        self.child_offsets = child_offsets
        self.child_codes = child_codes
        self.terminal = terminal
        self.level_starts = level_starts
        self.num_items = int(num_items)
        self.vocab_sizes = tuple(int(v) for v in vocab_sizes)
        self.depth = len(self.vocab_sizes)
        self.num_states = int(terminal.shape[0])
        self.collisions = list(collisions)
        self.max_vocab = max(max(self.vocab_sizes), 1)
        degree = child_offsets[1:] - child_offsets[:-1]
        self.max_children = int(degree.max()) if max_children is None else int(max_children)
        if edge_keys is None:
            edge_keys = _edge_keys(child_offsets, child_codes, self.max_vocab)
        self.edge_keys = edge_keys

    # ---- build ---------------------------------------------------------------------------

    @classmethod
    def from_codes(cls, codes, *, lengths=None, vocab_sizes: Sequence[int] | None = None,
                   backend: str = "auto") -> "SemanticIDTrie":
        """Builds the trie of ``codes[i, :lengths[i]]`` for every item i.

        Args:
            codes: (N, L) integer tensor or numpy array; entries past an ID's length are
                ignored. The trie lives on codes' device (built on the CPU).
            lengths: (N,) ints in [1, L] for variable-length IDs (an ID may be a prefix of
                another); None: every ID has length L.
            vocab_sizes: L ints, the codes of level d lie in [0, vocab_sizes[d]); None: the
                largest code of each level + 1.
            backend: "auto"/"cpu" (C++ radix sort + one pass) or "reference" (torch.unique
                per level).

        Items that share a full ID are reported by a warning and kept in ``collisions``;
        their ID resolves to the smallest item id.
        """
        codes, lengths = _check_codes_lengths(codes, lengths)
        device = codes.device
        codes, lengths = codes.cpu().contiguous(), lengths.cpu().contiguous()
        n, depth = codes.shape
        ranges = _level_ranges(codes, lengths)
        if vocab_sizes is None:
            vocab_sizes = [0 if r is None else r[1] + 1 for r in ranges]
            for d, r in enumerate(ranges):
                if r is not None and r[0] < 0:
                    raise ValueError(f"codes must be >= 0, found {r[0]} at level {d}")
        else:
            vocab_sizes = [_checks.positive_int(int(v) if isinstance(v, np.integer) else v,
                                                "vocab_sizes[]") for v in vocab_sizes]
            if len(vocab_sizes) != depth:
                raise ValueError(f"vocab_sizes must have L={depth} entries, got {len(vocab_sizes)}")
            for d, r in enumerate(ranges):
                if r is not None and (r[0] < 0 or r[1] >= vocab_sizes[d]):
                    raise ValueError(f"codes of level {d} must lie in [0, {vocab_sizes[d]}), "
                                     f"found values in [{r[0]}, {r[1]}]")
        if max(vocab_sizes) > 2**31:
            raise ValueError(f"vocab_sizes must be <= 2**31 (codes are stored as int32), "
                             f"got {max(vocab_sizes)}")
        if (1 + n * depth) * max(max(vocab_sizes), 1) >= 2**63:
            raise ValueError("too many IDs for this vocabulary: (1 + N * L) * max(vocab_sizes) "
                             "must be < 2**63 (the edge lookup keys are int64)")
        name = _backends.choose(backend, torch.device("cpu"), "trie", "build",
                                op="SemanticIDTrie.from_codes")
        *arrays, order, same_as_previous = _backends.launcher(name, "trie", "build")(
            codes, lengths, vocab_sizes)
        child_offsets, child_codes, terminal, level_starts, edge_keys = arrays
        collisions = _collision_groups(order, same_as_previous)
        if collisions:
            count = sum(len(g) for g in collisions)
            warnings.warn(f"SemanticIDTrie.from_codes: {count} items share a full ID with "
                          f"another item ({len(collisions)} groups); each such ID resolves to "
                          "the smallest item id (see trie.collisions and semid_fast.dedup_suffix)",
                          stacklevel=2)
        trie = cls._trusted(child_offsets, child_codes, terminal, level_starts, num_items=n,
                            vocab_sizes=vocab_sizes, collisions=collisions, edge_keys=edge_keys)
        return trie if device.type == "cpu" else trie.to(device)

    @classmethod
    def from_index_json(cls, path, *, vocab_sizes: Sequence[int] | None = None,
                        backend: str = "auto") -> "SemanticIDTrie":
        """The trie of an LC-Rec / LETTER / MiniOneRec ``sid.index.json``
        (``{"<item>": ["<a_12>", "<b_7>", ...]}``, read by
        :func:`semid_fast.sid_files.load_index_json`).

        Item ids of the trie are the file's item ids, which must be 0 .. N-1 (the row
        numbers of the catalog, as in those projects); otherwise load the table yourself and
        build with :meth:`from_codes`, mapping rows back through ``table.item_ids``.
        """
        from ..sid_files import load_index_json

        table = load_index_json(path)
        if not torch.equal(table.item_ids, torch.arange(table.num_items)):
            raise ValueError(f"{path}: item ids must be 0 .. {table.num_items - 1} to be trie "
                             "item ids; use SemanticIDTrie.from_codes(table.codes, "
                             "lengths=table.lengths) and map rows through table.item_ids")
        return cls.from_codes(table.codes, lengths=table.lengths, vocab_sizes=vocab_sizes,
                              backend=backend)

    # ---- device, size, persistence -------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.terminal.device

    def _tensors(self):
        return (self.child_offsets, self.child_codes, self.terminal, self.level_starts)

    def to(self, device) -> "SemanticIDTrie":
        """A copy of the trie on ``device``."""
        return SemanticIDTrie._trusted(*(t.to(device) for t in self._tensors()),
                                       num_items=self.num_items, vocab_sizes=self.vocab_sizes,
                                       collisions=self.collisions,
                                       max_children=self.max_children,
                                       edge_keys=self.edge_keys.to(device))

    @property
    def nbytes(self) -> int:
        """Bytes of the device tensors (CSR arrays and the edge lookup keys)."""
        return sum(t.nbytes for t in (*self._tensors(), self.edge_keys))

    def save(self, path) -> None:
        """Writes the trie (CSR tensors, sizes, collision groups) to ``path`` with
        torch.save; read it back with :meth:`load`. The file is written beside ``path`` and
        renamed over it, so a reader never sees half a file."""
        path = Path(path)
        data = {"format": _FORMAT, "tensors": [t.cpu() for t in self._tensors()],
                "num_items": self.num_items, "vocab_sizes": list(self.vocab_sizes),
                "collisions": [g.cpu() for g in self.collisions],
                "max_children": self.max_children}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(data, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path, map_location="cpu") -> "SemanticIDTrie":
        """A trie written by :meth:`save`, on ``map_location``. The file's layout and
        metadata are checked in O(S + N): a truncated, corrupt or hand-edited file raises
        ValueError naming it (a missing or unreadable one raises the OSError of open)."""
        path = Path(path)
        with open(path, "rb") as f:  # OSError for a missing / unreadable path, as open's
            try:
                data = torch.load(f, map_location="cpu", weights_only=True)
            except Exception as e:  # torch reports a damaged archive by many exception types
                raise ValueError(f"{path} is not a saved SemanticIDTrie "
                                 f"({type(e).__name__}: {str(e)[:200]})") from None
        keys = ("tensors", "num_items", "vocab_sizes", "collisions")
        if not isinstance(data, dict) or data.get("format") != _FORMAT or \
                any(k not in data for k in keys):
            raise ValueError(f"{path} is not a saved SemanticIDTrie ({_FORMAT})")
        # max_children is recomputed, not trusted: the beam step's rank bound relies on it.
        layout = _checked_layout(str(path), data["tensors"], data["num_items"],
                                 data["vocab_sizes"], data["collisions"], None, None)
        trie = cls.__new__(cls)
        trie._setup(*layout)
        return trie.to(map_location)

    def __repr__(self) -> str:
        return (f"SemanticIDTrie(num_items={self.num_items}, depth={self.depth}, "
                f"num_states={self.num_states}, vocab_sizes={self.vocab_sizes}, "
                f"collisions={len(self.collisions)}, device={self.device})")

    # ---- walking (all fixed-shape, no host sync) -------------------------------------------

    def _states(self, states, name="states") -> torch.Tensor:
        _checks.tensor(states, name, 1, (torch.int32, torch.int64), "(R,)")
        if states.device != self.device:
            raise ValueError(f"{name} is on {states.device} but the trie is on {self.device}")
        return states.long()

    def advance(self, states: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """(R,) states, (R,) codes -> (R,) int64 next states; -1 where the code is not a
        child of the state or the state is not live (-1, finished or out of range)."""
        states = self._states(states)
        codes = self._states(codes, "codes")
        if codes.shape != states.shape:
            raise ValueError(f"codes must have shape {tuple(states.shape)}, "
                             f"got {tuple(codes.shape)}")
        if self.edge_keys.numel() == 0:
            return torch.full_like(states, -1)
        ok = (states >= 0) & (states < self.num_states) & (codes >= 0) & (codes < self.max_vocab)
        key = (states.clamp(0, self.num_states - 1) * self.max_vocab
               + codes.clamp(0, self.max_vocab - 1))
        pos = torch.searchsorted(self.edge_keys, key).clamp(max=self.edge_keys.shape[0] - 1)
        return torch.where(ok & (self.edge_keys[pos] == key), pos + 1, -1)

    def walk(self, prefix_codes: torch.Tensor) -> torch.Tensor:
        """(R, t) int64 codes (level j in column j), 0 <= t <= depth -> (R,) int64 states
        reached from the root; -1 where the prefix is not in the trie."""
        _checks.tensor(prefix_codes, "prefix_codes", 2, (torch.int32, torch.int64), "(R, t)")
        if prefix_codes.device != self.device:
            raise ValueError(f"prefix_codes is on {prefix_codes.device} but the trie is on "
                             f"{self.device}")
        if prefix_codes.shape[1] > self.depth:
            raise ValueError(f"prefix_codes must have at most depth={self.depth} columns, "
                             f"got {prefix_codes.shape[1]}")
        state = torch.zeros(prefix_codes.shape[0], dtype=torch.long, device=self.device)
        for j in range(prefix_codes.shape[1]):
            state = self.advance(state, prefix_codes[:, j])
        return state

    def valid_next(self, states: torch.Tensor) -> torch.Tensor:
        """(R,) int64 states -> (R, max(vocab_sizes)) bool, True where the code is a child of
        the state (all False for states without children, -1 and finished states)."""
        states = self._states(states)
        r = states.shape[0]
        live = (states >= 0) & (states < self.num_states)
        safe = torch.where(live, states, 0)
        first = self.child_offsets[safe]
        degree = torch.where(live, self.child_offsets[safe + 1] - first, 0)
        slot = torch.arange(self.max_children, device=self.device)
        edge = (first[:, None] + slot).clamp(max=max(self.child_codes.shape[0] - 1, 0))
        column = torch.where(slot < degree[:, None], self.child_codes[edge].long(), self.max_vocab)
        mask = torch.zeros(r, self.max_vocab + 1, dtype=torch.bool, device=self.device)
        mask.scatter_(1, column, True)
        return mask[:, :self.max_vocab]

    def state_level(self, states: torch.Tensor) -> torch.Tensor:
        """(R,) -> (R,) int64 codes consumed to reach each state (0 for the root, -1 for
        states outside the trie)."""
        states = self._states(states)
        live = (states >= 0) & (states < self.num_states)
        level = torch.searchsorted(self.level_starts, states, right=True) - 1
        return torch.where(live, level, -1)

    def terminal_item(self, states: torch.Tensor) -> torch.Tensor:
        """(R,) -> (R,) int64 item id whose full ID ends at the state, else -1. A finished
        beam state ``~s`` resolves like ``s``."""
        states = self._states(states)
        plain = torch.where(states <= -2, ~states, states)
        live = (plain >= 0) & (plain < self.num_states)
        return torch.where(live, self.terminal[torch.where(live, plain, 0)], -1)

    def item_ids(self, codes: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """(R, t) codes, t <= depth, with optional (R,) lengths (None: t) -> (R,) int64 item
        ids; -1 where the codes are not a full ID of the catalog."""
        codes = _as_long_tensor(codes, "codes", 2, "(R, t)").to(self.device)
        if codes.shape[1] > self.depth:
            raise ValueError(f"codes must have at most depth={self.depth} columns, "
                             f"got {codes.shape[1]}")
        state = torch.zeros(codes.shape[0], dtype=torch.long, device=self.device)
        if lengths is None:
            state = self.walk(codes)
        else:
            lengths = _as_long_tensor(lengths, "lengths", 1, "(R,)").to(self.device)
            if lengths.shape[0] != codes.shape[0]:
                raise ValueError(f"lengths must have R={codes.shape[0]} entries, "
                                 f"got {lengths.shape[0]}")
            for j in range(codes.shape[1]):
                state = torch.where(j < lengths, self.advance(state, codes[:, j]), state)
            state = torch.where((lengths >= 1) & (lengths <= codes.shape[1]), state, -1)
        return self.terminal_item(state)


def _edge_keys(child_offsets, child_codes, max_vocab: int) -> torch.Tensor:
    """``parent * max_vocab + code`` of every edge (ascending in a valid trie)."""
    s = child_offsets.shape[0] - 1
    parents = torch.repeat_interleave(torch.arange(s, device=child_offsets.device),
                                      child_offsets[1:] - child_offsets[:-1], output_size=s - 1)
    return parents * max_vocab + child_codes.long()


def _checked_layout(source: str, tensors, num_items, vocab_sizes, collisions, max_children,
                    edge_keys):
    """The arguments of SemanticIDTrie._setup from untrusted ones, after checking every
    invariant the kernels index by, in O(S + N) on the CPU (a corrupt file or hand-made
    layout must raise here, not read out of bounds in a step). ``source`` names the file or
    the constructor in the errors."""
    def bad(what):
        return ValueError(f"{source}: not a valid SemanticIDTrie: {what}")

    def is_int(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))

    if not isinstance(tensors, (list, tuple)) or len(tensors) != 4 or \
            not all(isinstance(t, torch.Tensor) and t.dim() == 1 for t in tensors):
        raise bad("expected 4 one-dimensional tensors (child_offsets, child_codes, terminal, "
                  "level_starts)")
    device = tensors[2].device
    if any(t.device != device for t in tensors):
        raise bad(f"the tensors are on several devices: {[str(t.device) for t in tensors]}")
    dtypes = (torch.int64, torch.int32, torch.int64, torch.int64)
    if any(t.dtype != d for t, d in zip(tensors, dtypes)):
        raise bad(f"dtypes must be {dtypes}, got {tuple(t.dtype for t in tensors)}")
    if not is_int(num_items) or not 1 <= num_items < 2**62:
        raise bad(f"num_items must be an int in [1, 2**62), got {num_items!r}")
    num_items = int(num_items)
    if isinstance(vocab_sizes, (str, bytes)) or not isinstance(vocab_sizes, Sequence) or \
            not vocab_sizes or not all(is_int(v) and 0 <= v <= 2**31 for v in vocab_sizes):
        raise bad(f"vocab_sizes must be a non-empty list of ints in [0, 2**31], "
                  f"got {vocab_sizes!r:.200}")
    vocab = [int(v) for v in vocab_sizes]
    depth, max_vocab = len(vocab), max(max(vocab), 1)
    child_offsets, child_codes, terminal, level_starts = (
        t.detach().cpu().contiguous() for t in tensors)
    s = terminal.shape[0]
    if s < 2 or child_offsets.shape[0] != s + 1 or child_codes.shape[0] != s - 1 or \
            level_starts.shape[0] != depth + 2:
        raise bad(f"array sizes do not match: child_offsets (S+1,), child_codes (S-1,), "
                  f"terminal (S,), level_starts (L+2,) with S={s}, L={depth}; got "
                  f"{[tuple(t.shape) for t in tensors]}")
    if s * max_vocab >= 2**63:
        raise bad("num_states * max(vocab_sizes) must be < 2**63 (the edge lookup keys)")
    degree = child_offsets[1:] - child_offsets[:-1]
    if child_offsets[0] != 0 or child_offsets[-1] != s - 1 or bool((degree < 0).any()):
        raise bad("child_offsets must rise from 0 to S - 1")
    if level_starts[0] != 0 or level_starts[1] != 1 or level_starts[-1] != s or \
            bool((level_starts[1:] < level_starts[:-1]).any()):
        raise bad("level_starts must rise from 0, 1 to S")
    # Breadth-first: the children of the states of level d (edge e leads to state e + 1) are
    # exactly the states of level d + 1, and the last level has no children.
    if not torch.equal(child_offsets[level_starts[:-1]] + 1, level_starts[1:]):
        raise bad("level_starts do not match child_offsets (the children of level d must be "
                  "the states of level d + 1)")
    state_level = torch.repeat_interleave(torch.arange(depth + 1), level_starts.diff(),
                                          output_size=s)
    edge_vocab = torch.tensor(vocab)[state_level[1:] - 1]
    if bool(((child_codes < 0) | (child_codes.long() >= edge_vocab)).any()):
        raise bad("child codes outside [0, vocab_sizes[level])")
    parents = torch.repeat_interleave(torch.arange(s), degree, output_size=s - 1)
    siblings = parents[1:] == parents[:-1]
    if bool((siblings & (child_codes[1:] <= child_codes[:-1])).any()):
        raise bad("the children of a state must be sorted by code and unique")
    if bool(((terminal < -1) | (terminal >= num_items)).any()):
        raise bad(f"terminal items outside [-1, {num_items})")
    if terminal[0] != -1 or bool(((degree == 0) & (terminal < 0)).any()):
        raise bad("the root must not be terminal and every leaf state must be")
    ends = terminal[terminal >= 0]
    if ends.numel() and int(torch.bincount(ends).max()) > 1:
        raise bad("an item ends at two states")
    if isinstance(collisions, (str, bytes, torch.Tensor)) or \
            not isinstance(collisions, Sequence):
        raise bad(f"collisions must be a list of int64 tensors, got {type(collisions).__name__}")
    for group in collisions:
        if not isinstance(group, torch.Tensor) or group.dtype != torch.int64 or \
                group.dim() != 1 or group.shape[0] < 2:
            raise bad("each collision group must be a 1-D int64 tensor of >= 2 item ids")
        g = group.cpu()
        if int(g[0]) < 0 or int(g[-1]) >= num_items or bool((g[1:] <= g[:-1]).any()):
            raise bad(f"a collision group must hold ascending item ids in [0, {num_items})")
    computed = int(degree.max())
    if max_children is not None and (not is_int(max_children) or max_children != computed):
        raise bad(f"max_children must be the largest fan-out, {computed}, got {max_children!r}")
    keys = _edge_keys(child_offsets, child_codes, max_vocab)
    if edge_keys is not None:
        if not isinstance(edge_keys, torch.Tensor) or edge_keys.device != device or \
                not torch.equal(edge_keys.cpu(), keys):
            raise bad("edge_keys must be parent * max(vocab_sizes) + code of every edge")
        keys = edge_keys.cpu()
    moved = (t.to(device) for t in (child_offsets, child_codes, terminal, level_starts))
    return (*moved, num_items, vocab, [g for g in collisions], computed, keys.to(device))


def _collision_groups(order, same_as_previous) -> list[torch.Tensor]:
    """Groups of items with equal full IDs (each ascending, ordered by their smallest item),
    from the items in an order where equal IDs are adjacent in ascending item order and a
    flag per position: same ID as the previous position."""
    if not bool(same_as_previous.any()):
        return []
    member = same_as_previous.clone()
    member[:-1] |= same_as_previous[1:]
    positions = torch.nonzero(member)[:, 0]
    group = torch.cumsum(member & ~same_as_previous, 0)[positions]
    sizes = torch.unique_consecutive(group, return_counts=True)[1]
    groups = torch.split(order[positions], sizes.tolist())
    return sorted(groups, key=lambda g: int(g[0]))  # by smallest item id, whatever the build


def dedup_suffix(codes, lengths=None, *, scheme: str = "same", order=None):
    """Appends one disambiguation code to every ID so that every item gets a unique ID.

    Within each group of items that share a full ID, the items are numbered 0, 1, 2, ... in
    ``order`` (a unique ID is a group of one: 0), and that number becomes the new last code:

    - ``scheme="same"`` (default): the number itself, in the same code space as the level it
      lands on (the usual TIGER / LC-Rec-style extra level). With variable-length IDs an ID
      may then still be a prefix of another, or become one.
    - ``scheme="separate"``: the number plus ``offset = 1 + the largest code of any ID`` (a
      range no ID's code uses), as the variable-length semantic IDs paper does
      (KhrylchenkoKirill/varlen_semantic_ids, ``scripts/train_seqrec.py``,
      ``append_unique_token``: one token space for all levels, number within the group of
      equal IDs by popularity). Then no ID is a prefix of another, which
      ``constrained_beam_search(finished="pool")`` needs to reach every item.

    Args:
        codes: (N, L) integer tensor or numpy array; lengths: optional (N,) in [1, L].
        scheme: "same" or "separate" (above).
        order: optional (N,) permutation of the item ids (sequence, numpy array or tensor),
            most popular first: the numbering
            within each group follows it. None: item id order. (The paper orders by the
            items' training-interaction count, descending, ties toward the larger item id.)

    Returns:
        (codes' (N, L + 1) int64, lengths' (N,) int64): each ID gets its new code right after
        its end and lengths' = lengths + 1. Positions past an ID's end are copied unchanged
        (the appended column holds 0 there).
    """
    codes, lengths = _check_codes_lengths(codes, lengths)
    if scheme not in ("same", "separate"):
        raise ValueError(f"scheme must be 'same' or 'separate', got {scheme!r}")
    n, depth = codes.shape
    if order is None:
        by_priority = torch.arange(n, device=codes.device)
    else:
        if isinstance(order, (list, tuple, range)):
            order = np.asarray(order, dtype=np.int64)
        by_priority = _as_long_tensor(order, "order", 1, "(N,)").to(codes.device)
        if by_priority.shape[0] != n or not torch.equal(
                torch.sort(by_priority).values, torch.arange(n, device=codes.device)):
            raise ValueError(f"order must be a permutation of the N={n} item ids 0 .. {n - 1}")
    present = torch.arange(depth, device=codes.device) < lengths[:, None]
    ids = torch.where(present, codes, -1)  # equal IDs give equal rows
    group = torch.unique(torch.cat([ids, lengths[:, None]], 1), dim=0, return_inverse=True)[1]
    # Items by group, and within a group in priority order (a stable sort of that order).
    perm = by_priority[torch.sort(group[by_priority], stable=True).indices]
    sorted_groups = group[perm]
    starts = torch.searchsorted(sorted_groups, sorted_groups)  # first position of each group
    suffix = torch.empty(n, dtype=torch.long, device=codes.device)
    suffix[perm] = torch.arange(n, device=codes.device) - starts
    if scheme == "separate":
        suffix += ids.amax() + 1
    out = torch.cat([codes, torch.zeros(n, 1, dtype=torch.long, device=codes.device)], 1)
    out.scatter_(1, lengths[:, None], suffix[:, None])
    return out, lengths + 1


# ---- beam step ----------------------------------------------------------------------------

def _direct(*tensors: torch.Tensor) -> bool:
    """Whether a decode step may run its op's body as a Python call. The torch.library
    dispatcher costs tens of microseconds per call, several times the kernel of a small step,
    but tracing needs the registered op: torch.compile and export, a dispatch mode (fake
    tensors, make_fx) and tensor subclasses go through it."""
    return (not torch.compiler.is_compiling() and torch._C._len_torch_dispatch_stack() == 0
            and all(type(t) is torch.Tensor for t in tensors))


def _beam_step(log_probs: torch.Tensor, beam_scores: torch.Tensor, states: torch.Tensor,
               child_offsets: torch.Tensor, child_codes: torch.Tensor, terminal: torch.Tensor,
               max_children: int, beam_width: int, renormalize: bool,
               backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    b, device = beam_scores.shape[0], beam_scores.device
    with _checks.allocating(f"the ({b}, beam_width={beam_width}) beam outputs"):
        out = (torch.empty((b, beam_width), dtype=torch.float32, device=device),
               *(torch.empty((b, beam_width), dtype=torch.long, device=device)
                 for _ in range(3)))
    # The renormalising shift (per beam, the log-sum-exp over its valid children) is an
    # input of every backend's step.
    shift = None
    if renormalize:
        shift = torch.empty(states.shape[0], dtype=torch.float32, device=device)
        _backends.launcher(backend, "trie", "children_logsumexp")(
            log_probs, states, child_offsets, child_codes, max_children, shift)
    _backends.launcher(backend, "trie", "beam_step")(
        log_probs, beam_scores, states, shift, child_offsets, child_codes, terminal,
        max_children, *out)
    return out


_beam_step_op = torch.library.custom_op("semid_fast::trie_beam_step", mutates_args=())(_beam_step)


@_beam_step_op.register_fake
def _(log_probs, beam_scores, states, child_offsets, child_codes, terminal, max_children,
      beam_width, renormalize, backend):
    b = beam_scores.shape[0]
    return (beam_scores.new_empty((b, beam_width), dtype=torch.float32),
            *(beam_scores.new_empty((b, beam_width), dtype=torch.long) for _ in range(3)))


def _pool_update(pool_scores: torch.Tensor, pool_states: torch.Tensor, scores: torch.Tensor,
                 states: torch.Tensor, terminal: torch.Tensor,
                 backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    out = (torch.empty(pool_scores.shape, dtype=torch.float32, device=pool_scores.device),
           torch.empty_like(pool_states, memory_format=torch.contiguous_format),
           torch.empty_like(states, memory_format=torch.contiguous_format))
    _backends.launcher(backend, "trie", "pool_update")(pool_scores, pool_states, scores,
                                                       states, terminal, *out)
    return out


_pool_update_op = torch.library.custom_op("semid_fast::trie_pool_update",
                                          mutates_args=())(_pool_update)


@_pool_update_op.register_fake
def _(pool_scores, pool_states, scores, states, terminal, backend):
    return (pool_scores.new_empty(pool_scores.shape, dtype=torch.float32),
            pool_states.new_empty(pool_states.shape), states.new_empty(states.shape))


def _check_step(log_probs, beam_scores, states, trie, beam_width):
    if not isinstance(trie, SemanticIDTrie):
        raise TypeError(f"trie must be a SemanticIDTrie, got {type(trie).__name__}")
    _checks.tensor(beam_scores, "beam_scores", 2, _checks.FLOAT_DTYPES, "(B, W)")
    b, w_in = beam_scores.shape
    if w_in == 0:
        raise ValueError("beam_scores must have W >= 1 beams per row, got shape "
                         f"{tuple(beam_scores.shape)}")
    _checks.tensor(log_probs, "log_probs", 2, _checks.FLOAT_DTYPES, "(B * W, V)")
    if not isinstance(states, torch.Tensor):
        raise TypeError(f"states must be a torch.Tensor of shape ({b * w_in},), "
                        f"got {type(states).__name__}")
    if states.dtype != torch.int64:
        raise TypeError(f"states must have dtype int64, got {states.dtype}")
    states = states.reshape(-1)
    _checks.positive_int(beam_width, "beam_width")
    device = _checks.same_device("constrained_beam_step", log_probs=log_probs,
                                 beam_scores=beam_scores, states=states,
                                 trie=trie.terminal)
    if log_probs.shape[0] != b * w_in or states.shape[0] != b * w_in:
        raise ValueError(f"log_probs must have B*W={b * w_in} rows and states B*W entries "
                         f"(beam_scores is ({b}, {w_in})), got log_probs "
                         f"{tuple(log_probs.shape)} and states {tuple(states.shape)}")
    if log_probs.shape[1] < trie.max_vocab:
        raise ValueError(f"log_probs must have V >= max(vocab_sizes)={trie.max_vocab} "
                         f"columns (the first ones are the codes), got {log_probs.shape[1]}")
    if w_in * (trie.max_children + 1) > _native.cpu().TRIE_MAX_CANDIDATES:
        raise ValueError(f"constrained_beam_step: W * (max children + 1) must be < 2**32, "
                         f"got W={w_in}, max children={trie.max_children}")
    if _checks.scanning():
        for name, t in (("log_probs", log_probs), ("beam_scores", beam_scores)):
            # -inf is a legitimate log-probability (an impossible token); NaN and +inf are not.
            if not _checks.below_inf(t):
                raise ValueError(f"{name} contains NaN or +inf")
        if states.numel():
            lo, hi = _checks.min_max(states)
            if hi >= trie.num_states or lo < -trie.num_states:
                raise ValueError(
                    f"states must be trie states in [0, {trie.num_states}), -1, or finished "
                    f"states ~s; found values in [{lo}, {hi}] (states of another trie?)")
    return device, states


def constrained_beam_step(log_probs: torch.Tensor, beam_scores: torch.Tensor,
                          states: torch.Tensor, trie: SemanticIDTrie, beam_width: int, *,
                          renormalize: bool = False, backend: str = "auto"):
    """One constrained beam-search step for a batch: only IDs of the catalog survive.

    Every beam j of batch row b offers candidates: each child code c of its state (score
    ``beam_scores[b, j] + log_probs[b * W + j, c]``), and, when its state is terminal (an ID
    ends there), a *stop* candidate: the ID is complete, the score unchanged, no token, next
    state ``~state`` (finished). A finished beam (state ``~s``) offers only itself, score
    unchanged, so a finished hypothesis keeps a slot and competes on its score in every
    later step. The best ``beam_width`` candidates of the row win: higher score first, ties
    toward the smaller (parent, code), stop counting as code -1. Rows with fewer candidates
    are padded with score -inf, parent -1, token -1, state -1. With ``renormalize=True`` a
    child's log-prob is first log-softmaxed over the valid children of its beam (codes below
    V; ``log_prob - logsumexp(log_probs[children])``, the shift computed natively on the
    CPU backend and with torch ops on the others, so it may differ in the last bit; a beam
    whose children are all -inf keeps -inf), as GRID scores (snap-research/
    GRID, ``_beam_search_one_step``: softmax after masking the invalid prefixes); the stop
    candidate keeps the beam's score. ``log_probs`` may then be raw logits. Fixed shapes, no
    host sync (with ``semid_fast.config.check_values`` off), CUDA-graph capturable. With
    value checks off nothing is read out of bounds: states outside the trie are empty
    slots, and NaN scores rank above +inf, tied with each other (as ``torch.sort`` orders
    them).

    Args:
        log_probs: (B * W, V) float32/float16/bfloat16 log-probabilities of the next token;
            columns [0, vocab_sizes[level]) are the codes, V >= max(trie.vocab_sizes).
        beam_scores: (B, W) float scores of the current beams.
        states: (B * W,) or (B, W) int64 beam states (see the module docstring).
        trie: the catalog's :class:`SemanticIDTrie`, on the same device.
        beam_width: beams kept per row (may differ from W).
        renormalize: log-softmax over the valid children (default False: the log-probs as
            given, as transformers' beam search with a logits processor).

    Returns:
        scores (B, beam_width) float32, parents (B, beam_width) int64 (beam index within the
        row), tokens (B, beam_width) int64 (the code; -1 for stop/finished/empty), states
        (B, beam_width) int64.
    """
    device, states = _check_step(log_probs, beam_scores, states, trie, beam_width)
    if not isinstance(renormalize, bool):
        raise TypeError(f"renormalize must be a bool, got {type(renormalize).__name__}")
    name = _backends.choose(backend, device, "trie", "beam_step", op="constrained_beam_step",
                            args=dict(w_in=beam_scores.shape[1], w_out=beam_width))
    step = _beam_step if _direct(log_probs, beam_scores, states) else _beam_step_op
    return step(log_probs, beam_scores, states, trie.child_offsets, trie.child_codes,
                trie.terminal, trie.max_children, beam_width, renormalize, name)


def constrained_pool_update(pool_scores: torch.Tensor, pool_states: torch.Tensor,
                            scores: torch.Tensor, states: torch.Tensor, trie: SemanticIDTrie,
                            *, backend: str = "auto"):
    """Records the IDs a beam step completed into a per-row pool of finished IDs.

    The decoding of the variable-length semantic IDs paper (KhrylchenkoKirill/
    varlen_semantic_ids, ``BeamSearchVarLen`` constrained throughout): an ID that completes
    at a step is recorded with its score and never expanded again. Call it after every
    :func:`constrained_beam_step` (``finished="pool"`` in :func:`constrained_beam_search`
    does) and feed the returned ``states`` to the next step: the completed beams become
    empty slots. Fixed shapes, no host sync.

    Args:
        pool_scores: (B, P) float scores of the pool (start: all -inf).
        pool_states: (B, P) int64 terminal states of the pool's IDs; any other value is an
            empty entry (start: all -1).
        scores, states: (B, W) the step's outputs; a beam whose state is a terminal state
            (an ID ends there, even if longer IDs continue) has completed.
        trie: the catalog's :class:`SemanticIDTrie`, on the same device.

    Returns:
        pool_scores (B, P) float32 and pool_states (B, P) int64: the best P of the old pool
        and the completed beams, higher score first; ties toward the old pool, then toward
        the smaller beam index (so toward the earlier step, then the step's own ranking);
        empty entries (-inf, -1) last. states (B, W) int64: ``states`` with the completed
        beams set to -1.
    """
    if not isinstance(trie, SemanticIDTrie):
        raise TypeError(f"trie must be a SemanticIDTrie, got {type(trie).__name__}")
    _checks.tensor(pool_scores, "pool_scores", 2, _checks.FLOAT_DTYPES, "(B, P)")
    _checks.tensor(scores, "scores", 2, _checks.FLOAT_DTYPES, "(B, W)")
    for name, t, like in (("pool_states", pool_states, pool_scores), ("states", states, scores)):
        _checks.tensor(t, name, 2, (torch.int64,), "(B, P)" if like is pool_scores else "(B, W)")
        if t.shape != like.shape:
            raise ValueError(f"{name} must have the shape of its scores "
                             f"{tuple(like.shape)}, got {tuple(t.shape)}")
    b, p = pool_scores.shape
    if p == 0:
        raise ValueError("pool_scores must have P >= 1 entries per row")
    if scores.shape[0] != b:
        raise ValueError(f"scores must have B={b} rows like pool_scores, got {scores.shape[0]}")
    device = _checks.same_device("constrained_pool_update", pool_scores=pool_scores,
                                 pool_states=pool_states, scores=scores, states=states,
                                 trie=trie.terminal)
    name = _backends.choose(backend, device, "trie", "pool_update", op="constrained_pool_update",
                            args=dict(p=p, w=scores.shape[1]))
    update = _pool_update if _direct(pool_scores, pool_states, scores, states) else \
        _pool_update_op
    return update(pool_scores, pool_states, scores, states, trie.terminal, name)


def _takes_states(step_fn) -> bool:
    """Whether step_fn declares a ``states`` parameter it can take by keyword."""
    try:
        param = inspect.signature(step_fn).parameters.get("states")
    except (TypeError, ValueError):  # no introspectable signature (some builtins)
        return False
    return param is not None and param.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                inspect.Parameter.KEYWORD_ONLY)


def _state_codes(trie: SemanticIDTrie, states: torch.Tensor) -> torch.Tensor:
    """(R,) int64 states (``~s`` resolves like ``s``) -> (R, depth) int64 codes of the prefix
    that leads to each state, -1 past its end (all -1 for the root and non-states). Walks
    up the trie ``depth`` times (the parent of state ``s >= 1`` is
    ``edge_keys[s - 1] // max_vocab``), fixed shapes, no host sync."""
    states = trie._states(states)
    plain = torch.where(states <= -2, ~states, states)
    at = torch.where((plain >= 1) & (plain < trie.num_states), plain, 0)
    level = trie.state_level(at)
    out = torch.full((states.shape[0], trie.depth + 1), -1, dtype=torch.long,
                     device=trie.device)
    column = torch.arange(trie.depth + 1, device=trie.device)
    for _ in range(trie.depth):
        up = at >= 1
        edge = (at - 1).clamp(min=0)
        code = torch.where(up, trie.child_codes[edge].long(), -1)
        # The state at `at` sits at level `level`: its code goes to column level - 1
        # (column depth, dropped below, collects the no-ops of the root).
        target = torch.where(up, level - 1, trie.depth)
        out = torch.where(column == target[:, None], code[:, None], out)
        at = torch.where(up, trie.edge_keys[edge] // trie.max_vocab, 0)
        level = level - up.long()
    return out[:, :trie.depth]


def constrained_beam_search(step_fn, trie: SemanticIDTrie, *, batch_size: int, beam_width: int,
                            finished: str = "keep", renormalize: bool = False,
                            backend: str = "auto"):
    """Beam search over the catalog's IDs for any model (no transformers needed).

    ``step_fn(step, tokens, parents)`` returns the log-probs of the next code for every beam,
    (batch_size * beam_width, V); at step 0 it may return (batch_size, V) instead (one row
    per batch row, as GRID's and the varlen paper's first step: only beam 0 is live then).
    At step 0 ``tokens`` and ``parents`` are None and every row starts from the root in beam
    0 (the other beams are empty, so no duplicate IDs). Later, ``tokens``
    (batch_size * beam_width,) int64 holds the code each beam just took (-1: no token, the
    beam is finished or empty) and ``parents`` (batch_size * beam_width,) int64 the row of
    the previous step's log-probs it came from (``index_select`` your KV cache with it;
    empty slots point at their row's first beam). A ``step_fn`` that declares a ``states``
    parameter (detected once from its signature) is also given ``states=``: the
    (batch_size * beam_width,) int64 trie states of the beams whose log-probs it returns
    (module docstring; -1 an empty slot; at step 0 the root in beam 0 and -1 elsewhere,
    whichever shape step_fn returns), e.g. for :meth:`SemanticIDTrie.valid_next`.
    There are ``trie.depth`` steps.

    An ID's score is the sum of the log-probs of its tokens as given (no renormalisation over
    the valid children, as transformers' beam search with a logits processor), or with
    ``renormalize=True`` the sum of their log-softmax over the valid children of each
    prefix, as GRID scores (snap-research/GRID, ``_beam_search_one_step``; step_fn may then
    return logits). Every step's log-probs are checked like :func:`constrained_beam_step`'s
    (value scans, which sync with the host, only while ``semid_fast.config.check_values`` is
    on).

    ``finished`` says what happens to an ID once it is complete (variable-length IDs):

    - ``"keep"`` (default, so that existing callers get the results of earlier releases):
      the beam at the ID's end may stop (a finished hypothesis that
      keeps its slot and its score through the remaining steps, see
      :func:`constrained_beam_step`) or continue into longer IDs it prefixes.
    - ``"pool"``: the decoding of the variable-length semantic IDs paper
      (KhrylchenkoKirill/varlen_semantic_ids, ``BeamSearchVarLen`` constrained throughout):
      every ID that enters the beam at a step is recorded with its score into a per-row
      pool and never expanded again (its slot is free at the next step: ``tokens`` still
      reports the code it took, its state is -1; an ID that is a prefix of another hides
      the longer one, as there; see :func:`dedup_suffix`
      ``scheme="separate"``); the result is the best ``beam_width`` of the pool (ties toward
      the earlier step, then the step's ranking; :func:`constrained_pool_update`).
      Differences from that code: an ID of length 1 is recorded at step 0 (the paper's loop
      starts recording at the second token, so it never returns one); a row without any
      complete ID is padded (the paper falls back to its unfinished beams); and its first
      step takes the log-softmax over the valid first tokens, which shifts every score of a
      row by the same constant (return such log-probs at step 0 for equal scores).

    Returns:
        item_ids (batch_size, beam_width) int64, codes (batch_size, beam_width, depth) int64
        (-1 past the ID's end), scores (batch_size, beam_width) float32, best first; rows with
        fewer valid IDs than beams are padded with item id -1 and score -inf.
    """
    if not isinstance(trie, SemanticIDTrie):
        raise TypeError(f"trie must be a SemanticIDTrie, got {type(trie).__name__}")
    b = _checks.positive_int(batch_size, "batch_size")
    w = _checks.positive_int(beam_width, "beam_width")
    if finished not in ("keep", "pool"):
        raise ValueError(f"finished must be 'keep' or 'pool', got {finished!r}")
    if not isinstance(renormalize, bool):
        raise TypeError(f"renormalize must be a bool, got {type(renormalize).__name__}")
    pool = finished == "pool"
    device = trie.device
    name = _backends.choose(backend, device, "trie", "beam_step", op="constrained_beam_search",
                            args=dict(w_in=w, w_out=w))
    if pool:
        pool_name = _backends.choose(backend, device, "trie", "pool_update",
                                     op="constrained_beam_search", args=dict(p=w, w=w))
    with_states = _takes_states(step_fn)
    with _checks.allocating(f"the (batch_size={b}, beam_width={w}) beams"):
        states = torch.full((b, w), -1, dtype=torch.long, device=device)
        scores = torch.full((b, w), -torch.inf, device=device)
    states[:, 0] = 0
    scores[:, 0] = 0.0
    if pool:
        pool_scores = torch.full((b, w), -torch.inf, device=device)
        pool_states = torch.full_like(states, -1)
    else:
        history = torch.full((b, w, trie.depth), -1, dtype=torch.long, device=device)
    tokens = parents = None
    for step in range(trie.depth):
        if with_states:
            log_probs = step_fn(step, tokens, parents, states=states.reshape(-1))
        else:
            log_probs = step_fn(step, tokens, parents)
        rows = getattr(log_probs, "shape", (None,))[0]
        if not isinstance(log_probs, torch.Tensor) or log_probs.dim() != 2 or \
                rows not in ((b * w, b) if step == 0 else (b * w,)):
            allowed = " (or batch_size at step 0)" if step == 0 else ""
            raise ValueError(f"step_fn must return (batch_size * beam_width = {b * w}{allowed}, "
                             f"V) log-probs at step {step}, "
                             f"got {getattr(log_probs, 'shape', log_probs)}")
        w_in = rows // b  # 1 when step 0 gave one row per batch row: beam 0 alone is live
        step_scores, step_states = scores[:, :w_in], states[:, :w_in].reshape(-1)
        # Shapes, dtypes and devices every step (a tensor on another device would hand the
        # kernel a foreign pointer); value scans (host syncs) only with config.check_values.
        _check_step(log_probs, step_scores, step_states, trie, w)
        direct = _direct(log_probs)
        scores, parent, token, states = (_beam_step if direct else _beam_step_op)(
            log_probs, step_scores, step_states, trie.child_offsets, trie.child_codes,
            trie.terminal, trie.max_children, w, renormalize, name)
        if pool:
            pool_scores, pool_states, states = (_pool_update if direct else _pool_update_op)(
                pool_scores, pool_states, scores, states, trie.terminal, pool_name)
        else:
            history = history.gather(
                1, parent.clamp(min=0)[..., None].expand(-1, -1, trie.depth))
            history = torch.where(parent[..., None] >= 0, history, -1)
            history[:, :, step] = token
        tokens = token.reshape(-1)
        row_base = torch.arange(b, device=device)[:, None] * w_in
        parents = (row_base + parent.clamp(min=0)).reshape(-1)
    if pool:
        items = trie.terminal_item(pool_states.reshape(-1)).reshape(b, w)
        codes = _state_codes(trie, pool_states.reshape(-1)).reshape(b, w, trie.depth)
        return items, codes, pool_scores
    items = trie.terminal_item(states.reshape(-1)).reshape(b, w)
    return items, history, scores

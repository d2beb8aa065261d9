"""A transformers logits processor that constrains ``model.generate`` to the semantic IDs of
a catalog: the drop-in replacement for a Python-trie ``prefix_allowed_tokens_fn``.

Usage::

    table = semid_fast.sid_files.load_index_json("sid.index.json")
    trie = SemanticIDTrie.from_codes(table.codes, lengths=table.lengths)
    token_ids = semid_fast.sid_files.token_id_map(table, tokenizer)
    processor = SemanticIDLogitsProcessor(trie, token_ids, eos_token_id=tokenizer.eos_token_id)
    out = model.generate(**inputs, num_beams=20, num_return_sequences=20,
                         max_new_tokens=trie.depth + 1, logits_processor=[processor])

Needs ``transformers`` (``pip install semid_fast[hf]``); ``import semid_fast`` does not.
"""

from __future__ import annotations

import threading
import warnings

import torch

try:
    from transformers import LogitsProcessor
except ImportError as e:  # pragma: no cover - exercised only without transformers
    raise ImportError("semid_fast.hf needs transformers: pip install 'semid_fast[hf]' "
                      "(or pip install 'transformers>=4.40')") from e

from . import _backends
from .ops.trie import SemanticIDTrie

__all__ = ["SemanticIDLogitsProcessor"]


class SemanticIDLogitsProcessor(LogitsProcessor):
    """Masks the scores of ``generate`` so that every generated sequence is a semantic ID of
    the trie's catalog, then ``suffix_token_ids`` (when given), then ``eos_token_id`` (when
    given).

    The ID starts at the first generated token: after the decoder start token of an
    encoder-decoder (TIGER's T5) or after the prompt of a decoder-only LLM recommender. A
    call continues the generation of the previous call when its ``input_ids`` has the same
    number of rows, one more column, and every row begins with one of the previous call's
    rows (compared on the device, no host sync; any previous row, as beam search reorders
    them). Any other call starts a new generation whose ID starts after its ``input_ids``.
    So one processor serves consecutive ``generate`` calls, whatever their prompt lengths.
    It keeps one generation per thread, so threads may share it (each thread's calls are a
    sequence of their own); two generations interleaved in one thread (e.g. coroutines)
    need one instance each. Only a prompt that extends a row of the previous call by one
    token (feeding a ``generate`` output back as the next prompt) reads as a continuation:
    call :meth:`reset` between such calls.

    Each call maps the generated tokens back to codes and walks the trie from the root (at
    most ``depth`` gathers on the device), so the result depends on ``input_ids`` alone and is
    correct however ``generate`` reorders beams between calls; no Python loop over beams. A
    row inside its ID keeps the scores of the tokens of its trie state's children; at a
    complete ID (variable-length IDs may stop there or go on; a complete ID with no children
    can only stop) it keeps ``suffix_token_ids[0]``, or ``eos_token_id`` without a suffix; in
    the suffix it keeps the next suffix token, after the suffix eos; every other token gets
    ``-inf``. This is what transformers' ``PrefixConstrainedLogitsProcessor`` does with the
    equivalent prefix function (it adds a 0 / -inf mask to the log-softmaxed scores); with a
    suffix it is MiniOneRec's constraint (its ``evaluate.py`` builds the allowed tokens from
    each item's ID tokens followed by the tokens of ``"\\n"`` and eos).

    Rows that already hold ``eos_token_id`` (finished rows of greedy search or sampling, or
    the beams a beam search revives from finished candidates when it runs out of live ones)
    may only repeat eos, as a prefix function that answers ``[eos]`` after a complete ID
    does. A row with no allowed token (its generated tokens are not a prefix of an ID then
    suffix: a beam that beam search keeps at -inf when the catalog has fewer continuations
    than beams, a token forced by another processor) keeps ``eos_token_id`` only (all -inf
    without eos), and the processor warns once (a ``RuntimeWarning``): transformers' own
    processor raises when a prefix function allows nothing, but deciding that needs a host
    sync. On a GPU the warning comes at a later call, once the flag has reached the host.

    Args:
        trie: a :class:`semid_fast.SemanticIDTrie`, on the device the model generates on.
        token_ids: (depth, K) int tensor (or array); ``token_ids[j, c]`` is the tokenizer id
            of the level-j code-c token, -1 where there is none (see
            :func:`semid_fast.sid_files.token_id_map`). Every code of the trie needs a token.
        eos_token_id: the token that ends an ID, or None when every ID has length ``depth``
            and generation stops after ``max_new_tokens=depth`` (plus the suffix). Required
            when some IDs are shorter than ``depth``.
        suffix_token_ids: token ids forced, in order, after every complete ID and before eos
            (default none). MiniOneRec ends each ID with ``"\\n"``:
            ``suffix_token_ids=tokenizer("\\n", add_special_tokens=False).input_ids``; then
            ``max_new_tokens=depth + len(suffix) + 1``. None of them may be an SID token or
            eos.
        num_beams: when given (the ``num_beams`` of ``generate``), the processor also applies
            ``PrefixConstrainedLogitsProcessor``'s fallback: when an earlier processor left
            every allowed token of every beam of a batch item at -inf, those tokens get score
            0. Without it that case stays at -inf.
        backend: "auto" (one fused kernel per step for float32 scores: C++ on the CPU, CUDA
            on a GPU when built; else the reference), "cpu", "cuda" or "reference" (torch
            ops: a few dozen small ones per step, any device and dtype; it compares every
            pair of rows with the previous call's, R * R * T booleans). No path syncs with
            the host.

    Raises:
        ValueError / RuntimeError: a backend that has no such kernel or cannot run on the
        trie's device (at construction), or whose kernel cannot take the scores' dtype (at
        the call).
        TypeError / ValueError: a trie that is not a SemanticIDTrie, a token map of the wrong
        shape, a code of the trie without a token, two codes of one level with the same token,
        an eos or suffix token that is also an SID token, or variable-length IDs without eos.

    Note: ``generate`` runs user processors after its own (e.g. ``min_new_tokens``), the
    prefix function's processor sits among its own; with no other processors configured the
    two give identical beams.
    """

    def __init__(self, trie, token_ids, *, eos_token_id: int | None = None,
                 suffix_token_ids=None, num_beams: int | None = None, backend: str = "auto"):
        if not isinstance(trie, SemanticIDTrie):
            raise TypeError(f"trie must be a semid_fast.SemanticIDTrie, got {type(trie).__name__}")
        # A named backend is checked now; which one runs also depends on the scores' dtype.
        _backends.choose(backend, trie.device, "trie", "constrain_logits", op=_OP)
        if eos_token_id is not None and not _is_token(eos_token_id):
            raise TypeError(f"eos_token_id must be an int in [0, 2**63) or None, got "
                            f"{eos_token_id!r}")
        suffix = _suffix_list(suffix_token_ids)
        if eos_token_id is not None and eos_token_id in suffix:
            raise ValueError(f"suffix_token_ids {suffix} contain eos_token_id {eos_token_id}")
        if num_beams is not None and (isinstance(num_beams, bool)
                                      or not isinstance(num_beams, int) or num_beams < 1):
            raise ValueError(f"num_beams must be a positive int or None, got {num_beams!r}")
        token_ids = torch.as_tensor(token_ids)
        if token_ids.dim() != 2 or token_ids.shape[0] != trie.depth:
            raise ValueError(f"token_ids must have shape (depth={trie.depth}, K), got "
                             f"{tuple(token_ids.shape)}")
        if token_ids.dtype.is_floating_point or token_ids.dtype == torch.bool:
            raise TypeError(f"token_ids must be an integer tensor, got {token_ids.dtype}")
        token_ids = token_ids.to(device="cpu", dtype=torch.int64)

        self.trie = trie
        self.eos_token_id = eos_token_id
        self.suffix_token_ids = tuple(suffix)
        self.num_beams = num_beams
        self.backend = backend
        used, has_short_ids = _used_codes(trie)
        level_codes, level_tokens = [], []
        for level, codes in enumerate(used):
            if codes.numel() and int(codes.max()) >= token_ids.shape[1]:
                raise ValueError(f"token_ids has K={token_ids.shape[1]} columns but the trie "
                                 f"uses code {int(codes.max())} at level {level}")
            tokens = token_ids[level, codes]
            if bool((tokens < 0).any()):
                missing = codes[tokens < 0][:5].tolist()
                raise ValueError(f"token_ids: level {level} codes {missing} of the trie have no "
                                 f"token (-1)")
            if tokens.unique().numel() != tokens.numel():
                raise ValueError(f"token_ids: two codes of level {level} share one token id")
            if eos_token_id is not None and bool((tokens == eos_token_id).any()):
                raise ValueError(f"eos_token_id {eos_token_id} is also the token of a level-"
                                 f"{level} code")
            clash = sorted(set(suffix) & set(tokens.tolist()))
            if clash:
                raise ValueError(f"suffix_token_ids: token {clash[0]} is also the token of a "
                                 f"level-{level} code")
            level_codes.append(codes)
            level_tokens.append(tokens)
        if has_short_ids and eos_token_id is None:
            raise ValueError("the trie has IDs shorter than its depth (variable-length IDs): "
                             "give eos_token_id so that generation can end them")

        # The tokens of the trie's codes alone (the kernels read them per child edge); a last
        # all -1 row for the level past the deepest one.
        k = max(token_ids.shape[1], trie.max_vocab)
        table = torch.full((trie.depth + 1, k), -1, dtype=torch.int64)
        for level, (codes, tokens) in enumerate(zip(level_codes, level_tokens)):
            table[level, codes] = tokens
        # Level j's inverse map: token id -> code, -1 for tokens of no level-j code.
        largest = [int(t.max()) for t in level_tokens if t.numel()]
        vocab = max([eos_token_id or 0, *suffix] + largest) + 1
        inverse = torch.full((trie.depth, vocab), -1, dtype=torch.int64)
        for level, (codes, tokens) in enumerate(zip(level_codes, level_tokens)):
            inverse[level, tokens] = codes
        self._vocab = vocab
        self._inverse = inverse
        self._token_table = table
        # The suffix, padded with eos (or "no token") for the position after it.
        after = -1 if eos_token_id is None else eos_token_id
        self._suffix = torch.tensor([*suffix, after], dtype=torch.int64)
        self._device = trie.device
        self._inverse = self._inverse.to(self._device)
        self._token_table = self._token_table.to(self._device)
        self._suffix = self._suffix.to(self._device)
        self._launchers = {}  # scores dtype -> the launcher that masks them
        self._local = threading.local()  # .generation: this thread's _Generation
        self._warned = False

    def __getstate__(self) -> dict:
        # A copy (copy.deepcopy, pickle) starts without a generation in any thread.
        return {k: v for k, v in self.__dict__.items() if k not in ("_local", "_launchers")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _local=threading.local(), _launchers={})

    def reset(self) -> None:
        """Forget the calling thread's current generation: its next call starts a new one."""
        self._local.generation = _Generation(self._device)

    def _generation(self) -> "_Generation":
        generation = getattr(self._local, "generation", None)
        if generation is None:
            generation = self._local.generation = _Generation(self._device)
        return generation

    def _launcher(self, dtype: torch.dtype):
        launcher = self._launchers.get(dtype)
        if launcher is None:
            name = _backends.choose(self.backend, self._device, "trie", "constrain_logits",
                                    op=_OP, args={"dtype": dtype})
            launcher = self._launchers[dtype] = _backends.launcher(name, "trie",
                                                                   "constrain_logits")
        return launcher

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """input_ids (R, T) int64, scores (R, V) float -> (R, V) scores with the tokens that
        leave the catalog at -inf (a new tensor)."""
        for name, value in (("input_ids", input_ids), ("scores", scores)):
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        if input_ids.dim() != 2 or scores.dim() != 2 or input_ids.shape[0] != scores.shape[0]:
            raise ValueError(f"input_ids (R, T) and scores (R, V) must share R, got "
                             f"{tuple(input_ids.shape)} and {tuple(scores.shape)}")
        if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or \
                input_ids.dtype == torch.bool:
            raise TypeError(f"input_ids must hold integer token ids, got {input_ids.dtype}")
        if scores.device != self._device or input_ids.device != self._device:
            raise ValueError(f"the trie is on {self._device} but generate runs on "
                             f"{scores.device}: build the processor from trie.to(device)")
        if scores.shape[1] < self._vocab:
            raise ValueError(f"scores have {scores.shape[1]} tokens but the token map uses "
                             f"ids up to {self._vocab - 1}")
        rows, length = input_ids.shape
        if self.num_beams and rows % self.num_beams:
            raise ValueError(f"num_beams={self.num_beams} does not divide the {rows} rows of "
                             f"input_ids")
        launcher = self._launcher(scores.dtype)
        generation = self._generation()
        if generation.dead_event is not None:  # a GPU flag may have landed since
            self._warn_if_dead(generation, stacklevel=3)
        prev = generation.prev
        if prev is not None and prev.shape != (rows, length - 1):
            prev = None  # another shape: a new generation for sure
        input_ids = input_ids.long()  # the kernels read int64 rows with unit column stride
        if input_ids.stride(1) != 1:
            input_ids = input_ids.contiguous()
        scores = scores.contiguous()
        out = torch.empty_like(scores)
        launcher(input_ids, prev, self.trie, self._inverse, self._token_table, self._suffix,
                 -1 if self.eos_token_id is None else self.eos_token_id, self.num_beams or 0,
                 generation.start, generation.dead, scores, out)
        generation.prev = input_ids.clone(memory_format=torch.contiguous_format)
        self._publish_dead(generation)
        return out

    def _warn_if_dead(self, generation: "_Generation", stacklevel: int) -> None:
        """Warns once when an earlier call met a row with no allowed token; reads the flag
        only when it is on the host already (never waits for the device)."""
        if self._warned:
            return
        if generation.dead.device.type == "cpu":
            flag = generation.dead
        elif generation.dead_event is not None and generation.dead_event.query():
            flag = generation.dead_host
        else:
            return
        if flag.item():
            self._warned = True
            warnings.warn("SemanticIDLogitsProcessor: a row had no allowed token (its "
                          "generated tokens are no prefix of an ID of the catalog, e.g. a "
                          "beam kept at -inf when the catalog has fewer continuations than "
                          "beams, or a token another processor forced); it may only emit "
                          "eos", RuntimeWarning, stacklevel=stacklevel)

    def _publish_dead(self, generation: "_Generation") -> None:
        """CPU: warn now. GPU: start copying the flag to the host without waiting."""
        if generation.dead.device.type == "cpu":
            self._warn_if_dead(generation, stacklevel=4)
            return
        if self._warned:
            return
        if generation.dead_host is None:
            generation.dead_host = torch.zeros(1, dtype=torch.int32).pin_memory()
            generation.dead_event = torch.cuda.Event()
        generation.dead_host.copy_(generation.dead, non_blocking=True)
        generation.dead_event.record(torch.cuda.current_stream(self._device))


_OP = "SemanticIDLogitsProcessor"


class _Generation:
    """What one thread's current generation carries between calls: the previous call's rows,
    where the ID starts (written by the kernels), the flag "a row had no allowed token", and
    on a GPU the flag's host copy with the event that says when it has landed."""

    def __init__(self, device: torch.device):
        self.prev = None
        self.start = torch.zeros(1, dtype=torch.int64, device=device)
        self.dead = torch.zeros(1, dtype=torch.int32, device=device)
        self.dead_host = self.dead_event = None


def _is_token(value) -> bool:
    """A token id the kernels can hold: a non-negative int below 2**63."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def _suffix_list(suffix_token_ids) -> list[int]:
    """suffix_token_ids as a list of ints (None: empty), or TypeError."""
    if suffix_token_ids is None:
        return []
    if isinstance(suffix_token_ids, torch.Tensor):
        if suffix_token_ids.dim() != 1 or suffix_token_ids.dtype.is_floating_point:
            raise TypeError(f"suffix_token_ids must be a 1-D integer tensor or a sequence of "
                            f"ints, got a {suffix_token_ids.dim()}-D {suffix_token_ids.dtype} "
                            f"tensor")
        suffix_token_ids = suffix_token_ids.tolist()
    if isinstance(suffix_token_ids, (str, bytes)) or not hasattr(suffix_token_ids, "__iter__"):
        raise TypeError(f"suffix_token_ids must be a sequence of token ids, got "
                        f"{suffix_token_ids!r}")
    out = list(suffix_token_ids)
    bad = [t for t in out if not _is_token(t)]
    if bad:
        raise TypeError(f"suffix_token_ids must hold ints in [0, 2**63), got {bad[0]!r}")
    return out


def _used_codes(trie) -> tuple[list[torch.Tensor], bool]:
    """The codes the trie uses at each level (CPU int64, ascending) and whether some ID ends
    before the last level. Reads the breadth-first CSR layout (semid_fast/trie.h): edge e
    leads to state e + 1, so the edges into level j + 1 are the states of that level, - 1."""
    starts = trie.level_starts.cpu()
    codes = trie.child_codes.cpu().long()
    used = [codes[int(starts[j + 1]) - 1:int(starts[j + 2]) - 1].unique()
            for j in range(trie.depth)]
    inner = trie.terminal[int(starts[1]):int(starts[trie.depth])]
    return used, bool((inner >= 0).any())

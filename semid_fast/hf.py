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

import math

import torch

try:
    from transformers import LogitsProcessor
except ImportError as e:  # pragma: no cover - exercised only without transformers
    raise ImportError("semid_fast.hf needs transformers: pip install 'semid_fast[hf]' "
                      "(or pip install 'transformers>=4.40')") from e

from . import _backends, _native
from .ops.trie import SemanticIDTrie

__all__ = ["SemanticIDLogitsProcessor"]


class SemanticIDLogitsProcessor(LogitsProcessor):
    """Masks the scores of ``generate`` so that every generated sequence is a semantic ID of
    the trie's catalog (then ``eos_token_id``, when given).

    The ID starts at the first generated token: after the decoder start token of an
    encoder-decoder (TIGER's T5) or after the prompt of a decoder-only LLM recommender. The
    processor records the input length at the first call of a generation (a call whose input
    is not one token longer than the previous call's, or has another number of rows, starts a
    new one; :meth:`reset` forces it).

    Each call maps the generated tokens back to codes and walks the trie from the root (at
    most ``depth`` gathers on the device), so the result depends on ``input_ids`` alone and is
    correct however ``generate`` reorders beams between calls; no host sync, no Python loop
    over beams. At step t every row is at level t: the level-t tokens of the codes that are
    children of the row's state keep their scores, ``eos_token_id`` keeps its score where the
    row's prefix is a complete ID (variable-length IDs may stop there or go on; a complete ID
    with no children can only stop), and every other token gets ``-inf``, exactly what
    transformers' ``PrefixConstrainedLogitsProcessor`` does with the equivalent prefix
    function (it adds a 0 / -inf mask to the log-softmaxed scores).

    Rows whose generated tokens are not a prefix of any ID (the dead beams that a beam search
    keeps at score -inf when it runs out of valid continuations) get every token masked.
    Rows that already hold ``eos_token_id`` (finished rows of greedy search or sampling, or
    the beams a beam search revives from finished candidates when it runs out of live ones)
    may only repeat eos, as a prefix function that answers ``[eos]`` after a complete ID
    does.

    Args:
        trie: a :class:`semid_fast.SemanticIDTrie`, on the device the model generates on.
        token_ids: (depth, K) int tensor (or array); ``token_ids[j, c]`` is the tokenizer id
            of the level-j code-c token, -1 where there is none (see
            :func:`semid_fast.sid_files.token_id_map`). Every code of the trie needs a token.
        eos_token_id: the token that ends an ID, or None when every ID has length ``depth``
            and generation stops after ``max_new_tokens=depth``. Required when some IDs are
            shorter than ``depth``.
        num_beams: when given (the ``num_beams`` of ``generate``), the processor also applies
            ``PrefixConstrainedLogitsProcessor``'s fallback: when an earlier processor left
            every allowed token of every beam of a batch item at -inf, those tokens get score
            0. Without it that case stays at -inf.
        backend: "auto" (one fused kernel per step for float32 scores: C++ on the CPU, CUDA
            on a GPU when built; else the torch path), "cpu", "cuda" or "reference" (the
            torch path: a few fixed-shape ops per step, any device). No path syncs with the
            host.

    Raises:
        TypeError / ValueError: a trie that is not a SemanticIDTrie, a token map of the wrong
        shape, a code of the trie without a token, two codes of one level with the same token,
        an eos token that is also an SID token, or variable-length IDs without eos.

    Note: ``generate`` runs user processors after its own (e.g. ``min_new_tokens``), the
    prefix function's processor sits among its own; with no other processors configured the
    two give identical beams.
    """

    def __init__(self, trie, token_ids, *, eos_token_id: int | None = None,
                 num_beams: int | None = None, backend: str = "auto"):
        if backend not in ("auto", "reference", "cpu", "cuda"):
            raise ValueError(f"backend must be 'auto', 'reference', 'cpu' or 'cuda', got "
                             f"{backend!r}")
        if not isinstance(trie, SemanticIDTrie):
            raise TypeError(f"trie must be a semid_fast.SemanticIDTrie, got {type(trie).__name__}")
        if eos_token_id is not None and (isinstance(eos_token_id, bool)
                                         or not isinstance(eos_token_id, int)
                                         or eos_token_id < 0):
            raise TypeError(f"eos_token_id must be a non-negative int or None, got "
                            f"{eos_token_id!r}")
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
        self.num_beams = num_beams
        self.backend = backend
        used, has_short_ids = _used_codes(trie)
        self._level_codes, self._level_tokens = [], []
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
            self._level_codes.append(codes)
            self._level_tokens.append(tokens)
        if has_short_ids and eos_token_id is None:
            raise ValueError("the trie has IDs shorter than its depth (variable-length IDs): "
                             "give eos_token_id so that generation can end them")

        # The tokens of the trie's codes alone (the C++ kernel reads them per child edge).
        self._token_table = torch.full_like(token_ids, -1)
        for level, (codes, tokens) in enumerate(zip(self._level_codes, self._level_tokens)):
            self._token_table[level, codes] = tokens
        # Level j's inverse map: token id -> code, -1 for tokens of no level-j code.
        largest = [int(t.max()) for t in self._level_tokens if t.numel()]
        vocab = max([eos_token_id or 0] + largest) + 1
        inverse = torch.full((trie.depth, vocab), -1, dtype=torch.int64)
        for level, (codes, tokens) in enumerate(zip(self._level_codes, self._level_tokens)):
            inverse[level, tokens] = codes
        self._vocab = vocab
        self._inverse = inverse.reshape(-1)
        self._level_offsets = torch.arange(trie.depth, dtype=torch.int64) * vocab
        # Columns that can be unmasked at step t: the level-t tokens, then eos.
        eos = [] if eos_token_id is None else [eos_token_id]
        self._columns = [torch.cat([t, torch.tensor(eos, dtype=torch.int64)])
                         for t in self._level_tokens]
        self._columns.append(torch.tensor(eos, dtype=torch.int64))
        self._to_device(trie.device)
        self.reset()

    def _to_device(self, device) -> None:
        self._device = torch.device(device)
        move = lambda t: t.to(self._device)  # noqa: E731
        self._level_codes = [move(c) for c in self._level_codes]
        self._level_tokens = [move(t) for t in self._level_tokens]
        self._columns = [move(c) for c in self._columns]
        self._inverse = move(self._inverse)
        self._token_table = move(self._token_table)
        self._level_offsets = move(self._level_offsets)

    def reset(self) -> None:
        """Forget the recorded start of the ID: the next call starts a new generation."""
        self._start = None
        self._last_shape = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """input_ids (R, T) int64, scores (R, V) float -> (R, V) scores with the tokens that
        leave the catalog at -inf (a new tensor)."""
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
        if self._last_shape != (rows, length - 1):
            self._start = length
        self._last_shape = (rows, length)
        step = length - self._start
        kernel = self._kernel(scores)
        if kernel is not None:
            return self._native_call(kernel, input_ids, scores, step)
        generated = input_ids[:, self._start:]

        states = self._walk(generated, min(step, self.trie.depth))
        if step > self.trie.depth:
            states = torch.full_like(states, -1)
        columns = self._columns[min(step, self.trie.depth)]
        allowed = []
        if step < self.trie.depth:
            allowed.append(self.trie.valid_next(states)[:, self._level_codes[step]])
        if self.eos_token_id is not None:
            complete = self.trie.terminal_item(states) >= 0
            if step > 0:
                # A row that already ended its ID may only repeat eos (its walk hit eos, which
                # is no SID token, so it is at state -1 and has no children).
                complete = complete | (generated == self.eos_token_id).any(dim=1)
            allowed.append(complete[:, None])
        out = torch.full_like(scores, -math.inf)
        if allowed:
            allowed = torch.cat(allowed, dim=1)
            kept = torch.where(allowed, scores[:, columns], -math.inf)
            if self.num_beams is not None:
                kept = self._force_unsatisfiable(kept, allowed)
            out[:, columns] = kept
        return out

    def _kernel(self, scores: torch.Tensor) -> str | None:
        """The native backend ("cpu" or "cuda") that runs this call, None for the torch path."""
        if self.backend == "reference":
            return None
        name = self.backend if self.backend != "auto" else (
            "cuda" if scores.device.type == "cuda" else "cpu")
        reason = _backends._usable(name, scores.device)
        if reason is None and scores.dtype != torch.float32:
            reason = f"its kernel takes float32 scores, got {scores.dtype}"
        if reason is not None and self.backend != "auto":
            raise RuntimeError(f"SemanticIDLogitsProcessor: backend {self.backend!r} is "
                               f"unavailable: {reason}")
        return name if reason is None else None

    def _native_call(self, kernel: str, input_ids: torch.Tensor, scores: torch.Tensor,
                     step: int) -> torch.Tensor:
        """One fused kernel: walk every row and write its masked scores."""
        if self.num_beams and input_ids.shape[0] % self.num_beams:
            raise ValueError(f"num_beams={self.num_beams} does not divide the "
                             f"{input_ids.shape[0]} rows of input_ids")
        input_ids = input_ids.long()  # the kernel reads int64 rows with unit column stride
        if input_ids.stride(1) != 1:
            input_ids = input_ids.contiguous()
        scores = scores.contiguous()
        out = torch.empty_like(scores)
        trie = self.trie
        args = (input_ids.data_ptr(), input_ids.shape[0], input_ids.stride(0), self._start, step,
                self._inverse.data_ptr(), self._vocab, trie.depth, trie.child_offsets.data_ptr(),
                trie.child_codes.data_ptr(), trie.terminal.data_ptr(), trie.num_states,
                self._token_table.data_ptr(), self._token_table.shape[1],
                -1 if self.eos_token_id is None else self.eos_token_id, self.num_beams or 0,
                scores.data_ptr(), scores.shape[1], out.data_ptr())
        if kernel == "cuda":
            _native.call_cuda("SemanticIDLogitsProcessor", _native._C_cuda.sid_constrain_f32,
                              *args, device=scores.device)
        else:
            status = _native.cpu().sid_constrain_f32(*args, self._threads(scores))
            _native.check_cpu_status(status, "SemanticIDLogitsProcessor")
        return out

    @staticmethod
    def _threads(scores: torch.Tensor) -> int:
        """OpenMP threads for a step: one per 256k scores (a thread team costs more than
        masking a few beams over a small vocabulary)."""
        return max(1, min(_native.n_threads(), scores.numel() >> 18))

    def _walk(self, generated: torch.Tensor, steps: int) -> torch.Tensor:
        """(R,) trie states of the first ``steps`` generated tokens; -1 for non-ID prefixes."""
        if steps == 0:
            return torch.zeros(generated.shape[0], dtype=torch.int64, device=self._device)
        tokens = generated[:, :steps]
        known = (tokens >= 0) & (tokens < self._vocab)
        codes = self._inverse[tokens.clamp(0, self._vocab - 1) + self._level_offsets[:steps]]
        return self.trie.walk(torch.where(known, codes, -1))  # a -1 code leads to state -1

    def _force_unsatisfiable(self, kept: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """PrefixConstrainedLogitsProcessor's rule: a batch item whose allowed tokens are all
        -inf in every beam gets score 0 on them."""
        rows = kept.shape[0]
        if rows % self.num_beams:
            raise ValueError(f"num_beams={self.num_beams} does not divide the {rows} rows of "
                             f"input_ids")
        dead = kept.amax(dim=1).isneginf().view(-1, self.num_beams).all(dim=1)
        dead = dead.repeat_interleave(self.num_beams)[:, None]
        return torch.where(dead & allowed, torch.zeros((), dtype=kept.dtype,
                                                        device=kept.device), kept)


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

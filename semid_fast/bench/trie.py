"""Benchmark cases of the ``trie`` family: trie build, one constrained beam step and a whole
constrained beam search.

Sizes. The headline case: random IDs of length L=4 over K=256 codes; the build at 1M
IDs against the reference (``torch.unique`` per level) and at 10M IDs alone (the reference
takes minutes there); the beam step at batch 64 x beam 50 on a 1M-ID trie, at the widest
step (every beam at a level-1 state: 256 children each, 819,200 candidates per call) and at
a level-2 step (~15 children each). The search runs all 4 steps with a step_fn that hands
back precomputed log-probs, so it times decoding alone. ``quick`` shrinks everything.

Inputs are random from a fixed seed: codes uniform, log-probs log-softmax of N(0, 1).
The transformers cases (``generate`` with ``prefix_allowed_tokens_fn`` against our logits
processor) are in :mod:`semid_fast.bench.trie_generate`.
"""

from __future__ import annotations

import warnings

import torch

import semid_fast

from . import trie_generate
from .harness import Case

FAMILY = "trie"
SEED = 20240611


def _count(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else (
        f"{n // 1_000}k" if n % 1_000 == 0 else str(n))


def _codes(n, depth, k):
    return torch.randint(0, k, (n, depth), generator=torch.Generator().manual_seed(SEED))


def _trie(n, depth, k, device):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random IDs collide a little; that is fine here
        return semid_fast.SemanticIDTrie.from_codes(_codes(n, depth, k)).to(device)


def cases(device: str, quick: bool = False) -> list[Case]:
    ours = ("reference", "cpu") if device == "cpu" else ("reference", "cuda")
    depth, k = 4, 256
    out: list[Case] = []
    n = 20_000 if quick else 1_000_000
    b, w = (8, 10) if quick else (64, 50)
    trie = _trie(n, depth, k, device)
    for level in (1, 2):
        out += _step_cases(device, ours, trie, n, b, w, k, level)
    out += _search_cases(device, ours, trie, n, b, w, k)
    # The build runs on the CPU whatever the device (last: the table's device limits are
    # taken from the first row).
    out += _build_cases(20_000 if quick else 1_000_000, depth, k, with_reference=True)
    if not quick:
        out += _build_cases(10_000_000, depth, k, with_reference=False)
    return out + trie_generate.cases(device, quick)


def _build_cases(n, depth, k, with_reference) -> list[Case]:
    shape = f"N={_count(n)} L={depth} K={k}"
    common = dict(family=FAMILY, op="SemanticIDTrie.from_codes", shape=shape, device="cpu")

    def setup(backend):
        def make():
            codes = _codes(n, depth, k)

            def build():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    return semid_fast.SemanticIDTrie.from_codes(codes, backend=backend)
            trie = build()
            note = (f"{trie.num_states:,} states, {trie.nbytes / 1e6:.0f} MB "
                    f"({trie.nbytes / n:.0f} B per ID); built on the CPU")
            return build, note
        return make

    backends = ("reference", "cpu") if with_reference else ("cpu",)
    return [Case(impl=be, backend=be, setup=setup(be),
                 baseline="reference" if with_reference else None, **common)
            for be in backends]


def _beams_at_level(trie, n, b, w, k, level, device):
    """Beam states of b rows x w beams sitting at random level-`level` prefixes of IDs."""
    g = torch.Generator().manual_seed(SEED + level)
    codes = _codes(n, trie.depth, k)
    picks = codes[torch.randint(0, n, (b * w,), generator=g), :level]
    states = trie.walk(picks.to(device))
    log_probs = torch.randn(b * w, k, generator=g).log_softmax(-1).to(device)
    scores = torch.randn(b, w, generator=g).to(device)
    return log_probs, scores, states


def _step_cases(device, ours, trie, n, b, w, k, level) -> list[Case]:
    log_probs, scores, states = _beams_at_level(trie, n, b, w, k, level, device)
    fan_out = float((trie.child_offsets[states + 1] - trie.child_offsets[states]).float().mean())
    shape = (f"B={b} beam={w} N={_count(n)} L={trie.depth} K={k} level {level} "
             f"(~{fan_out:.0f} children)")
    common = dict(family=FAMILY, op="constrained_beam_step", shape=shape, device=device,
                  bytes=float(log_probs.numel() * 4))

    def setup(backend):
        def make():
            return lambda: semid_fast.constrained_beam_step(log_probs, scores, states, trie, w,
                                                           backend=backend)
        return make

    return [Case(impl=be, backend=be, setup=setup(be), **common) for be in ours]


def _search_cases(device, ours, trie, n, b, w, k) -> list[Case]:
    shape = f"B={b} beam={w} N={_count(n)} L={trie.depth} K={k} ({trie.depth} steps)"
    common = dict(family=FAMILY, op="constrained_beam_search", shape=shape, device=device)
    g = torch.Generator().manual_seed(SEED)
    tables = torch.randn(trie.depth, b * w, k, generator=g).log_softmax(-1).to(device)

    def step_fn(step, tokens, parents):
        return tables[step]

    def setup(backend):
        def make():
            return lambda: semid_fast.constrained_beam_search(step_fn, trie, batch_size=b,
                                                             beam_width=w, backend=backend)
        return make

    return [Case(impl=be, backend=be, setup=setup(be), **common) for be in ours]

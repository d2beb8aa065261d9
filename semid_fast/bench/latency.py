"""Benchmark cases of the ``latency`` family: one decode step at serving sizes, timed per call
with all of its Python (checks, backend choice, allocation), ours against the torch
reference backend and, for the logits processor, transformers' prefix-function processor.

Sizes: batch 1, beam 10, a TIGER-like catalog of 100,000 random IDs of L=4 levels over
K=256 codes (``quick``: 10,000). The step rows cycle through the 4 steps of one generation,
one step per call (level 0 to 3; at the first step all 10 beams sit at the root, as
``generate`` starts them), so the median is the mean cost of a decode step of a whole
generation. The logits processor sees the rows ``generate`` would hand it: a 20-token prompt
followed by the tokens of 10 catalog IDs up to the step; its first-step call starts a new
generation and the next three continue it, as in ``generate``. ``holistic_topk`` is timed at
B=1 over 100,000 items of M=64 codes (``quick``: 10,000), beside the one-read floor of its
code table.

The goal these rows watch: < 30 us per decode step on one CPU request. On the CPU every call
is timed on its own and the row reports the median call (``Case.per_call``): on a shared
machine a call now and then waits for the OS, and that wait is not the op's latency.
"""

from __future__ import annotations

import warnings

import torch

import semid_fast

from . import longid
from .harness import Case

FAMILY = "latency"
SEED = 20240611
BEAMS, DEPTH, K, PROMPT = 10, 4, 256, 20
SPECIAL = 3  # pad, eos, unk: SID tokens start after them


def _catalog(n):
    codes = torch.randint(0, K, (n, DEPTH), generator=torch.Generator().manual_seed(SEED))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random IDs collide a little; decoding cost is the same
        trie = semid_fast.SemanticIDTrie.from_codes(codes)
    return codes, trie


def _cycle(calls):
    """A callable that runs calls[0], calls[1], ... in turn, one per invocation."""
    state = {"i": 0}

    def step():
        i = state["i"]
        state["i"] = (i + 1) % len(calls)
        return calls[i]()
    return step


def cases(device: str, quick: bool = False) -> list[Case]:
    ours = ("reference", "cpu") if device == "cpu" else ("reference", "cuda")
    n = 10_000 if quick else 100_000
    codes, trie = _catalog(n)
    trie = trie.to(device)
    picks = codes[torch.randperm(n, generator=torch.Generator().manual_seed(SEED + 1))[:BEAMS]]
    out = _beam_step_cases(device, ours, trie, picks, n)
    out += _processor_cases(device, trie, codes, picks, n)
    out += [_relabel(c) for c in longid._topk_cases(device, ours, 1, 64, K, n, 100)]
    return out


def _relabel(case: Case) -> Case:
    case.family = FAMILY
    case.per_call = True
    return case


def _beam_step_cases(device, ours, trie, picks, n) -> list[Case]:
    shape = f"batch 1 beam {BEAMS} N={longid._count(n)} L={DEPTH} K={K} (4 steps in turn)"
    common = dict(family=FAMILY, op="constrained_beam_step", shape=shape, device=device,
                  per_call=True)
    g = torch.Generator().manual_seed(SEED)
    steps = []
    for level in range(DEPTH):
        states = trie.walk(picks[:, :level].to(device))
        log_probs = torch.randn(BEAMS, K, generator=g).log_softmax(-1).to(device)
        scores = torch.randn(1, BEAMS, generator=g).to(device)
        steps.append((log_probs, scores, states))

    def setup(backend):
        def make():
            return _cycle([
                (lambda lp=lp, s=s, st=st: semid_fast.constrained_beam_step(
                    lp, s, st, trie, BEAMS, backend=backend)) for lp, s, st in steps])
        return make

    return [Case(impl=be, backend=be, setup=setup(be), **common) for be in ours]


def _processor_cases(device, trie, codes, picks, n) -> list[Case]:
    shape = (f"batch 1 beams {BEAMS} N={longid._count(n)} L={DEPTH} K={K} prompt {PROMPT} "
             f"(4 steps in turn)")
    common = dict(family=FAMILY, op="logits processor step", shape=shape, device=device,
                  requires=("transformers",), baseline="SemanticIDLogitsProcessor (torch path)",
                  per_call=True)
    token_ids = SPECIAL + torch.arange(DEPTH)[:, None] * K + torch.arange(K)[None, :]
    vocab = SPECIAL + DEPTH * K
    g = torch.Generator().manual_seed(SEED)
    prompt = torch.randint(0, SPECIAL, (1, PROMPT), generator=g).expand(BEAMS, PROMPT)
    tokens = token_ids.gather(1, picks.T).T  # (BEAMS, DEPTH) token ids of the picked IDs
    inputs = [torch.cat([prompt, tokens[:, :t]], 1).to(device) for t in range(DEPTH)]
    scores = [torch.randn(BEAMS, vocab, generator=g).log_softmax(-1).to(device)
              for _ in range(DEPTH)]

    def ours_setup(backend):
        def make():
            from ..hf import SemanticIDLogitsProcessor

            processor = SemanticIDLogitsProcessor(trie, token_ids, num_beams=BEAMS,
                                                  backend=backend)
            return _cycle([(lambda i=i, s=s: processor(i, s)) for i, s in zip(inputs, scores)])
        return make

    def prefix_setup():
        from transformers.generation.logits_process import PrefixConstrainedLogitsProcessor

        from .trie_generate import PythonPrefixTrie

        peer = PythonPrefixTrie(token_ids.gather(1, codes.T).T.tolist())
        processor = PrefixConstrainedLogitsProcessor(
            peer.prefix_allowed_tokens_fn(start=PROMPT, dead_tokens=[0]), BEAMS)
        return _cycle([(lambda i=i, s=s: processor(i, s)) for i, s in zip(inputs, scores)])

    return [
        Case(impl="SemanticIDLogitsProcessor (torch path)", kind="reference",
             setup=ours_setup("reference"), **common),
        Case(impl="SemanticIDLogitsProcessor", kind="ours", setup=ours_setup("auto"), **common),
        Case(impl="transformers prefix fn (Python trie)", setup=prefix_setup, **common),
    ]

"""Per-call overhead of the public decode steps over their kernel launchers.

A decode loop calls a step thousands of times on tiny inputs, so the Python around a kernel
(checks, backend choice, torch.library dispatch, the processor's bookkeeping) can cost as
much as the kernel. This times, in one process and back to back, for batch 1 and beam 10 on
a trie of 100k 3-level IDs over K=256 codes:

- ``constrained_beam_step`` (the public call) and the custom op it runs, against the
  backend's ``beam_step`` launcher called directly with preallocated outputs;
- ``SemanticIDLogitsProcessor.__call__`` against its ``constrain_logits`` launcher called
  directly (same inputs, same generation state).

Each repetition times every variant ``--calls`` times in turn and takes the median; the
report lists each repetition and the median over repetitions of (variant - launcher).

    python benchmarks/decode_overhead.py [--device cpu|cuda] [--calls 3000] [--reps 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

import semid_fast as sf
from semid_fast import _backends, _checks
from semid_fast.ops import trie as ops


def catalog(device, n=100_000, depth=3, k=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, k, (n, depth), generator=g)
    with warnings.catch_warnings():  # random IDs collide now and then
        warnings.simplefilter("ignore")
        trie = sf.SemanticIDTrie.from_codes(codes, vocab_sizes=[k] * depth)
    return trie.to(device), codes


def median_us(fn, calls, sync):
    times = []
    for _ in range(calls):
        t0 = time.perf_counter_ns()
        fn()
        sync()
        times.append(time.perf_counter_ns() - t0)
    return statistics.median(times) / 1e3


def beam_step_variants(trie, codes, device, beams, backend):
    g = torch.Generator().manual_seed(1)
    k = trie.max_vocab
    lp = torch.randn(beams, k, generator=g).log_softmax(-1).to(device)
    scores = torch.randn(1, beams, generator=g).to(device)
    states = trie.walk(codes[:beams, :1].to(device))  # mid-decode: level-1 states
    name = _backends.choose(backend, torch.device(device), "trie", "beam_step")
    launch = _backends.launcher(name, "trie", "beam_step")
    out = (torch.empty(1, beams, device=device),
           *(torch.empty(1, beams, dtype=torch.long, device=device) for _ in range(3)))
    csr = (trie.child_offsets, trie.child_codes, trie.terminal)

    def public():
        sf.constrained_beam_step(lp, scores, states, trie, beams, backend=backend)

    def custom_op():
        ops._beam_step_op(lp, scores, states, *csr, trie.max_children, beams, False, name)

    def launcher():
        launch(lp, scores, states, None, *csr, trie.max_children, *out)

    return name, {"constrained_beam_step": public, "custom op alone": custom_op,
                  "launcher": launcher}


def processor_variants(trie, codes, device, beams, backend):
    from semid_fast.hf import SemanticIDLogitsProcessor

    k, depth = trie.max_vocab, trie.depth
    special = 3
    token_ids = special + torch.arange(depth * k).reshape(depth, k)
    processor = SemanticIDLogitsProcessor(trie, token_ids, num_beams=beams, backend=backend)
    vocab = special + depth * k
    g = torch.Generator().manual_seed(2)
    prompt = torch.randint(0, special, (beams, 20), generator=g)
    first = (token_ids[0, codes[:beams, 0]])[:, None]
    step1 = torch.cat([prompt, first], 1).to(device)
    scores = torch.randn(beams, vocab, generator=g).log_softmax(-1).to(device)
    processor(step1[:, :-1], scores)  # the generation's first call: the ID starts at 20
    generation = processor._generation()
    prev = step1[:, :-1].clone()
    launch = processor._launcher(scores.dtype)
    out = torch.empty_like(scores)
    eos = -1 if processor.eos_token_id is None else processor.eos_token_id
    name = _backends.choose(backend, torch.device(device), "trie", "constrain_logits",
                            args={"dtype": scores.dtype})

    def public():
        # Each call continues from the first step: generation.prev is the prompt again.
        generation.prev = prev
        processor(step1, scores)

    def launcher():
        launch(step1, prev, trie, processor._inverse, processor._token_table,
               processor._suffix, eos, beams, generation.start, generation.dead, scores, out)

    return name, {"SemanticIDLogitsProcessor": public, "launcher": launcher}


def report(title, variants, calls, reps, sync):
    for fn in variants.values():  # warm up: first calls compile, allocate, load pages
        for _ in range(50):
            fn()
    rows = {name: [] for name in variants}
    for _ in range(reps):
        for name, fn in variants.items():
            rows[name].append(median_us(fn, calls, sync))
    print(f"\n{title}")
    base = rows["launcher"]
    for name, values in rows.items():
        reps_text = " ".join(f"{v:7.2f}" for v in values)
        extra = statistics.median(v - b for v, b in zip(values, base))
        print(f"  {name:28s} median us per call, per repetition: {reps_text}"
              f"   | over the launcher: {extra:+.2f} us")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--beams", type=int, default=10)
    args = parser.parse_args()
    device = args.device
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    trie, codes = catalog(device)
    print(f"{trie}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    for check_values in (True, False):
        _checks.config.check_values = check_values
        name, variants = beam_step_variants(trie, codes, device, args.beams, args.backend)
        report(f"constrained_beam_step, batch 1, beam {args.beams}, backend {name}, "
               f"check_values={check_values}", variants, args.calls, args.reps, sync)
    try:
        name, variants = processor_variants(trie, codes, device, args.beams, args.backend)
    except ImportError as e:
        print(f"\nSemanticIDLogitsProcessor skipped: {e}")
    else:
        report(f"SemanticIDLogitsProcessor, batch 1, {args.beams} beams, backend {name}",
               variants, args.calls, args.reps, sync)


if __name__ == "__main__":
    main()

"""Benchmark cases of the ``trie`` family for constrained ``generate``: transformers beam
search restricted to a catalog's semantic IDs by a Python-trie ``prefix_allowed_tokens_fn``
(what LC-Rec, LETTER and MiniOneRec users run today) against
:class:`semid_fast.hf.SemanticIDLogitsProcessor`.

Two ops, on one tiny randomly initialised T5 (no download) and a synthetic catalog of the
size of the real ones (20,000 items, 4 levels of 256 codes, a skewed first level):

* ``generate``: the whole ``model.generate`` call unconstrained (the model's own cost), with
  the prefix function, and with our processor. The difference to the unconstrained row is the
  decoding overhead.
* ``constraint steps``: the constraint alone, replayed on the (input_ids, scores) of every
  step of one recorded beam search: transformers' ``PrefixConstrainedLogitsProcessor`` with
  the Python trie against our processor (its default backend: the C++ kernel on CPU, the
  CUDA kernel on a GPU; and its torch path); the baseline of this op is the prefix function.
  Ours is given ``num_beams`` so that it checks for unsatisfiable batch items as
  transformers' processor does: the same work.
  Divide by the steps in the note for the overhead per decoding step.

The Python trie (:class:`PythonPrefixTrie`) is the peer, written here for the benchmark and
the tests; it is not part of the semid_fast API.
"""

from __future__ import annotations

import warnings

import torch

from .harness import Case

FAMILY = "trie"
SEED = 20240611
PAD, EOS = 0, 1
SPECIAL = 3  # pad, eos, unk


class PythonPrefixTrie:
    """A dict-of-dicts trie over token ids and the ``prefix_allowed_tokens_fn`` it gives.

    ``token_rows``: one list of token ids per item; with ``eos_token_id`` every complete ID
    also allows eos, and after eos only eos (greedy search and sampling keep calling the
    function on finished rows).
    """

    def __init__(self, token_rows, eos_token_id: int | None = None):
        self.root: dict = {}
        ended: dict = {}
        if eos_token_id is not None:
            ended[eos_token_id] = ended
        for row in token_rows:
            node = self.root
            for token in row:
                node = node.setdefault(token, {})
            if eos_token_id is not None:
                node[eos_token_id] = ended

    def prefix_allowed_tokens_fn(self, start: int, dead_tokens: list[int]):
        """The function for ``generate(prefix_allowed_tokens_fn=...)``; the ID starts at
        position ``start`` of each sequence. transformers rejects an empty list, so a prefix
        outside the trie (a beam already at -inf) gets ``dead_tokens``: the beam's score is
        -inf whatever it unmasks."""

        def allowed(batch_id: int, sequence: torch.Tensor) -> list[int]:
            node = self.root
            for token in sequence[start:].tolist():
                node = node.get(token)
                if node is None:
                    return dead_tokens
            return list(node) or dead_tokens

        return allowed


def synthetic_catalog(n: int, depth: int, k: int, seed: int = SEED) -> torch.Tensor:
    """(n, depth) int64 codes: level 0 drawn from a Zipf-like law (real first levels use few
    codes), the other levels uniform."""
    g = torch.Generator().manual_seed(seed)
    weights = 1.0 / torch.arange(1, k + 1, dtype=torch.float64)
    first = torch.multinomial(weights, n, replacement=True, generator=g)
    rest = torch.randint(0, k, (n, depth - 1), generator=g)
    return torch.cat([first[:, None], rest], dim=1)


def level_token_ids(depth: int, k: int) -> torch.Tensor:
    """(depth, k) token ids: level j code c is token SPECIAL + j * k + c."""
    return SPECIAL + torch.arange(depth)[:, None] * k + torch.arange(k)[None, :]


def tiny_t5(vocab: int, seed: int = SEED):
    """A randomly initialised 2+2-layer T5 with d_model 64 (the model cost kept small)."""
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    config = T5Config(vocab_size=vocab, d_model=64, d_ff=128, d_kv=16, num_heads=4,
                      num_layers=2, num_decoder_layers=2, pad_token_id=PAD, eos_token_id=EOS,
                      decoder_start_token_id=PAD)
    return T5ForConditionalGeneration(config).eval()


def cases(device: str, quick: bool = False) -> list[Case]:
    n, depth, k = (2_000, 4, 256) if quick else (20_000, 4, 256)
    batch, beams = (2, 10) if quick else (4, 20)
    shape = f"N={n // 1000}k L={depth} K={k} batch={batch} beams={beams} T5-tiny"
    requires = ("transformers",)
    state: dict = {}

    def prepare():
        # Built once, on first use, and shared by every case of this family.
        if state:
            return state
        from ..hf import SemanticIDLogitsProcessor
        from ..ops.trie import SemanticIDTrie

        codes = synthetic_catalog(n, depth, k)
        token_ids = level_token_ids(depth, k)
        model = tiny_t5(SPECIAL + depth * k).to(device)
        g = torch.Generator().manual_seed(SEED)
        history = torch.randint(SPECIAL, SPECIAL + depth * k, (batch, 4 * depth), generator=g)
        peer = PythonPrefixTrie(token_ids.gather(1, codes.T).T.tolist())
        with warnings.catch_warnings():  # random IDs may collide; decoding cost is the same
            warnings.simplefilter("ignore", UserWarning)
            trie = SemanticIDTrie.from_codes(codes).to(device)
        state.update(
            model=model, inputs=history.to(device), token_ids=token_ids,
            prefix_fn=peer.prefix_allowed_tokens_fn(start=1, dead_tokens=[PAD]),
            processor=SemanticIDLogitsProcessor(trie, token_ids, num_beams=beams))
        return state

    def generate(s, **constraint):
        return s["model"].generate(s["inputs"], num_beams=beams, num_return_sequences=beams,
                                   max_new_tokens=depth, do_sample=False, **constraint)

    def generate_setup(kind):
        def setup():
            s = prepare()
            constraint = {"unconstrained": {},
                          "prefix": {"prefix_allowed_tokens_fn": s["prefix_fn"]},
                          "ours": {"logits_processor": [s["processor"]]}}[kind]
            return lambda: generate(s, **constraint)
        return setup

    def steps_setup(kind):
        def setup():
            from transformers.generation.logits_process import PrefixConstrainedLogitsProcessor

            from ..hf import SemanticIDLogitsProcessor

            s = prepare()
            recorded = []

            def record(input_ids, scores):
                recorded.append((input_ids.clone(), scores.clone()))
                return s["processor"](input_ids, scores)

            generate(s, logits_processor=[record])
            if kind == "ours":
                run = s["processor"]
            elif kind == "ours (torch path)":
                run = SemanticIDLogitsProcessor(s["processor"].trie, s["token_ids"],
                                                num_beams=beams, backend="reference")
            else:
                run = PrefixConstrainedLogitsProcessor(s["prefix_fn"], beams)

            def replay():
                for input_ids, scores in recorded:
                    run(input_ids, scores)
            rows = recorded[0][0].shape[0]
            return replay, f"{len(recorded)} steps of {rows} rows per call"
        return setup

    gen = dict(family=FAMILY, op="generate", shape=shape, device=device, requires=requires,
               baseline="transformers prefix fn (Python trie)")
    steps = dict(family=FAMILY, op="constraint steps", shape=shape, device=device,
                 requires=requires, baseline="transformers prefix fn (Python trie)")
    return [
        Case(impl="unconstrained (model only)", setup=generate_setup("unconstrained"), **gen),
        Case(impl="transformers prefix fn (Python trie)", setup=generate_setup("prefix"), **gen),
        Case(impl="SemanticIDLogitsProcessor", kind="ours", setup=generate_setup("ours"), **gen),
        Case(impl="transformers prefix fn (Python trie)", setup=steps_setup("prefix"), **steps),
        Case(impl="SemanticIDLogitsProcessor", kind="ours", setup=steps_setup("ours"), **steps),
        Case(impl="SemanticIDLogitsProcessor (torch path)", kind="reference",
             setup=steps_setup("ours (torch path)"), **steps),
    ]

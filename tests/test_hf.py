"""SemanticIDLogitsProcessor against transformers' own prefix-constrained beam search.

The oracle is transformers: ``generate(prefix_allowed_tokens_fn=...)`` with a dict-of-dicts
trie over token ids (semid_fast.bench.trie_generate.PythonPrefixTrie) must give the very sequences
and sequence scores that ``generate(logits_processor=[ours])`` gives, on tiny randomly
initialised models (a T5 encoder-decoder, a GPT-2 decoder-only), on real catalogs and on a
synthetic variable-length one (IDs that are prefixes of others, ended by eos).
"""

import copy
import math
import threading
import warnings

import pytest
import torch

pytest.importorskip("transformers")

from transformers import (GPT2Config, GPT2LMHeadModel, LogitsProcessor,  # noqa: E402
                          T5Config, T5ForConditionalGeneration)
from transformers.generation.logits_process import PrefixConstrainedLogitsProcessor  # noqa: E402

from semid_fast import sid_files  # noqa: E402
from semid_fast.bench.trie_generate import PythonPrefixTrie  # noqa: E402
from semid_fast.hf import SemanticIDLogitsProcessor  # noqa: E402
from semid_fast.ops.trie import SemanticIDTrie  # noqa: E402

PAD, EOS, UNK = 0, 1, 2
SPECIAL = 3
# Tests that feed rows outside the catalog on purpose.
DEAD_ROWS_WARN = pytest.mark.filterwarnings("ignore:SemanticIDLogitsProcessor. a row had no "
                                            "allowed token:RuntimeWarning")


class Catalog:
    """A catalog with its vocabulary: specials, then one token per used (level, code)."""

    def __init__(self, codes, lengths, token_strings):
        self.codes, self.lengths = codes, lengths
        vocab = {"<pad>": PAD, "</s>": EOS, "<unk>": UNK}
        for level in token_strings:
            for code in sorted(level):
                vocab[level[code]] = len(vocab)
        self.vocab_size = len(vocab)
        self.token_ids = sid_files.token_id_map(token_strings, vocab)
        with warnings.catch_warnings():  # real catalogs have colliding IDs: expected here
            warnings.filterwarnings("ignore", "SemanticIDTrie.from_codes: .* share a full ID")
            self.trie = SemanticIDTrie.from_codes(codes, lengths=lengths)
        tokens = self.token_ids.gather(1, codes.clamp_min(0).T).T.tolist()
        self.token_rows = [row[:n] for row, n in zip(tokens, lengths.tolist())]

    def ids_in_catalog(self, generated, eos=None):
        """True per generated row (ID tokens, then eos when ``eos`` is given) when its tokens
        up to eos / padding are the ID of an item of the catalog."""
        known = {tuple(row) for row in self.token_rows}
        out = []
        for row in generated.tolist():
            ends = [j for j, token in enumerate(row) if token in (EOS, PAD)]
            end = ends[0] if ends else len(row)
            closed = eos is None or (end < len(row) and row[end] == eos)
            out.append(tuple(row[:end]) in known and closed)
        return torch.tensor(out)


def table_catalog(table, token_strings=None):
    return Catalog(table.codes, table.lengths, token_strings or table.tokens)


def leaf_token_strings(table):
    """MVIGER's integer levels have no token strings: name them <L{level}_{code}>."""
    strings = [{int(c): f"<L{j}_{int(c)}>" for c in table.codes[:, j].unique()}
               for j in range(table.depth - 1)]
    return strings + [table.tokens[-1]]


def variable_length_catalog(seed, n=60, depth=4, k=5):
    """Random IDs of lengths 1..depth over k codes, with the prefixes of some IDs also IDs."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, k, (n, depth), generator=g)
    lengths = torch.randint(1, depth + 1, (n,), generator=g)
    prefixes = codes[: n // 3].clone()  # items whose IDs are prefixes of the first third
    prefix_lengths = (lengths[: n // 3] - 1).clamp_min(1)
    codes = torch.cat([codes, prefixes])
    lengths = torch.cat([lengths, prefix_lengths])
    codes = torch.where(torch.arange(depth)[None, :] < lengths[:, None], codes, -1)
    strings = [{c: f"<{chr(97 + j)}_{c}>" for c in range(k)} for j in range(depth)]
    return Catalog(codes, lengths, strings)


def tiny_t5(vocab, seed=0):
    torch.manual_seed(seed)
    config = T5Config(vocab_size=vocab, d_model=32, d_ff=64, d_kv=8, num_heads=4, num_layers=2,
                      num_decoder_layers=2, pad_token_id=PAD, eos_token_id=EOS,
                      decoder_start_token_id=PAD, initializer_factor=4.0)
    return T5ForConditionalGeneration(config).eval()


def tiny_gpt2(vocab, seed=0, n_positions=64):
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=n_positions,
                        bos_token_id=EOS, eos_token_id=EOS, pad_token_id=PAD,
                        initializer_range=0.5)
    return GPT2LMHeadModel(config).eval()


def dead_tokens(eos):
    """What the processor leaves to a row with no allowed token: eos (nothing without eos;
    transformers rejects an empty list, so the prefix function gives pad, whose score stays
    -inf on a beam that is at -inf already)."""
    return [PAD] if eos is None else [eos]


def beam_search_both(model, catalog, inputs, beams, eos, backend="auto"):
    """generate with the Python-trie prefix function and with our processor."""
    decoder_only = not model.config.is_encoder_decoder
    start = inputs.shape[1] if decoder_only else 1
    depth = catalog.trie.depth
    common = dict(num_beams=beams, num_return_sequences=beams, do_sample=False,
                  max_new_tokens=depth + (eos is not None), output_scores=True,
                  return_dict_in_generate=True, pad_token_id=PAD,
                  attention_mask=torch.ones_like(inputs))
    peer = PythonPrefixTrie(catalog.token_rows, eos_token_id=eos)
    with torch.no_grad():
        theirs = model.generate(inputs, prefix_allowed_tokens_fn=peer.prefix_allowed_tokens_fn(
            start, dead_tokens=dead_tokens(eos)), **common)
        processor = SemanticIDLogitsProcessor(catalog.trie, catalog.token_ids, eos_token_id=eos,
                                              backend=backend)
        ours = model.generate(inputs, logits_processor=[processor], **common)
    return theirs, ours, start


def assert_same_beams(theirs, ours, catalog, start, eos):
    assert torch.equal(ours.sequences, theirs.sequences)
    assert torch.equal(ours.sequences_scores, theirs.sequences_scores)
    assert bool(torch.isfinite(ours.sequences_scores).all())
    valid = catalog.ids_in_catalog(ours.sequences[:, start:], eos)
    assert bool(valid.all()), "a generated sequence is not an ID of the catalog (then eos)"


def history(catalog, batch, length, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(SPECIAL, catalog.vocab_size, (batch, length), generator=g)


REAL_CATALOGS = {
    "industrial": ("amazon18_industrial/sid.index.json", sid_files.load_index_json),
    "beauty": ("amazon14_beauty/sid.index.json", sid_files.load_index_json),
    "sports_leaf": ("amazon14_sports/sid_leaf.json", sid_files.load_sid_leaf_json),
}


def real_catalog(shared_data, name):
    path, loader = REAL_CATALOGS[name]
    table = loader(shared_data / path)
    return table_catalog(table, leaf_token_strings(table) if name == "sports_leaf" else None)


@pytest.mark.parametrize("name,backend", [(name, "auto") for name in sorted(REAL_CATALOGS)]
                         + [("industrial", "reference")])
@pytest.mark.parametrize("eos", [None, EOS])
def test_t5_beam_search_real_catalog(shared_data, name, backend, eos):
    catalog = real_catalog(shared_data, name)
    model = tiny_t5(catalog.vocab_size)
    inputs = history(catalog, batch=2, length=9, seed=1)
    theirs, ours, start = beam_search_both(model, catalog, inputs, beams=6, eos=eos,
                                           backend=backend)
    assert_same_beams(theirs, ours, catalog, start, eos)


@pytest.mark.parametrize("eos", [None, EOS])
def test_decoder_only_beam_search_real_catalog(shared_data, eos):
    catalog = real_catalog(shared_data, "industrial")
    model = tiny_gpt2(catalog.vocab_size)
    inputs = history(catalog, batch=3, length=7, seed=2)
    theirs, ours, start = beam_search_both(model, catalog, inputs, beams=5, eos=eos)
    assert start == 7
    assert_same_beams(theirs, ours, catalog, start, eos)


BACKENDS = ["reference", "cpu"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("arch", ["t5", "gpt2"])
def test_variable_length_ids(seed, arch, backend):
    catalog = variable_length_catalog(seed)
    model = (tiny_t5 if arch == "t5" else tiny_gpt2)(catalog.vocab_size, seed=seed)
    inputs = history(catalog, batch=2, length=5, seed=seed)
    # 12 beams on a catalog of ~80 IDs: some beams run out of valid continuations.
    theirs, ours, start = beam_search_both(model, catalog, inputs, beams=12, eos=EOS,
                                           backend=backend)
    assert_same_beams(theirs, ours, catalog, start, EOS)
    ends = (ours.sequences[:, start:] == EOS).int().argmax(dim=1)
    assert int(ends.min()) < catalog.trie.depth  # short IDs did end with eos


@pytest.mark.parametrize("backend", BACKENDS)
def test_more_beams_than_ids(backend):
    """A beam search wider than the catalog keeps dead beams at -inf; both agree on them."""
    catalog = variable_length_catalog(3, n=4, depth=3, k=3)
    model = tiny_t5(catalog.vocab_size)
    inputs = history(catalog, batch=2, length=4, seed=3)
    theirs, ours, start = beam_search_both(model, catalog, inputs, beams=8, eos=EOS,
                                           backend=backend)
    assert torch.equal(ours.sequences, theirs.sequences)
    assert torch.equal(ours.sequences_scores, theirs.sequences_scores)
    finite = torch.isfinite(ours.sequences_scores)
    assert bool(catalog.ids_in_catalog(ours.sequences[finite, start:], EOS).all())


def test_greedy_search_with_finished_rows():
    catalog = variable_length_catalog(4)
    model = tiny_t5(catalog.vocab_size)
    inputs = history(catalog, batch=4, length=6, seed=4)
    peer = PythonPrefixTrie(catalog.token_rows, eos_token_id=EOS)
    common = dict(do_sample=False, max_new_tokens=catalog.trie.depth + 1, pad_token_id=PAD)
    with torch.no_grad():
        theirs = model.generate(inputs, prefix_allowed_tokens_fn=peer.prefix_allowed_tokens_fn(
            1, dead_tokens=[EOS]), **common)
        ours = model.generate(inputs, logits_processor=[
            SemanticIDLogitsProcessor(catalog.trie, catalog.token_ids, eos_token_id=EOS)], **common)
    assert torch.equal(ours, theirs)
    assert bool(catalog.ids_in_catalog(ours[:, 1:], EOS).all())


# --- the processor called directly, against PrefixConstrainedLogitsProcessor ---------------


def random_rows(catalog, rows, g, dead_share=0.25):
    """(rows, 2 + depth) input_ids: a start token, then a random ID followed by eos up to the
    end; about ``dead_share`` of the rows hold random tokens (never eos; some past the
    vocabulary) instead."""
    depth = catalog.trie.depth
    out = torch.full((rows, 2 + depth), EOS, dtype=torch.int64)
    out[:, 0] = PAD
    for r in range(rows):
        if float(torch.rand((), generator=g)) >= dead_share:
            row = catalog.token_rows[int(torch.randint(len(catalog.token_rows), (), generator=g))]
            out[r, 1:1 + len(row)] = torch.tensor(row)
        else:
            out[r, 1:] = torch.randint(UNK, catalog.vocab_size + 3, (1 + depth,), generator=g)
    return out


@DEAD_ROWS_WARN
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("backend", BACKENDS)
def test_processor_masks_like_prefix_function(seed, backend):
    """Every step of one generation, row by row, against the Python trie's allowed lists."""
    catalog = variable_length_catalog(seed)
    peer = PythonPrefixTrie(catalog.token_rows, eos_token_id=EOS)
    fn = peer.prefix_allowed_tokens_fn(1, dead_tokens=[EOS])
    processor = SemanticIDLogitsProcessor(catalog.trie, catalog.token_ids, eos_token_id=EOS,
                                          backend=backend)
    g = torch.Generator().manual_seed(seed)
    input_ids = random_rows(catalog, 16, g)
    for length in range(1, input_ids.shape[1] + 1):
        scores = torch.randn(16, catalog.vocab_size + 3, generator=g).log_softmax(-1)
        out = processor(input_ids[:, :length], scores)
        for r in range(16):
            allowed = fn(0, input_ids[r, :length])
            expected = torch.full_like(scores[r], -math.inf)
            expected[allowed] = scores[r, allowed]
            assert torch.equal(out[r], expected), (length, r, allowed)


@pytest.mark.parametrize("backend", BACKENDS)
def test_processor_equals_transformers_processor_under_reordering(backend):
    """Rows reordered between calls (as beam search does) give the same masks as
    transformers' processor over the Python trie."""
    catalog = variable_length_catalog(5)
    peer = PythonPrefixTrie(catalog.token_rows, eos_token_id=EOS)
    theirs = PrefixConstrainedLogitsProcessor(peer.prefix_allowed_tokens_fn(1, [EOS]), 4)
    ours = SemanticIDLogitsProcessor(catalog.trie, catalog.token_ids, eos_token_id=EOS,
                                     backend=backend)
    g = torch.Generator().manual_seed(5)
    input_ids = random_rows(catalog, 12, g, dead_share=0.0)
    for length in range(1, input_ids.shape[1] + 1):
        input_ids = input_ids[torch.randperm(12, generator=g)]
        scores = torch.randn(12, catalog.vocab_size, generator=g).log_softmax(-1)
        assert torch.equal(ours(input_ids[:, :length], scores),
                           theirs(input_ids[:, :length], scores))


@pytest.mark.parametrize("backend", BACKENDS)
def test_unsatisfiable_fallback_with_num_beams(backend):
    """With num_beams, a batch item whose allowed tokens are all -inf gets them at 0, as in
    PrefixConstrainedLogitsProcessor."""
    catalog = variable_length_catalog(6)
    peer = PythonPrefixTrie(catalog.token_rows, eos_token_id=EOS)
    theirs = PrefixConstrainedLogitsProcessor(peer.prefix_allowed_tokens_fn(1, [EOS]), 3)
    ours = SemanticIDLogitsProcessor(catalog.trie, catalog.token_ids, eos_token_id=EOS,
                                     num_beams=3, backend=backend)
    g = torch.Generator().manual_seed(6)
    input_ids = random_rows(catalog, 6, g, dead_share=0.0)[:, :2]
    scores = torch.randn(6, catalog.vocab_size, generator=g).log_softmax(-1)
    scores[:3] = -math.inf  # batch item 0: nothing left by "earlier processors"
    scores[3:, : catalog.vocab_size // 2] = -math.inf
    ours(input_ids[:, :1], scores)  # the generation's first step: the ID starts at column 1
    out = ours(input_ids, scores)
    assert torch.equal(out, theirs(input_ids, scores))
    assert bool((out[:3] == 0).any(dim=1).all())


@pytest.mark.parametrize("backend", BACKENDS)
def test_new_generation_restarts_the_id(backend):
    catalog = variable_length_catalog(7)
    ours = SemanticIDLogitsProcessor(catalog.trie, catalog.token_ids, eos_token_id=EOS,
                                     backend=backend)
    scores = torch.zeros(2, catalog.vocab_size)
    prompt = torch.full((2, 5), UNK)
    first = ours(prompt, scores)  # the ID starts after these 5 tokens: level-0 tokens allowed
    root_codes = catalog.trie.valid_next(torch.zeros(1, dtype=torch.int64))[0].nonzero()[:, 0]
    level0 = catalog.token_ids[0, root_codes]
    assert torch.equal(torch.isfinite(first).nonzero()[:, 1].unique(), level0.sort().values)
    token = int(catalog.token_rows[0][0])
    ours(torch.cat([prompt, torch.full((2, 1), token)], dim=1), scores)
    again = ours(torch.full((2, 3), UNK), scores)  # shorter: a new generate call
    assert torch.equal(again, first)
    ours.reset()
    assert torch.equal(ours(torch.full((2, 6), UNK), scores), first)


@DEAD_ROWS_WARN
@pytest.mark.parametrize("backend", BACKENDS)
def test_finished_rows_only_repeat_eos(backend):
    """Rows that already hold eos (finished rows of greedy search or sampling) may only
    repeat eos, so that sampling never sees an all -inf row."""
    catalog = variable_length_catalog(10)
    ours = SemanticIDLogitsProcessor(catalog.trie, catalog.token_ids, eos_token_id=EOS,
                                     backend=backend)
    short = next(row for row in catalog.token_rows if len(row) < catalog.trie.depth)
    finished = torch.tensor([[PAD, *short, EOS] + [PAD] * (catalog.trie.depth - len(short))])
    live = torch.tensor([[PAD, *catalog.token_rows[0][:1]] + [PAD] * catalog.trie.depth])
    live = live[:, : finished.shape[1]]
    scores = torch.randn(2, catalog.vocab_size).log_softmax(-1)
    rows = torch.cat([finished, live])
    for length in range(1, rows.shape[1]):  # one generation: the ID starts at column 1
        ours(rows[:, :length], scores)
    out = ours(rows, scores)
    assert torch.isfinite(out[0]).nonzero().flatten().tolist() == [EOS]
    assert out[0, EOS] == scores[0, EOS]
    # the live row, padded past its ID, is dead: eos only
    assert torch.isfinite(out[1]).nonzero().flatten().tolist() == [EOS]


@pytest.mark.parametrize("backend", BACKENDS)
def test_tokens_outside_any_vocabulary_give_dead_rows(backend):
    catalog = variable_length_catalog(11)
    ours = SemanticIDLogitsProcessor(catalog.trie, catalog.token_ids, eos_token_id=EOS,
                                     backend=backend)
    scores = torch.randn(3, catalog.vocab_size).log_softmax(-1)
    rows = torch.tensor([[PAD, -5, -7], [PAD, 10**12, 3], [PAD, catalog.token_rows[0][0], -1]])
    with pytest.warns(RuntimeWarning, match="no allowed token"):
        for length in range(1, 4):
            out = ours(rows[:, :length], scores)
    assert bool((torch.isfinite(out).nonzero()[:, 1] == EOS).all())
    assert bool(torch.isfinite(out[:, EOS]).all())


@DEAD_ROWS_WARN
@pytest.mark.parametrize("backend", BACKENDS)
def test_int32_rows_strided_rows_and_empty_batches(backend):
    """input_ids of another integer dtype, a column-strided view and zero rows: the same
    masks as the plain int64 call, never a read outside the rows."""
    catalog = variable_length_catalog(3)
    make = lambda: SemanticIDLogitsProcessor(catalog.trie, catalog.token_ids,  # noqa: E731
                                             eos_token_id=EOS, backend=backend)
    g = torch.Generator().manual_seed(3)
    rows = random_rows(catalog, 8, g)
    wide = torch.stack([rows, torch.full_like(rows, -9)], 2).reshape(8, -1)  # stride 2
    plain, narrow, strided = make(), make(), make()
    for length in range(1, rows.shape[1] + 1):
        scores = torch.randn(8, catalog.vocab_size, generator=g).log_softmax(-1)
        want = plain(rows[:, :length], scores)
        assert torch.equal(narrow(rows[:, :length].int(), scores), want)
        assert torch.equal(strided(wide[:, 0:2 * length:2], scores), want)
    empty = make()
    for length in (1, 2):
        out = empty(torch.zeros(0, length, dtype=torch.long), torch.zeros(0, catalog.vocab_size))
        assert out.shape == (0, catalog.vocab_size)


# --- one processor over consecutive generate calls --------------------------------------


class Recorder(LogitsProcessor):
    """Records the input lengths generate feeds the processors (changes no score)."""

    def __init__(self):
        self.lengths = []

    def __call__(self, input_ids, scores):
        self.lengths.append(input_ids.shape[1])
        return scores


def marker_prefix_fn(token_rows, marker, eos):
    """A prefix_allowed_tokens_fn that finds where the ID starts as LC-Rec's
    ``get_prefix_allowed_tokens_fn`` (zhengbw0324/LC-Rec, data.py) does: after the last
    occurrence of the response marker, scanning the sequence from its end. LC-Rec then allows
    the whole level-i token set; this one walks the catalog's trie (what the processor
    enforces), eos after a complete ID, eos only for rows outside the catalog."""
    root = PythonPrefixTrie(token_rows, eos_token_id=eos).root
    m = len(marker)

    def allowed(batch_id, sequence):
        tokens = sequence.tolist()
        ends = [i for i in range(len(tokens) - m, -1, -1) if tokens[i:i + m] == marker]
        node = root
        for token in tokens[ends[0] + m:]:
            node = node.get(token)
            if node is None:
                return [eos]
        return list(node) or [eos]

    return allowed


def lcrec_prompts(catalog, histories, sep, marker):
    """LC-Rec-style prompts: the ID tokens of each history item and a separator, then the
    response marker."""
    prompts = []
    for items in histories:
        tokens = [t for item in items for t in (*catalog.token_rows[item], sep)]
        prompts.append(torch.tensor([tokens + marker]))
    return prompts


@pytest.mark.parametrize("backend", BACKENDS + [pytest.param("cuda", marks=pytest.mark.gpu)])
def test_reused_processor_over_consecutive_beauty_users(shared_data, backend):
    """LC-Rec's evaluation setting: batch size 1, consecutive users of Beauty, one processor
    for all. A user whose history is one item longer than the previous user's has a prompt
    exactly one token longer than the previous call's last input (5 tokens per item, 5
    decoding steps); the processor must still see a new generation there. The reused
    processor, a fresh processor per call and the LC-Rec-style prefix function give the
    same beams."""
    import json

    table = sid_files.load_index_json(shared_data / "amazon14_beauty/sid.index.json")
    catalog = table_catalog(table)
    with open(shared_data / "amazon14_beauty/inter.json") as f:
        inter = json.load(f)
    # LC-Rec: the last 20 items before the target. The first 10 consecutive users (in file
    # order) with three users whose history is one item longer than the previous user's.
    histories = [items[:-1][-20:] for items in inter.values()]
    longer = [len(b) == len(a) + 1 for a, b in zip(histories, histories[1:])]
    first = next(i for i in range(len(longer)) if sum(longer[i:i + 9]) >= 3)
    histories = histories[first:first + 10]
    sep, marker = catalog.vocab_size, [catalog.vocab_size + 1, catalog.vocab_size + 2]
    device = "cuda" if backend == "cuda" else "cpu"
    model = tiny_gpt2(catalog.vocab_size + 3, n_positions=128).to(device)
    trie = catalog.trie.to(device)
    depth = catalog.trie.depth
    common = dict(num_beams=5, num_return_sequences=5, do_sample=False,
                  max_new_tokens=depth + 1, output_scores=True, return_dict_in_generate=True,
                  pad_token_id=PAD)
    oracle = marker_prefix_fn(catalog.token_rows, marker, EOS)
    reused = SemanticIDLogitsProcessor(trie, catalog.token_ids, eos_token_id=EOS,
                                       backend=backend)
    last_input, hits = None, 0
    with torch.no_grad():
        for prompt in lcrec_prompts(catalog, histories, sep, marker):
            prompt = prompt.to(device)
            recorder = Recorder()
            mask = torch.ones_like(prompt)
            ours = model.generate(prompt, attention_mask=mask,
                                  logits_processor=[reused, recorder], **common)
            hits += last_input is not None and prompt.shape[1] == last_input + 1
            last_input = recorder.lengths[-1]
            fresh = model.generate(prompt, attention_mask=mask, logits_processor=[
                SemanticIDLogitsProcessor(trie, catalog.token_ids, eos_token_id=EOS,
                                          backend=backend)], **common)
            theirs = model.generate(prompt, attention_mask=mask,
                                    prefix_allowed_tokens_fn=oracle, **common)
            assert torch.equal(ours.sequences, fresh.sequences)
            assert torch.equal(ours.sequences_scores, fresh.sequences_scores)
            assert torch.equal(ours.sequences, theirs.sequences)
            # GPU reductions need not be deterministic: scores within float rounding there
            assert torch.allclose(ours.sequences_scores, theirs.sequences_scores, rtol=0,
                                  atol=0 if device == "cpu" else 1e-6)
            generated = ours.sequences[:, prompt.shape[1]:].cpu()
            assert bool(catalog.ids_in_catalog(generated, EOS).all())
    assert hits >= 3, "the users chosen no longer contain the case this test is about"


@pytest.mark.parametrize("backend", BACKENDS + [pytest.param("cuda", marks=pytest.mark.gpu)])
def test_decoder_only_prompt_one_token_longer_than_last_input(backend):
    """Synthetic prompts built to hit the case at every call, with two rows each, beam
    search and greedy search."""
    catalog = variable_length_catalog(13)
    device = "cuda" if backend == "cuda" else "cpu"
    model = tiny_gpt2(catalog.vocab_size + 2, seed=13).to(device)
    trie = catalog.trie.to(device)
    marker = [catalog.vocab_size, catalog.vocab_size + 1]
    oracle = marker_prefix_fn(catalog.token_rows, marker, EOS)
    for beams in (4, 1):
        common = dict(num_beams=beams, num_return_sequences=beams, do_sample=False,
                      max_new_tokens=catalog.trie.depth + 1, pad_token_id=PAD)
        reused = SemanticIDLogitsProcessor(trie, catalog.token_ids, eos_token_id=EOS,
                                           backend=backend)
        length = 6
        with torch.no_grad():
            for call in range(4):
                prompt = torch.cat([history(catalog, 2, length - 2, seed=13 + call),
                                    torch.tensor([marker] * 2)], dim=1).to(device)
                recorder = Recorder()
                ours = model.generate(prompt, attention_mask=torch.ones_like(prompt),
                                      logits_processor=[reused, recorder], **common)
                theirs = model.generate(prompt, attention_mask=torch.ones_like(prompt),
                                        prefix_allowed_tokens_fn=oracle, **common)
                assert torch.equal(ours, theirs)
                assert bool(catalog.ids_in_catalog(ours[:, length:].cpu(), EOS).all())
                length = recorder.lengths[-1] + 1


@DEAD_ROWS_WARN
@pytest.mark.parametrize("backend", BACKENDS)
def test_continuation_is_told_by_content_not_shape(backend):
    """Called directly: rows one column longer that extend no row of the previous call start
    a new generation; rows that extend previous rows in any order continue it; reset()
    forgets the generation."""
    catalog = variable_length_catalog(14)
    ours = SemanticIDLogitsProcessor(catalog.trie, catalog.token_ids, eos_token_id=EOS,
                                     backend=backend)
    fresh = lambda: SemanticIDLogitsProcessor(catalog.trie, catalog.token_ids,  # noqa: E731
                                              eos_token_id=EOS, backend=backend)
    g = torch.Generator().manual_seed(14)
    rows = random_rows(catalog, 6, g, dead_share=0.0)  # column 0 is the prompt, IDs from 1
    scores = torch.randn(6, catalog.vocab_size, generator=g).log_softmax(-1)
    for length in (1, 2):
        ours(rows[:, :length], scores)
    # one column longer, other content: a new generation whose prompt is all 3 columns
    other = torch.full((6, 3), UNK)
    assert torch.equal(ours(other, scores), fresh()(other, scores))
    # the next step of that generation, rows reordered and duplicated as beam search does
    parents = torch.tensor([5, 0, 0, 3, 2, 2])
    token = int(catalog.token_ids[0][catalog.codes[0, 0]])
    step = torch.cat([other[parents], torch.full((6, 1), token)], dim=1)
    want = fresh()
    want(other, scores)
    assert torch.equal(ours(step, scores), want(step, scores))
    # one row that extends nothing makes the whole call a new generation
    odd = step.clone()
    odd[4, 0] = PAD
    odd = torch.cat([odd, torch.full((6, 1), token)], dim=1)
    assert torch.equal(ours(odd, scores), fresh()(odd, scores))
    # feeding rows back one token longer reads as a continuation until reset()
    longer = torch.cat([odd, torch.full((6, 1), UNK)], dim=1)
    assert not torch.equal(ours(longer, scores), fresh()(longer, scores))
    ours.reset()
    assert torch.equal(ours(longer, scores), fresh()(longer, scores))


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_processor_shared_by_two_threads(backend):
    """Two threads that interleave their generations on one processor get, call for call,
    the masks of the same calls run alone on a fresh processor."""
    catalog = variable_length_catalog(15)
    make = lambda: SemanticIDLogitsProcessor(catalog.trie, catalog.token_ids,  # noqa: E731
                                             eos_token_id=EOS, backend=backend)
    shared = make()
    n_generations = 12

    def generations(thread):
        """Per generation its calls: prompt (thread 0: 2 tokens, thread 1: 3 and other
        ones, so the threads' rows never extend each other's) then a growing ID."""
        g = torch.Generator().manual_seed(100 + thread)
        calls = []
        for _ in range(n_generations):
            rows = random_rows(catalog, 4, g, dead_share=0.0)[:, 1:]
            prompt = torch.full((4, 2 + thread), UNK + thread)
            full = torch.cat([prompt, rows], dim=1)
            scores = torch.randn(4, catalog.vocab_size, generator=g).log_softmax(-1)
            calls.append([(full[:, :length], scores)
                          for length in range(prompt.shape[1], full.shape[1] + 1)])
        return calls

    work = [generations(0), generations(1)]
    alone = []
    for calls in work:
        one = make()
        alone.append([[one(ids, sc) for ids, sc in generation] for generation in calls])
    # Both threads call step j before either calls step j + 1, so every call follows a call
    # of the other thread.
    barrier = threading.Barrier(2, timeout=60)
    got = [[], []]
    errors = []

    def run(thread):
        try:
            for generation in work[thread]:
                got[thread].append([])
                for ids, sc in generation:
                    got[thread][-1].append(shared(ids, sc))
                    barrier.wait()
        except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(t,)) for t in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for thread in range(2):
        for mine, theirs in zip(got[thread], alone[thread], strict=True):
            assert all(torch.equal(a, b) for a, b in zip(mine, theirs, strict=True))
    # A copy (the state is per thread) starts afresh, like a new processor.
    ids, sc = work[0][0][1]
    assert torch.equal(copy.deepcopy(shared)(ids, sc), make()(ids, sc))


# --- suffix_token_ids (MiniOneRec) ------------------------------------------------------


class MiniOneRecRule:
    """The constraint of MiniOneRec's evaluate.py (AkaliKong/MiniOneRec): every item's token
    sequence is its ID tokens, the tokens of "\\n", then eos, and after a generated prefix the
    allowed tokens are the next tokens of every item sequence that begins with it (its
    hash_dict keyed by the prefix). A prefix that begins no sequence (a finished or dead row)
    gets ``dead``: MiniOneRec's processor leaves such rows masked; transformers rejects an
    empty list."""

    def __init__(self, token_rows, suffix, eos):
        self.next: dict = {}
        for row in token_rows:
            sequence = [*row, *suffix, *([] if eos is None else [eos])]
            for i in range(len(sequence)):
                self.next.setdefault(tuple(sequence[:i]), set()).add(sequence[i])

    def prefix_fn(self, start, dead):
        def allowed(batch_id, sequence):
            return sorted(self.next.get(tuple(sequence[start:].tolist()), dead))

        return allowed


def suffix_catalog(name, shared_data):
    catalog = variable_length_catalog(15) if name == "varlen" else real_catalog(shared_data, name)
    return catalog, [catalog.vocab_size, catalog.vocab_size + 1][: 1 if name == "beauty" else 2]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arch", ["t5", "gpt2"])
@pytest.mark.parametrize("name", ["beauty", "varlen"])
def test_suffix_beam_search_matches_minionerec_rule(request, name, arch, backend):
    shared = request.getfixturevalue("shared_data") if name == "beauty" else None
    catalog, suffix = suffix_catalog(name, shared)
    vocab = catalog.vocab_size + len(suffix)
    model = (tiny_t5 if arch == "t5" else tiny_gpt2)(vocab, seed=15)
    inputs = history(catalog, batch=2, length=6, seed=15)
    start = 1 if arch == "t5" else inputs.shape[1]
    beams = 6
    common = dict(num_beams=beams, num_return_sequences=beams, do_sample=False,
                  max_new_tokens=catalog.trie.depth + len(suffix) + 1, output_scores=True,
                  return_dict_in_generate=True, pad_token_id=PAD,
                  attention_mask=torch.ones_like(inputs))
    rule = MiniOneRecRule(catalog.token_rows, suffix, EOS)
    processor = SemanticIDLogitsProcessor(catalog.trie, catalog.token_ids, eos_token_id=EOS,
                                          suffix_token_ids=suffix, backend=backend)
    with torch.no_grad():
        theirs = model.generate(inputs, prefix_allowed_tokens_fn=rule.prefix_fn(start, [EOS]),
                                **common)
        ours = model.generate(inputs, logits_processor=[processor], **common)
    assert torch.equal(ours.sequences, theirs.sequences)
    assert torch.equal(ours.sequences_scores, theirs.sequences_scores)
    known = {(*row, *suffix, EOS) for row in catalog.token_rows}
    for row in ours.sequences[:, start:].tolist():
        end = row.index(EOS)
        assert tuple(row[:end + 1]) in known


def random_suffix_rows(catalog, suffix, rows, g, eos=EOS):
    """(rows, 1 + depth + len(suffix) + 2): a start token, an ID, the suffix, eos, then pad;
    some rows cut the suffix short, repeat it or put a suffix token inside the ID."""
    depth = catalog.trie.depth
    width = 1 + depth + len(suffix) + 2
    out = torch.full((rows, width), PAD, dtype=torch.int64)
    for r in range(rows):
        row = list(catalog.token_rows[int(torch.randint(len(catalog.token_rows), (),
                                                        generator=g))])
        tail = [*suffix, *([] if eos is None else [eos])]
        kind = int(torch.randint(4, (), generator=g))
        if kind == 1:
            tail = tail[1:]  # the suffix's first token skipped
        elif kind == 2:
            tail = [*suffix, *tail]  # the suffix twice
        elif kind == 3 and len(row) > 1:
            row = [row[0], suffix[0], *row[1:]]  # a suffix token inside the ID
        sequence = (row + tail)[: width - 1]
        out[r, 1:1 + len(sequence)] = torch.tensor(sequence)
    return out


@DEAD_ROWS_WARN
@pytest.mark.parametrize("eos", [EOS, None])
@pytest.mark.parametrize("n_suffix", [1, 2])
@pytest.mark.parametrize("backend", BACKENDS)
def test_suffix_masks_like_minionerec_rule(backend, n_suffix, eos):
    """Every step of one generation, row by row, against the rule's allowed lists, on a
    variable-length catalog (IDs that are prefixes of others may stop or go on) and on a
    fixed-length one without eos."""
    catalog = variable_length_catalog(16) if eos is not None else \
        fixed_catalog(16)
    suffix = list(range(catalog.vocab_size, catalog.vocab_size + n_suffix))
    rule = MiniOneRecRule(catalog.token_rows, suffix, eos)
    fn = rule.prefix_fn(1, [] if eos is None else [eos])
    processor = SemanticIDLogitsProcessor(catalog.trie, catalog.token_ids, eos_token_id=eos,
                                          suffix_token_ids=torch.tensor(suffix),
                                          backend=backend)
    g = torch.Generator().manual_seed(16 + n_suffix)
    rows = random_suffix_rows(catalog, suffix, 24, g, eos)
    vocab = catalog.vocab_size + n_suffix + 2
    for length in range(1, rows.shape[1] + 1):
        scores = torch.randn(24, vocab, generator=g).log_softmax(-1)
        out = processor(rows[:, :length], scores)
        for r in range(24):
            allowed = fn(0, rows[r, :length])
            expected = torch.full_like(scores[r], -math.inf)
            expected[allowed] = scores[r, allowed]
            assert torch.equal(out[r], expected), (length, r, allowed)


def fixed_catalog(seed, n=50, depth=3, k=6):
    """Random distinct IDs, all of length depth."""
    g = torch.Generator().manual_seed(seed)
    items = torch.randperm(k ** depth, generator=g)[:n]
    codes = torch.stack([items // k ** (depth - 1 - j) % k for j in range(depth)], dim=1)
    strings = [{c: f"<{chr(97 + j)}_{c}>" for c in range(k)} for j in range(depth)]
    return Catalog(codes, torch.full((n,), depth), strings)


# --- rows with no allowed token ----------------------------------------------------------


@pytest.mark.parametrize("eos", [EOS, None])
@pytest.mark.parametrize("backend", BACKENDS)
def test_no_row_is_masked_silently(backend, eos):
    """A row with no allowed token keeps eos only (nothing without eos) and the processor
    warns, once; a generation with none does not warn."""
    catalog = variable_length_catalog(17) if eos is not None else \
        fixed_catalog(17)
    make = lambda: SemanticIDLogitsProcessor(catalog.trie, catalog.token_ids,  # noqa: E731
                                             eos_token_id=eos, backend=backend)
    g = torch.Generator().manual_seed(17)
    clean = random_rows(catalog, 8, g, dead_share=0.0)[:, :catalog.trie.depth]
    scores = torch.randn(8, catalog.vocab_size, generator=g).log_softmax(-1)
    quiet = make()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for length in range(1, clean.shape[1] + 1):
            quiet(clean[:, :length], scores)
    dirty = clean.clone()
    dirty[2:4, 1] = UNK  # not a level-0 token: rows 2 and 3 leave the catalog
    loud = make()
    with pytest.warns(RuntimeWarning, match="no allowed token") as record:
        for length in range(1, dirty.shape[1] + 1):
            out = loud(dirty[:, :length], scores)
    assert len(record) == 1
    finite = torch.isfinite(out)
    if eos is None:
        assert not bool(finite[2:4].any())
    else:
        assert finite[2:4].nonzero()[:, 1].tolist() == [EOS, EOS]
        assert torch.equal(out[2:4, EOS], scores[2:4, EOS])
    assert bool(finite.any(dim=1)[[0, 1, 4, 5, 6, 7]].all())


# --- bad input --------------------------------------------------------------------------


def test_bad_arguments():
    catalog = variable_length_catalog(8)
    trie, token_ids = catalog.trie, catalog.token_ids
    with pytest.raises(TypeError, match="SemanticIDTrie"):
        SemanticIDLogitsProcessor({"a": 1}, token_ids, eos_token_id=EOS)
    with pytest.raises(ValueError, match="token_ids must have shape"):
        SemanticIDLogitsProcessor(trie, token_ids[:2], eos_token_id=EOS)
    with pytest.raises(TypeError, match="integer"):
        SemanticIDLogitsProcessor(trie, token_ids.float(), eos_token_id=EOS)
    with pytest.raises(ValueError, match="columns"):
        SemanticIDLogitsProcessor(trie, token_ids[:, :2], eos_token_id=EOS)
    missing = token_ids.clone()
    missing[1, 2] = -1
    with pytest.raises(ValueError, match="level 1 codes \\[2\\]"):
        SemanticIDLogitsProcessor(trie, missing, eos_token_id=EOS)
    shared = token_ids.clone()
    shared[0, 1] = shared[0, 0]
    with pytest.raises(ValueError, match="share one token id"):
        SemanticIDLogitsProcessor(trie, shared, eos_token_id=EOS)
    with pytest.raises(ValueError, match="also the token"):
        SemanticIDLogitsProcessor(trie, token_ids, eos_token_id=int(token_ids[2, 0]))
    with pytest.raises(ValueError, match="variable-length"):
        SemanticIDLogitsProcessor(trie, token_ids)
    with pytest.raises(TypeError, match="eos_token_id"):
        SemanticIDLogitsProcessor(trie, token_ids, eos_token_id=1.0)
    with pytest.raises(ValueError, match="num_beams"):
        SemanticIDLogitsProcessor(trie, token_ids, eos_token_id=EOS, num_beams=0)
    with pytest.raises(ValueError, match="suffix_token_ids .* contain eos"):
        SemanticIDLogitsProcessor(trie, token_ids, eos_token_id=EOS, suffix_token_ids=[50, EOS])
    with pytest.raises(ValueError, match="suffix_token_ids: token .* level-1 code"):
        SemanticIDLogitsProcessor(trie, token_ids, eos_token_id=EOS,
                                  suffix_token_ids=[int(token_ids[1, 0])])
    for bad in ([-1], [1.0], "\n", 7, torch.tensor([[50]]), torch.tensor([50.0])):
        with pytest.raises(TypeError, match="suffix_token_ids"):
            SemanticIDLogitsProcessor(trie, token_ids, eos_token_id=EOS, suffix_token_ids=bad)
    ours = SemanticIDLogitsProcessor(trie, token_ids, eos_token_id=EOS)
    with pytest.raises(ValueError, match="scores have"):
        ours(torch.zeros(2, 1, dtype=torch.long), torch.zeros(2, 10))
    with pytest.raises(TypeError, match="input_ids must hold integer"):
        ours(torch.zeros(2, 1), torch.zeros(2, catalog.vocab_size))
    with pytest.raises(ValueError, match="share R"):
        ours(torch.zeros(3, 1, dtype=torch.long), torch.zeros(2, catalog.vocab_size))
    for backend in BACKENDS:
        fallback = SemanticIDLogitsProcessor(trie, token_ids, eos_token_id=EOS, num_beams=4,
                                             backend=backend)
        with pytest.raises(ValueError, match="does not divide"):
            fallback(torch.zeros(6, 1, dtype=torch.long), torch.zeros(6, catalog.vocab_size))
    with pytest.raises(ValueError, match="backend must be"):
        SemanticIDLogitsProcessor(trie, token_ids, eos_token_id=EOS, backend="tensorrt")
    # triton has no kernel for it; the error says so, or that triton cannot run here
    with pytest.raises((ValueError, RuntimeError), match="'triton' (does not implement|is "
                                                         "unavailable)"):
        SemanticIDLogitsProcessor(trie, token_ids, eos_token_id=EOS, backend="triton")
    cpu_only = SemanticIDLogitsProcessor(trie, token_ids, eos_token_id=EOS, backend="cpu")
    with pytest.raises(ValueError, match="float32"):
        cpu_only(torch.zeros(2, 1, dtype=torch.long),
                 torch.zeros(2, catalog.vocab_size, dtype=torch.float16))
    # auto falls back to the torch path for other dtypes, with the same masks
    half = torch.randn(2, catalog.vocab_size).half()
    ids = torch.zeros(2, 1, dtype=torch.long)
    auto = SemanticIDLogitsProcessor(trie, token_ids, eos_token_id=EOS)
    reference = SemanticIDLogitsProcessor(trie, token_ids, eos_token_id=EOS, backend="reference")
    assert torch.equal(auto(ids, half), reference(ids, half))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "reference"])
def test_t5_beam_search_on_cuda(backend):
    catalog = variable_length_catalog(9, n=400, depth=4, k=16)
    model = tiny_t5(catalog.vocab_size).cuda()
    inputs = history(catalog, batch=3, length=6, seed=9).cuda()
    peer = PythonPrefixTrie(catalog.token_rows, eos_token_id=EOS)
    common = dict(num_beams=8, num_return_sequences=8, do_sample=False,
                  max_new_tokens=catalog.trie.depth + 1, output_scores=True,
                  return_dict_in_generate=True, pad_token_id=PAD)
    with torch.no_grad():
        theirs = model.generate(inputs, prefix_allowed_tokens_fn=peer.prefix_allowed_tokens_fn(
            1, dead_tokens=[EOS]), **common)
        processor = SemanticIDLogitsProcessor(catalog.trie.to("cuda"), catalog.token_ids,
                                              eos_token_id=EOS, backend=backend)
        ours = model.generate(inputs, logits_processor=[processor], **common)
    assert torch.equal(ours.sequences, theirs.sequences)
    # Same sequences; scores within float rounding (GPU reductions need not be deterministic).
    assert torch.allclose(ours.sequences_scores, theirs.sequences_scores, rtol=0, atol=1e-6)
    assert bool(catalog.ids_in_catalog(ours.sequences[:, 1:].cpu(), EOS).all())
    with pytest.raises(ValueError, match="trie is on"):
        SemanticIDLogitsProcessor(catalog.trie, catalog.token_ids, eos_token_id=EOS)(
            inputs, torch.zeros(inputs.shape[0], catalog.vocab_size, device="cuda"))


@pytest.mark.gpu
@DEAD_ROWS_WARN
@pytest.mark.parametrize("n_suffix", [0, 2])
@pytest.mark.parametrize("num_beams", [None, 4])
def test_cuda_kernel_equals_cpu_kernel(num_beams, n_suffix):
    """Every step of two generations on one processor each (the second's prompt one column
    longer than the first's last input, its rows reordered between steps), on random rows
    (live, dead, finished, suffixes cut short or repeated), with scores that leave some
    groups unsatisfiable: the CUDA kernel and the torch path on the GPU give the CPU
    kernel's scores."""
    catalog = variable_length_catalog(12, n=300, depth=4, k=9)
    suffix = list(range(catalog.vocab_size, catalog.vocab_size + n_suffix))
    g = torch.Generator().manual_seed(12)
    if n_suffix:
        input_ids = random_suffix_rows(catalog, suffix, 32, g)
    else:
        input_ids = random_rows(catalog, 32, g)
    width = input_ids.shape[1]
    second = torch.cat([torch.full((32, width + 1), UNK), input_ids[:, 1:]], dim=1)
    on_gpu = catalog.trie.to("cuda")
    make = lambda trie, backend: SemanticIDLogitsProcessor(  # noqa: E731
        trie, catalog.token_ids, eos_token_id=EOS, suffix_token_ids=suffix,
        num_beams=num_beams, backend=backend)
    cpu = make(catalog.trie, "cpu")
    gpu = [make(on_gpu, "cuda"), make(on_gpu, "reference")]
    calls = [input_ids[:, :length] for length in range(1, width + 1)]
    rows = second[:, :width + 1]
    calls.append(rows)
    for length in range(width + 2, second.shape[1] + 1):
        rows = torch.cat([rows[torch.randperm(32, generator=g)],
                          second[:32, length - 1:length]], dim=1)
        calls.append(rows)
    for rows in calls:
        scores = torch.randn(32, catalog.vocab_size + n_suffix + 3, generator=g).log_softmax(-1)
        scores[:4] = -math.inf
        expected = cpu(rows, scores)
        for processor in gpu:
            out = processor(rows.cuda(), scores.cuda())
            assert torch.equal(out.cpu(), expected), (processor.backend, rows.shape)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "reference"])
def test_cuda_dead_rows_warn_at_a_later_call(backend):
    catalog = variable_length_catalog(17)
    processor = SemanticIDLogitsProcessor(catalog.trie.to("cuda"), catalog.token_ids,
                                          eos_token_id=EOS, backend=backend)
    rows = torch.tensor([[PAD, UNK], [PAD, catalog.token_rows[0][0]]], device="cuda")
    scores = torch.randn(2, catalog.vocab_size, device="cuda").log_softmax(-1)
    processor(rows[:, :1], scores)
    out = processor(rows, scores)
    assert torch.isfinite(out[0]).nonzero().flatten().tolist() == [EOS]
    torch.cuda.synchronize()
    with pytest.warns(RuntimeWarning, match="no allowed token"):
        processor(rows[:, :1], scores)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "reference"])
def test_processor_never_syncs_with_the_host(backend):
    """Two generations on one processor, the second's prompt one column longer than the
    first's last input (the device decides that it is a new one), with a suffix and dead
    rows (the warning flag goes to the host without a wait)."""
    catalog = variable_length_catalog(4)
    suffix = [catalog.vocab_size]
    processor = SemanticIDLogitsProcessor(catalog.trie.to("cuda"), catalog.token_ids,
                                          eos_token_id=EOS, suffix_token_ids=suffix,
                                          num_beams=4, backend=backend)
    rows = random_suffix_rows(catalog, suffix, 8, torch.Generator().manual_seed(4)).cuda()
    rows[0, 1] = UNK  # a dead row
    second = torch.cat([torch.full_like(rows, UNK), rows], dim=1)[:, :2 * rows.shape[1]]
    scores = torch.randn(8, catalog.vocab_size + 1).log_softmax(-1).cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            for length in range(1, rows.shape[1] + 1):
                processor(rows[:, :length], scores)
            for length in range(rows.shape[1] + 1, second.shape[1] + 1):
                processor(second[:, :length], scores)
    finally:
        torch.cuda.set_sync_debug_mode("default")

"""The trie family: the CSR build against a Python dict trie and the reference build, the
walking members of the contract, constrained beam steps of every backend against the
reference, beam search against brute force, real catalogs and bad input."""

import json
import re
import warnings
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import semid_fast as sf
from semid_fast import _backends
from semid_fast.ops import trie as ops
from semid_fast.reference import trie as ref

# Every backend of the trie family that runs on CPU tensors here, besides the reference.
STEP_BACKENDS = [b for b in _backends.table()["trie"]["beam_step"]
                 if b != "reference" and b in sf.available_backends("cpu")]


def launcher(backend, name):
    return _backends.launcher(backend, "trie", name)


def build(codes, lengths=None, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sf.SemanticIDTrie.from_codes(codes, lengths=lengths, **kw)


def ids_of(codes, lengths):
    return [tuple(int(c) for c in row[:n]) for row, n in zip(codes.tolist(), lengths.tolist())]


class DictTrie:
    """The obvious Python trie: prefix tuple -> set of child codes, ID -> smallest item."""

    def __init__(self, ids):
        self.children, self.item = {(): set()}, {}
        for i, ident in enumerate(ids):
            for d in range(len(ident)):
                self.children.setdefault(ident[:d], set()).add(ident[d])
                self.children.setdefault(ident[:d + 1], set())
            self.item.setdefault(ident, i)


@st.composite
def catalogs(draw, max_items=30, max_depth=4, max_vocab=5):
    """(codes (N, L) int64, lengths (N,) int64): random fan-out, variable lengths (IDs that
    are prefixes of others), single items and repeated IDs (collisions)."""
    depth = draw(st.integers(1, max_depth))
    vocab = [draw(st.integers(1, max_vocab)) for _ in range(depth)]
    n = draw(st.integers(1, max_items))
    seed = draw(st.integers(0, 2**31 - 1))
    g = np.random.default_rng(seed)
    codes = np.stack([g.integers(0, v, n) for v in vocab], 1)
    if draw(st.booleans()):
        lengths = g.integers(1, depth + 1, n)
        codes = np.where(np.arange(depth) < lengths[:, None], codes, -7)  # ignored padding
    else:
        lengths = np.full(n, depth)
    if n > 1 and draw(st.booleans()):  # force a collision
        codes[n - 1], lengths[n - 1] = codes[0], lengths[0]
    return torch.from_numpy(codes).long(), torch.from_numpy(lengths).long()


# ---- build and the contract members ---------------------------------------------------------

def check_against_dict(trie, codes, lengths):
    ids = ids_of(codes, lengths)
    d = DictTrie(ids)
    prefixes = sorted(d.children, key=lambda p: (len(p), p))  # breadth-first, codes sorted
    assert trie.num_states == len(prefixes)
    assert trie.num_items == len(ids)
    off = trie.child_offsets.tolist()
    assert off[0] == 0 and off[-1] == trie.num_states - 1
    assert all(a <= b for a, b in zip(off, off[1:]))
    # BFS numbering: state k is the k-th prefix in (length, codes) order.
    depth = trie.depth
    for k, p in enumerate(prefixes):
        padded = torch.tensor([list(p)], dtype=torch.long).reshape(1, len(p))
        assert trie.walk(padded).item() == k
        kids = sorted(d.children[p])
        assert trie.child_codes[off[k]:off[k + 1]].tolist() == kids
        assert trie.terminal[k].item() == d.item.get(p, -1)
        assert trie.state_level(torch.tensor([k])).item() == len(p)
        mask = trie.valid_next(torch.tensor([k]))[0]
        assert mask.shape == (trie.max_vocab,)
        assert torch.nonzero(mask)[:, 0].tolist() == kids
        for c in range(-1, trie.max_vocab + 1):
            want = prefixes.index(p + (c,)) if c in d.children[p] else -1
            assert trie.advance(torch.tensor([k]), torch.tensor([c])).item() == want
    assert trie.level_starts.tolist() == [0] + [
        sum(len(p) <= lvl for p in prefixes) for lvl in range(depth + 1)]
    # item_ids round trip: every item resolves to the smallest item with its ID.
    got = trie.item_ids(codes.clamp(min=0), lengths)
    assert got.tolist() == [d.item[i] for i in ids]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(catalogs())
def test_build_matches_dict_trie_and_reference(catalog):
    codes, lengths = catalog
    trie = build(codes, lengths)
    check_against_dict(trie, codes, lengths)
    other = build(codes, lengths, backend="reference")
    for a, b in zip(trie._tensors(), other._tensors()):
        assert torch.equal(a, b)
    groups = {}
    for i, ident in enumerate(ids_of(codes, lengths)):
        groups.setdefault(ident, []).append(i)
    want = sorted(g for g in groups.values() if len(g) > 1)
    assert [g.tolist() for g in trie.collisions] == want
    assert [g.tolist() for g in other.collisions] == want


@pytest.mark.parametrize("depth,k", [(8, 300), (4, 2**20), (3, 2**21), (2, 2**31 - 1)])
def test_build_of_ids_wider_than_64_bits_matches_reference(depth, k):
    # 8 levels of 9 bits and 4 of 21 bits overflow the packed radix key: comparison sort.
    g = torch.Generator().manual_seed(depth)
    codes = torch.randint(0, 3, (400, depth), generator=g) * (k // 3)
    lengths = torch.randint(1, depth + 1, (400,), generator=g)
    trie = build(codes, lengths, vocab_sizes=[k] * depth)
    other = build(codes, lengths, vocab_sizes=[k] * depth, backend="reference")
    for a, b in zip(trie._tensors(), other._tensors()):
        assert torch.equal(a, b)
    assert torch.equal(trie.edge_keys, other.edge_keys)
    assert [x.tolist() for x in trie.collisions] == [x.tolist() for x in other.collisions]
    first = {}
    for i, ident in enumerate(ids_of(codes, lengths)):
        first.setdefault(ident, i)
    assert trie.item_ids(codes, lengths).tolist() == [first[x] for x in ids_of(codes, lengths)]


def test_contract_members_on_a_small_variable_length_trie():
    codes = torch.tensor([[3, 1, 0], [3, 0, 0], [3, 1, 2], [0, 0, 0]])
    lengths = torch.tensor([2, 3, 3, 1])
    trie = build(codes, lengths)
    assert (trie.depth, trie.num_items, trie.vocab_sizes) == (3, 4, (4, 2, 3))
    states = trie.walk(torch.tensor([[3, 1], [3, 0], [0, 0], [2, 0]]))
    assert trie.terminal_item(states).tolist() == [0, -1, -1, -1]
    assert (states[:2] >= 0).all() and (states[2:] == -1).all()  # [0] is a full ID, [0, 0] is not
    assert trie.walk(torch.zeros(2, 0, dtype=torch.long)).tolist() == [0, 0]
    assert trie.valid_next(states)[0].tolist() == [False, False, True, False]  # [3, 1] -> 2
    assert not trie.valid_next(torch.tensor([-1, ~states[0]])).any()
    assert trie.state_level(torch.tensor([0, -1, int(states[0])])).tolist() == [0, -1, 2]
    assert trie.item_ids(codes, lengths).tolist() == [0, 1, 2, 3]
    assert trie.item_ids(codes[:, :2]).tolist() == [0, -1, 0, -1]
    assert trie.terminal_item(torch.tensor([~int(states[0])])).tolist() == [0]


def test_numpy_input_vocab_sizes_and_fixed_length():
    g = np.random.default_rng(0)
    codes = g.integers(0, 7, (200, 3)).astype(np.int32)
    trie = build(codes, vocab_sizes=[8, 9, 10])
    assert trie.vocab_sizes == (8, 9, 10)
    assert trie.valid_next(torch.tensor([0])).shape == (1, 10)
    check_against_dict(trie, torch.from_numpy(codes).long(), torch.full((200,), 3))


def test_save_load_to_and_nbytes(tmp_path):
    g = torch.Generator().manual_seed(1)
    codes = torch.randint(0, 16, (500, 4), generator=g)
    trie = build(codes)
    trie.save(tmp_path / "t.pt")
    back = sf.SemanticIDTrie.load(tmp_path / "t.pt")
    for a, b in zip(trie._tensors(), back._tensors()):
        assert torch.equal(a, b)
    assert (back.vocab_sizes, back.num_items, back.max_children) == (
        trie.vocab_sizes, trie.num_items, trie.max_children)
    assert [g.tolist() for g in back.collisions] == [g.tolist() for g in trie.collisions]
    moved = trie.to("cpu")
    assert moved is not trie and moved.device == torch.device("cpu")
    assert trie.nbytes == sum(t.nbytes for t in (*trie._tensors(), trie.edge_keys))
    assert trie.nbytes < 40 * trie.num_states
    (tmp_path / "bad.pt").write_bytes(b"no")
    with pytest.raises(ValueError, match="not a saved SemanticIDTrie"):
        sf.SemanticIDTrie.load(tmp_path / "bad.pt")
    torch.save({"format": ops._FORMAT}, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match="not a saved SemanticIDTrie"):
        sf.SemanticIDTrie.load(tmp_path / "partial.pt")


def test_collision_warning_names_the_count():
    codes = torch.tensor([[1, 2], [1, 2], [0, 1], [1, 2], [0, 1], [2, 2]])
    with pytest.warns(UserWarning, match="5 items share a full ID"):
        trie = sf.SemanticIDTrie.from_codes(codes)
    assert [g.tolist() for g in trie.collisions] == [[0, 1, 3], [2, 4]]


@settings(max_examples=40, deadline=None)
@given(catalogs())
def test_dedup_suffix_makes_every_id_unique(catalog):
    codes, lengths = catalog
    new_codes, new_lengths = sf.dedup_suffix(codes, lengths)
    assert torch.equal(new_lengths, lengths + 1)
    assert torch.equal(new_codes[:, :codes.shape[1]].gather(1, (lengths - 1)[:, None]),
                       codes.gather(1, (lengths - 1)[:, None]))
    ids = ids_of(new_codes, new_lengths)
    assert len(set(ids)) == len(ids)
    seen = {}
    for i, ident in enumerate(ids_of(codes, lengths)):
        assert ids[i][:-1] == ident and ids[i][-1] == seen.get(ident, 0)
        seen[ident] = seen.get(ident, 0) + 1
    trie = sf.SemanticIDTrie.from_codes(new_codes, lengths=new_lengths)  # no warning
    assert not trie.collisions
    assert trie.item_ids(new_codes, new_lengths).tolist() == list(range(len(ids)))


# ---- real catalogs ------------------------------------------------------------------------

TOKEN = re.compile(r"<([a-z])_(\d+)>")


def load_token_index(path):
    data = json.loads(path.read_text())
    rows = []
    for item, tokens in sorted(data.items(), key=lambda kv: int(kv[0])):
        parsed = [TOKEN.fullmatch(t).groups() for t in tokens]
        assert [ord(letter) - ord("a") for letter, _ in parsed] == list(range(len(parsed)))
        rows.append([int(code) for _, code in parsed])
    return rows


def load_leaf_index(path):
    data = json.loads(path.read_text())
    rows = []
    for item, tokens in sorted(data.items(), key=lambda kv: int(kv[0])):
        *codes, leaf = tokens
        rows.append([int(c) for c in codes] + [int(re.fullmatch(r"Leaf(\d+)", leaf).group(1))])
    return rows


@pytest.mark.parametrize("name,loader,unique", [
    ("amazon18_industrial/sid.index.json", load_token_index, False),
    ("yelp/sid.index.json", load_token_index, False),
    ("amazon14_sports/sid_leaf.json", load_leaf_index, True),
])
def test_real_catalogs_walk_to_their_items(shared_data, name, loader, unique):
    rows = loader(shared_data / name)
    depth = max(len(r) for r in rows)
    lengths = torch.tensor([len(r) for r in rows])
    codes = torch.tensor([r + [0] * (depth - len(r)) for r in rows])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trie = sf.SemanticIDTrie.from_codes(codes, lengths=lengths)
    assert bool(caught) != unique
    states = trie.walk(codes)
    items = trie.terminal_item(states)
    assert (states >= 0).all()
    first_of = {}
    for i, r in enumerate(rows):
        first_of.setdefault(tuple(r), i)
    assert items.tolist() == [first_of[tuple(r)] for r in rows]
    counts = Counter(tuple(r) for r in rows)
    assert sum(len(g) for g in trie.collisions) == sum(c for c in counts.values() if c > 1)
    assert len(trie.collisions) == sum(1 for c in counts.values() if c > 1)
    if not unique:
        new_codes, new_lengths = sf.dedup_suffix(codes, lengths)
        assert not sf.SemanticIDTrie.from_codes(new_codes, lengths=new_lengths).collisions


def test_from_index_json_matches_from_codes(shared_data, tmp_path):
    path = shared_data / "amazon14_beauty" / "sid.index.json"
    rows = load_token_index(path)
    codes = torch.tensor(rows)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the catalog has colliding IDs
        direct = sf.SemanticIDTrie.from_codes(codes)
        loaded = sf.SemanticIDTrie.from_index_json(path)
    for a, b in zip(direct._tensors(), loaded._tensors()):
        assert torch.equal(a, b)
    assert loaded.item_ids(codes).tolist() == direct.item_ids(codes).tolist()
    shifted = tmp_path / "shifted.json"
    shifted.write_text(json.dumps({"7": ["<a_1>", "<b_2>"]}))
    with pytest.raises(ValueError, match="item ids must be 0"):
        sf.SemanticIDTrie.from_index_json(shifted)


# ---- bad input ----------------------------------------------------------------------------

def test_bad_build_input():
    with pytest.raises(ValueError, match="empty"):
        sf.SemanticIDTrie.from_codes(torch.zeros(0, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=">= 0"):
        sf.SemanticIDTrie.from_codes(torch.tensor([[0, -1]]))
    with pytest.raises(ValueError, match=r"level 1 must lie in \[0, 4\)"):
        sf.SemanticIDTrie.from_codes(torch.tensor([[0, 4]]), vocab_sizes=[2, 4])
    with pytest.raises(ValueError, match=r"vocab_sizes must be <= 2\*\*31"):
        sf.SemanticIDTrie.from_codes(torch.tensor([[0, 1]]), vocab_sizes=[2, 2**32])
    with pytest.raises(ValueError, match="vocab_sizes must have L=2"):
        sf.SemanticIDTrie.from_codes(torch.tensor([[0, 1]]), vocab_sizes=[2])
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, L=2\]"):
        sf.SemanticIDTrie.from_codes(torch.tensor([[0, 1]]), lengths=torch.tensor([3]))
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, L=2\]"):
        sf.SemanticIDTrie.from_codes(torch.tensor([[0, 1]]), lengths=torch.tensor([0]))
    with pytest.raises(ValueError, match="N=1 entries"):
        sf.SemanticIDTrie.from_codes(torch.tensor([[0, 1]]), lengths=torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="codes must have dtype"):
        sf.SemanticIDTrie.from_codes(torch.zeros(2, 2))
    with pytest.raises(TypeError, match="integers"):
        sf.SemanticIDTrie.from_codes(np.zeros((2, 2)))
    # Codes past an ID's end are ignored, whatever they hold.
    trie = sf.SemanticIDTrie.from_codes(torch.tensor([[0, -5]]), lengths=torch.tensor([1]))
    assert trie.num_states == 2


def test_bad_walk_input():
    trie = build(torch.tensor([[0, 1], [1, 1]]))
    with pytest.raises(ValueError, match="at most depth=2"):
        trie.walk(torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="states must have dtype"):
        trie.advance(torch.zeros(2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="codes must have shape"):
        trie.advance(torch.zeros(2, dtype=torch.long), torch.zeros(3, dtype=torch.long))
    # States of another (bigger) trie are simply not states here: -1, never out of bounds.
    assert trie.advance(torch.tensor([10**6, -3]), torch.tensor([0, 0])).tolist() == [-1, -1]
    assert not trie.valid_next(torch.tensor([10**6, -(10**6)])).any()
    assert trie.terminal_item(torch.tensor([10**6, -(10**6)])).tolist() == [-1, -1]


# ---- constrained beam step: every backend against the reference ------------------------------

def random_states(trie, r, g):
    """(r,) states: live states (terminal or not), empty slots and finished hypotheses."""
    s = torch.randint(0, trie.num_states, (r,), generator=g)
    terminals = torch.nonzero(trie.terminal >= 0)[:, 0]
    finished = ~terminals[torch.randint(0, terminals.shape[0], (r,), generator=g)]
    kind = torch.randint(0, 5, (r,), generator=g)
    return torch.where(kind == 0, -1, torch.where(kind == 1, finished, s))


def random_trie(g, n, depth, k, variable):
    codes = torch.randint(0, k, (n, depth), generator=g)
    lengths = torch.randint(1, depth + 1, (n,), generator=g) if variable else None
    return build(codes, lengths, vocab_sizes=[k] * depth)


# (B, W_in, beam_width, V, N, L, K, variable lengths, quantised scores: many ties)
STEP_SHAPES = [
    (1, 1, 1, 8, 5, 2, 8, False, False),
    (3, 5, 7, 13, 40, 3, 9, True, False),
    (4, 6, 3, 300, 200, 4, 256, False, True),
    (2, 50, 50, 256, 3000, 4, 256, True, True),
    (5, 3, 64, 20, 60, 3, 4, True, True),  # fewer candidates than beams: padding
    (7, 2, 5, 40, 1, 3, 40, False, False),  # a single item
]


@pytest.mark.parametrize("backend", STEP_BACKENDS)
@pytest.mark.parametrize("b,w_in,w_out,v,n,depth,k,variable,ties", STEP_SHAPES)
def test_beam_step_equals_reference_exactly(backend, b, w_in, w_out, v, n, depth, k,
                                            variable, ties):
    g = torch.Generator().manual_seed(b * 1000 + w_in * 10 + n)
    trie = random_trie(g, n, depth, k, variable)
    log_probs = torch.randn(b * w_in, v, generator=g).log_softmax(-1)
    scores = torch.randn(b, w_in, generator=g) * 3
    if ties:
        log_probs, scores = (log_probs * 2).round() / 2, (scores * 2).round() / 2
        log_probs[0, :3] = -torch.inf
    states = random_states(trie, b * w_in, g)
    args = (log_probs, scores, states, trie, w_out)
    want = sf.constrained_beam_step(*args, backend="reference")
    got = sf.constrained_beam_step(*args, backend=backend)
    for a, c in zip(got, want):
        assert a.shape == (b, w_out) and torch.equal(a, c)
    scores_out, parents, tokens, nexts = want
    # Sorted, padded, and consistent with the trie.
    assert (scores_out[:, 1:] <= scores_out[:, :-1]).all()
    empty = parents < 0
    assert (torch.isinf(scores_out[empty]) & (tokens[empty] == -1) & (nexts[empty] == -1)).all()
    flat_parent = (torch.arange(b)[:, None] * w_in + parents.clamp(min=0))[~empty]
    moved = tokens[~empty] >= 0
    assert torch.equal(trie.advance(states[flat_parent][moved], tokens[~empty][moved]),
                       nexts[~empty][moved])
    assert (nexts[~empty][~moved] <= -2).all()


def test_beam_step_half_precision_and_2d_states():
    g = torch.Generator().manual_seed(5)
    trie = random_trie(g, 100, 3, 16, True)
    lp = torch.randn(6, 16, generator=g).log_softmax(-1).to(torch.bfloat16)
    scores = torch.zeros(2, 3, dtype=torch.float16)
    states = random_states(trie, 6, g).reshape(2, 3)
    for backend in STEP_BACKENDS:
        got = sf.constrained_beam_step(lp, scores, states, trie, 4, backend=backend)
        want = sf.constrained_beam_step(lp.float(), scores.float(), states.reshape(-1), trie, 4,
                                        backend="reference")
        assert all(torch.equal(a, c) for a, c in zip(got, want))


def test_finished_hypotheses_stop_and_carry_their_score():
    # IDs [1] (item 0) and [1, 2] (item 1): from state [1] the beam may stop or continue.
    trie = build(torch.tensor([[1, 0], [1, 2]]), torch.tensor([1, 2]), vocab_sizes=[3, 3])
    one = int(trie.walk(torch.tensor([[1]])))
    lp = torch.log(torch.tensor([[0.2, 0.3, 0.5]]))
    scores, parents, tokens, states = sf.constrained_beam_step(
        lp, torch.tensor([[-1.0]]), torch.tensor([one]), trie, 3)
    assert scores[0, 0] == -1.0 and tokens[0, 0] == -1 and states[0, 0] == ~one
    assert torch.allclose(scores[0, 1], -1.0 + lp[0, 2]) and tokens[0, 1] == 2
    assert parents[0].tolist() == [0, 0, -1] and states[0, 2] == -1
    # The finished beam carries on unchanged; the leaf [1, 2] (an ID) can only stop.
    leaf = int(states[0, 1])
    nxt = sf.constrained_beam_step(lp.expand(2, 3), scores[:, :2], states[0, :2], trie, 3)
    assert nxt[0][0].tolist() == scores[0].tolist()
    assert nxt[1][0].tolist() == [0, 1, -1] and nxt[2][0].tolist() == [-1, -1, -1]
    assert nxt[3][0].tolist() == [~one, ~leaf, -1]
    assert trie.terminal_item(nxt[3][0]).tolist() == [0, 1, -1]


# ---- beam search against brute force -------------------------------------------------------

class PrefixModel:
    """step_fn with fixed random log-probs per (batch row, prefix), tracking each beam's
    prefix from the tokens and parents it is given."""

    def __init__(self, batch, width, v, seed):
        self.batch, self.width, self.v, self.seed = batch, width, v, seed
        self.prefixes = None

    def log_probs(self, row, prefix):
        g = np.random.default_rng([self.seed, row, len(prefix), *prefix])
        return torch.from_numpy(g.standard_normal(self.v)).float().log_softmax(0)

    def __call__(self, step, tokens, parents):
        n = self.batch * self.width
        if step == 0:
            assert tokens is None and parents is None
            self.prefixes = [()] * n
        else:
            assert tokens.shape == (n,) and parents.shape == (n,)
            self.prefixes = [self.prefixes[p] + ((t,) if t >= 0 else ())
                             for p, t in zip(parents.tolist(), tokens.tolist())]
        return torch.stack([self.log_probs(i // self.width, p)
                            for i, p in enumerate(self.prefixes)])


def id_score(model, row, ident):
    s = torch.zeros((), dtype=torch.float32)
    for d in range(len(ident)):
        s = s + model.log_probs(row, ident[:d])[ident[d]]
    return s


def simulate_beam_search(model, ids, row, width, depth):
    """The documented semantics, restated over Python lists (stop = code -1)."""
    d = DictTrie(ids)
    beams = [(torch.zeros(()), (), False)]
    for _ in range(depth):
        cands = []
        for score, prefix, done in beams:
            if done:
                cands.append((score, prefix, True))
                continue
            if prefix and prefix in d.item:
                cands.append((score, prefix, True))
            lp = model.log_probs(row, prefix)
            cands += [(score + lp[c], prefix + (c,), False) for c in sorted(d.children[prefix])]
        order = sorted(range(len(cands)), key=lambda i: (-float(cands[i][0]), i))
        beams = [cands[i] for i in order[:width]]
    return [(d.item[p], float(s)) for s, p, _ in beams]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(catalogs(max_items=12, max_depth=3, max_vocab=4), st.integers(1, 2), st.integers(1, 4),
       st.sampled_from(["reference"] + STEP_BACKENDS))
def test_beam_search_matches_brute_force(catalog, batch, small_width, backend):
    codes, lengths = catalog
    trie = build(codes, lengths)
    ids = ids_of(codes, lengths)
    d = DictTrie(ids)
    v = trie.max_vocab + 2
    # Exhaustive: a beam as wide as the trie prunes nothing, so the result is every ID.
    width = trie.num_states
    model = PrefixModel(batch, width, v, seed=len(ids))
    items, out_codes, scores = sf.constrained_beam_search(model, trie, batch_size=batch,
                                                          beam_width=width, backend=backend)
    distinct = sorted(d.item.items(), key=lambda kv: kv[1])
    for row in range(batch):
        want = sorted(((i, float(id_score(model, row, ident))) for ident, i in distinct),
                      key=lambda x: -x[1])
        got_items = items[row, :len(want)].tolist()
        assert sorted(got_items) == sorted(i for i, _ in want)
        assert scores[row, :len(want)].tolist() == sorted((s for _, s in want), reverse=True)
        for i, s, c in zip(got_items, scores[row].tolist(), out_codes[row]):
            assert s == float(id_score(model, row, ids[i]))
            assert tuple(x for x in c.tolist() if x >= 0) == ids[i]
        assert (items[row, len(want):] == -1).all() and torch.isinf(scores[row, len(want):]).all()
    # Pruning: a narrow beam follows the documented semantics step by step.
    model = PrefixModel(batch, small_width, v, seed=len(ids) + 1)
    items, out_codes, scores = sf.constrained_beam_search(model, trie, batch_size=batch,
                                                          beam_width=small_width, backend=backend)
    for row in range(batch):
        want = simulate_beam_search(model, ids, row, small_width, trie.depth)
        k = len(want)
        assert items[row, :k].tolist() == [i for i, _ in want]
        assert scores[row, :k].tolist() == [s for _, s in want]
        assert (items[row, k:] == -1).all()
        got_lengths = (out_codes[row, :k] >= 0).sum(1)
        assert torch.equal(trie.item_ids(out_codes[row, :k].clamp(min=0), got_lengths),
                           items[row, :k])


def test_beam_search_backends_agree_on_a_bigger_trie():
    g = torch.Generator().manual_seed(11)
    trie = random_trie(g, 2000, 4, 32, True)
    runs = []
    for backend in ["reference"] + STEP_BACKENDS:
        model = PrefixModel(3, 10, 40, seed=3)
        runs.append(sf.constrained_beam_search(model, trie, batch_size=3, beam_width=10,
                                               backend=backend))
    for run in runs[1:]:
        assert all(torch.equal(a, c) for a, c in zip(run, runs[0]))
    items, codes, _ = runs[0]
    lengths = (codes >= 0).sum(-1).reshape(-1)
    assert (items >= 0).all()
    assert torch.equal(trie.item_ids(codes.reshape(-1, 4).clamp(min=0), lengths),
                       items.reshape(-1))
    assert len(set(items[0].tolist())) == 10  # no duplicate IDs in a row


# ---- bad input of the beam step ------------------------------------------------------------

def test_bad_beam_step_input():
    trie = build(torch.tensor([[0, 1], [1, 1]]))
    small = build(torch.tensor([[0], [1]]))
    lp = torch.zeros(4, 2)
    scores = torch.zeros(2, 2)
    states = torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"states must be trie states in \[0, 3\)"):
        sf.constrained_beam_step(lp, scores, trie.walk(torch.tensor([[1, 1]] * 4)), small, 2)
    with pytest.raises(ValueError, match="V >= max"):
        sf.constrained_beam_step(lp[:, :1], scores, states, trie, 2)
    with pytest.raises(ValueError, match="B\\*W=4 rows"):
        sf.constrained_beam_step(lp[:3], scores, states, trie, 2)
    with pytest.raises(ValueError, match="log_probs contains NaN"):
        sf.constrained_beam_step(torch.full((4, 2), torch.nan), scores, states, trie, 2)
    with pytest.raises(ValueError, match=r"beam_scores contains NaN or \+inf"):
        sf.constrained_beam_step(lp, torch.full((2, 2), torch.inf), states, trie, 2)
    with pytest.raises(ValueError, match="W >= 1"):
        sf.constrained_beam_step(lp[:0], scores[:, :0], states[:0], trie, 2)
    # -inf log-probs are impossible tokens, not errors.
    sf.constrained_beam_step(torch.full((4, 2), -torch.inf), scores, states, trie, 2)
    # A NaN or +inf anywhere in a larger, strided or half input (the checks' torch path).
    for bad in (torch.nan, torch.inf):
        wide = torch.zeros(4, 70_000)
        wide[3, 69_999] = bad
        with pytest.raises(ValueError, match="log_probs contains NaN"):
            sf.constrained_beam_step(wide, scores, states, trie, 2)
        with pytest.raises(ValueError, match="log_probs contains NaN"):
            sf.constrained_beam_step(wide[:, 1::2].bfloat16(), scores, states, trie, 2)
        strided = torch.zeros(2, 4)
        strided[1, 2] = bad
        with pytest.raises(ValueError, match="beam_scores contains NaN"):
            sf.constrained_beam_step(lp, strided[:, ::2], states, trie, 2)
    with pytest.raises(ValueError, match="beam_width must be >= 1"):
        sf.constrained_beam_step(lp, scores, states, trie, 0)
    with pytest.raises(TypeError, match="states must have dtype int64"):
        sf.constrained_beam_step(lp, scores, states.int(), trie, 2)
    with pytest.raises(TypeError, match="SemanticIDTrie"):
        sf.constrained_beam_step(lp, scores, states, "trie", 2)
    with pytest.raises(ValueError, match="must return"):
        sf.constrained_beam_search(lambda *a: torch.zeros(1, 2), trie, batch_size=2, beam_width=2)
    with pytest.raises(ValueError, match="backend"):
        sf.constrained_beam_step(lp, scores, states, trie, 2, backend="nope")
    # With value checks off, foreign states are empty slots (never read out of bounds).
    sf.config.check_values = False
    try:
        out = sf.constrained_beam_step(lp, scores, torch.full((4,), 10**9), trie, 2, backend="cpu")
    finally:
        sf.config.check_values = True
    assert (out[1] == -1).all()


# ---- native safety with value checks off -----------------------------------------------------

@pytest.fixture
def unchecked():
    sf.config.check_values = False
    try:
        yield
    finally:
        sf.config.check_values = True


def hostile_states(trie, other):
    """States no step should trust: another trie's live and finished states, ~s of non-terminal
    and out-of-range s, the int64 extremes, plus genuine ones."""
    big = torch.iinfo(torch.long)
    nonterminal = 1 + int(torch.nonzero(trie.terminal[1:] < 0)[0, 0])  # not the root: ~0 = -1
    return torch.tensor([other.num_states - 1, ~(other.num_states - 1), ~nonterminal,
                         ~trie.num_states, trie.num_states, big.max, big.min,
                         ~(trie.num_states + 5), -1, 0,
                         ~int(torch.nonzero(trie.terminal >= 0)[0, 0]), 1])


@pytest.mark.parametrize("backend", ["reference"] + STEP_BACKENDS)
def test_beam_step_hostile_states_are_empty_slots(unchecked, backend):
    g = torch.Generator().manual_seed(4)
    trie = random_trie(g, 30, 3, 6, True)
    other = random_trie(g, 3000, 4, 64, True)  # many more states
    states = hostile_states(trie, other)
    b, w = 3, states.shape[0] // 3
    lp = torch.randn(b * w, trie.max_vocab, generator=g).log_softmax(-1)  # V exactly the codes
    scores = torch.randn(b, w, generator=g)
    got = sf.constrained_beam_step(lp, scores, states, trie, 5, backend=backend)
    # Only the genuine states (0, 1 and a finished terminal) may produce candidates.
    genuine = torch.zeros_like(states, dtype=torch.bool)
    genuine[-4:] = True
    genuine[-4] = False  # -1
    live_parent = got[1] >= 0
    flat = (torch.arange(b)[:, None] * w + got[1].clamp(min=0))[live_parent]
    assert genuine[flat].all()
    want = sf.constrained_beam_step(lp, scores, torch.where(genuine, states, -1), trie, 5,
                                    backend=backend)
    assert all(torch.equal(a, c) for a, c in zip(got, want))
    got = sf.constrained_beam_step(lp, scores, states, trie, 5, renormalize=True,
                                   backend=backend)
    want = sf.constrained_beam_step(lp, scores, torch.where(genuine, states, -1), trie, 5,
                                    renormalize=True, backend=backend)
    assert all(torch.equal(a, c) for a, c in zip(got, want))
    # The pool update treats them as empty entries as well.
    pool = sf.constrained_pool_update(scores, states.reshape(b, w), scores,
                                      states.reshape(b, w), trie, backend=backend)
    clean = torch.where(genuine, states, -1).reshape(b, w)
    want = sf.constrained_pool_update(scores, clean, scores, clean, trie, backend=backend)
    assert torch.equal(pool[0], want[0]) and torch.equal(pool[1], want[1])
    assert torch.equal(torch.where(genuine.reshape(b, w), pool[2], -1), want[2])


@pytest.mark.parametrize("backend", ["reference"] + STEP_BACKENDS)
def test_beam_step_nan_and_inf_inputs_give_a_defined_result(unchecked, backend):
    """Unchecked NaN/inf: every NaN ranks above +inf, NaNs tie (broken by rank), on every
    backend alike; negative-sign NaN bit patterns included."""
    g = torch.Generator().manual_seed(9)
    trie = random_trie(g, 80, 3, 5, True)
    lp = torch.randn(6 * 4, 5, generator=g).log_softmax(-1)
    special = torch.tensor([torch.nan, -torch.nan, torch.inf, -torch.inf, 0.0, -0.0])
    pick = torch.randint(0, 6, lp.shape, generator=g)
    lp = torch.where(torch.rand(lp.shape, generator=g) < 0.3, special[pick], lp)
    scores = torch.where(torch.rand(6, 4, generator=g) < 0.3, special[torch.randint(0, 6, (6, 4),
                         generator=g)], torch.randn(6, 4, generator=g))
    states = random_states(trie, 24, g)
    got = sf.constrained_beam_step(lp, scores, states, trie, 7, backend=backend)
    want = sf.constrained_beam_step(lp, scores, states, trie, 7, backend="reference")
    torch.testing.assert_close(got[0], want[0], equal_nan=True, rtol=0, atol=0)
    assert all(torch.equal(a, c) for a, c in zip(got[1:], want[1:]))
    out_scores, parents, tokens, nexts = got
    assert ((parents >= -1) & (parents < 4)).all() and ((tokens >= -1) & (tokens < 5)).all()
    assert ((nexts >= -trie.num_states) & (nexts < trie.num_states)).all()
    # Renormalised: a NaN child makes its beam's shift NaN, +-inf maxima shift by 0, on the
    # native shift as on torch's; the winners are the same.
    got = sf.constrained_beam_step(lp, scores, states, trie, 7, renormalize=True,
                                   backend=backend)
    want = sf.constrained_beam_step(lp, scores, states, trie, 7, renormalize=True,
                                    backend="reference")
    torch.testing.assert_close(got[0], want[0], equal_nan=True, rtol=0, atol=1e-5)
    assert all(torch.equal(a, c) for a, c in zip(got[1:], want[1:]))


@pytest.mark.parametrize("backend", ["reference"] + STEP_BACKENDS)
def test_beam_step_empty_batch(backend):
    trie = build(torch.tensor([[0, 1], [1, 1]]))
    out = sf.constrained_beam_step(torch.zeros(0, 2), torch.zeros(0, 3),
                                   torch.zeros(0, dtype=torch.long), trie, 4, backend=backend)
    assert [tuple(t.shape) for t in out] == [(0, 4)] * 4
    assert out[0].dtype == torch.float32 and out[1].dtype == torch.long


def test_beam_search_checks_every_step(unchecked):
    trie = build(torch.tensor([[0, 1], [1, 1]]))

    def narrow_later(step, tokens, parents):
        return torch.zeros(4, 2 if step == 0 else 1)

    def ints_later(step, tokens, parents):
        return torch.zeros(4, 2, dtype=torch.float32 if step == 0 else torch.long)

    for backend in ["reference"] + STEP_BACKENDS:
        with pytest.raises(ValueError, match="V >= max"):
            sf.constrained_beam_search(narrow_later, trie, batch_size=2, beam_width=2,
                                       backend=backend)
        with pytest.raises(TypeError, match="log_probs"):
            sf.constrained_beam_search(ints_later, trie, batch_size=2, beam_width=2,
                                       backend=backend)


def test_beam_search_scans_every_step_when_checks_are_on():
    trie = build(torch.tensor([[0, 1], [1, 1]]))

    def nan_later(step, tokens, parents):
        return torch.full((4, 2), torch.nan if step == 1 else 0.0)

    with pytest.raises(ValueError, match="log_probs contains NaN"):
        sf.constrained_beam_search(nan_later, trie, batch_size=2, beam_width=2)


def corrupt(tmp_path, trie, index, edit):
    tensors = [t.clone() for t in trie._tensors()]
    edit(tensors[index])
    path = tmp_path / f"corrupt{index}.pt"
    torch.save({"format": ops._FORMAT, "tensors": tensors, "num_items": trie.num_items,
                "vocab_sizes": list(trie.vocab_sizes), "collisions": [],
                "max_children": 0}, path)
    return path


@pytest.mark.parametrize("index,edit,message", [
    (0, lambda t: t.__setitem__(2, 10**6), "child_offsets"),
    (0, lambda t: t.__setitem__(-1, 0), "child_offsets"),
    (1, lambda t: t.__setitem__(0, -3), "child codes"),
    (1, lambda t: t.__setitem__(-1, 10**6), "child codes"),
    (2, lambda t: t.__setitem__(0, 10**9), "terminal"),
    (3, lambda t: t.__setitem__(1, 5), "level_starts"),
])
def test_load_rejects_corrupt_layouts(tmp_path, index, edit, message):
    trie = build(torch.tensor([[0, 1, 2], [1, 1, 0], [1, 2, 2]]))
    with pytest.raises(ValueError, match=message):
        sf.SemanticIDTrie.load(corrupt(tmp_path, trie, index, edit))
    # An intact file with a wrong max_children loads with the true one.
    back = sf.SemanticIDTrie.load(corrupt(tmp_path, trie, 0, lambda t: None))
    assert back.max_children == trie.max_children


# ---- GPU: every backend against the reference on CUDA tensors ---------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("b,w_in,w_out,v,n,depth,k,variable,ties", STEP_SHAPES + [
    (3, 64, 1024, 300, 20000, 3, 256, True, False),  # the widest beam the kernel keeps
    (2, 8192, 16, 16, 500, 2, 16, False, True),  # the most beams it reads
])
def test_beam_step_cuda_equals_reference(b, w_in, w_out, v, n, depth, k, variable, ties):
    g = torch.Generator().manual_seed(w_in + n)
    trie = random_trie(g, n, depth, k, variable)
    log_probs = torch.randn(b * w_in, v, generator=g).log_softmax(-1)
    scores = torch.randn(b, w_in, generator=g)
    if ties:
        log_probs, scores = (log_probs * 2).round() / 2, (scores * 2).round() / 2
    states = random_states(trie, b * w_in, g)
    want = sf.constrained_beam_step(log_probs, scores, states, trie, w_out, backend="reference")
    gpu = trie.to("cuda")
    args = (log_probs.cuda(), scores.cuda(), states.cuda(), gpu, w_out)
    for backend in ("reference", "cuda"):
        got = sf.constrained_beam_step(*args, backend=backend)
        for a, c in zip(got, want):
            assert a.is_cuda and torch.equal(a.cpu(), c)


@pytest.mark.gpu
def test_beam_step_cuda_with_rising_scores_sorts_many_times():
    # Candidates arrive in ascending score order, so every one beats the threshold and the
    # staging area fills again and again.
    g = torch.Generator().manual_seed(2)
    trie = random_trie(g, 5000, 2, 256, False)
    w = 40
    log_probs = torch.linspace(-30, 0, 256).repeat(w, 1)
    scores = torch.linspace(-5, 0, w)[None]
    states = trie.walk(torch.randint(0, 256, (w, 1), generator=g))
    want = sf.constrained_beam_step(log_probs, scores, states, trie, 300, backend="reference")
    got = sf.constrained_beam_step(log_probs.cuda(), scores.cuda(), states.cuda(),
                                   trie.to("cuda"), 300, backend="cuda")
    assert all(torch.equal(a.cpu(), c) for a, c in zip(got, want))


@pytest.mark.gpu
def test_trie_members_and_beam_search_on_cuda():
    g = torch.Generator().manual_seed(4)
    codes = torch.randint(0, 32, (3000, 4), generator=g)
    lengths = torch.randint(1, 5, (3000,), generator=g)
    cpu = build(codes, lengths)
    gpu = build(codes.cuda(), lengths.cuda())
    assert gpu.device.type == "cuda"
    for a, c in zip(gpu._tensors(), cpu._tensors()):
        assert torch.equal(a.cpu(), c)
    states = random_states(cpu, 500, g)
    for member in ("valid_next", "state_level", "terminal_item"):
        assert torch.equal(getattr(gpu, member)(states.cuda()).cpu(), getattr(cpu, member)(states))
    picks = torch.randint(0, 32, (500,), generator=g)
    assert torch.equal(gpu.advance(states.cuda(), picks.cuda()).cpu(), cpu.advance(states, picks))
    assert torch.equal(gpu.item_ids(codes.cuda(), lengths.cuda()).cpu(),
                       cpu.item_ids(codes, lengths))
    runs = []
    for trie, backend in ((cpu, "cpu"), (gpu, "cuda"), (gpu, "reference")):
        model = PrefixModel(2, 16, 32, seed=9)

        def step_fn(step, tokens, parents, model=model, device=trie.device):
            to_cpu = (lambda t: None if t is None else t.cpu())
            return model(step, to_cpu(tokens), to_cpu(parents)).to(device)

        runs.append([t.cpu() for t in sf.constrained_beam_search(
            step_fn, trie, batch_size=2, beam_width=16, backend=backend)])
    for run in runs[1:]:
        assert all(torch.equal(a, c) for a, c in zip(run, runs[0]))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "reference"])
def test_cuda_hostile_states_and_nan_match_the_cpu_rules(unchecked, backend):
    g = torch.Generator().manual_seed(4)
    trie = random_trie(g, 30, 3, 6, True)
    other = random_trie(g, 3000, 4, 64, True)
    states = hostile_states(trie, other)
    b, w = 3, states.shape[0] // 3
    lp = torch.randn(b * w, trie.max_vocab, generator=g).log_softmax(-1)
    scores = torch.randn(b, w, generator=g)
    want = sf.constrained_beam_step(lp, scores, states, trie, 5, backend="cpu")
    got = sf.constrained_beam_step(lp.cuda(), scores.cuda(), states.cuda(), trie.to("cuda"), 5,
                                   backend=backend)
    assert all(torch.equal(a.cpu(), c) for a, c in zip(got, want))
    lp[0, :2], lp[4, 1], scores[1, 1] = torch.nan, -torch.nan, torch.inf
    want = sf.constrained_beam_step(lp, scores, states, trie, 5, backend="cpu")
    got = sf.constrained_beam_step(lp.cuda(), scores.cuda(), states.cuda(), trie.to("cuda"), 5,
                                   backend=backend)
    torch.testing.assert_close(got[0].cpu(), want[0], equal_nan=True, rtol=0, atol=0)
    assert all(torch.equal(a.cpu(), c) for a, c in zip(got[1:], want[1:]))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "reference"])
def test_cuda_steps_never_sync_with_the_host(unchecked, backend):
    g = torch.Generator().manual_seed(6)
    trie = random_trie(g, 2000, 4, 32, True).to("cuda")
    states = random_states(trie.to("cpu"), 40, g).cuda()
    codes = torch.randint(0, 32, (40, 3), generator=g).cuda()
    lp = torch.randn(40, 40, generator=g).log_softmax(-1).cuda()
    scores = torch.zeros(4, 10, device="cuda")
    cuda_gen = torch.Generator(device="cuda").manual_seed(0)

    def step_fn(step, tokens, parents):
        return torch.randn(40, 40, device="cuda", generator=cuda_gen).log_softmax(-1)

    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        sf.constrained_beam_step(lp, scores, states, trie, 10, backend=backend)
        sf.constrained_beam_search(step_fn, trie, batch_size=4, beam_width=10, backend=backend)
        trie.walk(codes)
        trie.advance(states, codes[:, 0])
        trie.valid_next(states)
        trie.state_level(states)
        trie.terminal_item(states)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_beam_step_op_passes_opcheck_and_compiles():
    g = torch.Generator().manual_seed(8)
    trie = random_trie(g, 300, 3, 12, True)
    lp = torch.randn(12, 12, generator=g).log_softmax(-1)
    scores = torch.randn(3, 4, generator=g)
    states = random_states(trie, 12, g)
    pool_scores = torch.randn(3, 6, generator=g)
    pool_states = random_states(trie, 18, g).reshape(3, 6)
    for backend in ["reference"] + STEP_BACKENDS:
        for renormalize in (False, True):
            torch.library.opcheck(ops._beam_step_op, (lp, scores, states, trie.child_offsets,
                                                      trie.child_codes, trie.terminal,
                                                      trie.max_children, 5, renormalize,
                                                      backend))
        torch.library.opcheck(ops._pool_update_op, (pool_scores, pool_states, scores,
                                                    states.reshape(3, 4), trie.terminal,
                                                    backend))
    want = sf.constrained_beam_step(lp, scores, states, trie, 5)
    compiled = torch.compile(lambda a, b, c: sf.constrained_beam_step(a, b, c, trie, 5),
                             fullgraph=True, backend="eager")
    assert all(torch.equal(x, y) for x, y in zip(compiled(lp, scores, states), want))


def test_traced_steps_keep_their_custom_ops(unchecked):
    """Eager calls skip the torch.library dispatcher; tracing (make_fx here, a dispatch
    mode) still records the registered ops."""
    from torch.fx.experimental.proxy_tensor import make_fx

    g = torch.Generator().manual_seed(8)
    trie = random_trie(g, 300, 3, 12, True)
    lp = torch.randn(12, 12, generator=g).log_softmax(-1)
    scores = torch.randn(3, 4, generator=g)
    states = random_states(trie, 12, g)

    def step(lp, scores, states):
        out, _, _, next_states = sf.constrained_beam_step(lp, scores, states, trie, 4,
                                                          backend="cpu")
        return sf.constrained_pool_update(out, next_states, out, next_states, trie,
                                          backend="cpu")

    graph = make_fx(step)(lp, scores, states)
    targets = {str(node.target) for node in graph.graph.nodes}
    assert {"semid_fast.trie_beam_step.default",
            "semid_fast.trie_pool_update.default"} <= targets
    assert all(torch.equal(a, c) for a, c in zip(graph(lp, scores, states),
                                                 step(lp, scores, states)))


@pytest.mark.gpu
def test_beam_step_is_cuda_graph_capturable():
    g = torch.Generator().manual_seed(6)
    trie = random_trie(g, 4000, 3, 64, True).to("cuda")
    lp = torch.randn(40, 64, generator=g).log_softmax(-1).cuda()
    scores = torch.randn(4, 10, generator=g).cuda()
    states = random_states(trie.to("cpu"), 40, g).cuda()
    want = sf.constrained_beam_step(lp, scores, states, trie, 10, backend="cuda")
    sf.config.check_values = False  # value scans sync with the host: not inside a graph
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm up outside the capture
            sf.constrained_beam_step(lp, scores, states, trie, 10, backend="cuda")
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = sf.constrained_beam_step(lp, scores, states, trie, 10, backend="cuda")
        lp.copy_(lp.flip(1))
        graph.replay()
        torch.cuda.synchronize()
    finally:
        sf.config.check_values = True
    again = sf.constrained_beam_step(lp, scores, states, trie, 10, backend="reference")
    assert all(torch.equal(a, c) for a, c in zip(out, again))
    assert not all(torch.equal(a, c) for a, c in zip(want, again))


# ---- finished="pool": the varlen paper's decoding ----------------------------------------------

def python_pool_update(pool, done, width):
    """The pool update restated over lists: (score, position) pairs, best first; ties toward
    the old pool, then the smaller beam index."""
    merged = pool + done
    order = sorted(range(len(merged)), key=lambda i: (-merged[i][0], i))
    return [merged[i] for i in order[:width]]


# (B, P, W, N, L, K, quantised scores: many ties)
POOL_SHAPES = [(1, 1, 1, 5, 2, 3, False), (3, 4, 7, 60, 3, 5, True), (2, 9, 3, 300, 4, 6, False),
               (5, 20, 20, 400, 3, 8, True), (4, 3, 0, 20, 2, 4, False)]


@pytest.mark.parametrize("backend", STEP_BACKENDS)
@pytest.mark.parametrize("b,p,w,n,depth,k,ties", POOL_SHAPES)
def test_pool_update_equals_reference_and_the_list_rule(backend, b, p, w, n, depth, k, ties):
    g = torch.Generator().manual_seed(b * 100 + p * 10 + w)
    trie = random_trie(g, n, depth, k, True)
    pool_scores, scores = torch.randn(b, p, generator=g), torch.randn(b, w, generator=g)
    if ties:
        pool_scores, scores = pool_scores.round(), scores.round()
    pool_states = random_states(trie, b * p, g).reshape(b, p)
    states = random_states(trie, b * w, g).reshape(b, w)
    # Foreign values (another trie's states) are empty entries, never read out of bounds.
    pool_states[0, 0] = 10**9
    if w:
        states[-1, -1] = -(10**9)
    args = (pool_scores, pool_states, scores, states, trie)
    want = sf.constrained_pool_update(*args, backend="reference")
    got = sf.constrained_pool_update(*args, backend=backend)
    for a, c, shape in zip(got, want, [(b, p), (b, p), (b, w)]):
        assert a.shape == shape and torch.equal(a, c)
    is_id = (trie.terminal_item(states.reshape(-1)) >= 0).reshape(b, w) & (states >= 0)
    assert torch.equal(want[2], torch.where(is_id, -1, states))
    for r in range(b):
        pool = [(float(s), ("pool", int(st))) for s, st in zip(pool_scores[r], pool_states[r])
                if 0 <= st < trie.num_states and trie.terminal[st] >= 0]
        done = [(float(s), ("beam", int(st))) for s, st, d in zip(scores[r], states[r], is_id[r])
                if d]
        kept = python_pool_update(pool, done, p)
        assert want[0][r, :len(kept)].tolist() == [s for s, _ in kept]
        assert want[1][r, :len(kept)].tolist() == [st for _, (_, st) in kept]
        assert (want[1][r, len(kept):] == -1).all()
        assert torch.isinf(want[0][r, len(kept):]).all()


def varlen_paper_beam_search(model, ids, row, width, depth):
    """Oracle of KhrylchenkoKirill/varlen_semantic_ids, lib/seqrec/beam_search.py,
    BeamSearchVarLen._beam_search_with_cache with constrain_only_at_end=False, restated over
    Python lists: each step expands every beam whose prefix is not an ID by its trie
    children (an ID is never expanded, even when longer IDs continue it), keeps the best
    `width` candidates (ties toward the smaller (beam, code), the flat top-k index), and
    records every kept beam that is an ID into the row's pool with its score; the result is
    the best `width` of the pool (ties toward the earlier record). One documented
    difference: the paper starts recording at the second token, here IDs of length 1 are
    recorded at the first step like any other."""
    d = DictTrie(ids)
    beams, pool = [(torch.zeros(()), ())], []
    for _ in range(depth):
        cands = []
        for score, prefix in beams:
            if prefix in d.item:
                continue
            lp = model.log_probs(row, prefix)
            cands += [(score + lp[c], prefix + (c,)) for c in sorted(d.children[prefix])]
        order = sorted(range(len(cands)), key=lambda i: (-float(cands[i][0]), i))
        beams = [cands[i] for i in order[:width]]
        pool += [(float(s), p) for s, p in beams if p in d.item]
    pool = sorted(range(len(pool)), key=lambda i: (-pool[i][0], i))[:width], pool
    return [(d.item[pool[1][i][1]], pool[1][i][0]) for i in pool[0]]


def check_pool_search(items, out_codes, scores, want, ids, trie, row):
    k = len(want)
    assert items[row, :k].tolist() == [i for i, _ in want]
    assert scores[row, :k].tolist() == [s for _, s in want]
    assert (items[row, k:] == -1).all() and torch.isinf(scores[row, k:]).all()
    assert (out_codes[row, k:] == -1).all()
    for i, c in zip(items[row, :k].tolist(), out_codes[row, :k]):
        assert tuple(x for x in c.tolist() if x >= 0) == ids[i]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(catalogs(max_items=12, max_depth=3, max_vocab=4), st.integers(1, 2), st.integers(1, 4),
       st.sampled_from(["reference"] + STEP_BACKENDS))
def test_pool_search_matches_the_paper_and_brute_force(catalog, batch, small_width, backend):
    codes, lengths = catalog
    trie = build(codes, lengths)
    ids = ids_of(codes, lengths)
    d = DictTrie(ids)
    v = trie.max_vocab + 2
    # Exhaustive: with a beam as wide as the trie, the pool holds every ID that has no
    # proper prefix among the IDs (those are never expanded), each with its full score.
    width = trie.num_states
    model = PrefixModel(batch, width, v, seed=len(ids))
    items, out_codes, scores = sf.constrained_beam_search(
        model, trie, batch_size=batch, beam_width=width, finished="pool", backend=backend)
    reachable = [(i, ident) for ident, i in d.item.items()
                 if not any(ident[:m] in d.item for m in range(1, len(ident)))]
    for row in range(batch):
        want = sorted(((i, float(id_score(model, row, ident))) for i, ident in reachable),
                      key=lambda x: -x[1])
        got = sorted(zip(items[row, :len(want)].tolist(), scores[row, :len(want)].tolist()))
        assert got == sorted(want)
        assert (items[row, len(want):] == -1).all()
        check_pool_search(items, out_codes, scores,
                          varlen_paper_beam_search(model, ids, row, width, trie.depth),
                          ids, trie, row)
    # Pruning: a narrow beam, step by step as the paper's loop.
    model = PrefixModel(batch, small_width, v, seed=len(ids) + 1)
    items, out_codes, scores = sf.constrained_beam_search(
        model, trie, batch_size=batch, beam_width=small_width, finished="pool", backend=backend)
    for row in range(batch):
        want = varlen_paper_beam_search(model, ids, row, small_width, trie.depth)
        check_pool_search(items, out_codes, scores, want, ids, trie, row)


def test_pool_search_backends_agree_and_differ_from_keep():
    g = torch.Generator().manual_seed(12)
    trie = random_trie(g, 2000, 4, 16, True)
    runs = {}
    for finished in ("keep", "pool"):
        for backend in ["reference"] + STEP_BACKENDS:
            model = PrefixModel(3, 12, 20, seed=4)
            runs[finished, backend] = sf.constrained_beam_search(
                model, trie, batch_size=3, beam_width=12, finished=finished, backend=backend)
            assert all(torch.equal(a, c) for a, c in zip(runs[finished, backend],
                                                         runs[finished, "reference"]))
    keep, pool = runs["keep", "reference"], runs["pool", "reference"]
    assert not torch.equal(keep[0], pool[0])  # a different algorithm on variable lengths
    items, codes, _ = pool
    lengths = (codes >= 0).sum(-1).reshape(-1)
    assert torch.equal(trie.item_ids(codes.reshape(-1, 4).clamp(min=0), lengths),
                       items.reshape(-1))


def popularity_order(counts):
    """Item ids by interaction count, descending, ties toward the larger item id (the
    paper's sort in scripts/train_seqrec.py, append_unique_token)."""
    return sorted(range(len(counts)), key=lambda i: (counts[i], i), reverse=True)


def sports_varlen_ids(shared_data):
    """amazon14_sports' 3 codes cut to the shortest prefix that no other item shares (the
    full 3 codes for colliding items), then the paper's separate suffix by popularity in
    sequences.txt: real variable-length IDs, none a prefix of another."""
    rows = [r[:3] for r in load_leaf_index(shared_data / "amazon14_sports/sid_leaf.json")]
    counts = [0] * len(rows)
    for line in (shared_data / "amazon14_sports/sequences.txt").read_text().split("\n"):
        for item in line.split()[1:]:
            counts[int(item)] += 1
    shared = Counter(tuple(r[:m]) for r in rows for m in range(1, 4))
    lengths = torch.tensor([next((m for m in range(1, 4) if shared[tuple(r[:m])] == 1), 3)
                            for r in rows])
    return sf.dedup_suffix(torch.tensor(rows), lengths, scheme="separate",
                           order=popularity_order(counts))


def test_pool_search_on_real_variable_length_ids_matches_the_paper(shared_data):
    codes, lengths = sports_varlen_ids(shared_data)
    assert len(set(lengths.tolist())) > 1
    trie = build(codes, lengths)
    assert not trie.collisions
    ids = ids_of(codes, lengths)
    batch, width = 3, 20
    for backend in ["reference"] + STEP_BACKENDS:
        model = PrefixModel(batch, width, trie.max_vocab, seed=7)
        items, out_codes, scores = sf.constrained_beam_search(
            model, trie, batch_size=batch, beam_width=width, finished="pool", backend=backend)
        for row in range(batch):
            want = varlen_paper_beam_search(model, ids, row, width, trie.depth)
            assert len(want) == width
            check_pool_search(items, out_codes, scores, want, ids, trie, row)


# ---- dedup_suffix(scheme="separate"): the paper's suffix ------------------------------------

def paper_unique_token(ids, order):
    """Oracle of KhrylchenkoKirill/varlen_semantic_ids, scripts/train_seqrec.py
    (append_unique_token): items in popularity order count up within their group of equal
    IDs, and the count plus (1 + the largest token of any ID) is appended."""
    offset = 1 + max(c for ident in ids for c in ident)
    seen, out = {}, [None] * len(ids)
    for i in order:
        out[i] = ids[i] + (offset + seen.get(ids[i], 0),)
        seen[ids[i]] = seen.get(ids[i], 0) + 1
    return out


def prefixes_of_others(ids):
    proper = {ident[:m] for ident in set(ids) for m in range(1, len(ident))}
    return sum(ident in proper for ident in ids)


@settings(max_examples=40, deadline=None)
@given(catalogs(), st.integers(0, 2**31 - 1))
def test_dedup_suffix_separate_matches_the_paper(catalog, seed):
    codes, lengths = catalog
    n = codes.shape[0]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    ids = ids_of(codes, lengths)
    new_codes, new_lengths = sf.dedup_suffix(codes, lengths, scheme="separate", order=order)
    assert torch.equal(new_lengths, lengths + 1)
    new_ids = ids_of(new_codes, new_lengths)
    assert new_ids == paper_unique_token(ids, order.tolist())
    assert len(set(new_ids)) == n and prefixes_of_others(new_ids) == 0
    # order also drives the "same" scheme's numbering; None is item order.
    same = ids_of(*sf.dedup_suffix(codes, lengths, order=order.numpy()))
    offset = 1 + max(c for ident in ids for c in ident)
    assert same == [i[:-1] + (i[-1] - offset,) for i in new_ids]
    assert ids_of(*sf.dedup_suffix(codes, lengths, scheme="separate")) == \
        paper_unique_token(ids, range(n))


@pytest.mark.parametrize("name", ["amazon14_beauty", "yelp"])
def test_dedup_suffix_separate_leaves_no_prefix_on_real_ids(shared_data, name):
    rows = load_token_index(shared_data / name / "sid.index.json")
    codes = torch.tensor(rows)
    n = len(rows)
    if name == "amazon14_beauty":  # popular items get shorter IDs, as in the varlen paper
        counts = [0] * n
        for seq in json.loads((shared_data / name / "inter.json").read_text()).values():
            for item in seq:
                counts[item] += 1
        order = popularity_order(counts)
        lengths = torch.full((n,), 4)
        lengths[torch.tensor(order[:n // 5])] = 2
        lengths[torch.tensor(order[n // 5:n // 2])] = 3
    else:
        order = list(range(n))
        lengths = torch.tensor([2 + i % 3 for i in range(n)])
    ids = ids_of(codes, lengths)
    same = ids_of(*sf.dedup_suffix(codes, lengths, order=order))
    separate = ids_of(*sf.dedup_suffix(codes, lengths, scheme="separate", order=order))
    assert prefixes_of_others(same) > 0  # the same-space scheme leaves prefixes here
    assert prefixes_of_others(separate) == 0 and len(set(separate)) == n
    assert separate == paper_unique_token(ids, order)


def test_bad_dedup_and_pool_input():
    codes = torch.tensor([[0, 1], [0, 1], [1, 0]])
    with pytest.raises(ValueError, match="scheme must be"):
        sf.dedup_suffix(codes, scheme="other")
    with pytest.raises(ValueError, match="order must be a permutation"):
        sf.dedup_suffix(codes, order=[0, 0, 1])
    with pytest.raises(ValueError, match="order must be a permutation"):
        sf.dedup_suffix(codes, order=[0, 1])
    with pytest.raises(TypeError, match="order must hold integers"):
        sf.dedup_suffix(codes, order=np.array([0.0, 1.0, 2.0]))
    trie = build(codes)
    with pytest.raises(ValueError, match="finished must be"):
        sf.constrained_beam_search(lambda *a: None, trie, batch_size=1, beam_width=2,
                                   finished="drop")
    with pytest.raises(TypeError, match="renormalize must be a bool"):
        sf.constrained_beam_search(lambda *a: None, trie, batch_size=1, beam_width=2,
                                   renormalize=1)
    ps, pst = torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="pool_states must have the shape"):
        sf.constrained_pool_update(ps, pst[:, :2], ps, pst, trie)
    with pytest.raises(ValueError, match="B=2 rows"):
        sf.constrained_pool_update(ps, pst, ps[:1], pst[:1], trie)
    with pytest.raises(TypeError, match="states must have dtype"):
        sf.constrained_pool_update(ps, pst, ps, pst.int(), trie)
    with pytest.raises(TypeError, match="SemanticIDTrie"):
        sf.constrained_pool_update(ps, pst, ps, pst, "trie")


# ---- renormalize=True, states=, step 0 of one row: GRID-style clients ---------------------------

@pytest.mark.parametrize("backend", STEP_BACKENDS)
@pytest.mark.parametrize("b,w_in,w_out,v,n,depth,k,variable,ties", STEP_SHAPES)
def test_renormalized_beam_step_equals_reference_exactly(backend, b, w_in, w_out, v, n, depth,
                                                         k, variable, ties):
    g = torch.Generator().manual_seed(b * 1000 + w_in * 10 + n + 1)
    trie = random_trie(g, n, depth, k, variable)
    logits = torch.randn(b * w_in, v, generator=g) * 4
    if ties:
        logits = logits.round()
        logits[0, :] = -torch.inf  # a beam whose children are all impossible
    scores = torch.randn(b, w_in, generator=g)
    states = random_states(trie, b * w_in, g)
    # The kernel given a shift: bit for bit the reference's.
    csr = (trie.child_offsets, trie.child_codes, trie.terminal)
    shift = ref.children_logsumexp(logits, states, trie.child_offsets, trie.child_codes,
                                   trie.max_children)
    want = ref.beam_step(logits, scores, states, *csr, trie.max_children, w_out, shift)
    got = (torch.empty(b, w_out), *(torch.empty(b, w_out, dtype=torch.long) for _ in range(3)))
    launcher(backend, "beam_step")(logits, scores, states, shift, *csr, trie.max_children, *got)
    assert all(torch.equal(a, c) for a, c in zip(got, want))
    # The backend's own shift: the torch one up to rounding.
    native = torch.empty(b * w_in)
    launcher(backend, "children_logsumexp")(logits, states, trie.child_offsets,
                                            trie.child_codes, trie.max_children, native)
    torch.testing.assert_close(native, shift, atol=1e-6, rtol=1e-6)
    args = (logits, scores, states, trie, w_out)
    want = sf.constrained_beam_step(*args, renormalize=True, backend="reference")
    got = sf.constrained_beam_step(*args, renormalize=True, backend=backend)
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=0)
    if not ties:  # no candidates within rounding of each other: the same winners
        assert all(torch.equal(a, c) for a, c in zip(got[1:], want[1:]))
    # Each child's score is its log-softmax over the valid children of its beam.
    out_scores, parents, tokens, _ = want
    flat = torch.arange(b)[:, None] * w_in + parents.clamp(min=0)
    valid = trie.valid_next(states)[:, :v]
    masked = torch.where(valid, logits[:, :valid.shape[1]], -torch.inf)
    log_softmax = masked.log_softmax(1)
    moved = tokens >= 0
    expect = scores.reshape(-1)[flat] + log_softmax[flat, tokens.clamp(min=0)]
    fin = moved & torch.isfinite(expect)
    assert torch.allclose(out_scores[fin], expect[fin], atol=1e-5)
    assert torch.isinf(out_scores[moved & ~torch.isfinite(expect)]).all()
    assert not torch.isnan(out_scores).any()


class GridModel:
    """A GRID/TIGER-style client: raw logits per (batch row, prefix), one row per batch row
    at step 0, and the trie states it is given checked against its own prefixes."""

    def __init__(self, trie, batch, width, v, seed):
        self.trie, self.batch, self.width, self.v, self.seed = trie, batch, width, v, seed
        self.prefixes, self.calls = None, 0

    def logits(self, row, prefix):
        g = np.random.default_rng([self.seed, row, len(prefix), *prefix])
        return torch.from_numpy(g.standard_normal(self.v) * 3).float()

    def __call__(self, step, tokens, parents, *, states):
        self.calls += 1
        n = self.batch * self.width
        assert states.shape == (n,) and states.dtype == torch.long
        if step == 0:
            assert tokens is None and parents is None
            assert (states.reshape(self.batch, -1)[:, 0] == 0).all()
            assert (states.reshape(self.batch, -1)[:, 1:] == -1).all()
            self.prefixes = [()] * self.batch
            rows = range(self.batch)
        else:
            self.prefixes = [self.prefixes[p] + ((t,) if t >= 0 else ())
                             for p, t in zip(parents.tolist(), tokens.tolist())]
            live = states >= 0
            walked = torch.cat([self.trie.walk(torch.tensor([p], dtype=torch.long).reshape(1, -1))
                                for p in self.prefixes])
            assert torch.equal(walked[live], states[live])
            rows = [i // self.width for i in range(n)]
        return torch.stack([self.logits(r, p) for r, p in zip(rows, self.prefixes)])


def grid_beam_search(model, ids, row, width, depth):
    """Oracle of snap-research/GRID, src/models/modules/semantic_id/
    tiger_generation_model.py, _beam_search_one_step with _check_valid_prefix, restated over
    Python lists in float64 probabilities: step 0 masks the first codes that start no ID,
    softmaxes and keeps the best `width`; each later step masks every code whose prefix
    starts no ID, softmaxes each beam's row, multiplies by the beam's marginal probability
    and keeps the best `width` over beams x codes (ties toward the smaller (beam, code))."""
    d = DictTrie(ids)
    beams = [(1.0, ())]
    for _ in range(depth):
        cands = []
        for prob, prefix in beams:
            kids = sorted(d.children[prefix])
            if not kids:
                continue
            logits = model.logits(row, prefix).double()[kids]
            cands += [(prob * float(q), prefix + (c,)) for q, c in zip(logits.softmax(0), kids)]
        order = sorted(range(len(cands)), key=lambda i: (-cands[i][0], i))
        beams = [cands[i] for i in order[:width]]
    return [(d.item[p], prob) for prob, p in beams]


def industrial_ids(shared_data):
    rows = load_token_index(shared_data / "amazon18_industrial/sid.index.json")
    return sf.dedup_suffix(torch.tensor(rows))


@pytest.mark.parametrize("backend", ["reference"] + STEP_BACKENDS)
def test_renormalized_search_matches_grid(shared_data, backend):
    codes, lengths = industrial_ids(shared_data)
    trie = build(codes, lengths)
    ids = ids_of(codes, lengths)
    batch, width = 3, 10
    model = GridModel(trie, batch, width, trie.max_vocab + 3, seed=5)
    items, _, scores = sf.constrained_beam_search(model, trie, batch_size=batch,
                                                  beam_width=width, renormalize=True,
                                                  backend=backend)
    assert model.calls == trie.depth
    for row in range(batch):
        want = grid_beam_search(model, ids, row, width, trie.depth)
        assert items[row].tolist() == [i for i, _ in want]
        assert np.allclose(scores[row].exp().numpy(), [p for _, p in want], rtol=1e-4)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(catalogs(max_items=12, max_depth=3, max_vocab=4), st.integers(1, 2), st.integers(1, 4),
       st.sampled_from(["reference"] + STEP_BACKENDS))
def test_renormalized_search_matches_grid_and_brute_force(catalog, batch, small_width, backend):
    codes, lengths = catalog
    codes = codes.clamp(min=0)
    lengths = torch.full_like(lengths, codes.shape[1])  # GRID's IDs have one length
    trie = build(codes, lengths)
    ids = ids_of(codes, lengths)
    for width in (trie.num_states, small_width):
        model = GridModel(trie, batch, width, trie.max_vocab + 1, seed=len(ids) + width)
        items, _, scores = sf.constrained_beam_search(model, trie, batch_size=batch,
                                                      beam_width=width, renormalize=True,
                                                      backend=backend)
        for row in range(batch):
            want = grid_beam_search(model, ids, row, width, trie.depth)
            k = len(want)
            if width == trie.num_states:  # exhaustive: every distinct ID, probabilities sum to 1
                assert k == len(set(ids)) and abs(sum(p for _, p in want) - 1) < 1e-9
            got = list(zip(items[row, :k].tolist(), scores[row, :k].exp().tolist()))
            assert [i for i, _ in got] == [i for i, _ in want]
            assert np.allclose([p for _, p in got], [p for _, p in want], rtol=1e-4)
            assert (items[row, k:] == -1).all()


@pytest.mark.parametrize("finished", ["keep", "pool"])
def test_step0_one_row_per_batch_row_equals_the_expanded_rows(finished):
    g = torch.Generator().manual_seed(13)
    trie = random_trie(g, 500, 3, 12, True)
    batch, width = 4, 6
    for backend in ["reference"] + STEP_BACKENDS:
        runs = []
        for expand in (False, True):
            model = PrefixModel(batch, width, 14, seed=2)
            seen = []

            def step_fn(step, tokens, parents, model=model, expand=expand, seen=seen):
                out = model(step, tokens, parents)
                if step == 0 and not expand:
                    return out[::width]  # (batch_size, V): every row's root
                if step == 1:
                    seen.append(parents.clone())
                return out

            runs.append(sf.constrained_beam_search(step_fn, trie, batch_size=batch,
                                                   beam_width=width, finished=finished,
                                                   backend=backend))
            if not expand:  # parents then index the rows step 0 returned
                assert torch.equal(seen[0], torch.arange(batch).repeat_interleave(width))
        assert all(torch.equal(a, c) for a, c in zip(*runs))


def test_states_keyword_is_detected_from_the_signature():
    trie = build(torch.tensor([[0, 1], [1, 1], [1, 0]]))
    got = []

    def positional(step, tokens, parents, states):
        got.append(states.clone())
        return torch.zeros(4, 2)

    def with_kwargs(step, tokens, parents, **kw):
        assert not kw  # only a declared `states` parameter receives them
        return torch.zeros(4, 2)

    sf.constrained_beam_search(positional, trie, batch_size=2, beam_width=2)
    assert len(got) == 2 and got[0].tolist() == [0, -1, 0, -1]
    assert (trie.state_level(got[1]) == 1).all()
    sf.constrained_beam_search(with_kwargs, trie, batch_size=2, beam_width=2)
    with pytest.raises(ValueError, match=r"or batch_size at step 0"):
        sf.constrained_beam_search(lambda *a: torch.zeros(3, 2), trie, batch_size=2,
                                   beam_width=2)
    with pytest.raises(ValueError, match="at step 1"):
        sf.constrained_beam_search(lambda s, *a: torch.zeros(2 if s else 4, 2), trie,
                                   batch_size=2, beam_width=2)


# ---- pool, renormalize and one-row step 0 on CUDA ------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("b,p,w,n,depth,k,ties", POOL_SHAPES + [
    (3, 1024, 1024, 20000, 3, 256, True),  # the widest pool and beam the kernel sorts
    (2, 1000, 5, 300, 3, 8, False),
])
def test_pool_update_cuda_equals_reference(b, p, w, n, depth, k, ties):
    g = torch.Generator().manual_seed(b + p + w)
    trie = random_trie(g, n, depth, k, True)
    pool_scores, scores = torch.randn(b, p, generator=g), torch.randn(b, w, generator=g)
    if ties:
        pool_scores, scores = pool_scores.round(), scores.round()
    pool_states = random_states(trie, b * p, g).reshape(b, p)
    states = random_states(trie, b * w, g).reshape(b, w)
    want = sf.constrained_pool_update(pool_scores, pool_states, scores, states, trie,
                                      backend="reference")
    gpu = trie.to("cuda")
    args = [t.cuda() for t in (pool_scores, pool_states, scores, states)]
    for backend in ("reference", "cuda"):
        got = sf.constrained_pool_update(*args, gpu, backend=backend)
        assert all(a.is_cuda and torch.equal(a.cpu(), c) for a, c in zip(got, want))


@pytest.mark.gpu
@pytest.mark.parametrize("b,w_in,w_out,v,n,depth,k,variable,ties", STEP_SHAPES)
def test_renormalized_beam_step_cuda_equals_reference(b, w_in, w_out, v, n, depth, k,
                                                      variable, ties):
    g = torch.Generator().manual_seed(w_in + n + 3)
    trie = random_trie(g, n, depth, k, variable)
    logits = torch.randn(b * w_in, v, generator=g) * 4
    if ties:
        logits = logits.round()
    scores = torch.randn(b, w_in, generator=g)
    states = random_states(trie, b * w_in, g)
    gpu = trie.to("cuda")
    # The shift is computed on the device (its exp/log may differ from the CPU's in the
    # last bit), so the CUDA kernel is checked against the reference on the same device.
    args = (logits.cuda(), scores.cuda(), states.cuda(), gpu, w_out)
    want = sf.constrained_beam_step(*args, renormalize=True, backend="reference")
    got = sf.constrained_beam_step(*args, renormalize=True, backend="cuda")
    assert all(torch.equal(a, c) for a, c in zip(got, want))
    cpu = sf.constrained_beam_step(logits, scores, states, trie, w_out, renormalize=True)
    torch.testing.assert_close(got[0].cpu(), cpu[0], atol=1e-5, rtol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("finished", ["keep", "pool"])
def test_pool_renormalized_one_row_search_on_cuda(unchecked, finished):
    g = torch.Generator().manual_seed(14)
    trie = random_trie(g, 3000, 4, 32, True)
    gpu = trie.to("cuda")
    runs = []
    for t, backend in ((trie, "cpu"), (gpu, "cuda"), (gpu, "reference")):
        model = PrefixModel(2, 16, 32, seed=9)

        def step_fn(step, tokens, parents, model=model, device=t.device):
            to_cpu = (lambda x: None if x is None else x.cpu())
            out = model(step, to_cpu(tokens), to_cpu(parents))
            return (out[::16] if step == 0 else out).to(device)

        runs.append([x.cpu() for x in sf.constrained_beam_search(
            step_fn, t, batch_size=2, beam_width=16, finished=finished, renormalize=True,
            backend=backend)])
    for run in runs[1:]:
        assert torch.equal(run[0], runs[0][0]) and torch.equal(run[1], runs[0][1])
        torch.testing.assert_close(run[2], runs[0][2], atol=1e-5, rtol=0)
    # No host sync per step in the pool and renormalized modes either.
    cuda_gen = torch.Generator(device="cuda").manual_seed(0)

    def device_step(step, tokens, parents, states):
        rows = 4 if step == 0 else 40
        return torch.randn(rows, 40, device="cuda", generator=cuda_gen)

    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for backend in ("cuda", "reference"):
            sf.constrained_beam_search(device_step, gpu, batch_size=4, beam_width=10,
                                       finished=finished, renormalize=True, backend=backend)
    finally:
        torch.cuda.set_sync_debug_mode("default")

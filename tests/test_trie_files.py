"""SemanticIDTrie files and hand-made layouts: every corruption raises ValueError naming the
file (or the constructor), never a crash, an out-of-bounds read or a wrong answer; a valid
file decodes exactly like the trie that wrote it."""

import os
import warnings

import pytest
import torch

import semid_fast as sf
from semid_fast import _backends
from semid_fast.ops import trie as ops


def make_trie(seed=0, n=40, lengths=False):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 5, (n, 3), generator=g)
    lens = torch.randint(1, 4, (n,), generator=g) if lengths else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # collisions are expected with 40 random IDs
        return sf.SemanticIDTrie.from_codes(codes, lengths=lens, vocab_sizes=[5, 5, 5])


def layout_is_valid(trie) -> bool:
    """An independent check of the layout (plain Python, breadth-first walk from the root):
    the invariants the kernels rely on."""
    offsets = trie.child_offsets.tolist()
    codes = trie.child_codes.tolist()
    terminal = trie.terminal.tolist()
    starts = trie.level_starts.tolist()
    s = len(terminal)
    if len(offsets) != s + 1 or len(codes) != s - 1 or offsets[0] != 0 or offsets[-1] != s - 1:
        return False
    level = [0] + [None] * (s - 1)
    for u in range(s):
        if level[u] is None or not offsets[u] <= offsets[u + 1] <= s - 1:
            return False
        edges = range(offsets[u], offsets[u + 1])
        if level[u] == trie.depth and len(edges):
            return False
        child_codes = [codes[e] for e in edges]
        if child_codes != sorted(set(child_codes)):
            return False
        for e in edges:
            if not 0 <= codes[e] < trie.vocab_sizes[level[u]] or level[e + 1] is not None:
                return False
            level[e + 1] = level[u] + 1
        if not edges and terminal[u] < 0:
            return False
    counts = [level.count(d) for d in range(trie.depth + 1)]
    expected = [0]
    for c in counts:
        expected.append(expected[-1] + c)
    ends = [t for t in terminal if t >= 0]
    return (starts == expected and terminal[0] == -1 and len(ends) == len(set(ends))
            and all(-1 <= t < trie.num_items for t in terminal)
            and trie.max_children == max(b - a for a, b in zip(offsets, offsets[1:])))


def saved_dict(trie, **changes):
    data = {"format": ops._FORMAT, "tensors": [t.clone() for t in trie._tensors()],
            "num_items": trie.num_items, "vocab_sizes": list(trie.vocab_sizes),
            "collisions": [g.clone() for g in trie.collisions],
            "max_children": trie.max_children}
    data.update(changes)
    return data


def write(tmp_path, data, name="t.pt"):
    path = tmp_path / name
    torch.save(data, path)
    return path


def assert_rejected(path, match=None):
    with pytest.raises(ValueError, match=match) as info:
        sf.SemanticIDTrie.load(path)
    assert str(path) in str(info.value)


def test_truncated_files_name_the_file(tmp_path):
    trie = make_trie()
    trie.save(tmp_path / "t.pt")
    raw = (tmp_path / "t.pt").read_bytes()
    for n in range(len(raw)):
        path = tmp_path / "cut.pt"
        path.write_bytes(raw[:n])
        assert_rejected(path)


@pytest.mark.parametrize("index", range(4), ids=["child_offsets", "child_codes", "terminal",
                                                   "level_starts"])
def test_flipped_bits_are_rejected_or_valid(tmp_path, index):
    """Flip the lowest bit of each byte of one array's data in the file: every result is a
    ValueError naming the file or a trie whose layout is valid (a flipped code can still be
    a valid, different trie)."""
    trie = make_trie(1, lengths=True)
    trie.save(tmp_path / "t.pt")
    raw = (tmp_path / "t.pt").read_bytes()
    data = trie._tensors()[index].numpy().tobytes()
    start = raw.find(data)
    assert start > 0 and raw.find(data, start + 1) < 0
    path = tmp_path / "flipped.pt"
    for pos in range(start, start + len(data)):
        mutated = bytearray(raw)
        mutated[pos] ^= 1
        path.write_bytes(bytes(mutated))
        try:
            back = sf.SemanticIDTrie.load(path)
        except ValueError as e:
            assert str(path) in str(e)
        else:
            assert layout_is_valid(back), f"byte {pos - start} of array {index}"


def swap_first_siblings(tensors):
    offsets, codes = tensors[0], tensors[1]
    degree = offsets[1:] - offsets[:-1]
    e = int(offsets[int(torch.nonzero(degree >= 2)[0, 0])])
    codes[e], codes[e + 1] = int(codes[e + 1]), int(codes[e])


def repeat_first_sibling(tensors):
    offsets, codes = tensors[0], tensors[1]
    degree = offsets[1:] - offsets[:-1]
    e = int(offsets[int(torch.nonzero(degree >= 2)[0, 0])])
    codes[e + 1] = codes[e]


def shift_level_start(tensors):
    tensors[3][2] += 1


def move_edge(tensors):
    # The root loses its last child to state 1: offsets stay monotone, levels break.
    tensors[0][1] -= 1


def drop_terminal(tensors):
    leaf = int(torch.nonzero(tensors[0][1:] == tensors[0][:-1])[0, 0])
    tensors[2][leaf] = -1


def duplicate_terminal(tensors):
    ends = torch.nonzero(tensors[2] >= 0)[:, 0]
    tensors[2][ends[1]] = tensors[2][ends[0]]


LAYOUT_EDITS = {
    "unsorted_children": (swap_first_siblings, "sorted"),
    "repeated_child": (repeat_first_sibling, "sorted"),
    "shifted_level_starts": (shift_level_start, "level_starts"),
    "edge_moved_between_levels": (move_edge, "level"),
    "leaf_not_terminal": (drop_terminal, "leaf"),
    "item_at_two_states": (duplicate_terminal, "two states"),
    "child_offsets_short": (lambda t: t.__setitem__(0, t[0][:-1]), "sizes"),
    "codes_int64": (lambda t: t.__setitem__(1, t[1].long()), "dtypes"),
    "terminal_2d": (lambda t: t.__setitem__(2, t[2][None]), "one-dimensional"),
}


@pytest.mark.parametrize("name", list(LAYOUT_EDITS))
def test_corrupt_layouts_are_rejected(tmp_path, name):
    edit, message = LAYOUT_EDITS[name]
    trie = make_trie(2)
    data = saved_dict(trie)
    edit(data["tensors"])
    assert_rejected(write(tmp_path, data), message)
    # The constructor checks the same layout.
    with pytest.raises(ValueError, match=message):
        sf.SemanticIDTrie(*data["tensors"], num_items=trie.num_items,
                          vocab_sizes=trie.vocab_sizes)


METADATA_EDITS = {
    "num_items_str": {"num_items": "40"},
    "num_items_float": {"num_items": 40.0},
    "num_items_huge": {"num_items": 2**70},
    "num_items_zero": {"num_items": 0},
    "vocab_none": {"vocab_sizes": None},
    "vocab_str": {"vocab_sizes": "555"},
    "vocab_huge": {"vocab_sizes": [2**70, 5, 5]},
    "vocab_negative": {"vocab_sizes": [5, -1, 5]},
    "vocab_short": {"vocab_sizes": [5, 5]},
    "vocab_too_small": {"vocab_sizes": [5, 2, 5]},
    "collisions_int": {"collisions": 5},
    "collisions_items_out_of_range": {"collisions": [torch.tensor([3, 400])]},
    "collisions_float": {"collisions": [torch.tensor([1.0, 2.0])]},
    "tensors_dict": {"tensors": {"a": torch.zeros(3)}},
    "format_missing": {"format": None},
}


@pytest.mark.parametrize("name", list(METADATA_EDITS))
def test_malformed_metadata_is_a_value_error(tmp_path, name):
    data = saved_dict(make_trie(3), **METADATA_EDITS[name])
    assert_rejected(write(tmp_path, data))


def test_not_a_trie_file(tmp_path):
    for payload in (b"", b"no", os.urandom(300)):
        (tmp_path / "junk.pt").write_bytes(payload)
        assert_rejected(tmp_path / "junk.pt")
    assert_rejected(write(tmp_path, [1, 2, 3]))
    with pytest.raises(FileNotFoundError):
        sf.SemanticIDTrie.load(tmp_path / "missing.pt")


def test_constructor_checks_sizes_keys_and_max_children():
    trie = make_trie(4)
    args = dict(num_items=trie.num_items, vocab_sizes=trie.vocab_sizes)
    same = sf.SemanticIDTrie(*trie._tensors(), **args)
    assert all(torch.equal(a, b) for a, b in zip(same._tensors(), trie._tensors()))
    assert torch.equal(same.edge_keys, trie.edge_keys)
    assert same.max_children == trie.max_children
    with pytest.raises(ValueError, match="max_children"):
        sf.SemanticIDTrie(*trie._tensors(), max_children=1, **args)
    with pytest.raises(ValueError, match="edge_keys"):
        sf.SemanticIDTrie(*trie._tensors(), edge_keys=trie.edge_keys.flip(0), **args)
    with pytest.raises(ValueError, match="SemanticIDTrie"):
        sf.SemanticIDTrie(*trie._tensors(), num_items=trie.num_items, vocab_sizes=[5, 5])


def test_save_is_atomic_and_leaves_no_temporary(tmp_path, monkeypatch):
    trie = make_trie(5)
    path = tmp_path / "t.pt"
    trie.save(path)
    before = path.read_bytes()

    def fail(obj, f, *args, **kwargs):
        # Half a file, then the disk fills up.
        if isinstance(f, (str, os.PathLike)):
            with open(f, "wb") as out:
                out.write(before[:100])
        else:
            f.write(before[:100])
        raise OSError("disk full")

    monkeypatch.setattr(ops.torch, "save", fail)
    with pytest.raises(OSError, match="disk full"):
        make_trie(6).save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["t.pt"]


def decode(trie, backend):
    g = torch.Generator().manual_seed(7)
    table = torch.randn(4, trie.depth, trie.max_vocab, generator=g).log_softmax(-1)

    def step_fn(step, tokens, parents):
        return table.repeat_interleave(3, 0)[:, step] if step else table[:, 0]

    return sf.constrained_beam_search(step_fn, trie, batch_size=4, beam_width=3,
                                      backend=backend)


@pytest.mark.parametrize("lengths", [False, True], ids=["fixed", "varlen"])
def test_round_trip_decodes_identically_on_every_backend(tmp_path, lengths):
    trie = make_trie(8, lengths=lengths)
    trie.save(tmp_path / "t.pt")
    back = sf.SemanticIDTrie.load(tmp_path / "t.pt")
    assert layout_is_valid(back)
    backends = [b for b in sf.available_backends("cpu")
                if _backends.implements(b, "trie", "beam_step")]
    assert "reference" in backends and len(backends) >= 2
    for backend in backends:
        for a, b in zip(decode(trie, backend), decode(back, backend)):
            assert torch.equal(a, b), backend

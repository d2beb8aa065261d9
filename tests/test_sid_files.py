"""SID file loaders and token_id_map: the real catalogs (counts from the data README) and
malformed temporary files."""

import json
import subprocess
import sys

import pytest
import torch

from semid_fast import sid_files

# folder, file, items, tokens per ID, codes used at level 0, colliding groups, items in them
INDEX_FILES = [
    ("amazon18_industrial", 3686, 3, 48, 15, 31),
    ("amazon18_office", 3459, 3, 88, 15, None),
    ("amazon14_beauty", 12101, 4, None, 11, 24),
    ("amazon14_instruments", 9922, 4, None, 23, None),
    ("yelp", 20033, 4, None, 415, 1247),
]


def collision_groups(codes):
    _, counts = codes.unique(dim=0, return_counts=True)
    return counts[counts > 1]


@pytest.mark.parametrize("folder,items,depth,level0,groups,grouped", INDEX_FILES)
def test_real_index_json(shared_data, folder, items, depth, level0, groups, grouped):
    path = shared_data / folder / "sid.index.json"
    table = sid_files.load_index_json(path)
    assert table.num_items == items and table.depth == depth
    assert torch.equal(table.item_ids, torch.arange(items))
    assert torch.equal(table.lengths, torch.full((items,), depth))
    assert table.codes.dtype == torch.int64 and int(table.codes.min()) >= 0
    assert int(table.codes.max()) < 256
    if level0 is not None:
        assert table.codes[:, 0].unique().numel() == level0 == len(table.tokens[0])
    found = collision_groups(table.codes)
    assert found.numel() == groups
    if grouped is not None:
        assert int(found.sum()) == grouped
    # Every token string round-trips: tokens[j][code] is what the file holds.
    raw = json.loads(path.read_text())
    for i in (0, items // 2, items - 1):
        assert [table.tokens[j][int(c)] for j, c in enumerate(table.codes[i])] == raw[str(i)]
    assert all(len(level) == table.codes[:, j].unique().numel()
               for j, level in enumerate(table.tokens))


def test_real_sid_leaf_json(shared_data):
    path = shared_data / "amazon14_sports" / "sid_leaf.json"
    table = sid_files.load_sid_leaf_json(path)
    assert table.num_items == 18357 and table.depth == 4
    assert torch.equal(table.lengths, torch.full((18357,), 4))
    assert collision_groups(table.codes).numel() == 0  # the Leaf token makes IDs unique
    prefixes = collision_groups(table.codes[:, :3])
    assert prefixes.numel() == 982 and int(prefixes.max()) == 40
    raw = json.loads(path.read_text())
    for i in (0, 9000, 18356):
        *ints, leaf = raw[str(i)]
        assert table.codes[i, :3].tolist() == ints
        assert table.tokens[3][int(table.codes[i, 3])] == leaf == f"Leaf{int(table.codes[i, 3])}"
    assert table.tokens[:3] == ({}, {}, {})


def write(tmp_path, data, name="sid.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_variable_length_and_sparse_ids(tmp_path):
    path = write(tmp_path, {"7": ["<a_3>", "<b_1>"], "2": ["<a_0>"], "10": ["<a_3>", "<b_1>",
                                                                          "<c_9>"]})
    table = sid_files.load_index_json(path)
    assert table.item_ids.tolist() == [2, 7, 10]
    assert table.codes.tolist() == [[0, -1, -1], [3, 1, -1], [3, 1, 9]]
    assert table.lengths.tolist() == [1, 2, 3]
    assert table.tokens == ({0: "<a_0>", 3: "<a_3>"}, {1: "<b_1>"}, {9: "<c_9>"})
    assert str(path) in repr(table)


@pytest.mark.parametrize("content,message", [
    ("{not json", "not valid JSON"),
    ([["<a_1>"]], "expected a non-empty JSON object"),
    ({}, "expected a non-empty JSON object"),
    ({"x1": ["<a_1>"]}, "item key 'x1' is not a non-negative integer id"),
    ({"-3": ["<a_1>"]}, "item key '-3'"),
    ({"0": []}, "item 0: expected a non-empty list"),
    ({"0": "<a_1>"}, "item 0: expected a non-empty list"),
    ({"0": ["<a_1>"], "1": ["<b_1>", "<a_2>"]}, "item 1: token 0 is '<b_1>', expected '<a_CODE>'"),
    ({"0": ["<a_1>", "<b_x>"]}, "item 0: token 1 is '<b_x>'"),
    ({"0": ["<a_1>", 5]}, "item 0: token 1 is 5"),
    ({"4": ["<a_1>", "<b_2>", "<b_3>"]}, "item 4: token 2 is '<b_3>', expected '<c_CODE>'"),
])
def test_malformed_index_json(tmp_path, content, message):
    path = write(tmp_path, content)
    with pytest.raises(ValueError, match=message) as info:
        sid_files.load_index_json(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("content,message", [
    ({"0": [1, 2, "Leaf0"], "1": [3, "Leaf1"]}, "item 1: expected 2 integer codes"),
    ({"0": [1, 2, 3]}, "item 0: last entry is 3, expected a 'Leaf<n>' token"),
    ({"0": [1, 2, "leaf3"]}, "last entry is 'leaf3'"),
    ({"0": [1, "2", "Leaf0"]}, "item 0: entry 1 is '2', expected a non-negative integer"),
    ({"0": [1, -2, "Leaf0"]}, "entry 1 is -2"),
    ({"0": [True, 2, "Leaf0"]}, "entry 0 is True"),
    ({"0": [1.5, 2, "Leaf0"]}, "entry 0 is 1.5"),
    ({"5": []}, "item 5: expected a non-empty list"),
])
def test_malformed_sid_leaf_json(tmp_path, content, message):
    path = write(tmp_path, content)
    with pytest.raises(ValueError, match=message) as info:
        sid_files.load_sid_leaf_json(path)
    assert str(path) in str(info.value)


# Raw file texts that json would read silently in a way the user did not mean (last
# duplicate wins, " 0" and "0" both item 0, Arabic-Indic digits as codes) or that overflow.
BIG = str(2**63)
RAW_INDEX = [
    ('{"0": ["<a_1>"], "0": ["<a_2>"]}', "key '0' appears twice"),
    ('{"0": ["<a_1>"], " 0": ["<a_2>"]}', "item key ' 0'"),
    ('{"0 ": ["<a_1>"]}', "item key '0 '"),
    ('{"07": ["<a_1>"]}', "item key '07'"),
    ('{"+1": ["<a_1>"]}', "item key '\\+1'"),
    ('{"\u0661": ["<a_1>"]}', "item key"),
    ('{"0": ["<a_\u0661>"]}', "item 0: token 0"),
    ('{"0": ["<a_01>"]}', "item 0: token 0"),
    ('{"0": ["<a_' + BIG + '>"]}', "item 0: the code of token 0 .* 2\\*\\*63"),
    ('{"0": ["<a_' + "9" * 5000 + '>"]}', "item 0: the code of token 0 .* 2\\*\\*63"),
    ('{"' + BIG + '": ["<a_1>"]}', "item key '" + BIG + "'"),
    ('{"0": [' + "9" * 5000 + ']}', "not valid JSON"),
]
RAW_LEAF = [
    ('{"0": [1, "Leaf0"], "0": [2, "Leaf1"]}', "key '0' appears twice"),
    ('{"0": [1, "Leaf0"], " 0": [2, "Leaf1"]}', "item key ' 0'"),
    ('{"0": [' + BIG + ', "Leaf0"]}', "item 0: entry 0 is not below 2\\*\\*63"),
    ('{"0": [1, "Leaf' + BIG + '"]}', "item 0: the Leaf token .* 2\\*\\*63"),
    ('{"0": [1, "Leaf\u0661"]}', "item 0: last entry"),
]


@pytest.mark.parametrize("loader,text,message",
                         [("load_index_json", t, m) for t, m in RAW_INDEX]
                         + [("load_sid_leaf_json", t, m) for t, m in RAW_LEAF])
def test_ambiguous_or_overflowing_files_name_file_and_item(tmp_path, loader, text, message):
    path = tmp_path / "sid.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=message) as info:
        getattr(sid_files, loader)(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("loader", ["load_index_json", "load_sid_leaf_json"])
def test_non_utf8_file_names_the_path(tmp_path, loader):
    path = tmp_path / "latin1.json"
    path.write_bytes('{"0": ["<a_1>"], "1": ["caf\u00e9"]}'.encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8") as info:
        getattr(sid_files, loader)(path)
    assert str(path) in str(info.value)


def test_missing_file_raises():
    with pytest.raises(FileNotFoundError):
        sid_files.load_index_json("no/such/sid.index.json")


# --- token_id_map -----------------------------------------------------------------------


def small_table(tmp_path):
    return sid_files.load_index_json(write(tmp_path, {
        "0": ["<a_2>", "<b_0>"], "1": ["<a_0>", "<b_4>"], "2": ["<a_2>"]}))


def test_token_id_map_from_dict_vocab(tmp_path):
    table = small_table(tmp_path)
    vocab = {"<pad>": 0, "<a_0>": 10, "<a_2>": 12, "<b_0>": 20, "<b_4>": 24, "<b_9>": 29}
    out = sid_files.token_id_map(table, vocab)
    assert out.dtype == torch.int64
    assert out.tolist() == [[10, -1, 12, -1, -1], [20, -1, -1, -1, 24]]
    # The same from explicit per-level strings: a dict and a list indexed by code.
    explicit = [{0: "<a_0>", 2: "<a_2>"}, ["<b_0>", "<pad>", "<b_9>"]]
    assert sid_files.token_id_map(explicit, vocab).tolist() == [[10, -1, 12], [20, 0, 29]]


def test_token_id_map_from_hf_tokenizer(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    table = small_table(tmp_path)
    words = ["[UNK]", "[PAD]", "hello", "<a_0>", "<a_2>", "<b_0>", "<b_4>"]
    model = tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]")
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizers.Tokenizer(model),
                                                     unk_token="[UNK]", pad_token="[PAD]")
    assert sid_files.token_id_map(table, tokenizer).tolist() == [[3, -1, 4, -1, -1],
                                                                [5, -1, -1, -1, 6]]
    # An SID token the tokenizer lacks maps to [UNK] there: it is reported as missing.
    with pytest.raises(ValueError, match=r"1 of 3 SID tokens are not in .*'<c_1>'"):
        sid_files.token_id_map([{0: "<a_0>"}, {0: "<b_0>"}, {1: "<c_1>"}], tokenizer)


def test_token_id_map_errors(tmp_path):
    table = small_table(tmp_path)
    vocab = {"<a_0>": 10, "<a_2>": 12, "<b_0>": 20}
    with pytest.raises(ValueError, match=r"1 of 4 SID tokens .*'<b_4>'"):
        sid_files.token_id_map(table, vocab)
    leaf = sid_files.load_sid_leaf_json(write(tmp_path, {"0": [1, 2, "Leaf0"]}, "leaf.json"))
    with pytest.raises(ValueError, match="level 0 has no token strings"):
        sid_files.token_id_map(leaf, {"Leaf0": 3})
    with pytest.raises(ValueError, match="codes 0 and 2 both map to token id 5"):
        sid_files.token_id_map([{0: "x", 2: "y"}], {"x": 5, "y": 5})
    with pytest.raises(TypeError, match="tokenizer_or_vocab"):
        sid_files.token_id_map(table, ["<a_0>"])
    with pytest.raises(TypeError, match="table_or_token_strings"):
        sid_files.token_id_map("<a_0>", vocab)
    with pytest.raises(ValueError, match="code -1"):
        sid_files.token_id_map([{-1: "<a_0>"}], vocab)
    with pytest.raises(TypeError, match="token must be a str"):
        sid_files.token_id_map([{0: 7}], vocab)
    with pytest.raises(ValueError, match="maps to -4"):
        sid_files.token_id_map([{0: "<a_0>"}], {"<a_0>": -4})


def test_import_semid_fast_does_not_import_transformers(tmp_path):
    code = "import sys, semid_fast; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=tmp_path)  # the installed package, not the source tree
    assert out.stdout.strip() == "False"

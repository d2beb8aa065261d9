"""Loaders for the semantic-ID files that generative recommenders publish.

Two formats are read:

* ``sid.index.json`` (LC-Rec, LETTER, MiniOneRec): ``{"<item id>": ["<a_12>", "<b_7>", ...]}``.
  Each token is ``<letter_code>``, where the letter names the level (``a`` is level 0, ``b``
  level 1, ...) and the number is the code. Items may carry different numbers of tokens.
* ``sid_leaf.json`` (MVIGER): ``{"<item id>": [137, 32, 155, "Leaf0"]}``: integer codes, then
  one ``"Leaf<n>"`` token that makes the ID unique; the Leaf token becomes one more level whose
  code is ``n``.

Both return a :class:`SIDTable`. :func:`token_id_map` turns its token strings into the
``(depth, K)`` table of tokenizer ids that :class:`semid_fast.hf.SemanticIDLogitsProcessor`
takes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch

__all__ = ["SIDTable", "load_index_json", "load_sid_leaf_json", "token_id_map"]

# Codes and item ids in canonical ASCII decimal ("7", not "07", " 7" or a non-ASCII digit), so
# that one string names one item or token, and below 2**63 (they become int64).
_DECIMAL = "(0|[1-9][0-9]*)"
_LEVEL_TOKEN = re.compile(rf"<([a-z])_{_DECIMAL}>\Z")
_LEAF_TOKEN = re.compile(rf"Leaf{_DECIMAL}\Z")
_ITEM_KEY = re.compile(rf"{_DECIMAL}\Z")
_INT64_END = 2**63


class _DuplicateKey(Exception):
    pass


def _no_duplicates(pairs):
    """json object hook: a dict, refusing repeated keys (json keeps the last one silently)."""
    out = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _code(path, item, what: str, value) -> int:
    """A code (an int, or the decimal digits of a token) below 2**63."""
    if isinstance(value, str):  # 20 digits or more can only be too large (no int() of a huge one)
        value = _INT64_END if len(value) > 19 else int(value)
    if value >= _INT64_END:
        raise ValueError(f"{path}: item {item}: {what} is not below 2**63 (codes are int64)")
    return value


@dataclass(frozen=True)
class SIDTable:
    """The semantic IDs of a catalog, one row per item, rows sorted by item id.

    Attributes:
        item_ids: (N,) int64, the item ids of the file (its keys), ascending.
        codes: (N, L) int64, ``codes[i, j]`` is the level-j code of item ``item_ids[i]``;
            -1 at ``j >= lengths[i]``. L is the longest ID in the file.
        lengths: (N,) int64 in [1, L], the number of codes of each ID.
        tokens: L dicts, ``tokens[j][code]`` is the token string the file used for that
            (level, code). Levels that the file gave as bare integers (the code levels of
            ``sid_leaf.json``) have empty dicts: their token strings are the model's choice.
        source: the file the table was read from.
    """

    item_ids: torch.Tensor
    codes: torch.Tensor
    lengths: torch.Tensor
    tokens: tuple[dict[int, str], ...]
    source: str = ""

    @property
    def num_items(self) -> int:
        return int(self.item_ids.shape[0])

    @property
    def depth(self) -> int:
        return int(self.codes.shape[1])

    def __repr__(self) -> str:
        return (f"SIDTable(num_items={self.num_items}, depth={self.depth}, "
                f"source={self.source!r})")


def _read_items(path) -> tuple[Path, list[tuple[int, list]]]:
    """The file's (item id, token list) pairs sorted by item id, after checking its shape."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f, object_pairs_hook=_no_duplicates)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from None
    except ValueError as e:  # JSONDecodeError, or an integer literal too long for int()
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    except _DuplicateKey as e:
        raise ValueError(f"{path}: key {e.args[0]!r} appears twice in one JSON object") from None
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path}: expected a non-empty JSON object {{item id: [tokens]}}, "
                         f"got {type(data).__name__}" + (" (empty)" if not data else ""))
    items = []
    for key, value in data.items():
        if not _ITEM_KEY.match(key) or len(key) > 19 or int(key) >= _INT64_END:
            raise ValueError(f"{path}: item key {key[:40]!r} is not a non-negative integer id in "
                             "canonical decimal below 2**63 (e.g. '0', '17')")
        item = int(key)
        if not isinstance(value, list) or not value:
            raise ValueError(f"{path}: item {key}: expected a non-empty list of tokens, "
                             f"got {value!r}")
        items.append((item, value))
    items.sort(key=lambda pair: pair[0])
    return path, items


def _table(path: Path, items, rows: list[list[int]],
           tokens: list[dict[int, str]]) -> SIDTable:
    depth = max(len(r) for r in rows)
    codes = torch.tensor([row + [-1] * (depth - len(row)) for row in rows], dtype=torch.int64)
    return SIDTable(item_ids=torch.tensor([item for item, _ in items], dtype=torch.int64),
                    codes=codes,
                    lengths=torch.tensor([len(r) for r in rows], dtype=torch.int64),
                    tokens=tuple(tokens), source=str(path))


def load_index_json(path) -> SIDTable:
    """Reads an LC-Rec / LETTER / MiniOneRec ``sid.index.json``.

    The j-th token of an item must be ``<x_c>`` with ``x`` the j-th letter (``a`` for
    level 0) and ``c`` a non-negative integer code. Raises ValueError naming the file, the item
    and the token when it is not.
    """
    path, items = _read_items(path)
    rows, tokens = [], []
    for item, value in items:
        row = []
        for level, token in enumerate(value):
            match = _LEVEL_TOKEN.match(token) if isinstance(token, str) else None
            expected = chr(ord("a") + level)
            if match is None or match.group(1) != expected:
                raise ValueError(
                    f"{path}: item {item}: token {level} is {token!r}, expected "
                    f"'<{expected}_CODE>' (level {level} is letter '{expected}')")
            code = _code(path, item, f"the code of token {level} ({token[:40]!r})",
                         match.group(2))
            if level == len(tokens):
                tokens.append({})
            tokens[level].setdefault(code, token)
            row.append(code)
        rows.append(row)
    return _table(path, items, rows, tokens)


def load_sid_leaf_json(path) -> SIDTable:
    """Reads an MVIGER ``sid_leaf.json``: integer codes, then one ``"Leaf<n>"`` token.

    Every item must have the same number of integer codes (non-negative ints); its ID is those
    codes followed by ``n`` as one more level, so the table has depth (number of codes + 1) and
    every length equals it. ``tokens`` holds the Leaf strings at the last level and empty
    dicts for the integer levels. Raises ValueError naming the file and the item otherwise.
    """
    path, items = _read_items(path)
    rows = []
    leaf_tokens: dict[int, str] = {}
    n_codes = len(items[0][1]) - 1
    for item, value in items:
        *ints, leaf = value
        if len(ints) != n_codes:
            raise ValueError(f"{path}: item {item}: expected {n_codes} integer codes and a "
                             f"Leaf token (as the first item has), got {value!r}")
        for level, code in enumerate(ints):
            if isinstance(code, bool) or not isinstance(code, int) or code < 0:
                raise ValueError(f"{path}: item {item}: entry {level} is {code!r}, expected a "
                                 f"non-negative integer code")
            _code(path, item, f"entry {level}", code)
        match = _LEAF_TOKEN.match(leaf) if isinstance(leaf, str) else None
        if match is None:
            raise ValueError(f"{path}: item {item}: last entry is {leaf!r}, expected a "
                             f"'Leaf<n>' token")
        leaf_code = _code(path, item, f"the Leaf token ({leaf[:40]!r})", match.group(1))
        leaf_tokens.setdefault(leaf_code, leaf)
        rows.append([*ints, leaf_code])
    return _table(path, items, rows, [{} for _ in range(n_codes)] + [leaf_tokens])


def _as_level_dicts(tokens) -> list[dict[int, str]]:
    """Token strings per level as dicts {code: string} (from dicts or lists indexed by code)."""
    if isinstance(tokens, SIDTable):
        return [dict(level) for level in tokens.tokens]
    if isinstance(tokens, (str, bytes)) or not isinstance(tokens, Sequence) or not tokens:
        raise TypeError("token_id_map: table_or_token_strings must be a SIDTable or a "
                        "non-empty sequence (one entry per level) of {code: token string} "
                        f"dicts or lists of token strings, got {type(tokens).__name__}")
    levels = []
    for level, entry in enumerate(tokens):
        if isinstance(entry, Mapping):
            pairs = entry.items()
        elif isinstance(entry, Sequence) and not isinstance(entry, (str, bytes)):
            pairs = enumerate(entry)
        else:
            raise TypeError(f"token_id_map: level {level} must be a {{code: token}} dict or a "
                            f"list of tokens, got {type(entry).__name__}")
        out = {}
        for code, token in pairs:
            if isinstance(code, bool) or not isinstance(code, int) or code < 0:
                raise ValueError(f"token_id_map: level {level}: code {code!r} is not a "
                                 f"non-negative int")
            if not isinstance(token, str):
                raise TypeError(f"token_id_map: level {level} code {code}: token must be a "
                                f"str, got {type(token).__name__}")
            out[code] = token
        levels.append(out)
    return levels


def _lookup(strings: list[str], tokenizer_or_vocab) -> list[int | None]:
    """Token ids of ``strings``; None for the tokens the tokenizer or vocabulary lacks."""
    if isinstance(tokenizer_or_vocab, Mapping):
        found = [tokenizer_or_vocab.get(s) for s in strings]
    elif hasattr(tokenizer_or_vocab, "convert_tokens_to_ids"):
        found = list(tokenizer_or_vocab.convert_tokens_to_ids(strings))
        # HF tokenizers answer the unknown token's id for tokens they do not know.
        unk = getattr(tokenizer_or_vocab, "unk_token_id", None)
        unk_token = getattr(tokenizer_or_vocab, "unk_token", None)
        found = [None if (i is not None and unk is not None and i == unk and s != unk_token)
                 else i for s, i in zip(strings, found)]
    else:
        raise TypeError("token_id_map: tokenizer_or_vocab must be a tokenizer with "
                        "convert_tokens_to_ids (e.g. a transformers tokenizer) or a "
                        f"{{token string: id}} dict, got {type(tokenizer_or_vocab).__name__}")
    for s, i in zip(strings, found):
        if i is not None and (isinstance(i, bool) or not isinstance(i, int) or i < 0):
            raise ValueError(f"token_id_map: token {s!r} maps to {i!r}, expected a "
                             f"non-negative int id")
    return found


def token_id_map(table_or_token_strings, tokenizer_or_vocab) -> torch.Tensor:
    """The tokenizer id of every (level, code) token.

    Args:
        table_or_token_strings: a :class:`SIDTable` (its ``tokens``) or one entry per level,
            each a ``{code: token string}`` dict or a list of token strings indexed by code.
        tokenizer_or_vocab: a tokenizer with ``convert_tokens_to_ids`` (a transformers
            tokenizer that has the SID tokens added) or a ``{token string: id}`` dict.

    Returns:
        (depth, K) int64 tensor on the CPU, K = largest code + 1 over all levels;
        ``out[j, c]`` is the id of the level-j code-c token, -1 where the level has no token
        for that code.

    Raises:
        ValueError: a token the tokenizer or vocabulary does not have (the first few are
        named), a level with no token strings at all (e.g. the integer levels of a
        ``sid_leaf.json``: give their strings explicitly), or one id used for two codes of
        the same level.
    """
    levels = _as_level_dicts(table_or_token_strings)
    for level, entry in enumerate(levels):
        if not entry:
            raise ValueError(
                f"token_id_map: level {level} has no token strings (a SIDTable read from "
                f"integer codes, e.g. sid_leaf.json, leaves them to the model); pass one "
                f"{{code: token}} dict per level instead")
    flat = [(level, code, token) for level, entry in enumerate(levels)
            for code, token in sorted(entry.items())]
    ids = _lookup([token for _, _, token in flat], tokenizer_or_vocab)
    missing = [token for (_, _, token), i in zip(flat, ids) if i is None]
    if missing:
        shown = ", ".join(repr(t) for t in missing[:5])
        raise ValueError(f"token_id_map: {len(missing)} of {len(flat)} SID tokens are not in "
                         f"the tokenizer/vocabulary (first: {shown}); add them to the "
                         f"tokenizer (tokenizer.add_tokens) and resize the model's embeddings")
    k = max(code for _, code, _ in flat) + 1
    out = torch.full((len(levels), k), -1, dtype=torch.int64)
    seen: dict[tuple[int, int], int] = {}
    for (level, code, token), i in zip(flat, ids):
        if (level, i) in seen:
            raise ValueError(f"token_id_map: level {level}: codes {seen[level, i]} and {code} "
                             f"both map to token id {i} ({token!r})")
        seen[level, i] = code
        out[level, code] = i
    return out

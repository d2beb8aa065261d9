"""The reference backend: launchers over the pure-PyTorch oracles of semid_fast.reference."""

FAMILIES = ("quantize", "gumbel", "trie", "longid")

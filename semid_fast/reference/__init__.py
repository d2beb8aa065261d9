"""Pure-PyTorch oracles of every op (DESIGN.md decision 3)."""

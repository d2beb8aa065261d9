"""Public ops, one module per family (DESIGN.md)."""

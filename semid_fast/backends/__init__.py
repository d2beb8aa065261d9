"""One package per backend (reference, cpu, cuda, triton), one module per op family in each.

Every module lists its launchers in ``__all__``; a launcher takes tensors (and preallocated
outputs where the op knows their shapes) and has the same name and arguments in every backend
that defines it. `semid_fast._backends` reads these modules to decide which backend runs a call.
"""

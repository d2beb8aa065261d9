"""End-to-end pipelines of the seed systems (issue #6), one module per system.

Each module defines ``SYSTEM``, ``TITLE``, a ``Settings`` dataclass (``Settings.sized(quick,
seed)`` gives the default or ``--quick`` sizes) and ``run(settings, data, device) ->
common.Report``. They run from ``semid-fast bench --e2e [--systems a,b]`` and as scripts
(``benchmarks/e2e/<system>.py``); see :mod:`semid_fast.bench.e2e.common` for the data rule.
"""

SYSTEMS = {
    "tiger": "semid_fast.bench.e2e.tiger",
    "rpg": "semid_fast.bench.e2e.rpg",
    "acerec": "semid_fast.bench.e2e.acerec",
    "diger": "semid_fast.bench.e2e.diger",
    "varlen": "semid_fast.bench.e2e.varlen",
}

__all__ = ["SYSTEMS"]

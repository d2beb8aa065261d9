"""End-to-end pipelines of the seed systems, one module per system (not part of the wheel).

Each system module defines ``SYSTEM``, ``TITLE``, a ``Settings`` dataclass
(``Settings.sized(quick, seed)`` gives the default or ``--quick`` sizes) and
``run(settings, data, device) -> common.Report``. :mod:`.models` holds the models they share,
:mod:`.common` the data rule, timing and the report. They run from
``semid-fast bench --e2e [--systems a,b]`` inside a source checkout and as scripts
(``python benchmarks/e2e/<system>.py``).
"""

SYSTEMS = ("tiger", "rpg", "acerec", "diger", "varlen")

__all__ = ["SYSTEMS"]

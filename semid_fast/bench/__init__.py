"""``semid-fast bench``: every backend and peer of every op family, timed side by side.

Usage::

    semid-fast bench [--quick] [--families quantize,...] [--device cpu|cuda] [--out DIR]
                     [--repeat N] [--only SUBSTRINGS] [--no-value-checks]
    semid-fast bench --e2e [--systems tiger,rpg,...] [--quick] [--data PATH] [--device ...]
                     [--out DIR]
    python -m semid_fast.bench [same flags]

Prints the device, versions and thread count, a progress bar, then one table (op, shape,
backend or peer, median time, speed-up over the reference, throughput and, on GPUs, the
share of the device's limit), and writes ``semid_fast_bench.json`` and
``semid_fast_bench.png`` to ``--out`` (default ``bench_results/``); each row also goes to
``semid_fast_bench_rows.jsonl`` as soon as it is measured, so a run cut short keeps its rows.

``--e2e`` runs the end-to-end pipelines of the seed systems instead
(:mod:`semid_fast.bench.e2e`): each prints its report and writes ``<system>.json`` and
``<system>.png`` to ``--out``; the exit status is 1 when an agreement check fails.

A family joins the suite with a module ``semid_fast/bench/<family>.py`` that defines
``cases(device, quick) -> list[harness.Case]`` and one line in :data:`FAMILIES`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

FAMILIES = {
    "quantize": "semid_fast.bench.quantize",
    "longid": "semid_fast.bench.longid",
    "gumbel": "semid_fast.bench.gumbel",
    "trie": "semid_fast.bench.trie",
}

# Seconds of timed calls to aim for per row (at least 3 calls, at most harness.MAX_REPS;
# a call slower than harness.SLOW_CALL_S is timed once).
TARGET_S = {("cpu", False): 1.0, ("cpu", True): 0.2, ("cuda", False): 1.0, ("cuda", True): 0.2}

__all__ = ["FAMILIES", "main"]


def _parsers() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The ``semid-fast`` parser and its ``bench`` sub-parser."""
    parser = argparse.ArgumentParser(
        prog="semid-fast", description="semid_fast: kernels for semantic-ID recommendation")
    commands = parser.add_subparsers(dest="command")
    bench = commands.add_parser(
        "bench", help="time every backend and peer against the reference",
        description="Time every backend and peer of each op family against the pure-PyTorch "
                    "reference, in one process, and print one table.")
    bench.add_argument("--quick", action="store_true",
                       help="small sizes: the whole suite in seconds")
    bench.add_argument("--families", default=",".join(FAMILIES),
                       help=f"comma-separated families (default: all: {','.join(FAMILIES)})")
    bench.add_argument("--device", choices=("cpu", "cuda"), default=None,
                       help="default: cuda when a GPU is present, else cpu")
    bench.add_argument("--out", default="bench_results", type=Path,
                       help="folder for the JSON and PNG (default: bench_results/)")
    bench.add_argument("--repeat", type=int, default=None,
                       help="timed calls per row (default: as many as fit in "
                            "about 2 s on CPU / 1 s on GPU, at least 3)")
    bench.add_argument("--only", default=None,
                       help="comma-separated substrings: time only the rows whose "
                            "'op [shape] backend' label contains one of them, e.g. "
                            "'rq_encode [N=100k,faiss PQ' (speed-ups need the reference row)")
    bench.add_argument("--no-value-checks", action="store_true",
                       help="turn off semid_fast.config.check_values (the NaN/range scans "
                            "of the inputs) to time the kernels alone")
    bench.add_argument("--e2e", action="store_true",
                       help="run the end-to-end pipelines of the seed systems instead of the "
                            "op families")
    bench.add_argument("--systems", default=None,
                       help="with --e2e: comma-separated systems (default: all)")
    bench.add_argument("--data", default=None,
                       help="with --e2e: data folder (default: $SEMID_FAST_DATA, else "
                            "../shared/data, else synthetic data)")
    bench.add_argument("--seed", type=int, default=0, help="with --e2e: seed of the pipelines")
    return parser, bench


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``semid-fast`` console script; returns the exit status."""
    parser, bench_parser = _parsers()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.e2e:
        return _e2e(bench_parser, args)
    if args.systems is not None or args.data is not None:
        bench_parser.error("--systems and --data go with --e2e")
    return _bench(bench_parser, args)


def _e2e(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    import torch

    from . import harness
    from .e2e import SYSTEMS, common

    systems = [s.strip() for s in (args.systems or ",".join(SYSTEMS)).split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown or not systems:
        parser.error(f"--systems: unknown {unknown}; choose from {', '.join(SYSTEMS)}")
    device = args.device or harness.default_device()
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    try:
        data = common.find_data(args.data)
    except ValueError as err:
        parser.error(str(err))
    args.out.mkdir(parents=True, exist_ok=True)
    summary = []
    for name in systems:
        module = importlib.import_module(SYSTEMS[name])
        started = time.perf_counter()
        report = module.run(module.Settings.sized(args.quick, args.seed), data, device=device)
        written = report.write(args.out)
        wall = time.perf_counter() - started
        print(f"wrote {', '.join(map(str, written))} ({wall:.0f} s)\n", flush=True)
        failed = [c for c, v in report.checks.items() if not v["ok"]]
        summary.append((name, wall, failed))
    print("end-to-end summary (data: "
          f"{data.root if data.root else 'synthetic'}, {data.how}; device {device}):")
    for name, wall, failed in summary:
        print(f"  {name:8s} {wall:6.0f} s  "
              + ("all checks passed" if not failed else f"FAILED: {'; '.join(failed)}"))
    return 1 if any(failed for _, _, failed in summary) else 0


def _bench(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    import torch

    import semid_fast

    from . import harness

    families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = [f for f in families if f not in FAMILIES]
    if unknown or not families:
        parser.error(f"--families: unknown {unknown}; choose from {', '.join(FAMILIES)}")
    if args.repeat is not None and args.repeat < 1:
        parser.error("--repeat must be >= 1")
    device = args.device or harness.default_device()
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")

    args.out.mkdir(parents=True, exist_ok=True)  # fail on a bad --out before the long run

    started = time.perf_counter()
    previous_checks = semid_fast.config.check_values
    semid_fast.config.check_values = not args.no_value_checks
    try:
        env = harness.environment(device)
        print(harness.describe_environment(env), flush=True)
        cases = []
        for family in families:
            cases += importlib.import_module(FAMILIES[family]).cases(device, args.quick)
        if args.only:
            wanted = [w.strip() for w in args.only.split(",") if w.strip()]
            cases = [c for c in cases if any(w in c.label for w in wanted)]
        rows_path = args.out / "semid_fast_bench_rows.jsonl"
        rows_path.unlink(missing_ok=True)
        results = harness.run_cases(cases, TARGET_S[(device, args.quick)], args.repeat,
                                    rows_path)
    finally:
        semid_fast.config.check_values = previous_checks
    wall = time.perf_counter() - started

    print()
    print(harness.format_table(results))
    settings = {"families": families, "quick": args.quick, "device": device,
                "repeat": args.repeat, "only": args.only,
                "target_s": TARGET_S[(device, args.quick)],
                "value_checks": not args.no_value_checks, "total_wall_s": round(wall, 1),
                "load_average_at_end": harness.load_average(), "argv": sys.argv}
    json_path = args.out / "semid_fast_bench.json"
    harness.write_json(json_path, env, settings, results)
    png_path = args.out / "semid_fast_bench.png"
    written = [str(json_path)] + ([str(png_path)] if harness.write_chart(png_path, env, results)
                                  else [])
    print(f"\nwrote {', '.join(written)}; total wall time {wall:.0f} s")
    return 1 if any(r.status == "error" for r in results) else 0

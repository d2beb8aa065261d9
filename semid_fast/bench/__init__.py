"""``semid-fast bench``: every backend and peer of every op family, timed side by side.

Usage::

    semid-fast bench [--quick] [--families quantize,...] [--device cpu|cuda] [--out DIR]
                     [--min-time S] [--only SUBSTRINGS] [--no-value-checks]
    semid-fast bench --scaling [--quick] [--out DIR] [--min-time S]
    semid-fast bench --e2e [--systems tiger,rpg,...] [--quick] [--data PATH] [--device ...]
                     [--out DIR]
    python -m semid_fast.bench [same flags]

Prints the device, versions and thread count, one line per row as it runs, then one table
(op, shape, implementation and its kind: ours, reference, peer or floor, median time,
speed-up over the group's baseline row, time over the group's floor row where it has one (a
micro-kernel timing what the machine allows, e.g. one read of the inputs), throughput and, on
GPUs, the share of the device's limit), and
writes ``semid_fast_bench.json`` (rewritten after every row, so a run cut short keeps what it
measured) and ``semid_fast_bench.png`` to ``--out`` (default ``bench_results/``). Ctrl-C or
SIGTERM stops the run at once and still writes the table, JSON and PNG of the finished rows
(exit status 130).

``--scaling`` times rq_encode, pq_encode, holistic_topk and the trie build against the
catalog size N (10^4 .. 10^7; ``--quick``: 10^3, 10^4) at 1 and 2 threads, ours beside faiss
(the reference where faiss has no such op), and prints each line's fitted log-log slope
(see :mod:`semid_fast.bench.scaling`); it writes ``semid_fast_scaling.json`` and
``semid_fast_scaling.png``.

``--e2e`` runs the end-to-end pipelines of the seed systems instead. They train models and
are not part of the package: they live in ``benchmarks/e2e/`` of a source checkout, found
from the current directory (or beside an editable install). Each prints its report and
writes ``<system>.json`` and ``<system>.png`` to ``--out``; the exit status is 1 when an
agreement check fails.

A family joins the suite with a module ``semid_fast/bench/<family>.py`` that defines
``cases(device, quick) -> list[harness.Case]`` and one line in :data:`FAMILIES`.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import signal
import sys
import threading
import time
from pathlib import Path

FAMILIES = {
    "quantize": "semid_fast.bench.quantize",
    "longid": "semid_fast.bench.longid",
    "gumbel": "semid_fast.bench.gumbel",
    "trie": "semid_fast.bench.trie",
    "latency": "semid_fast.bench.latency",
}

# Seconds of timed calls per row (torch.utils.benchmark's min_run_time; do_bench's rep),
# without and with --quick.
MIN_TIME_S = {False: 0.5, True: 0.1}

E2E_DIR = Path("benchmarks", "e2e")
E2E_PACKAGE = "e2e_pipelines"  # the package of the pipelines inside E2E_DIR
_CHECKOUT = Path(__file__).resolve().parents[2]  # the repository root of a source checkout

__all__ = ["FAMILIES", "main", "find_e2e", "load_e2e"]


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
    bench.add_argument("--min-time", type=float, default=None,
                       help="seconds of timed calls per row (default: 0.5, with --quick 0.1; "
                            "a slow call is timed once after its warm-up call)")
    bench.add_argument("--only", default=None,
                       help="comma-separated substrings: time only the rows whose "
                            "'op [shape] impl' label contains one of them, e.g. "
                            "'rq_encode [N=100k,faiss PQ' (speed-ups need the baseline row)")
    bench.add_argument("--no-value-checks", action="store_true",
                       help="turn off semid_fast.config.check_values (the NaN/range scans "
                            "of the inputs) to time the kernels alone")
    bench.add_argument("--scaling", action="store_true",
                       help="time the main ops against N (10^4 .. 10^7) and threads (1, 2), "
                            "with the log-log slope of each line, instead of the op families")
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
    if args.e2e and args.scaling:
        bench_parser.error("--e2e and --scaling are two different runs: give one")
    if args.e2e:
        return _e2e(bench_parser, args)
    if args.systems is not None or args.data is not None:
        bench_parser.error("--systems and --data go with --e2e")
    if args.scaling:
        return _scaling(bench_parser, args)
    return _bench(bench_parser, args)


def _scaling(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from . import harness, scaling

    if args.device == "cuda":
        parser.error("--scaling times the CPU kernels and their CPU peers (--device cpu)")
    if args.min_time is not None and not args.min_time > 0:
        parser.error("--min-time must be > 0")
    args.out.mkdir(parents=True, exist_ok=True)
    env = harness.environment("cpu")
    print(harness.describe_environment(env), flush=True)
    min_time = args.min_time or MIN_TIME_S[args.quick]
    status = scaling.run(args.quick, args.out, min_time, env, sys.argv)
    if status == 130:
        harness.exit_now(130)
    return status


def find_e2e() -> Path:
    """``benchmarks/e2e`` of a source checkout: below the current directory or one of its
    parents, else beside the imported semid_fast (an editable install).

    Raises:
        FileNotFoundError: none is found (e.g. semid_fast installed from a wheel and run
            outside a checkout).
    """
    cwd = Path.cwd()
    places = [*(p / E2E_DIR for p in (cwd, *cwd.parents)), _CHECKOUT / E2E_DIR]
    for place in places:
        if (place / E2E_PACKAGE / "__init__.py").is_file():
            return place
    raise FileNotFoundError(
        f"the end-to-end pipelines are not part of the installed package: they live in "
        f"{E2E_DIR}/ of a source checkout, and none was found from {cwd} or beside "
        f"{_CHECKOUT}. Run `semid-fast bench --e2e` inside a checkout of the repository.")


def load_e2e(folder: Path | None = None):
    """The package of the end-to-end pipelines in ``folder`` (default: :func:`find_e2e`),
    imported as ``e2e_pipelines``; its ``SYSTEMS`` names the systems."""
    if E2E_PACKAGE in sys.modules:
        return sys.modules[E2E_PACKAGE]
    path = Path(folder if folder is not None else find_e2e()) / E2E_PACKAGE
    spec = importlib.util.spec_from_file_location(
        E2E_PACKAGE, path / "__init__.py", submodule_search_locations=[str(path)])
    if spec is None:
        raise FileNotFoundError(f"{path}: no {E2E_PACKAGE} package there")
    module = importlib.util.module_from_spec(spec)
    sys.modules[E2E_PACKAGE] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[E2E_PACKAGE]
        raise
    return module


def _e2e(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    import torch

    from . import harness

    try:
        pipelines = load_e2e()
    except FileNotFoundError as err:
        parser.error(str(err))
    systems = [s.strip() for s in (args.systems or ",".join(pipelines.SYSTEMS)).split(",")
               if s.strip()]
    unknown = [s for s in systems if s not in pipelines.SYSTEMS]
    if unknown or not systems:
        parser.error(f"--systems: unknown {unknown}; choose from {', '.join(pipelines.SYSTEMS)}")
    device = args.device or harness.default_device()
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    try:
        data = pipelines.common.find_data(args.data)
    except ValueError as err:
        parser.error(str(err))
    args.out.mkdir(parents=True, exist_ok=True)
    summary = []
    for name in systems:
        module = importlib.import_module(f"{E2E_PACKAGE}.{name}")
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
    if args.min_time is not None and not args.min_time > 0:
        parser.error("--min-time must be > 0")
    device = args.device or harness.default_device()
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    min_time = args.min_time or MIN_TIME_S[args.quick]
    args.out.mkdir(parents=True, exist_ok=True)  # fail on a bad --out before the long run
    json_path = args.out / "semid_fast_bench.json"
    png_path = args.out / "semid_fast_bench.png"
    png_path.unlink(missing_ok=True)  # never leave an earlier run's chart beside this run's JSON
    # Ctrl-C (even in a job started with SIGINT ignored) and SIGTERM (`timeout`, a batch
    # system) both stop the run and keep its rows.
    handlers = {}
    if threading.current_thread() is threading.main_thread():
        handlers = {s: signal.signal(s, signal.default_int_handler)
                    for s in (signal.SIGINT, signal.SIGTERM)}

    started = time.perf_counter()
    previous_checks = semid_fast.config.check_values
    semid_fast.config.check_values = not args.no_value_checks
    try:
        env = harness.environment(device)
        print(harness.describe_environment(env), flush=True)
        cases = []
        for family in families:
            cases += importlib.import_module(FAMILIES[family]).cases(device, args.quick)
        harness.check_groups(cases)
        if args.only:
            wanted = [w.strip() for w in args.only.split(",") if w.strip()]
            cases = [c for c in cases if any(w in c.label for w in wanted)]
        settings = {"families": families, "quick": args.quick, "device": device,
                    "min_time_s": min_time, "only": args.only,
                    "value_checks": not args.no_value_checks, "argv": sys.argv}
        harness.write_json(json_path, env, settings, [], complete=False)
        results, interrupted = harness.run_cases(
            cases, min_time,
            on_row=lambda rows: harness.write_json(json_path, env, settings, rows, False))
    finally:
        semid_fast.config.check_values = previous_checks
        for stop_signal, handler in handlers.items():
            signal.signal(stop_signal, handler)
    wall = time.perf_counter() - started

    print()
    print(harness.format_table(results))
    settings.update(total_wall_s=round(wall, 1), load_average_at_end=harness.load_average(),
                    interrupted=interrupted)
    harness.write_json(json_path, env, settings, results, complete=not interrupted)
    written = [str(json_path)]
    if harness.write_chart(png_path, env, results):
        written.append(str(png_path))
    print(f"\nwrote {', '.join(written)}; total wall time {wall:.0f} s")
    if interrupted:
        print(f"interrupted: {len(results)} of {len(cases)} rows measured", flush=True)
        harness.exit_now(130)
    return 1 if any(r.status == "error" for r in results) else 0

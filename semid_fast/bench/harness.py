"""The timing harness of ``semid-fast bench`` and of the pytest-benchmark files.

A :class:`Case` is one row: an op at one shape, run by one implementation. Its ``setup``
builds the inputs (untimed) and returns the callable to time. Rows of the same (family, op,
shape) form a group, and every row of a group is compared with the one baseline row the group
names (the reference backend unless a case says otherwise). All rows run in one process, so
backends and peers see the same machine, threads and inputs.

Timing uses standard timers: ``torch.utils.benchmark.Timer.blocked_autorange`` (its
block-size estimate is the warm-up; the median is over its blocks) on CPU, and on CUDA
``triton.testing.do_bench`` (CUDA events, L2 flushed before each call) when triton is
installed, else the same Timer (which synchronizes the device). Triton kernels are timed on
GPUs only, never under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import datetime
import gc
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

KINDS = ("ours", "reference", "peer", "floor")
# A GPU call slower than this is timed by the Timer: do_bench would first run it 5 times to
# estimate its cost.
SLOW_CALL_S = 1.0

# Dense (no sparsity) peaks from NVIDIA's data sheets: FP32 CUDA-core TFLOP/s, BF16 tensor-core
# TFLOP/s and memory GB/s. Matched by substring of the device name, most specific first.
DEVICE_LIMITS = (
    ("H200 NVL", {"fp32_tflops": 60.0, "bf16_tflops": 835.0, "mem_gbps": 4800.0}),
    ("H200", {"fp32_tflops": 67.0, "bf16_tflops": 989.0, "mem_gbps": 4800.0}),
    ("H100 NVL", {"fp32_tflops": 60.0, "bf16_tflops": 835.0, "mem_gbps": 3900.0}),
    ("H100 PCIe", {"fp32_tflops": 51.0, "bf16_tflops": 756.0, "mem_gbps": 2000.0}),
    ("H100", {"fp32_tflops": 67.0, "bf16_tflops": 989.0, "mem_gbps": 3350.0}),
    ("A100-SXM4-80GB", {"fp32_tflops": 19.5, "bf16_tflops": 312.0, "mem_gbps": 2039.0}),
    ("A100 80GB PCIe", {"fp32_tflops": 19.5, "bf16_tflops": 312.0, "mem_gbps": 1935.0}),
    ("A100", {"fp32_tflops": 19.5, "bf16_tflops": 312.0, "mem_gbps": 1555.0}),
)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@dataclass
class Case:
    """One benchmark row: an op at one shape, run by one implementation.

    ``setup()`` returns the callable to time, or ``(callable, note)`` where the note says
    something the reader must know (e.g. that a peer's codes agree with the reference).
    ``backend`` names the semid_fast backend the case forces (None for a peer or an API
    object); ``kind`` is "ours", "reference", "peer" or "floor" (a micro-kernel that times
    what the machine allows for the op's work, e.g. reading its inputs once; default: from
    ``backend``);
    ``baseline`` is the impl of the group's baseline row (None: the group has none);
    ``requires`` lists modules a peer needs (missing: skipped); ``skip`` is a reason known when
    the case is made. ``flops`` / ``bytes`` give TFLOP/s / GB/s; ``dtype`` picks the device
    limit they are compared with. ``per_call`` (CPU latency rows) times every call on its
    own and reports the median call, so the rare call that the OS preempts on a busy machine
    does not count as the latency of all of them.
    """

    family: str
    op: str
    shape: str
    impl: str
    setup: Callable[[], object]
    device: str = "cpu"
    backend: str | None = None
    kind: str = ""
    requires: tuple[str, ...] = ()
    skip: str | None = None
    baseline: str | None = "reference"
    flops: float | None = None
    bytes: float | None = None
    dtype: str = "fp32"
    per_call: bool = False

    def __post_init__(self):
        if not self.kind:
            self.kind = ("peer" if self.backend is None
                         else "reference" if self.backend == "reference" else "ours")
        if self.kind not in KINDS:
            raise ValueError(f"Case {self.label}: kind must be one of {KINDS}, got {self.kind!r}")

    @property
    def label(self) -> str:
        return f"{self.op} [{self.shape}] {self.impl}"

    @property
    def id(self) -> str:
        """A pytest-friendly id: no spaces or brackets."""
        text = f"{self.op}-{self.shape}-{self.impl}"
        return "".join(c if c.isalnum() or c in "=.+-" else "_" for c in text)

    @property
    def group(self) -> tuple[str, str, str]:
        return (self.family, self.op, self.shape)

    def skip_reason(self) -> str | None:
        """Why this case cannot be timed here, or None."""
        if self.skip:
            return self.skip
        for module in self.requires:
            if importlib.util.find_spec(module) is None:
                return f"peer not installed (import {module} failed)"
        if self.backend == "triton" and (self.device != "cuda" or triton_interpreted()):
            return ("Triton is timed on a GPU only (on CPU it would time the "
                    "TRITON_INTERPRET interpreter)")
        if self.backend is not None:
            from .. import _backends

            return _backends._usable(self.backend, torch.device(self.device))
        return None

    def prepare(self) -> tuple[Callable[[], object], str]:
        """Runs ``setup`` and returns (callable, note)."""
        made = self.setup()
        return made if isinstance(made, tuple) else (made, "")


def check_groups(cases: list[Case]) -> None:
    """Raises ValueError unless every group names one baseline, and that baseline is a row of
    the group: a speed-up is always read against the same row."""
    baselines: dict[tuple, set] = {}
    impls: dict[tuple, set] = {}
    for c in cases:
        baselines.setdefault(c.group, set()).add(c.baseline)
        impls.setdefault(c.group, set()).add(c.impl)
    for group, names in baselines.items():
        if len(names) != 1:
            raise ValueError(f"group {group} names several baselines: {sorted(map(str, names))}")
        (name,) = names
        if name is not None and name not in impls[group]:
            raise ValueError(f"group {group}: its baseline {name!r} is none of its rows")


@dataclass
class Result:
    case: Case
    status: str  # "ok", "skipped" or "error"
    note: str = ""
    times_s: tuple[float, ...] = ()  # seconds per call, one value per timed run (block)
    calls: int = 0  # calls timed in all
    speedup: float | None = None
    over_floor: float | None = None  # median / the median of the group's floor row
    limit: tuple[str, float] | None = None  # (name, value) of the device limit compared with

    @property
    def median_s(self) -> float | None:
        return statistics.median(self.times_s) if self.times_s else None

    @property
    def iqr_s(self) -> float | None:
        if len(self.times_s) < 2:
            return None  # one timed run (a slow call) has no spread to report
        q = statistics.quantiles(self.times_s, n=4, method="inclusive")
        return q[2] - q[0]

    @property
    def tflops(self) -> float | None:
        return self.case.flops / self.median_s / 1e12 if self.case.flops and self.median_s else None

    @property
    def gbps(self) -> float | None:
        return self.case.bytes / self.median_s / 1e9 if self.case.bytes and self.median_s else None

    @property
    def pct_of_limit(self) -> float | None:
        if self.limit is None:
            return None
        value = self.tflops if self.limit[0].endswith("tflops") else self.gbps
        return None if value is None else 100.0 * value / self.limit[1]

    def to_json(self) -> dict:
        c = self.case
        return {
            "family": c.family, "op": c.op, "shape": c.shape, "impl": c.impl, "kind": c.kind,
            "backend": c.backend, "device": c.device, "dtype": c.dtype, "baseline": c.baseline,
            "status": self.status, "note": self.note, "median_s": self.median_s,
            "iqr_s": self.iqr_s, "runs": len(self.times_s), "calls": self.calls,
            "times_s": list(self.times_s), "speedup_vs_baseline": self.speedup,
            "times_floor": self.over_floor,
            "flops": c.flops, "bytes": c.bytes, "tflops": self.tflops, "gbps": self.gbps,
            "limit_name": self.limit[0] if self.limit else None,
            "limit_value": self.limit[1] if self.limit else None,
            "pct_of_limit": self.pct_of_limit,
        }


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------


# Calls per timed run of a per-call row: each run reports the median of its calls. A call
# slower than PER_CALL_MAX_S is timed like any other row (the clock's cost is nothing there).
PER_CALL_RUN = 64
PER_CALL_MAX_S = 1e-3


def measure_per_call(fn: Callable[[], object], min_time_s: float) -> tuple[list[float], int]:
    """(median seconds of the calls of each run of PER_CALL_RUN calls, calls timed): every
    call timed on its own with perf_counter_ns, after PER_CALL_RUN warm-up calls."""
    for _ in range(PER_CALL_RUN):
        fn()
    runs, calls, clock = [], 0, time.perf_counter_ns
    deadline = time.perf_counter() + min_time_s
    while not runs or time.perf_counter() < deadline:
        times = []
        for _ in range(PER_CALL_RUN):
            start = clock()
            fn()
            times.append(clock() - start)
        runs.append(statistics.median(times) / 1e9)
        calls += PER_CALL_RUN
    return runs, calls


def measure(fn: Callable[[], object], device: str, min_time_s: float,
            per_call: bool = False) -> tuple[list[float], int]:
    """(seconds per call of each timed run, calls timed) for fn on device; ``per_call`` (CPU
    only): see :func:`measure_per_call`."""
    if per_call and device == "cpu":
        start = time.perf_counter()
        fn()
        if time.perf_counter() - start < PER_CALL_MAX_S:
            return measure_per_call(fn, min_time_s)
    if device == "cuda" and importlib.util.find_spec("triton") is not None:
        start = time.perf_counter()
        fn()  # warm-up: a Triton JIT compile or lazy CUDA set-up is never timed
        torch.cuda.synchronize()
        if time.perf_counter() - start < SLOW_CALL_S:
            from triton.testing import do_bench

            ms = do_bench(fn, rep=max(1, round(min_time_s * 1e3)), return_mode="all")
            return [t / 1e3 for t in ms], len(ms)
    from torch.utils.benchmark import Timer

    # Timer's default is one thread; time with the threads every other row uses.
    timer = Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    m = timer.blocked_autorange(min_run_time=min_time_s)
    return list(m.times), m.number_per_run * len(m.times)


def run_case(case: Case, min_time_s: float) -> Result:
    """Times one case; a case that cannot run here is skipped, one that fails is an error."""
    reason = case.skip_reason()
    if reason is not None:
        return Result(case, "skipped", note=reason)
    fn = None
    try:
        fn, note = case.prepare()
        times, calls = measure(fn, case.device, min_time_s, case.per_call)
        return Result(case, "ok", note=note, times_s=tuple(times), calls=calls)
    except Exception as exc:  # one broken case must not hide the numbers of the others
        return Result(case, "error", note=f"{type(exc).__name__}: {exc}")
    finally:
        del fn
        gc.collect()
        if case.device == "cuda":
            torch.cuda.empty_cache()


def run_cases(cases: list[Case], min_time_s: float,
              on_row: Callable[[list[Result]], None] | None = None) -> tuple[list[Result], bool]:
    """Times every case and returns (results, interrupted).

    The cases run in a worker thread while this (main) thread waits, so that Ctrl-C is seen at
    once even while a native call holds the worker for minutes. ``on_row(results)`` runs after
    each row (the caller writes its files there). On Ctrl-C this returns the finished rows with
    ``interrupted`` True and leaves the worker behind: the caller writes what it got and ends
    the process (see :func:`exit_now`).
    """
    results: list[Result] = []
    lock, stop = threading.Lock(), threading.Event()

    def work():
        for i, case in enumerate(cases, 1):
            if stop.is_set():
                return
            print(f"[{i}/{len(cases)}] {case.label}", file=sys.stderr, flush=True)
            result = run_case(case, min_time_s)
            if result.status != "skipped":
                print(f"  {fmt_time(result.median_s)}" if result.status == "ok"
                      else f"  error: {result.note}", file=sys.stderr, flush=True)
            with lock:
                if stop.is_set():
                    return
                results.append(result)
                fill_comparisons(results)
                if on_row is not None:
                    on_row(list(results))

    worker = threading.Thread(target=work, name="semid_fast-bench", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.1)
    except KeyboardInterrupt:
        stop.set()
        with lock:
            return list(results), True
    return results, False


def exit_now(status: int) -> None:
    """Ends the process at once (after an interrupt the worker may be inside a native call
    that no exception can stop)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def device_limits(device: str) -> dict | None:
    """The device's peak FP32 / BF16 TFLOP/s and memory GB/s when known (GPUs only)."""
    if device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    for pattern, limits in DEVICE_LIMITS:
        if pattern in name:
            return dict(limits, matched=pattern)
    return None


def fill_comparisons(results: list[Result]) -> None:
    """Speed-up of each row over its group's baseline row, its time over the group's floor
    row (kind "floor") when it has one, and its device limit."""
    by_key = {(r.case.group, r.case.impl): r for r in results}
    floors = {r.case.group: r for r in results if r.case.kind == "floor" and r.status == "ok"}
    limits = device_limits(results[0].case.device) if results else None
    for r in results:
        if r.status != "ok":
            continue
        c = r.case
        if limits is not None and (c.flops is not None or c.bytes is not None):
            key = ("mem_gbps" if c.flops is None
                   else "fp32_tflops" if c.dtype == "fp32" else "bf16_tflops")
            r.limit = (key, limits[key])
        base = by_key.get((c.group, c.baseline))
        if base is not None and base.status == "ok":
            r.speedup = base.median_s / r.median_s
        floor = floors.get(c.group)
        if floor is not None and floor is not r:
            r.over_floor = r.median_s / floor.median_s


def pytest_benchmark_case(benchmark, case: Case, min_time_s: float) -> None:
    """Times one case with pytest-benchmark's clock (one call per round, synchronized on CUDA;
    rounds to fill about ``min_time_s`` after a warm-up call, at least 3)."""
    import pytest

    reason = case.skip_reason()
    if reason is not None:
        pytest.skip(reason)
    fn, note = case.prepare()

    def call():
        fn()
        if case.device == "cuda":
            torch.cuda.synchronize()

    start = time.perf_counter()
    call()
    once = time.perf_counter() - start
    benchmark.group = f"{case.op} [{case.shape}]"
    benchmark.extra_info.update(impl=case.impl, kind=case.kind, shape=case.shape, note=note)
    benchmark.pedantic(call, rounds=max(3, min(100, round(min_time_s / max(once, 1e-9)))),
                       iterations=1)


# ---------------------------------------------------------------------------------------------
# Environment, table, JSON, chart
# ---------------------------------------------------------------------------------------------


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    """The commit of the source tree semid_fast was imported from, when it is a checkout."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"],
                             cwd=Path(__file__).resolve().parents[2], capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages: other processes on the machine make timings noisy."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def environment(device: str) -> dict:
    """Everything a reader needs to interpret the numbers."""
    import semid_fast
    from .. import _native

    info = _native._build_info
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device,
        "device_name": torch.cuda.get_device_name() if device == "cuda" else cpu_name(),
        "cpu": cpu_name(),
        "cpu_isa": _native._C.isa() if _native._C is not None else None,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        **{name.replace("-", "_"): _version(name)
           for name in ("triton", "faiss-cpu", "vector-quantize-pytorch", "transformers")},
        "semid_fast": semid_fast.__version__,
        "semid_fast_build": ({k: getattr(info, k) for k in dir(info) if k.isupper()}
                             if info else None),
        "available_backends": semid_fast.available_backends(device),
        "value_checks": semid_fast.config.check_values,
        "git_commit": _git_commit(),
        "load_average": load_average(),
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        env["gpu_sms"] = props.multi_processor_count
        env["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        env["device_limits"] = device_limits(device)
    return env


def describe_environment(env: dict) -> str:
    build = env["semid_fast_build"] or {}
    lines = [
        f"device: {env['device']} ({env['device_name']})",
        f"cpu: {env['cpu']}, ISA {env['cpu_isa']}, torch threads {env['torch_threads']}",
        f"versions: python {env['python']}, torch {env['torch']}"
        + (f" (CUDA {env['torch_cuda']})" if env["torch_cuda"] else "")
        + f", triton {env['triton']}, faiss-cpu {env['faiss_cpu']}, "
        f"vector-quantize-pytorch {env['vector_quantize_pytorch']}, "
        f"transformers {env['transformers']}",
        f"semid_fast {env['semid_fast']} (commit {env['git_commit']}): build "
        + ", ".join(f"{k.lower()}={v}" for k, v in build.items()),
        f"backends here: {', '.join(env['available_backends'])}; "
        f"value checks {'on' if env['value_checks'] else 'off'}; "
        f"load average {env['load_average']}",
    ]
    if env.get("device_limits"):
        lim = env["device_limits"]
        lines.append(f"device limits: {lim['fp32_tflops']} FP32 TFLOP/s, {lim['bf16_tflops']} "
                     f"BF16 TFLOP/s, {lim['mem_gbps']} GB/s")
    return "\n".join(lines)


def fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.1f} us"


def _fmt_throughput(r: Result) -> str:
    if r.tflops is not None:
        return f"{r.tflops:.2f} TFLOP/s" if r.tflops >= 1 else f"{r.tflops * 1e3:.1f} GFLOP/s"
    return f"{r.gbps:.1f} GB/s" if r.gbps is not None else ""


def format_table(results: list[Result]) -> str:
    """The result table (a blank line between groups; 'base' marks each group's baseline;
    'x floor' is the time over the group's floor row),
    then the notes and the skipped rows grouped by reason."""
    headers = ["op", "shape", "impl", "kind", "median", "IQR", "calls", "vs base",
               "x floor", "throughput", "% limit", "note"]
    rows, notes, skipped = [], [], {}
    for r in results:
        if r.status == "skipped":
            skipped.setdefault((r.case.impl, r.note), []).append(r)
            continue
        mark = ""
        if r.note:
            notes.append(r.note if r.status == "ok" else f"ERROR: {r.note}")
            mark = f"[{len(notes)}]"
        vs = ("base" if r.case.impl == r.case.baseline and r.status == "ok"
              else f"{r.speedup:.2f}x" if r.speedup is not None else "")
        pct = r.pct_of_limit
        rows.append([r.case.op, r.case.shape, r.case.impl, r.case.kind,
                     fmt_time(r.median_s) if r.status == "ok" else "ERROR",
                     fmt_time(r.iqr_s), str(r.calls or ""), vs,
                     f"{r.over_floor:.2f}x" if r.over_floor is not None else "",
                     _fmt_throughput(r),
                     f"{pct:.0f}%" if pct is not None else "", mark])
    widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(headers)]
    right = {4, 5, 6, 7, 8, 9, 10}

    def line(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    for i, row in enumerate(rows):
        if i and row[:2] != rows[i - 1][:2]:
            out.append("")
        out.append(line(row))
    if notes:
        out.append("")
        out.extend(f"[{i}] {n}" for i, n in enumerate(notes, 1))
    if skipped:
        out.append("")
        for (impl, reason), rs in skipped.items():
            out.append(f"skipped {impl} ({len(rs)} row{'s' if len(rs) > 1 else ''}): {reason}")
    return "\n".join(out)


def write_json(path: Path, env: dict, settings: dict, results: list[Result],
               complete: bool) -> None:
    """Writes the whole file anew (atomically), so that it is valid after every row."""
    payload = {"environment": env, "settings": settings, "complete": complete,
               "results": [r.to_json() for r in results]}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    os.replace(tmp, path)


COLOURS = {"ours": "tab:blue", "reference": "tab:gray", "peer": "tab:orange",
           "floor": "tab:green"}


def write_chart(path: Path, env: dict, results: list[Result]) -> bool:
    """Speed-up of every row over its group's baseline row (log scale), coloured by kind, the
    baseline rows hatched at 1x. Groups without a measured baseline are left out. False
    without matplotlib or without a row to draw."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError:
        return False
    shown = [r for r in results if r.status == "ok" and r.speedup is not None]
    if not shown:
        return False
    fig, ax = plt.subplots(figsize=(11, 0.3 * len(shown) + 1.8))
    ys = range(len(shown))
    values = [r.speedup for r in shown]
    is_base = [r.case.impl == r.case.baseline for r in shown]
    ax.barh(ys, values, color=[COLOURS[r.case.kind] for r in shown],
            hatch=["//" if b else "" for b in is_base], edgecolor="black", linewidth=0.3)
    ax.set_yticks(list(ys), [f"{r.case.op} [{r.case.shape}]  {r.case.impl}" for r in shown],
                  fontsize=7)
    for y in range(1, len(shown)):
        if shown[y].case.group != shown[y - 1].case.group:
            ax.axhline(y - 0.5, color="lightgray", linewidth=0.6)
    ax.set_ylim(len(shown) - 0.5, -0.5)  # first row on top, no margins
    ax.set_xscale("log")
    ax.set_xlim(min(0.5, min(values) / 1.5), max(values) * 2.5)  # room for the value labels
    ax.axvline(1.0, color="black", linewidth=0.8)
    for y, v in zip(ys, values):
        ax.text(v, y, f" {v:.2f}x", va="center", fontsize=7)
    ax.legend(handles=[Patch(color=c, label=k) for k, c in COLOURS.items()]
              + [Patch(facecolor="white", edgecolor="black", hatch="//",
                       label="the group's baseline")], fontsize=7, loc="lower right")
    ax.set_xlabel("speed-up over the baseline row of its group (median time ratio)")
    ax.set_title(f"semid_fast bench on {env['device_name']} ({env['torch_threads']} threads)",
                 fontsize=9)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return True

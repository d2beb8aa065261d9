"""The timing harness shared by ``semid-fast bench`` and the pytest-benchmark files.

A :class:`Case` is one (op, shape, backend-or-peer) combination. Its ``setup`` builds the
inputs and returns a zero-argument callable; the harness times that callable and compares its
median with the case it names as ``baseline`` (the reference backend by default) at the same
op and shape. Every case runs in this one process, so backends and peers see the same
machine, threads and inputs.

Timing rules (DESIGN.md, "Benchmarks"):

* warm-up calls (one on CPU, two on CUDA, up to three for fast calls); the last one estimates
  the cost of a call and is never counted;
* then ``repeat`` timed calls when given, else as many as fit in ``target_s`` seconds, never
  fewer than :data:`MIN_REPS` nor more than :data:`MAX_REPS` (a slow reference gets 3, and the
  count is recorded per row: results are never extrapolated from a subset);
* CPU calls are timed with ``time.perf_counter``; CUDA calls with CUDA events around each call,
  the L2 cache flushed before each one (as ``triton.testing.do_bench`` does; we use our own
  loop so that slow references and fast kernels follow the same repetition rule);
* Triton is timed on GPUs only, never under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import datetime
import gc
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch

# Calls slower than this are timed once (after their warm-up call) to keep the suite short.
SLOW_CALL_S = 5.0
MIN_REPS = 3
MAX_REPS = 100
FLUSH_BYTES = 256 << 20  # larger than any current GPU's L2 cache

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
    """One benchmark row: an op at one shape, run by one backend of ours or one peer.

    ``setup()`` builds inputs (untimed) and returns the callable to time, or
    ``(callable, note)`` where the note says something the reader must know (e.g. that a
    peer's codes agree with the reference). ``backend`` names the semid_fast backend the case
    runs (None for a peer); ``requires`` lists modules a peer needs (missing: skipped);
    ``skip`` is a reason known when the case is made. ``flops`` / ``bytes`` give effective
    TFLOP/s / GB/s; ``dtype`` picks the device limit they are compared with.
    """

    family: str
    op: str
    shape: str
    impl: str
    setup: Callable[[], object]
    device: str = "cpu"
    backend: str | None = None
    requires: tuple[str, ...] = ()
    skip: str | None = None
    baseline: str | None = "reference"
    flops: float | None = None
    bytes: float | None = None
    dtype: str = "fp32"

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

            reason = _backends._usable(self.backend, torch.device(self.device))
            if reason is not None:
                return reason
        return None

    def prepare(self) -> tuple[Callable[[], object], str]:
        """Runs ``setup`` and returns (callable, note)."""
        made = self.setup()
        if isinstance(made, tuple):
            return made[0], made[1]
        return made, ""


@dataclass
class Result:
    case: Case
    status: str  # "ok", "skipped" or "error"
    note: str = ""
    times_s: list[float] = field(default_factory=list)
    warmup: int = 0
    speedup: float | None = None
    limit: tuple[str, float] | None = None  # (name, value) of the device limit compared with

    @property
    def median_s(self) -> float | None:
        return statistics.median(self.times_s) if self.times_s else None

    @property
    def min_s(self) -> float | None:
        return min(self.times_s) if self.times_s else None

    @property
    def iqr_s(self) -> float | None:
        if len(self.times_s) < 2:
            return 0.0 if self.times_s else None
        q = statistics.quantiles(self.times_s, n=4, method="inclusive")
        return q[2] - q[0]

    @property
    def tflops(self) -> float | None:
        if self.case.flops is None or not self.median_s:
            return None
        return self.case.flops / self.median_s / 1e12

    @property
    def gbps(self) -> float | None:
        if self.case.bytes is None or not self.median_s:
            return None
        return self.case.bytes / self.median_s / 1e9

    @property
    def pct_of_limit(self) -> float | None:
        if self.limit is None:
            return None
        value = self.tflops if self.limit[0].endswith("tflops") else self.gbps
        return None if value is None else 100.0 * value / self.limit[1]

    def to_json(self) -> dict:
        c = self.case
        return {
            "family": c.family, "op": c.op, "shape": c.shape, "impl": c.impl,
            "backend": c.backend, "device": c.device, "dtype": c.dtype,
            "baseline": c.baseline, "status": self.status, "note": self.note,
            "median_s": self.median_s, "min_s": self.min_s, "iqr_s": self.iqr_s,
            "repetitions": len(self.times_s), "warmup_calls": self.warmup,
            "times_s": self.times_s, "speedup_vs_baseline": self.speedup,
            "flops": c.flops, "bytes": c.bytes, "tflops": self.tflops, "gbps": self.gbps,
            "limit_name": self.limit[0] if self.limit else None,
            "limit_value": self.limit[1] if self.limit else None,
            "pct_of_limit": self.pct_of_limit,
        }


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------


def synchronized(fn: Callable[[], object], device: str) -> Callable[[], object]:
    """fn followed by a device sync, for wall-clock timers (pytest-benchmark) on CUDA."""
    if device != "cuda":
        return fn

    def call():
        out = fn()
        torch.cuda.synchronize()
        return out

    return call


def plan_repetitions(estimate_s: float, target_s: float, repeat: int | None) -> int:
    """Timed calls for a case whose one call costs about estimate_s."""
    if repeat is not None:
        return repeat
    if estimate_s > SLOW_CALL_S:
        return 1  # a pure-PyTorch reference at the headline size: one call after the warm-up
    wanted = math.ceil(target_s / max(estimate_s, 1e-9))
    return max(MIN_REPS, min(MAX_REPS, wanted))


def _wall(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _cuda_once(fn: Callable[[], object]) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3


def warm_up(fn: Callable[[], object], device: str) -> tuple[float, int]:
    """Warm-up calls; returns the last one's seconds (the cost estimate) and their count.

    At least two on CUDA (the first may include a Triton JIT compile or lazy CUDA set-up),
    one on CPU; then more while calls are fast (up to three within 0.25 s).
    """
    once = _cuda_once if device == "cuda" else _wall
    min_calls = 2 if device == "cuda" else 1
    estimate = spent = once(fn)
    calls = 1
    while calls < min_calls or (calls < 3 and spent < 0.25):
        estimate = once(fn)
        spent += estimate
        calls += 1
    return estimate, calls


_flush_buffers: dict[int, torch.Tensor] = {}


def _timed_cuda(fn: Callable[[], object], reps: int) -> list[float]:
    index = torch.cuda.current_device()
    if index not in _flush_buffers:
        _flush_buffers[index] = torch.empty(FLUSH_BYTES, dtype=torch.int8, device="cuda")
    flush = _flush_buffers[index]
    events = []
    for _ in range(reps):
        flush.zero_()  # evict the previous call's data from L2: each call starts cold
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        events.append((start, end))
    torch.cuda.synchronize()
    return [s.elapsed_time(e) / 1e3 for s, e in events]


def measure(fn: Callable[[], object], device: str, target_s: float,
            repeat: int | None) -> tuple[list[float], int]:
    """(per-call seconds, warm-up calls) for fn on device."""
    estimate, warm = warm_up(fn, device)
    reps = plan_repetitions(estimate, target_s, repeat)
    if device == "cuda":
        return _timed_cuda(fn, reps), warm
    return [_wall(fn) for _ in range(reps)], warm


# ---------------------------------------------------------------------------------------------
# Running a suite
# ---------------------------------------------------------------------------------------------


def device_limits(device: str) -> dict | None:
    """The device's peak FP32 / BF16 TFLOP/s and memory GB/s when known (GPUs only)."""
    if device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    for pattern, limits in DEVICE_LIMITS:
        if pattern in name:
            return dict(limits, matched=pattern)
    return None


def _limit_for(case: Case, limits: dict | None) -> tuple[str, float] | None:
    if limits is None:
        return None
    if case.flops is not None:
        key = "fp32_tflops" if case.dtype == "fp32" else "bf16_tflops"
        return key, limits[key]
    if case.bytes is not None:
        return "mem_gbps", limits["mem_gbps"]
    return None


def _progress(cases: list[Case]) -> Iterable[tuple[Case, Callable[[str], None]]]:
    """Yields (case, write): a tqdm bar on a terminal when tqdm is installed, else numbered
    lines (which also keep logs of non-interactive runs readable)."""
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    if not sys.stderr.isatty():
        tqdm = None
    if tqdm is None:
        for i, case in enumerate(cases, 1):
            print(f"[{i}/{len(cases)}] {case.label}", file=sys.stderr, flush=True)
            yield case, lambda msg: print(msg, file=sys.stderr, flush=True)
    else:
        bar = tqdm(cases, unit="case", file=sys.stderr, dynamic_ncols=True)
        for case in bar:
            bar.set_description_str(f"{case.op} {case.impl}"[:48])
            yield case, lambda msg: tqdm.write(msg, file=sys.stderr)


def run_cases(cases: list[Case], target_s: float, repeat: int | None = None,
              rows_path: Path | None = None) -> list[Result]:
    """Times every case (skipping those that cannot run here) and fills in the speed-ups.

    With ``rows_path``, each result is also appended there as one JSON line as soon as it is
    measured (before speed-ups are known), so a run cut short still leaves its rows.
    """
    results = []
    for case, write in _progress(cases):
        reason = case.skip_reason()
        fn = None
        try:
            if reason is not None:
                results.append(Result(case, "skipped", note=reason))
                continue
            fn, note = case.prepare()
            times, warm = measure(fn, case.device, target_s, repeat)
            results.append(Result(case, "ok", note=note, times_s=times, warmup=warm))
        except Exception as exc:  # one broken case must not hide the numbers of the others
            results.append(Result(case, "error", note=f"{type(exc).__name__}: {exc}"))
            write(f"error in {case.label}: {type(exc).__name__}: {exc}")
        finally:
            del fn
            gc.collect()
            if case.device == "cuda":
                torch.cuda.empty_cache()
            if rows_path is not None:
                with open(rows_path, "a") as f:
                    f.write(json.dumps(results[-1].to_json()) + "\n")
    _fill_comparisons(results)
    return results


def _fill_comparisons(results: list[Result]) -> None:
    by_key = {(r.case.group, r.case.impl): r for r in results}
    limits = device_limits(results[0].case.device) if results else None
    for r in results:
        if r.status != "ok":
            continue
        r.limit = _limit_for(r.case, limits)
        base = by_key.get((r.case.group, r.case.baseline)) if r.case.baseline else r
        if base is not None and base.status == "ok":
            r.speedup = base.median_s / r.median_s


# ---------------------------------------------------------------------------------------------
# Environment, table, JSON, chart
# ---------------------------------------------------------------------------------------------


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    """The commit of the source tree semid_fast was imported from, when it is a checkout."""
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=root,
                             capture_output=True, text=True, timeout=5)
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
    build = ({k: getattr(info, k) for k in dir(info) if k.isupper()} if info else None)
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device,
        "device_name": torch.cuda.get_device_name() if device == "cuda" else _cpu_name(),
        "cpu": _cpu_name(),
        "cpu_isa": _native._C.isa() if _native._C is not None else None,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": _version("triton"),
        "faiss": _version("faiss-cpu") or _version("faiss-gpu") or _version("faiss"),
        "vector_quantize_pytorch": _version("vector-quantize-pytorch"),
        "numpy": _version("numpy"),
        "semid_fast": semid_fast.__version__,
        "semid_fast_build": build,
        "available_backends": semid_fast.available_backends(device),
        "value_checks": semid_fast.config.check_values,
        "triton_interpret": triton_interpreted(),
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
        + f", triton {env['triton']}, faiss {env['faiss']}, "
        f"vector-quantize-pytorch {env['vector_quantize_pytorch']}",
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


def _fmt_time(seconds: float | None) -> str:
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
    if r.gbps is not None:
        return f"{r.gbps:.1f} GB/s"
    return ""


def format_table(results: list[Result]) -> str:
    """The result table, then the notes and the skipped cases (grouped by reason)."""
    headers = ["op", "shape", "backend/peer", "median", "min", "IQR", "reps", "vs ref",
               "throughput", "% limit", "note"]
    rows, notes, skipped = [], [], {}
    for r in results:
        if r.status == "skipped":
            skipped.setdefault((r.case.impl, r.note), []).append(r)
            continue
        mark = ""
        if r.note:
            notes.append(r.note if r.status == "ok" else f"ERROR: {r.note}")
            mark = f"[{len(notes)}]"
        pct = r.pct_of_limit
        rows.append([
            r.case.op, r.case.shape, r.case.impl,
            _fmt_time(r.median_s) if r.status == "ok" else "ERROR",
            _fmt_time(r.min_s), _fmt_time(r.iqr_s), str(len(r.times_s)) if r.times_s else "",
            f"{r.speedup:.2f}x" if r.speedup is not None else "",
            _fmt_throughput(r), f"{pct:.0f}%" if pct is not None else "", mark,
        ])
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    right = {3, 4, 5, 6, 7, 8, 9}

    def line(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    previous = None
    for row in rows:
        if previous is not None and (row[0], row[1]) != previous:
            out.append("")  # a blank line between (op, shape) groups
        previous = (row[0], row[1])
        out.append(line(row))
    if notes:
        out.append("")
        out.extend(f"[{i}] {n}" for i, n in enumerate(notes, 1))
    if skipped:
        out.append("")
        for (impl, reason), rs in skipped.items():
            out.append(f"skipped {impl} ({len(rs)} row{'s' if len(rs) > 1 else ''}): {reason}")
    return "\n".join(out)


def write_json(path: Path, env: dict, settings: dict, results: list[Result]) -> None:
    payload = {"environment": env, "settings": settings,
               "results": [r.to_json() for r in results]}
    path.write_text(json.dumps(payload, indent=1) + "\n")


def write_chart(path: Path, env: dict, results: list[Result]) -> bool:
    """Speed-up over the baseline per case as horizontal bars (log scale). False without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    shown = [r for r in results
             if r.status == "ok" and r.speedup is not None and r.case.impl != r.case.baseline
             and r.case.baseline is not None]
    if not shown:
        return False
    labels = [f"{r.case.op} [{r.case.shape}]  {r.case.impl}" for r in shown]
    values = [r.speedup for r in shown]
    colors = ["tab:blue" if r.case.backend is not None else "tab:gray" for r in shown]
    fig, ax = plt.subplots(figsize=(11, 0.32 * len(shown) + 1.6))
    ys = range(len(shown))
    ax.barh(ys, values, color=colors)
    ax.set_yticks(list(ys), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlim(min(0.5, min(values) / 1.5), max(values) * 2.5)  # room for the value labels
    ax.axvline(1.0, color="black", linewidth=0.8)
    for y, v in zip(ys, values):
        ax.text(v, y, f" {v:.2f}x", va="center", fontsize=7)
    ax.set_xlabel("speed-up over the reference (median time ratio; blue: semid_fast, "
                  "gray: peers)")
    ax.set_title(f"semid_fast bench on {env['device_name']} ({env['torch_threads']} threads)",
                 fontsize=9)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return True


def pytest_benchmark_case(benchmark, case: Case, target_s: float) -> None:
    """Times one case with pytest-benchmark's clock under the suite's repetition rule."""
    import pytest

    reason = case.skip_reason()
    if reason is not None:
        pytest.skip(reason)
    fn, note = case.prepare()
    fn = synchronized(fn, case.device)
    estimate, _ = warm_up(fn, case.device)
    rounds = plan_repetitions(estimate, target_s, None)
    benchmark.group = f"{case.op} [{case.shape}]"
    benchmark.extra_info.update(impl=case.impl, shape=case.shape, note=note)
    benchmark.pedantic(fn, rounds=rounds, iterations=1)

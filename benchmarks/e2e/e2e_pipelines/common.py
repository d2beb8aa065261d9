"""What every end-to-end pipeline shares: finding the data, loading it (or a synthetic
stand-in of the same shape), timing, and the report (printed, JSON, PNG).

Data discovery, first match wins:

1. ``--data PATH`` (an error when PATH is not a folder);
2. the ``SEMID_FAST_DATA`` environment variable (an error when it names no folder);
3. ``../shared/data`` relative to the current directory;
4. ``../shared/data`` beside the source checkout these pipelines are part of;
5. else nothing: each pipeline builds a synthetic catalog of the real one's shape.

The folder layout is the one of the project's shared test data (``amazon14_beauty/``,
``yelp/``, ...; see each pipeline for the files it reads). A folder that exists but lacks a
pipeline's file also falls back to synthetic data; the report always says which it used.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

ENV_VAR = "SEMID_FAST_DATA"
_CHECKOUT = Path(__file__).resolve().parents[3]  # the repository root of a source checkout


@dataclass
class DataSource:
    """Where real data comes from: ``root`` None means synthetic data only."""

    root: Path | None
    how: str

    def file(self, *parts: str) -> Path | None:
        """The path of a data file, or None when there is no data folder or no such file."""
        if self.root is None:
            return None
        path = self.root.joinpath(*parts)
        return path if path.is_file() else None


def find_data(explicit: str | os.PathLike | None = None) -> DataSource:
    """The data folder by the rule in this module's docstring.

    Raises:
        ValueError: ``explicit`` or ``$SEMID_FAST_DATA`` is given but is not a folder.
    """
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_dir():
            raise ValueError(f"--data {explicit}: not a folder")
        return DataSource(path.resolve(), "--data")
    env = os.environ.get(ENV_VAR)
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise ValueError(f"{ENV_VAR}={env}: not a folder")
        return DataSource(path.resolve(), ENV_VAR)
    beside_cwd = Path.cwd().parent / "shared" / "data"
    if beside_cwd.is_dir():
        return DataSource(beside_cwd.resolve(), "../shared/data beside the current directory")
    beside_checkout = _CHECKOUT.parent / "shared" / "data"
    if (_CHECKOUT / "pyproject.toml").is_file() and beside_checkout.is_dir():
        return DataSource(beside_checkout.resolve(), "../shared/data beside the source checkout")
    return DataSource(None, "none found")


def synthetic_embeddings(n: int, d: int, seed: int, clusters: int = 64) -> torch.Tensor:
    """(n, d) float32 unit vectors from a mixture of ``clusters`` Gaussian blobs: real
    embeddings cluster, and clustered data is what quantizers are trained for."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, d, generator=g)
    member = torch.randint(0, clusters, (n,), generator=g)
    x = centres[member] + 0.5 * torch.randn(n, d, generator=g)
    return torch.nn.functional.normalize(x, dim=1)


@dataclass
class Loaded:
    """A loaded array and a sentence saying where it came from."""

    value: object
    origin: str


def item_embeddings(data: DataSource, dataset: str, name: str, rows: int, dim: int, seed: int,
                    row_offset: int = 0) -> Loaded:
    """Item embeddings (rows, dim) float32 from ``<data>/<dataset>/<name>`` (rows
    ``row_offset .. row_offset + rows``), else synthetic ones of that shape."""
    path = data.file(dataset, name)
    if path is not None:
        array = np.load(path)
        if array.ndim == 2 and array.shape[1] == dim and array.shape[0] >= row_offset + rows:
            x = torch.from_numpy(np.ascontiguousarray(array[row_offset:row_offset + rows],
                                                      dtype=np.float32))
            return Loaded(x, f"{dataset}/{name} ({rows} x {dim}, real)")
    return Loaded(synthetic_embeddings(rows, dim, seed),
                  f"synthetic {rows} x {dim} (clustered Gaussian; no {dataset}/{name} of "
                  f"at least {row_offset + rows} x {dim} found)")


def user_histories(data: DataSource, n_items: int, n_users: int, max_len: int,
                   seed: int) -> Loaded:
    """``n_users`` user histories: (ids (U, max_len) int64 padded with -1 on the left,
    targets (U,) int64), from ``amazon14_beauty/inter.json`` (the last item of each user's
    sequence is the target, the ones before it the history), else synthetic sequences of
    items drawn by a Zipf-like popularity. Users are the first ``n_users`` in the file whose
    items are all < ``n_items`` and who have at least 2 items."""
    path = data.file("amazon14_beauty", "inter.json")
    sequences = []
    if path is not None:
        raw = json.loads(path.read_text())
        for user in sorted(raw, key=int):
            seq = raw[user]
            if len(seq) >= 2 and max(seq) < n_items:
                sequences.append(seq)
            if len(sequences) == n_users:
                break
        origin = f"amazon14_beauty/inter.json ({len(sequences)} users, real)"
    if len(sequences) < n_users:
        rng = np.random.default_rng(seed)
        popularity = 1.0 / np.arange(1, n_items + 1) ** 0.8
        popularity /= popularity.sum()
        sequences = [list(rng.choice(n_items, size=int(rng.integers(3, max_len + 2)), p=popularity))
                     for _ in range(n_users)]
        origin = f"synthetic ({n_users} users, Zipf-like popularity)"
    ids = torch.full((n_users, max_len), -1, dtype=torch.long)
    targets = torch.empty(n_users, dtype=torch.long)
    for row, seq in enumerate(sequences):
        history = seq[:-1][-max_len:]
        ids[row, max_len - len(history):] = torch.tensor(history, dtype=torch.long)
        targets[row] = seq[-1]
    return Loaded((ids, targets), origin)


def standardised_items(report: Report, data: DataSource, s, device: str) -> torch.Tensor:
    """Yelp's item embeddings (s.n_items x s.dim), standardised per dimension, on `device`.

    Standardised so that reconstruction and RQ losses are of one scale: unit-norm 384-d
    sentence embeddings otherwise give a reconstruction loss of ~1/384 that the commitment
    term overwhelms, and the codebooks collapse. Shared by the tiger, diger and varlen runs.
    """
    emb = item_embeddings(data, "yelp", "title_cat_minilm384.npy", s.n_items, s.dim, s.seed)
    report.say(f"items: {emb.origin}")
    x = emb.value
    return ((x - x.mean(0)) / x.std(0).clamp_min(1e-6)).to(device)


def require_faiss(system: str):
    """The faiss module, or an ImportError that says how to get it."""
    try:
        import faiss
    except ImportError as err:
        raise ImportError(f"the {system} pipeline trains its quantizer with faiss: "
                          "pip install faiss-cpu (or semid_fast[bench])") from err
    return faiss


@contextlib.contextmanager
def faiss_single_thread():
    """faiss training with one OpenMP thread. On a small shared machine faiss's OpenMP
    threads and torch's spin against each other: OPQ training ran 5-8x slower with two."""
    import faiss

    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


def median_time(fn: Callable[[], object], reps: int, device: str = "cpu") -> float:
    """Median wall time of ``reps`` calls after one warm-up call (seconds)."""
    def call():
        out = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    call()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def timed_once(fn: Callable[[], object]) -> tuple[object, float]:
    """(result, seconds) of one call: for the slow reference runs, whose result is also the
    oracle, so that they run once."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def fmt_time(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.0f} us"


def code_usage(codes: torch.Tensor, k: int) -> tuple[list[int], list[float]]:
    """Per level of codes (N, L): distinct codes used, and perplexity exp(entropy) of the
    code histogram (K for uniform use, 1 for one code)."""
    used, perplexity = [], []
    for level in codes.long().T:
        counts = torch.bincount(level, minlength=k).double()
        p = counts[counts > 0] / counts.sum()
        used.append(int((counts > 0).sum()))
        perplexity.append(float(torch.exp(-(p * p.log()).sum())))
    return used, perplexity


@dataclass
class Report:
    """Printed as it goes; written as ``<system>.json`` and ``<system>.png`` at the end."""

    system: str
    title: str
    data: DataSource
    settings: dict
    metrics: dict = field(default_factory=dict)
    checks: dict = field(default_factory=dict)
    lines: list = field(default_factory=list)
    chart: Callable[[object], None] | None = None  # draws the PNG on a matplotlib figure
    echo: bool = True

    def __post_init__(self):
        self.say(f"== {self.title} ==")
        self.say(f"data: {self.data.root if self.data.root else 'synthetic'} ({self.data.how})")
        self.say("settings: " + ", ".join(f"{k}={v}" for k, v in self.settings.items()))

    def say(self, text: str = "") -> None:
        self.lines.append(text)
        if self.echo:
            print(text, flush=True)

    def table(self, headers: list[str], rows: list[list]) -> None:
        cells = [[str(c) for c in row] for row in rows]
        widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
        self.say("  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip())
        for row in cells:
            self.say("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        """An agreement check: printed PASS/FAIL, recorded in the JSON."""
        self.checks[name] = {"ok": bool(ok), "detail": detail}
        self.say(f"[{'PASS' if ok else 'FAIL'}] {name}" + (f": {detail}" if detail else ""))
        return bool(ok)

    @property
    def passed(self) -> bool:
        return all(c["ok"] for c in self.checks.values())

    def write(self, out_dir: Path) -> list[Path]:
        """Writes the JSON and, with matplotlib installed, the PNG drawn by ``self.chart``."""
        out_dir.mkdir(parents=True, exist_ok=True)
        json_path = out_dir / f"{self.system}.json"
        payload = {"system": self.system, "title": self.title,
                   "data": {"root": str(self.data.root) if self.data.root else None,
                            "how": self.data.how},
                   "settings": self.settings, "environment": environment(),
                   "metrics": _jsonable(self.metrics), "checks": self.checks,
                   "passed": self.passed, "report": self.lines}
        json_path.write_text(json.dumps(payload, indent=1) + "\n")
        written = [json_path]
        if self.chart is not None:
            try:
                import matplotlib

                matplotlib.use("Agg")
                import matplotlib.pyplot as plt
            except ImportError:
                return written
            fig = plt.figure(figsize=(11, 4.2))
            self.chart(fig)
            fig.suptitle(f"{self.title} ({'real data' if self.data.root else 'synthetic data'})",
                         fontsize=10)
            png_path = out_dir / f"{self.system}.png"
            fig.savefig(png_path, dpi=110, bbox_inches="tight")
            plt.close(fig)
            written.append(png_path)
        return written


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _jsonable(value.tolist())
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def environment() -> dict:
    """Enough to interpret the timings: machine, threads, versions, load."""
    from semid_fast.bench import harness

    return {"cpu": harness.cpu_name(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__,
            "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "load_average": harness.load_average(),
            # spinning OpenMP workers slow the next parallel region on a small machine
            # (benchmarks/RESULTS.md, "OpenMP waiting")
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags every pipeline takes."""
    parser.add_argument("--quick", action="store_true", help="tiny sizes: seconds, not minutes")
    parser.add_argument("--data", default=None,
                        help=f"data folder (default: ${ENV_VAR}, else ../shared/data, else "
                             "synthetic data)")
    parser.add_argument("--out", default="e2e_results", type=Path,
                        help="folder for <system>.json and <system>.png (default: e2e_results/)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="device of the semid_fast calls (default cpu)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice")


def script_main(module, argv: list[str] | None = None) -> int:
    """``python benchmarks/e2e/<system>.py [flags]``: parse, run, write; 1 if a check failed."""
    parser = argparse.ArgumentParser(prog=module.SYSTEM, description=module.__doc__.split("\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        data = find_data(args.data)
    except ValueError as err:
        parser.error(str(err))
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    report = module.run(module.Settings.sized(args.quick, args.seed), data, device=args.device)
    written = report.write(args.out)
    print(f"wrote {', '.join(map(str, written))}")
    return 0 if report.passed else 1

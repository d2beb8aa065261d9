"""Compile every Triton kernel variant of semid_fast for an sm_90 GPU, on a machine without one.

Run as a script: ``python tests/triton_sm90.py REPORT.json [CASE-FILTER]``. The public ops run
with ``backend="triton"`` on CPU tensors while a stand-in driver tells Triton that the current
device is an sm_90 GPU; every kernel the launchers request is compiled to a cubin (through
ptxas, so register allocation happens) and never launched. The Triton interpreter, which the
rest of the suite uses, never specialises arguments and so never sees these compile paths (an
int argument equal to 1, for instance, becomes a constexpr).

The report lists each case (ok or the error) and each distinct compiled kernel with its
constexprs, warps, stages, shared memory, the grids it was launched with, and, when
a ``cuobjdump`` is found (Triton bundles one), registers and stack bytes (spills) from its resource usage.
Launch grids past the CUDA limits (x < 2^31, y and z <= 65535) count as failures. Exit
status 1 when any case failed. tests/test_triton_sm90.py runs it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

os.environ.pop("TRITON_INTERPRET", None)  # before triton is imported: compile for real

import torch  # noqa: E402
import triton  # noqa: E402
import triton.compiler as triton_compiler  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler.compiler import CompiledKernel  # noqa: E402
from triton.runtime import driver  # noqa: E402

SM90 = GPUTarget("cuda", 90, 32)
GRID_LIMITS = (2**31 - 1, 65535, 65535)


class _Sm90Driver:
    """What Triton's launcher asks of the active driver, answered for one sm_90 device."""

    def is_active(self):
        return True

    def get_current_device(self):
        return 0

    def set_current_device(self, device):
        pass

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return SM90

    def get_active_torch_device(self):
        return torch.device("cpu")

    def get_device_capability(self, device=0):
        return (9, 0)


class Recorder:
    """Wraps triton's compile: keeps one record per compiled kernel; launches do nothing."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.kernels: dict[str, dict] = {}
        self.case = None
        self.grid_errors: list[str] = []
        self._compile = triton_compiler.compile

    def compile(self, src, target=None, options=None, **kwargs):
        start = time.time()
        kernel = self._compile(src, target=target, options=options, **kwargs)
        record = self.kernels.get(kernel.hash)
        if record is None:
            record = self._describe(kernel, src, time.time() - start)
            self.kernels[kernel.hash] = record
        if self.case not in record["cases"] and len(record["cases"]) < 4:
            record["cases"].append(self.case)
        kernel._run = lambda *args, **kw: self._launch(kernel, record, *args)
        return kernel

    def _describe(self, kernel, src, seconds):
        md = kernel.metadata
        record = dict(name=kernel.name, hash=kernel.hash[:16],
                      constexprs={str(k): repr(v) for k, v in src.constants.items()},
                      num_warps=md.num_warps, num_stages=md.num_stages, shared=md.shared,
                      compile_s=round(seconds, 2), cases=[], grids=[])
        record.update(resource_usage(kernel.asm["cubin"], self.workdir))
        return record

    def _launch(self, kernel, record, g0, g1, g2, *args):
        grid = [g0, g1, g2]
        if len(record["grids"]) < 6 and grid not in record["grids"]:
            record["grids"].append(grid)
        if min(grid) < 1 or any(g > lim for g, lim in zip(grid, GRID_LIMITS)):
            self.grid_errors.append(f"{kernel.name} grid {grid} in case {self.case!r}")
        # The kernel never ran: give its integer outputs values the torch code after it can
        # index with (keys of longid's top-k decode to item 0, codes to 0).
        for a in args:
            if isinstance(a, torch.Tensor) and not a.is_floating_point():
                a.fill_(0xFFFFFFFF if kernel.name in _KEY_KERNELS and a.dtype == torch.int64
                        else 0)


_KEY_KERNELS = ("_scan_kernel", "_candidates_kernel")


def _cuobjdump() -> str | None:
    """Triton's bundled cuobjdump (it ships one with its ptxas), else the one on the PATH."""
    import triton.backends.nvidia as nvidia

    bundled = os.path.join(os.path.dirname(nvidia.__file__), "bin", "cuobjdump")
    return bundled if os.access(bundled, os.X_OK) else shutil.which("cuobjdump")


def resource_usage(cubin: bytes, workdir: str) -> dict:
    """Registers, stack and shared bytes of a cubin from ``cuobjdump --dump-resource-usage``."""
    tool = _cuobjdump()
    if tool is None:
        return {}
    with tempfile.NamedTemporaryFile(suffix=".cubin", dir=workdir, delete=False) as f:
        f.write(cubin)
    try:
        text = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True,
                              text=True, timeout=60).stdout
    finally:
        os.unlink(f.name)
    usage = {}
    for key, field in (("registers", "REG"), ("stack", "STACK"), ("shared_static", "SHARED"),
                       ("local", "LOCAL")):
        match = re.search(rf"\b{field}:(\d+)", text)
        if match:
            usage[key] = int(match.group(1))
    return usage


def install(recorder: Recorder) -> None:
    driver.set_active(_Sm90Driver())
    triton_compiler.compile = recorder.compile
    triton.compile = recorder.compile
    CompiledKernel._init_handles = lambda self: None
    CompiledKernel.launch_metadata = lambda self, *a, **k: None


# ------------------------------------------------------------------------------------- cases

def cases():
    """(name, thunk) for every launcher branch, dtype and specialisation edge worth compiling."""
    import semid_fast as sf

    gen = torch.Generator().manual_seed(0)

    def randn(*shape, dtype=torch.float32):
        if torch.Size(shape).numel() >= 10_000_000:  # never read: contents do not matter
            return torch.empty(shape, dtype=dtype)
        return torch.randn(shape, generator=gen).to(dtype)

    floats = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    # seed / offset words equal to 0 and 1 are specialised by Triton; 2^32 + 1 sets both words.
    edge_values = (0, 1, 2**32 + 1)

    def gumbel_softmax(rows, vocab, dtype, seed=7, offset=3):
        def run():
            x = randn(rows, vocab, dtype=dtype) * 3
            tau = torch.rand(rows, generator=gen) + 0.2
            for hard in (False, True):
                sf.gumbel_softmax(x, tau, hard=hard, seed=seed, offset=offset, backend="triton")
            leaves = [x.clone().requires_grad_(), tau.clone().requires_grad_()]
            y = sf.gumbel_softmax(leaves[0], leaves[1], noise_scale=0.5, seed=seed,
                                  offset=offset, backend="triton")
            y.float().sum().backward()
            xl = x.clone().requires_grad_()  # only x needs a gradient: no row sums
            sf.gumbel_softmax(xl, 0.7, seed=seed, offset=offset,
                              backend="triton").float().sum().backward()
        return run

    for rows, vocab in [(1, 1), (5, 7), (64, 256), (3, 4096), (2, 8192), (2, 8193), (2, 40000)]:
        for name, dtype in floats.items():
            yield f"gumbel_softmax {rows}x{vocab} {name}", gumbel_softmax(rows, vocab, dtype)
    for seed in edge_values:
        for offset in edge_values:
            yield (f"gumbel_softmax seed={seed} offset={offset}",
                   gumbel_softmax(3, 5, torch.float32, seed, offset))
            yield f"gumbel_noise seed={seed} offset={offset}", lambda s=seed, o=offset: (
                sf.gumbel_noise((1000,), seed=s, offset=o, device="cpu", backend="triton"))
            yield f"gumbel_topk seed={seed} offset={offset}", lambda s=seed, o=offset: (
                sf.gumbel_topk(randn(4, 100), 3, tau=0.5, seed=s, offset=o, backend="triton"))
    for rows, vocab, k in [(3, 7, 7), (8, 1000, 1), (64, 32768, 50), (2, 5000, 200)]:
        yield f"gumbel_topk {rows}x{vocab} k={k}", lambda r=rows, v=vocab, k=k: (
            sf.gumbel_topk(randn(r, v), k, tau=torch.rand(r, generator=gen) + 0.5, seed=5,
                           backend="triton"))
    for seed in (1, 2):
        yield f"gumbel_quantize seed={seed}", lambda s=seed: sf.gumbel_quantize(
            randn(50, 32).requires_grad_(), randn(2, 256, 32).requires_grad_(), tau=0.5,
            seed=s, backend="triton")[1].sum().backward()

    # quantize: one shape per tile-size branch of the launchers (by D and by N), all dtypes.
    rq_shapes = [(1, 7, 2, 1), (37, 32, 256, 3), (130, 64, 256, 4), (61, 100, 256, 2),
                 (61, 384, 256, 3), (50, 768, 1024, 2), (47, 32, 16, 2), (200_000, 256, 256, 4)]
    for n, d, k, levels in rq_shapes:
        for name, dtype in floats.items():
            if name != "fp32" and n > 1000:
                continue
            yield f"rq_encode {n}x{d} K={k} L={levels} {name}", lambda n=n, d=d, k=k, l=levels, \
                dt=dtype: sf.rq_encode(randn(n, d, dtype=dt), randn(l, k, d), backend="triton")
        yield f"rq_quantize {n}x{d} K={k} L={levels}", lambda n=n, d=d, k=k, l=levels: (
            _quantize_step(sf, randn(min(n, 5000), d), randn(l, k, d)))
    for n, d, k, levels in [(29, 16, 64, 3), (7, 7, 2, 4), (33, 32, 256, 2), (50, 384, 256, 2)]:
        for beam in (2, 5, 64):
            yield f"rq_encode beam={beam} {n}x{d} K={k} L={levels}", lambda n=n, d=d, k=k, \
                l=levels, b=beam: sf.rq_encode(randn(n, d), randn(l, k, d), beam_width=b,
                                               backend="triton")
    yield "rq_encode beam=4 bf16", lambda: sf.rq_encode(
        randn(33, 32, dtype=torch.bfloat16), randn(2, 256, 32), beam_width=4, backend="triton")
    for n, d, k, m in [(1, 7, 2, 7), (37, 32, 256, 4), (130, 64, 16, 16), (61, 384, 256, 4),
                       (61, 1024, 256, 2), (45, 64, 37, 8), (1_000_000, 256, 256, 32)]:
        for name, dtype in floats.items():
            if name != "fp32" and n > 1000:
                continue
            yield f"pq_encode {n}x{d} K={k} M={m} {name}", lambda n=n, d=d, k=k, m=m, \
                dt=dtype: sf.pq_encode(randn(n, d, dtype=dt), randn(m, k, d // m),
                                       backend="triton")
    for n, d, k, width in [(1, 7, 2, 1), (37, 32, 256, 3), (45, 256, 256, 32), (10, 7, 4, 7)]:
        def decode(n=n, d=d, k=k, width=width):
            codes = torch.randint(0, k, (n, width), generator=gen)
            sf.rq_decode(codes, randn(width, k, d), backend="triton")
            sf.rq_decode(codes.int(), randn(width, k, d), backend="triton")
            sf.pq_decode(codes, randn(width, k, max(1, d // width)), backend="triton")
        yield f"rq_decode / pq_decode {n} x {width} K={k} D={d}", decode

    # Paths added on top of the kernels above: Sinkhorn levels, k-means, a PQ centre.
    yield "rq_encode / rq_quantize with Sinkhorn", lambda: (
        sf.rq_encode(randn(40, 32), randn(2, 64, 32), sk_epsilon=[0.0, 0.01],
                     backend="triton"),
        _quantize_step(sf, randn(40, 32), randn(2, 64, 32), sk_epsilon=0.01))
    yield "gumbel_quantize with Sinkhorn", lambda: sf.gumbel_quantize(
        randn(40, 32), randn(2, 64, 32), tau=0.5, seed=3, sk_epsilon=0.01, backend="triton")
    yield "kmeans / rq_init", lambda: (
        sf.kmeans(randn(300, 16), 20, iters=2, backend="triton"),
        sf.rq_init(randn(300, 16), 2, 20, iters=2, backend="triton"))
    yield "pq_encode / pq_decode with a centre", lambda: sf.pq_decode(
        sf.pq_encode(randn(37, 32), randn(4, 16, 8), center=randn(32), backend="triton"),
        randn(4, 16, 8), center=randn(32), backend="triton")

    # longid: each code width, one query and a block of queries, the select and merge paths.
    code_dtypes = (torch.uint8, torch.int16, torch.int32, torch.int64)
    for b, m, k, n, topk in [(1, 8, 16, 37, 5), (3, 16, 256, 1000, 10), (9, 4, 7, 50, 60),
                             (64, 64, 256, 100_003, 100), (3, 16, 256, 70_001, 4096)]:
        for dtype in code_dtypes:
            yield f"holistic_topk B={b} M={m} K={k} N={n} k={topk} {dtype}", lambda b=b, m=m, \
                k=k, n=n, topk=topk, dt=dtype: _holistic(sf, gen, b, m, k, n, topk, dt)
    for name in ("fp16", "bf16"):
        yield f"holistic_topk scores {name}", lambda dt=floats[name]: _holistic(
            sf, gen, 3, 16, 256, 1000, 10, torch.int32, scores_dtype=dt)
    yield "holistic_topk masks, candidates, graph", lambda: _masks_and_graph(sf, gen)
    # Past CUDA's grid-y limit (65,535 queries): the launcher slices the batch.
    many = 16 * 65535 + 1
    yield "holistic_topk B > 16 x 65535 (scan)", lambda: sf.holistic_topk(
        torch.zeros(many, 2, 4), torch.zeros(10, 2, dtype=torch.int32), 3, backend="triton")
    yield "holistic_topk B > 65535 (candidates)", lambda: sf.holistic_topk(
        torch.zeros(70_000, 2, 4), torch.zeros(10, 2, dtype=torch.int32), 3,
        candidates=torch.zeros(70_000, 4, dtype=torch.long), backend="triton")


def _quantize_step(sf, x, codebooks, **kwargs):
    x.requires_grad_()
    codebooks.requires_grad_()
    _, quantized, loss = sf.rq_quantize(x, codebooks, beta=0.25, backend="triton", **kwargs)
    (quantized.sum() + loss).backward()


def _holistic(sf, gen, b, m, k, n, topk, codes_dtype, scores_dtype=torch.float32):
    scores = torch.randn(b, m, k, generator=gen).log_softmax(-1).to(scores_dtype)
    codes = torch.randint(0, k, (n, m), generator=gen).to(codes_dtype)
    for reduce in ("sum", "mean"):
        sf.holistic_topk(scores, codes, topk, reduce=reduce, backend="triton")


def _masks_and_graph(sf, gen):
    scores = torch.randn(6, 8, 32, generator=gen).log_softmax(-1)
    codes = torch.randint(0, 32, (3000, 8), generator=gen).int()
    mask = torch.rand(6, 3000, generator=gen) < 0.5
    candidates = torch.randint(-1, 3000, (6, 300), generator=gen)
    for kwargs in (dict(item_mask=mask), dict(item_mask=mask[0]), dict(candidates=candidates),
                   dict(candidates=candidates.int(), item_mask=mask)):
        for topk in (40, 100):
            sf.holistic_topk(scores, codes, topk, backend="triton", **kwargs)
    graph = sf.ItemGraph.build(codes, n_edges=10, backend="triton")
    init = torch.stack([torch.randperm(3000, generator=gen)[:16] for _ in range(6)])
    sf.graph_decode(scores, codes, graph, beam_width=16, steps=3, k=8, init=init,
                    backend="triton")


# -------------------------------------------------------------------------------------- main

def main(report_path: str, pattern: str | None = None) -> int:
    workdir = tempfile.mkdtemp(prefix="triton-sm90-")
    os.environ.setdefault("TRITON_CACHE_DIR", os.path.join(workdir, "cache"))
    recorder = Recorder(workdir)
    install(recorder)

    import semid_fast as sf
    import importlib
    from semid_fast import _backends

    _backends._triton_interpreted = lambda: True  # accept CPU tensors for backend="triton"
    for module in ("_device", "gumbel", "longid", "quantize"):
        mod = importlib.import_module(f"semid_fast.backends.triton.{module}")
        if hasattr(mod, "num_sms"):
            mod.num_sms = lambda t: 132  # an H200's SM count drives the tile choices
    sf.config.check_values = False

    results = []
    for name, run in cases():
        if pattern and pattern not in name:
            continue
        recorder.case = name
        start, before = time.time(), len(recorder.kernels)
        try:
            run()
            results.append(dict(case=name, ok=True, seconds=round(time.time() - start, 1),
                                new_kernels=len(recorder.kernels) - before))
        except Exception as e:  # noqa: BLE001 - every failure goes into the report
            results.append(dict(case=name, ok=False, error=f"{type(e).__name__}: {e}"[:2000],
                                traceback=traceback.format_exc()[-4000:]))
            print(f"FAIL {name}: {type(e).__name__}: {str(e)[:300]}", flush=True)
    report = dict(triton=triton.__version__, torch=torch.__version__, target="sm_90",
                  cases=results, grid_errors=recorder.grid_errors,
                  kernels=sorted(recorder.kernels.values(), key=lambda r: r["name"]))
    with open(report_path, "w") as f:
        json.dump(report, f, indent=1)
    shutil.rmtree(workdir, ignore_errors=True)
    failed = [r["case"] for r in results if not r["ok"]]
    print(f"triton {triton.__version__}: {len(results)} cases, {len(recorder.kernels)} kernels, "
          f"{len(failed)} failed, {len(recorder.grid_errors)} grids past the limits", flush=True)
    return 1 if failed or recorder.grid_errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None))

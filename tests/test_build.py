"""The build contains what `_build_info` claims, and nothing it denies."""

import importlib
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile

import pytest
import torch

import semid_fast
from semid_fast import _build_info, _native


def test_cpu_extension_is_built_and_loads():
    assert _build_info.CPU_BUILT
    assert _native._C is not None
    assert _native._C.isa() in _build_info.CPU_ISAS
    assert "cpu" in semid_fast.available_backends("cpu")


def test_cuda_extension_matches_build_info():
    if _build_info.CUDA_BUILT:
        module = importlib.import_module("semid_fast._C_cuda")
        assert _build_info.CUDA_ARCHS, "a CUDA build must name its architectures"
        assert all(a.isdigit() for a in _build_info.CUDA_ARCHS)
        # Without a GPU the module still imports and reports no device.
        assert module.device_count() == torch.cuda.device_count()
        assert module.runtime_version() > 0
    else:
        with pytest.raises(ImportError):
            importlib.import_module("semid_fast._C_cuda")
        assert _build_info.CUDA_ARCHS == ()


def test_cuda_is_built_where_nvcc_exists():
    """AUTO must build _C_cuda on a machine with nvcc (CI has one and no GPU)."""
    if _build_info.CUDA_REQUESTED == "OFF" or shutil.which("nvcc") is None:
        pytest.skip("this build was configured without CUDA or nvcc is absent")
    assert _build_info.CUDA_BUILT


def test_build_info_names_the_commit():
    """A build from a git checkout records its commit; any other build records None."""
    commit = _build_info.GIT_COMMIT
    assert commit is None or re.fullmatch(r"[0-9a-f]{40}", commit), commit


def test_kernel_limits_are_module_attributes():
    """The limits that Python reads from the extensions instead of mirroring them."""
    cpu = _native.cpu()
    assert cpu.HOLISTIC_QUERY_LANES == 8
    assert cpu.RQ_MAX_BEAM_CANDIDATES == 1 << 26
    assert cpu.TRIE_MAX_CANDIDATES == 2**32 - 1
    assert (cpu.STATUS_OK, cpu.STATUS_CODE_OUT_OF_RANGE, cpu.STATUS_BAD_ARGUMENT) == (0, 1, 2)
    assert set(_native.CPU_STATUS) == {cpu.STATUS_CODE_OUT_OF_RANGE, cpu.STATUS_BAD_ARGUMENT}
    if _build_info.CUDA_BUILT:
        cuda = importlib.import_module("semid_fast._C_cuda")
        assert cuda.HOLISTIC_MAX_K == 4096
        assert (cuda.TRIE_MAX_BEAMS, cuda.TRIE_MAX_BEAMS_IN) == (1024, 8192)
        assert _native.DTYPE_CODES == {torch.float32: cuda.DTYPE_FLOAT32,
                                       torch.float16: cuda.DTYPE_FLOAT16,
                                       torch.bfloat16: cuda.DTYPE_BFLOAT16}


def test_rq_encode_kernel_bounds_the_beam_by_the_encodings():
    """A beam wider than the k**levels encodings that exist (the kernel's own bound, not only
    the Python one) sizes its buffers by the encodings: the same codes, no huge allocation
    inside the threads."""
    g = torch.Generator().manual_seed(0)
    x, books = torch.randn(50, 4, generator=g), torch.randn(1, 2, 4, generator=g)
    cpu = _native.cpu()

    def codes_with(beam_width):
        codes = torch.empty(50, 1, dtype=torch.long)
        status = cpu.rq_encode_f32(x.data_ptr(), 50, 4, books.data_ptr(), 1, 2, beam_width, 0,
                                   0, codes.data_ptr(), 0, 0, 2)
        assert status == 0
        return codes

    # The widest beam the kernel accepts for K = 2 (RQ_MAX_BEAM_CANDIDATES / K).
    assert torch.equal(codes_with(cpu.RQ_MAX_BEAM_CANDIDATES // 2), codes_with(2))


# Kernels allowed a stack frame, with why. Every other kernel of _C_cuda must have none: a
# frame there usually means registers spilled to local memory.
CUDA_STACK_ALLOWED = {
    # Two uint8-code instances: __launch_bounds__(512, 2) caps it at 64 registers (two
    # 512-thread blocks per SM for the memory-bound scan), which leaves one 8-byte value
    # on the stack; accepted until a GPU run shows whether it costs anything.
    "block_topk_kernel<unsigned char": 8,
}


def _cuobjdump():
    bundled = None
    try:
        import triton.backends.nvidia as nvidia  # triton ships cuobjdump beside its ptxas
        bundled = pathlib.Path(nvidia.__file__).parent / "bin" / "cuobjdump"
    except ImportError:
        pass
    if bundled is not None and os.access(bundled, os.X_OK):
        return str(bundled)
    return shutil.which("cuobjdump")


def test_cuda_kernels_do_not_spill():
    """Registers and stack of every kernel in _C_cuda (cuobjdump --dump-resource-usage)."""
    if not _build_info.CUDA_BUILT:
        pytest.skip("this build has no _C_cuda")
    tool = _cuobjdump()
    if tool is None:
        pytest.skip("no cuobjdump (neither triton's nor on the PATH)")
    module = importlib.import_module("semid_fast._C_cuda")
    text = subprocess.run([tool, "--dump-resource-usage", module.__file__], capture_output=True,
                          text=True, check=True).stdout
    usage = re.findall(r"Function (\S+):\s*REG:(\d+) STACK:(\d+)", text)
    assert usage, f"no kernels found in {module.__file__}:\n{text[:2000]}"
    demangle = shutil.which("c++filt")
    names = [m[0] for m in usage]
    if demangle:
        names = subprocess.run([demangle], input="\n".join(names), capture_output=True,
                               text=True).stdout.splitlines()
    spilling = []
    for name, (_, regs, stack) in zip(names, usage):
        allowed = next((v for k, v in CUDA_STACK_ALLOWED.items() if k in name), 0)
        if int(stack) > allowed:
            spilling.append(f"{name[:160]}: {regs} registers, {stack} bytes of stack")
    assert not spilling, "\n".join(spilling)


def test_available_backends_follow_the_device():
    backends = semid_fast.available_backends()
    assert backends[0] == "reference"
    assert ("cuda" in semid_fast.available_backends("cuda")) == (
        _build_info.CUDA_BUILT and torch.cuda.is_available()
    )
    with pytest.raises(RuntimeError, match="cuda"):
        semid_fast.rq_encode(torch.randn(3, 4), torch.randn(1, 2, 4), backend="cuda")


ISA_ORDER = ("baseline", "avx2", "avx512")


@pytest.mark.parametrize("isa", ["baseline", "avx2"])
def test_narrower_isa_builds_pass_the_cpu_tests(isa):
    """The kernels of a narrower build (what an older CPU runs) pass the cpu-backend tests,
    forced with SEMID_FAST_CPU_ISA=<isa> in a child pytest: the baseline on every family; AVX2,
    where this CPU runs the AVX-512 build, on the families that have one (quantize, k-means,
    longid; the others already run AVX2 here)."""
    default = _native._C.isa()
    if isa not in _build_info.CPU_ISAS or ISA_ORDER.index(default) <= ISA_ORDER.index(isa):
        pytest.skip(f"this CPU runs the {default} build, which the other tests already cover")
    tests = pathlib.Path(__file__).parent
    families = (("quantize", "longid", "gumbel", "trie", "hf", "kmeans") if isa == "baseline"
                else ("quantize", "kmeans", "longid"))
    files = [str(tests / f"test_{family}.py") for family in families]
    # Run from tests/: from the repository root, `python -c`/`-m` would put the source tree,
    # not the installed package, first on sys.path.
    env = dict(os.environ, SEMID_FAST_CPU_ISA=isa)
    probe = subprocess.run([sys.executable, "-c", "from semid_fast import _native; "
                            "print(_native.cpu().isa())"], env=env, capture_output=True,
                           text=True, cwd=tests)
    assert probe.returncode == 0 and probe.stdout.strip() == isa, probe.stderr[-2000:]
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "-k", "cpu and not triton", *files], env=env, capture_output=True,
                         text=True, cwd=tests)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout


@pytest.mark.skipif(not pathlib.Path("/sys/kernel/mm/transparent_hugepage").exists(),
                    reason="no transparent huge pages (not Linux, or compiled out)")
def test_large_cpu_outputs_are_advised_for_huge_pages():
    """empty_output marks a large CPU output MADV_HUGEPAGE ('hg' in /proc/self/smaps) and
    returns an ordinary tensor of the asked shape and dtype, small or large."""
    def flags_of(t):
        address, flags, inside = t.data_ptr() + t.numel() * t.element_size() // 2, None, False
        with open("/proc/self/smaps") as smaps:
            for line in smaps:
                head = line.split()[0]
                if "-" in head and not head.endswith(":"):
                    lo, hi = (int(part, 16) for part in head.split("-"))
                    inside = lo <= address < hi
                elif inside and head == "VmFlags:":
                    flags = line.split()[1:]
        return flags

    large = _native.empty_output((3, 1 << 20), torch.float32)
    small = _native.empty_output((1000,), torch.float16)
    assert large.shape == (3, 1 << 20) and large.dtype == torch.float32 and large.is_contiguous()
    assert small.shape == (1000,) and small.dtype == torch.float16
    assert "hg" in (flags_of(large) or [])
    large.fill_(2.0)
    assert float(large.sum()) == 2.0 * 3 * (1 << 20)


@pytest.mark.skipif(shutil.which("timeout") is None or shutil.which("bash") is None,
                    reason="needs bash and coreutils' timeout")
def test_run_gpu_script_dry_run_on_cpu(tmp_path):
    """benchmarks/run_gpu.sh on this machine (installed package, no GPU): every step runs
    under the deadline and leaves its status line and log; the GPU tests skip, and the GPU
    benchmark fails for want of a device."""
    repo = pathlib.Path(__file__).resolve().parents[1]
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), SKIP_BUILD="1", PYTHON=sys.executable,
               DEADLINE_S="300")
    env.pop("TRITON_INTERPRET", None)
    run = subprocess.run(["bash", str(repo / "benchmarks" / "run_gpu.sh")], env=env,
                         capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    steps = dict(line.split()[0].split("=", 1)[1:] + [line.split()[1].split("=")[1]]
                 for line in (out / "steps.txt").read_text().splitlines())
    families = ("quantize", "gumbel", "trie", "longid")
    assert set(steps) == {"build-info", "bench-quick"} | {f"gpu-tests-{f}" for f in families}
    assert all(steps[f"gpu-tests-{f}"] == "0" for f in families), steps
    assert steps["bench-quick"] not in ("0", "skipped"), steps  # no CUDA device here
    with tarfile.open(out / "logs.tgz") as logs:
        names = {pathlib.PurePath(n).name for n in logs.getnames()}
    assert {f"gpu-tests-{f}.xml" for f in families} <= names and "bench-quick.log" in names
    assert len([p for p in out.rglob("*") if p.is_file()]) <= 8  # what the device tool returns


def _ops_in_this_process():
    """One call of an op of every family, multi-threaded where the kernels are."""
    g = torch.Generator().manual_seed(0)
    x, books = torch.randn(4000, 32, generator=g), torch.randn(2, 64, 32, generator=g)
    codes = semid_fast.rq_encode(x, books)
    semid_fast.pq_encode(x, torch.randn(4, 16, 8, generator=g))
    semid_fast.kmeans(x, 16, iters=2)
    semid_fast.gumbel_softmax(torch.randn(2000, 256, generator=g), 0.5, seed=1)
    semid_fast.holistic_topk(torch.randn(8, 2, 64, generator=g), codes.to(torch.int32), 5)
    trie = semid_fast.SemanticIDTrie.from_codes(codes)
    semid_fast.constrained_beam_step(torch.randn(4, 64, generator=g).log_softmax(-1),
                                     torch.zeros(4, 1), torch.zeros(4, 1, dtype=torch.long),
                                     trie, 3)
    return int(codes.sum())


def test_ops_work_in_a_forked_child():
    """After the parent ran multi-threaded kernels, a fork()ed child (multiprocessing's
    default on Linux, DataLoader workers) runs every family instead of hanging on the
    parent's OpenMP pool."""
    import multiprocessing

    want = _ops_in_this_process()
    with multiprocessing.get_context("fork").Pool(1) as pool:
        result = pool.apply_async(_ops_in_this_process)
        assert result.get(timeout=120) == want
    assert torch.get_num_threads() >= 1  # the parent's count is untouched


def test_dataloader_fork_workers_run_the_ops():
    class Calls(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return _ops_in_this_process()

    want = _ops_in_this_process()
    loader = torch.utils.data.DataLoader(Calls(), num_workers=2, timeout=120,
                                         multiprocessing_context="fork")
    assert [int(v) for v in loader] == [want, want]

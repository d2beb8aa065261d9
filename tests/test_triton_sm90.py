"""Every Triton kernel variant compiles for sm_90 (the GPU machine's H200), without a GPU.

tests/triton_sm90.py does the work in a child process (Triton must be imported there without
TRITON_INTERPRET, which conftest.py sets for this process). It runs with the triton installed
here and, when SEMID_FAST_TRITON_EXTRA names a folder holding another triton (``pip install
--target DIR triton==3.6.0``: the GPU machine's version, as .ci/run does), with that one too,
both at once. Reports (registers, stack/spills, shared memory per kernel variant) are written
to SEMID_FAST_TRITON_REPORTS when set, else to pytest's tmp folder.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                reason="triton is not installed")

SCRIPT = Path(__file__).with_name("triton_sm90.py")


def _child(report: Path, extra_path: str | None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if extra_path:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [extra_path, env.get("PYTHONPATH")]))
    # From tests/: the repository root would shadow the installed package with the sources.
    return subprocess.Popen([sys.executable, str(SCRIPT), str(report)], cwd=SCRIPT.parent,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_every_triton_kernel_compiles_for_sm90(tmp_path):
    out = Path(os.environ.get("SEMID_FAST_TRITON_REPORTS", tmp_path))
    out.mkdir(parents=True, exist_ok=True)
    runs = {"installed": _child(out / "triton_sm90_installed.json", None)}
    extra = os.environ.get("SEMID_FAST_TRITON_EXTRA")
    if extra:
        runs["extra"] = _child(out / "triton_sm90_extra.json", extra)
    failures = []
    for name, proc in runs.items():
        try:
            log, _ = proc.communicate(timeout=1200)
        except subprocess.TimeoutExpired:
            for other in runs.values():
                other.kill()
            failures.append(f"{name}: still compiling after 20 minutes")
            continue
        report_path = out / f"triton_sm90_{name}.json"
        if not report_path.exists():
            failures.append(f"{name}: no report (exit {proc.returncode}):\n{log[-3000:]}")
            continue
        report = json.loads(report_path.read_text())
        bad = [f"{c['case']}: {c['error'][:400]}" for c in report["cases"] if not c["ok"]]
        bad += report["grid_errors"]
        assert report["kernels"], f"{name}: nothing was compiled"
        spills = sorted({(k["name"], k.get("stack", 0)) for k in report["kernels"]
                         if k.get("stack", 0) > 0})
        print(f"triton {report['triton']}: {len(report['cases'])} cases, "
              f"{len(report['kernels'])} kernels; stack bytes (spills) in {spills}")
        if bad:
            failures.append(f"triton {report['triton']}:\n" + "\n".join(bad))
    assert not failures, "\n\n".join(failures)

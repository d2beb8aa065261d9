#!/usr/bin/env bash
# The one script for the lent GPU machine (DESIGN.md, "Testing without a GPU").
#
# Builds semid_fast with CUDA against the machine's own torch (no network: no downloads, no
# build isolation), runs the GPU tests, then the whole test suite, then the benchmark suite
# on the GPU, and leaves everything under $OUT (at most 7 files, one sub-folder):
#   env.txt            date, commit, nvidia-smi, versions, build info, exit status of each step
#   build.log          pip install output
#   pytest_gpu.log     pytest -m gpu tests -x
#   pytest_all.log     pytest tests
#   bench.log          semid-fast bench --device cuda (the table)
#   bench/semid_fast_bench.json, bench/semid_fast_bench.png
#
# Usage: OUT=/some/dir bash benchmarks/run_gpu.sh
#        STEPS="build bench" OUT=... bash benchmarks/run_gpu.sh   (a subset, to fit time limits)
# A failing test step does not stop the later steps; a failing build does.
set -u
export PYTHONUNBUFFERED=1

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$REPO/gpu_results}"
STEPS="${STEPS:-build gpu-tests tests bench}"
PY="${PYTHON:-python}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
# Python runs from an empty folder: from the repository root, `import semid_fast` would pick
# the source tree (which has no compiled _C) instead of the installed package.
SCRATCH="$(mktemp -d)"
trap 'rm -rf "$SCRATCH"' EXIT
cd "$SCRATCH" || exit 1

ENV_TXT="$OUT/env.txt"
STATUS=()

want() { [[ " $STEPS " == *" $1 "* ]]; }

{
  echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "commit: $(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo 'unknown (no .git here)')"
  echo "steps: $STEPS"
  echo
  nvidia-smi 2>&1 || echo "nvidia-smi failed"
  echo
  nvcc --version 2>&1 | tail -n 2 || echo "nvcc not found"
  "$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "| torch",
    torch.__version__, "| torch CUDA", torch.version.cuda, "| GPU",
    torch.cuda.get_device_name() if torch.cuda.is_available() else None)' 2>&1
  "$PY" -c 'import triton; print("triton", triton.__version__)' 2>&1 || true
} > "$ENV_TXT"

if want build; then
  echo "== build: pip install --no-build-isolation --no-deps $REPO (CUDA ON, sm_90)"
  SEMID_FAST_CUDA=ON SEMID_FAST_CUDA_ARCHS=90 \
    "$PY" -m pip install --no-build-isolation --no-deps "$REPO" 2>&1 | tee "$OUT/build.log"
  rc=${PIPESTATUS[0]}
  STATUS+=("build=$rc")
  if [[ $rc -ne 0 ]]; then
    echo "build failed (exit $rc); see $OUT/build.log" | tee -a "$ENV_TXT"
    exit 1
  fi
fi

echo "== build info"
"$PY" - <<'EOF' 2>&1 | tee -a "$ENV_TXT"
import semid_fast
from semid_fast import _native
info = _native._build_info
print("semid_fast", semid_fast.__version__, "from", semid_fast.__file__)
print("build info:", {k: getattr(info, k) for k in dir(info) if k.isupper()} if info else None)
print("cpu ISA:", _native._C.isa() if _native._C is not None else None,
      "| CUDA devices seen by _C_cuda:", _native.cuda_device_count())
print("available backends (cuda):", semid_fast.available_backends("cuda"))
EOF

run_tests() {  # name, log file, pytest arguments...
  local name="$1" log="$2"
  shift 2
  echo "== $name: pytest $*"
  "$PY" -m pytest "$@" -p no:cacheprovider 2>&1 | tee "$log"
  STATUS+=("$name=${PIPESTATUS[0]}")
}

if want gpu-tests || want tests; then
  if ! "$PY" -c 'import pytest' 2>/dev/null; then
    echo "pytest is not installed: skipping the test steps" | tee -a "$ENV_TXT"
  else
    # Without hypothesis, modules that import it fail to collect; the others still run
    # (and -x would stop at the first collection error, so it is dropped then).
    FIRST_FAIL=(-x)
    COLLECT=()
    if ! "$PY" -c 'import hypothesis' 2>/dev/null; then
      echo "hypothesis is not installed: test modules that need it will error at collection;" \
           "running the others" | tee -a "$ENV_TXT"
      FIRST_FAIL=()
      COLLECT=(--continue-on-collection-errors)
    fi
    if want gpu-tests; then
      run_tests gpu-tests "$OUT/pytest_gpu.log" -m gpu "$REPO/tests" \
        ${FIRST_FAIL[@]+"${FIRST_FAIL[@]}"} ${COLLECT[@]+"${COLLECT[@]}"} -q
    fi
    if want tests; then
      run_tests tests "$OUT/pytest_all.log" "$REPO/tests" ${COLLECT[@]+"${COLLECT[@]}"} -q
    fi
  fi
fi

if want bench; then
  echo "== bench: semid-fast bench --device cuda"
  "$PY" -m semid_fast.bench --device cuda --out "$OUT/bench" 2>&1 | tee "$OUT/bench.log"
  STATUS+=("bench=${PIPESTATUS[0]}")
fi

echo "exit status: ${STATUS[*]:-none}" | tee -a "$ENV_TXT"

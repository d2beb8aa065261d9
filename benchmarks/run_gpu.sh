#!/usr/bin/env bash
# The one script for a lent GPU machine (DESIGN.md, "Testing without a GPU"): a first contact
# that fits a fixed budget and brings back whatever it got to, even when a kernel faults or
# the time runs out.
#
#   OUT=DIR bash benchmarks/run_gpu.sh                   # build, GPU tests, quick bench (8 min)
#   OUT=DIR PLAN=bench-full bash benchmarks/run_gpu.sh   # a second command: the full benchmark
#
# Every step runs under `timeout`, within a global deadline (DEADLINE_S, default 480 s from
# the start); a step that would start with under 20 s left is recorded as skipped. As each
# step ends, a line "step=NAME rc=N seconds=S" is appended to $OUT/steps.txt and its log is
# packed into $OUT/logs.tgz, so a command killed at its limit still returns what finished.
# What comes back (at most 8 files): env.txt, steps.txt, logs.tgz (build log, one pytest log
# and junit XML per family, bench log) and bench/: semid_fast_bench.json (rewritten after each
# measured row, "complete": true once the bench finishes) and semid_fast_bench.png (at the
# end, or when `timeout` stops the bench: it writes what it measured on SIGTERM).
#
# GPU tests: one pytest per group of test files, all four at once (16 cores: Triton compiles
# in parallel processes), without -x, CUDA_LAUNCH_BLOCKING=1 so a faulting kernel is blamed on its own
# test, --junitxml and --durations. Set SKIP_BUILD=1 to use an installed semid_fast (the CPU
# dry run of tests/test_build.py does).
set -u
export PYTHONUNBUFFERED=1

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$REPO/gpu_results}"
PLAN="${PLAN:-first-contact}"
PY="${PYTHON:-python3}"
DEADLINE_S="${DEADLINE_S:-480}"
START=$(date +%s)
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
LOGS="$(mktemp -d)"  # logs live here and travel packed in $OUT/logs.tgz
# Python runs from an empty folder: from the repository root, `import semid_fast` would pick
# the source tree (which has no compiled _C) instead of the installed package.
SCRATCH="$(mktemp -d)"
trap 'rm -rf "$SCRATCH" "$LOGS"' EXIT
cd "$SCRATCH" || exit 1
: > "$OUT/steps.txt"

left() { echo $(( DEADLINE_S - ($(date +%s) - START) )); }

pack() {  # steps run concurrently: each packs to its own name, then renames (atomic)
  tar -czf "$OUT/logs.tgz.$BASHPID" -C "$LOGS" . && mv -f "$OUT/logs.tgz.$BASHPID" "$OUT/logs.tgz"
}

record() {  # name rc seconds
  echo "step=$1 rc=$2 seconds=$3" >> "$OUT/steps.txt"
  pack
}

step() {  # name budget_s command...: runs the command under timeout, logs to $LOGS/name.log
  local name="$1" budget="$2"
  shift 2
  local remaining
  remaining=$(left)
  (( budget > remaining - 10 )) && budget=$(( remaining - 10 ))
  if (( budget < 20 )); then
    record "$name" skipped 0
    return 1
  fi
  echo "== $name (at most ${budget} s): $*"
  local t0=$SECONDS
  timeout -k 10 "$budget" "$@" > "$LOGS/$name.log" 2>&1
  local rc=$?
  record "$name" "$rc" $(( SECONDS - t0 ))
  tail -n 3 "$LOGS/$name.log"
  return $rc
}

{
  echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "commit: $(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo 'unknown (no .git here)')"
  echo "plan: $PLAN, deadline ${DEADLINE_S} s"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 \
    || echo "nvidia-smi failed"
  nvcc --version 2>&1 | tail -n 2 || echo "nvcc not found"
  "$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "| torch",
    torch.__version__, "| torch CUDA", torch.version.cuda, "| GPU",
    torch.cuda.get_device_name() if torch.cuda.is_available() else None)' 2>&1
  "$PY" -c 'import triton; print("triton", triton.__version__)' 2>&1 || true
} > "$OUT/env.txt"

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  if ! step build 240 env SEMID_FAST_CUDA=ON SEMID_FAST_CUDA_ARCHS=90 \
       CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
       "$PY" -m pip install --no-build-isolation --no-deps "$REPO"; then
    echo "build failed; see build.log in $OUT/logs.tgz" | tee -a "$OUT/env.txt"
    exit 1
  fi
fi
step build-info 60 "$PY" -c '
import semid_fast
from semid_fast import _native
info = _native._build_info
print("semid_fast", semid_fast.__version__, "from", semid_fast.__file__)
print("build info:", {k: getattr(info, k) for k in dir(info) if k.isupper()} if info else None)
print("CUDA devices seen by _C_cuda:", _native.cuda_device_count())
print("available backends (cuda):", semid_fast.available_backends("cuda"))'
cat "$LOGS/build-info.log" >> "$OUT/env.txt"

if [[ "$PLAN" == first-contact ]]; then
  # One pytest per family, concurrently; each under its own timeout.
  families=("quantize kmeans sinkhorn interop" gumbel "trie hf" "longid e2e")
  budget=$(( $(left) - 150 ))  # keep about 2.5 minutes for the quick benchmark
  (( budget > 240 )) && budget=240
  pids=()
  for family in "${families[@]}"; do
    name="gpu-tests-${family%% *}"
    files=()
    for f in $family; do files+=("$REPO/tests/test_$f.py"); done
    CUDA_LAUNCH_BLOCKING=1 step "$name" "$budget" "$PY" -m pytest -m gpu "${files[@]}" -q \
      -p no:cacheprovider -rfE --durations=15 --continue-on-collection-errors \
      --junitxml="$LOGS/$name.xml" &
    pids+=($!)
  done
  wait "${pids[@]}"
  step bench-quick $(( $(left) - 10 )) "$PY" -m semid_fast.bench --device cuda --quick \
    --out "$OUT/bench"
elif [[ "$PLAN" == bench-full ]]; then
  step bench-full $(( $(left) - 10 )) "$PY" -m semid_fast.bench --device cuda --out "$OUT/bench"
else
  echo "unknown PLAN=$PLAN (first-contact or bench-full)" | tee -a "$OUT/env.txt"
  exit 2
fi

pack
echo "steps:"; cat "$OUT/steps.txt"

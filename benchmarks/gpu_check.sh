#!/usr/bin/env bash
# GPU check of the fused log-prob + entropy kernel (issue 7), in one go on a machine with a CUDA GPU:
# the GPU correctness tests (compiled, autotuned Triton kernels vs float64) and the benchmark table.
#
#   bash benchmarks/gpu_check.sh            # from the repository root; ~2-4 minutes on one H100
#
# Works without installing agentrl: if `import agentrl.kernels` fails (a bare machine without the project's
# dependencies), it imports the kernels through a throw-away package shim. Results land in
# benchmarks/results/logprob_entropy_cuda.json, and under $OUT too when $OUT is set (a log included).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT_DIR=${OUT:-benchmarks/results}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET

if ! "$PY" -P -c "import agentrl.kernels" 2>/dev/null; then
    shim=$(mktemp -d)
    mkdir -p "$shim/agentrl"
    : > "$shim/agentrl/__init__.py"
    ln -s "$PWD/kernels" "$shim/agentrl/kernels"
    export PYTHONPATH="$shim${PYTHONPATH:+:$PYTHONPATH}"
    echo "agentrl not importable: using the shim at $shim"
fi
if [ -z "${AGENTRL_GIT_SHA:-}" ]; then
    AGENTRL_GIT_SHA=$(git rev-parse HEAD 2>/dev/null || echo unknown)
    export AGENTRL_GIT_SHA
fi

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    "$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
    # -P keeps the repository root off sys.path (its agentrl/ would shadow the shim); --noconftest: the
    # project's conftest needs the full dependency set and would set TRITON_INTERPRET on a bare machine.
    # Correctness with one fixed tiling (autotuning every test shape would spend minutes compiling); the
    # benchmark then autotunes and checks the tuned kernels against float64 in its accuracy rows.
    AGENTRL_TRITON_AUTOTUNE=0 "$PY" -P -m pytest tests/test_kernels.py -q -m gpu --noconftest -p no:cacheprovider \
        --timeout 600
    tests_rc=$?
    "$PY" benchmarks/logprob_entropy.py
    bench_rc=$?
    echo "gpu tests rc=$tests_rc, benchmark rc=$bench_rc"
    [ "$tests_rc" = 0 ] && [ "$bench_rc" = 0 ]
} 2>&1 | tee "$OUT_DIR/gpu_check.log"
exit "${PIPESTATUS[0]}"

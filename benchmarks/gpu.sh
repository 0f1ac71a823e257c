#!/usr/bin/env bash
# Capture benchmark on a lent NVIDIA GPU (H200): our capture vs a bare forward, plus store ingest.
#
# For a machine that gets a copy of this repo but not its venv, and has no internet beyond what we
# carry. Uses the machine's own torch when it sees CUDA; otherwise (and for any missing
# dependency) installs from benchmarks/wheels/ if that folder exists, never upgrading torch.
# Workload: random-init Qwen3-MoE dims (hidden 2048, 48 experts, top-8, moe_intermediate 768,
# vocab 32000, 16 heads × 128, 4 kv heads), 4 MoE layers, 512 prompts × 128 tokens, batch 32,
# bfloat16; baselines skipped (--only-ours). Output: $OUT/gpu.txt. Budget: < 5 minutes.
#
#   OUT=/tmp/out bash benchmarks/gpu.sh
set -uo pipefail

cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/benchmarks/out}"
mkdir -p "$OUT"
LOG="$OUT/gpu.txt"
PY="${PYTHON:-python3}"
WHEELS="$PWD/benchmarks/wheels"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PIP_DISABLE_PIP_VERSION_CHECK=1

say() { echo "$*" | tee -a "$LOG"; }
: >"$LOG"
say "# gpu.sh $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$LOG"

pip_install() {  # pip_install PKG... : from benchmarks/wheels if present, else the default index
  if [ -d "$WHEELS" ]; then
    "$PY" -m pip install -q --no-index --find-links "$WHEELS" "$@" 2>&1 | tail -5 | tee -a "$LOG"
  else
    "$PY" -m pip install -q "$@" 2>&1 | tail -5 | tee -a "$LOG"
  fi
}

# 1. torch with CUDA: the machine's own if it works, else from benchmarks/wheels/
if ! "$PY" -c 'import torch, sys; print("torch", torch.__version__, "cuda", torch.cuda.is_available()); sys.exit(0 if torch.cuda.is_available() else 1)' 2>&1 | tee -a "$LOG"; then
  if [ -d "$WHEELS" ]; then
    say "# no CUDA torch: installing torch from $WHEELS"
    pip_install torch
  else
    say "# FAILED: torch with CUDA is not importable and there is no $WHEELS to install it from"
    exit 1
  fi
  "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' || { say "# FAILED: still no CUDA torch"; exit 1; }
fi

# 2. the rest of what --only-ours imports, without touching torch
if ! "$PY" -c 'import transformers, tokenizers, safetensors, duckdb, polars, pyarrow, numpy, rich' 2>/dev/null; then
  TORCH_VERSION=$("$PY" -c 'import torch; print(torch.__version__)')
  echo "torch==$TORCH_VERSION" >"$OUT/constraints.txt"
  say "# installing missing dependencies (torch pinned to $TORCH_VERSION)"
  pip_install -c "$OUT/constraints.txt" "transformers>=5,<6" tokenizers safetensors "duckdb>=1.2" polars pyarrow numpy rich
  "$PY" -c 'import transformers, tokenizers, safetensors, duckdb, polars, pyarrow, numpy, rich' 2>&1 | tee -a "$LOG" \
    || { say "# FAILED: dependencies missing (put wheels in benchmarks/wheels/)"; exit 1; }
fi
"$PY" -c 'import torch, transformers, duckdb, polars; print("# versions: torch", torch.__version__, "transformers", transformers.__version__, "duckdb", duckdb.__version__, "polars", polars.__version__)' | tee -a "$LOG"

# 3. the benchmark (hard limit 270 s so the whole script stays under 5 minutes)
timeout 270 "$PY" benchmarks/capture.py \
  --device cuda --dtype bfloat16 --model-type qwen3_moe \
  --hidden 2048 --experts 48 --top-k 8 --layers 4 --moe-intermediate 768 --vocab 32000 \
  --heads 16 --kv-heads 4 --prompts 512 --tokens 128 --batch-size 32 --repeats 3 \
  --only-ours --workdir "${TMPDIR:-/tmp}/wb-bench-gpu" 2>&1 | tee -a "$LOG"
rc=${PIPESTATUS[0]}
say "# exit status $rc"
exit "$rc"

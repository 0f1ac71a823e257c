#!/usr/bin/env bash
# GPU check on a lent machine whose image has CUDA torch + transformers but no duckdb:
# carry .whl/ (duckdb wheel for cp312) and run this from the repo root with $OUT set.
# 1. the CLI captures on CUDA in bf16 with expert stats; 2. the capture benchmark at realistic size.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, transformers, duckdb; print('torch', torch.__version__, 'transformers', transformers.__version__, 'duckdb', duckdb.__version__)"
  rm -f /tmp/g.duckdb
  timeout 150 python3 -m workbench.cli capture --model tiny:qwen3_moe --probe probes/domains.jsonl --db /tmp/g.duckdb \
    --device cuda --dtype bfloat16 --expert-stats --batch-size 64 --quiet
  python3 - <<'PY'
import duckdb
c = duckdb.connect("/tmp/g.duckdb", read_only=True)
print("runs", c.sql("select run_id, status, config->>'$.options.device', config->>'$.options.dtype' from runs").fetchall())
print("routing rows, with logits", c.sql("select count(*), count(logits) from routing").fetchall())
print("expert_stats rows", c.sql("select count(*), avg(out_norm), avg(zero_frac) from expert_stats").fetchall())
PY
  timeout 330 python3 benchmarks/capture.py --device cuda --dtype bfloat16 --model-type qwen3_moe --hidden 2048 \
    --experts 48 --top-k 8 --layers 4 --moe-intermediate 768 --vocab 32000 --heads 16 --kv-heads 4 \
    --prompts 4096 --tokens 128 --batch-size 64 --repeats 2 --only-ours --skip-ingest
} 2>&1 | tee "$OUT/gpu.txt"

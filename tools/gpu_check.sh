#!/usr/bin/env bash
# GPU readiness check (issue 17, item 5): data-wait fraction of MiniLM (batch 256) and a
# GPT-2-small LM (seq 1024) trained in bf16 on one GPU, on-the-fly and pre-tokenized shards.
#   tools/gpu_check.sh [--json gpu.json] [--num-workers K]    # on a CUDA machine
#   tools/gpu_check.sh --device cpu --smoke                    # the CPU smoke run
# Options: .venv/bin/python -m tools.gpu_check --help
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "$root/.venv/bin/python" -m tools.gpu_check "$@"

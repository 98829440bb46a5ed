#!/usr/bin/env bash
# Train CLLM4Rec with DeepSpeed ZeRO-3 on one node: one rank per GPU (CPU ranks over gloo where the
# node has no GPU). Everything after NUM_RANKS goes to `cllm4rec train`.
#
#   scripts/deepspeed_single_node.sh 8 --recipe paper name=paper-8gpu
#   scripts/deepspeed_single_node.sh 8 --recipe paper name=paper-8gpu --resume      # after a crash
#   scripts/deepspeed_single_node.sh 2 --recipe quick distributed.ds_config=zero3_cpu model.dtype=float32
#
# Environment: PYTHON (default .venv/bin/python), MASTER_PORT (default 29500).
set -euo pipefail
ranks=${1:?usage: $0 NUM_RANKS [cllm4rec train arguments...]}
shift
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" -m deepspeed.launcher.runner \
    --num_gpus "$ranks" --master_port "${MASTER_PORT:-29500}" \
    --module --no_local_rank trainer "$@"

#!/usr/bin/env bash
# Train CLLM4Rec with DeepSpeed ZeRO-3 across nodes. Run on the first host of HOSTFILE; the launcher
# reaches the others over passwordless ssh (pdsh). Every node needs this repository and its .venv at
# the same path, and output_dir on a filesystem all nodes share (ranks write their optimizer
# partitions into one checkpoint folder). Everything after HOSTFILE goes to `cllm4rec train`.
#
#   scripts/deepspeed_multi_node.sh scripts/hostfile.example --recipe paper name=paper-2x8 \
#       output_dir=/shared/runs/{name} data.dataset=/shared/datasets/amazon-beauty
#
# Variables the ranks need (CLLM4REC_CACHE, MLFLOW_TRACKING_URI, NCCL_*) go in ./.deepspeed_env, one
# NAME=value per line: the launcher exports them on every node.
# Environment: PYTHON (default .venv/bin/python), MASTER_ADDR (default: this host), MASTER_PORT (29500).
set -euo pipefail
hostfile=${1:?usage: $0 HOSTFILE [cllm4rec train arguments...]}
shift
[[ -f "$hostfile" ]] || { echo "$0: hostfile $hostfile not found" >&2; exit 2; }
hostfile=$(realpath "$hostfile")
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" -m deepspeed.launcher.runner \
    --hostfile "$hostfile" --master_addr "${MASTER_ADDR:-$(hostname -I | awk '{print $1}')}" \
    --master_port "${MASTER_PORT:-29500}" \
    --module --no_local_rank trainer "$@"

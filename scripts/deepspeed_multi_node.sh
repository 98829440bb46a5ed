#!/usr/bin/env bash
# Train CLLM4Rec with DeepSpeed ZeRO-3 across nodes. Run on the first host of HOSTFILE; the launcher
# reaches the others over passwordless ssh (pdsh). Every node needs this repository and its .venv at
# the same path, and output_dir on a filesystem all nodes share (ranks write their optimizer
# partitions into one checkpoint folder). Everything after HOSTFILE goes to `cllm4rec train`.
#
#   scripts/deepspeed_multi_node.sh scripts/hostfile.example --recipe paper name=paper-2x8 \
#       output_dir=/shared/runs/{name} data.dataset=/shared/datasets/amazon-beauty
#   scripts/deepspeed_multi_node.sh --print-master-addr HOSTFILE   # print the MASTER_ADDR it would use, exit
#
# Variables the ranks need (CLLM4REC_CACHE, MLFLOW_TRACKING_URI, NCCL_*) go in ./.deepspeed_env, one
# NAME=value per line: the launcher exports them on every node.
# Environment: PYTHON (default .venv/bin/python), MASTER_PORT (default 29500), MASTER_ADDR: the address
# the other nodes reach rank 0 (the first host) at. When MASTER_ADDR is unset: the source address of
# this host's route to the first host of HOSTFILE (`ip route get ADDRESS`, its `src`; a host name is
# resolved with `getent ahostsv4`, then `getent hosts`). The script stops, asking for MASTER_ADDR, when
# that fails or gives a loopback address while HOSTFILE names more than one host.
set -euo pipefail
usage="usage: $0 [--print-master-addr] HOSTFILE [cllm4rec train arguments...]"

master_addr() {  # HOSTFILE -> the address rank 0 listens on, or exit 2 with what to set
    if [[ -n "${MASTER_ADDR:-}" ]]; then
        echo "$MASTER_ADDR"
        return
    fi
    local hosts host ip src
    hosts=$(awk '$1 !~ /^#/ && NF {print $1}' "$1")
    host=$(head -n 1 <<< "$hosts")
    [[ -n "$host" ]] || { echo "$0: $1 names no host" >&2; exit 2; }
    if [[ "$host" =~ ^[0-9.]+$ || "$host" == *:* ]]; then
        ip=$host
    else
        ip=$({ getent ahostsv4 "$host" || getent hosts "$host"; } 2>/dev/null | awk '{print $1; exit}') || true
    fi
    src=$(ip route get "${ip:-unresolved}" 2>/dev/null \
          | awk '{for (i = 1; i < NF; i++) if ($i == "src") {print $(i + 1); exit}}') || true
    if [[ -z "$src" ]]; then
        echo "$0: cannot tell the address of the route to the first host $host (${ip:-not resolved}):" \
             "set MASTER_ADDR to the address the other nodes reach $host at" >&2
        exit 2
    fi
    if [[ "$src" =~ ^127\.|^::1$ ]] && (( $(wc -l <<< "$hosts") > 1 )); then
        echo "$0: the route to the first host $host gives the loopback address $src, which the other hosts" \
             "cannot reach: set MASTER_ADDR to the address they reach $host at" >&2
        exit 2
    fi
    echo "$src"
}

print_only=false
if [[ "${1:-}" == --print-master-addr ]]; then
    print_only=true
    shift
fi
hostfile=${1:?$usage}
shift
[[ -f "$hostfile" ]] || { echo "$0: hostfile $hostfile not found" >&2; exit 2; }
hostfile=$(realpath "$hostfile")
addr=$(master_addr "$hostfile")
if $print_only; then
    echo "$addr"
    exit 0
fi
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" -m deepspeed.launcher.runner \
    --hostfile "$hostfile" --master_addr "$addr" \
    --master_port "${MASTER_PORT:-29500}" \
    --module --no_local_rank trainer "$@"

#!/usr/bin/env bash
# Train CLLM4Rec with DeepSpeed ZeRO-3 across nodes. Every node needs this repository and its .venv at
# the same path, and output_dir on a filesystem all nodes share (ranks write their optimizer
# partitions into one checkpoint folder). Everything after HOSTFILE goes to `cllm4rec train`.
#
# With ssh: run it on the first host of HOSTFILE; the launcher reaches the others over passwordless
# ssh (pdsh) and exports the variables of ./.deepspeed_env (CLLM4REC_CACHE, MLFLOW_TRACKING_URI,
# NCCL_*; one NAME=value per line) on every node.
#
#   scripts/deepspeed_multi_node.sh scripts/hostfile.example --recipe paper name=paper-2x8 \
#       output_dir=/shared/runs/{name} data.dataset=/shared/datasets/amazon-beauty
#   scripts/deepspeed_multi_node.sh --print-master-addr HOSTFILE   # print the MASTER_ADDR it would use, exit
#
# Without ssh (--no-ssh --node-rank N): run the same command on every host of HOSTFILE, with N its line
# among the hosts (0 on the first host); each starts that host's ranks only, which inherit its shell's
# environment (.deepspeed_env is not read). The ranks wait for each other at MASTER_ADDR:MASTER_PORT.
#
#   scripts/deepspeed_multi_node.sh --no-ssh --node-rank 1 HOSTFILE --recipe paper name=paper-2x8 ...
#
# Environment: PYTHON (default .venv/bin/python), MASTER_PORT (default 29500), MASTER_ADDR: the address
# the other nodes reach rank 0 (the first host) at. When MASTER_ADDR is unset, with ssh: the source
# address of this host's route to the first host of HOSTFILE (`ip route get ADDRESS`, its `src`);
# without ssh: the first host's address itself, as this node resolves it. A host name is resolved with
# `getent ahostsv4`, then `getent hosts`. The script stops, asking for MASTER_ADDR, when that fails or
# gives a loopback address while HOSTFILE names more than one host.
set -euo pipefail
usage="usage: $0 [--print-master-addr] [--no-ssh --node-rank N] HOSTFILE [cllm4rec train arguments...]"

hosts_of() {  # HOSTFILE -> its hosts, one a line
    awk '$1 !~ /^#/ && NF {print $1}' "$1"
}

resolve() {  # HOST -> its address (a numeric one as written), nothing when it does not resolve
    if [[ "$1" =~ ^[0-9.]+$ || "$1" == *:* ]]; then
        echo "$1"
    else
        { getent ahostsv4 "$1" || getent hosts "$1"; } 2>/dev/null | awk '{print $1; exit}' || true
    fi
}

route_source() {  # ADDRESS -> the source address of this host's route to it, nothing when there is none
    ip route get "${1:-unresolved}" 2>/dev/null \
        | awk '{for (i = 1; i < NF; i++) if ($i == "src") {print $(i + 1); exit}}' || true
}

master_addr() {  # HOSTFILE NO_SSH -> the address rank 0 listens on, or exit 2 with what to set
    if [[ -n "${MASTER_ADDR:-}" ]]; then
        echo "$MASTER_ADDR"
        return
    fi
    local hosts host ip addr
    hosts=$(hosts_of "$1")
    host=$(head -n 1 <<< "$hosts")
    [[ -n "$host" ]] || { echo "$0: $1 names no host" >&2; exit 2; }
    ip=$(resolve "$host")
    if $2; then addr=$ip; else addr=$(route_source "$ip"); fi
    if [[ -z "$addr" ]]; then
        echo "$0: cannot tell the address of the first host $host (${ip:-not resolved}):" \
             "set MASTER_ADDR to the address the other nodes reach $host at" >&2
        exit 2
    fi
    if [[ "$addr" =~ ^127\.|^::1$ ]] && (( $(wc -l <<< "$hosts") > 1 )); then
        echo "$0: the first host $host gives the loopback address $addr, which the other hosts" \
             "cannot reach: set MASTER_ADDR to the address they reach $host at" >&2
        exit 2
    fi
    echo "$addr"
}

check_node_rank() {  # HOSTFILE NODE_RANK -> exit 2 unless NODE_RANK numbers one of its hosts
    local count
    count=$(hosts_of "$1" | wc -l)
    if ! [[ "$2" =~ ^[0-9]+$ ]] || (( 10#$2 >= count )); then
        echo "$0: --node-rank must be 0 to $((count - 1)) ($1 names $count hosts), not '$2'" >&2
        exit 2
    fi
}

print_only=false
no_ssh=false
node_rank=""
while [[ "${1:-}" == --* ]]; do
    case $1 in
        --print-master-addr) print_only=true; shift ;;
        --no-ssh) no_ssh=true; shift ;;
        --node-rank) node_rank=${2:?$usage}; shift 2 ;;
        *) echo "$usage" >&2; exit 2 ;;
    esac
done
if [[ ($no_ssh == true && -z "$node_rank") || ($no_ssh == false && -n "$node_rank") ]]; then
    echo "$0: --no-ssh and --node-rank N go together" >&2
    exit 2
fi
hostfile=${1:?$usage}
shift
[[ -f "$hostfile" ]] || { echo "$0: hostfile $hostfile not found" >&2; exit 2; }
hostfile=$(realpath "$hostfile")
launch=()
if $no_ssh; then
    check_node_rank "$hostfile" "$node_rank"
    launch=(--no_ssh --node_rank "$node_rank")
fi
addr=$(master_addr "$hostfile" "$no_ssh")
if $print_only; then
    echo "$addr"
    exit 0
fi
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" -m deepspeed.launcher.runner \
    --hostfile "$hostfile" --master_addr "$addr" \
    --master_port "${MASTER_PORT:-29500}" "${launch[@]}" \
    --module --no_local_rank trainer "$@"

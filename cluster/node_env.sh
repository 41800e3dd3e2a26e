#!/usr/bin/env bash
# Write ~/.wsss/env.sh on a cluster node and source it from ~/.bashrc, which the Ray cluster
# launcher sources before every command it runs (setup, `ray start`, `ray submit`, `ray exec`).
#
#   WSSS_MLFLOW_PORT=5000 WSSS_TUNE_STORAGE=s3://bucket/ray WSSS_MLFLOW_ARTIFACTS=s3://bucket/mlflow \
#       bash ~/src/wsss/cluster/node_env.sh ~/wsss-venv
#
# The head's address is $RAY_HEAD_IP on workers (the launcher sets it for their setup commands);
# on the head it is the address Ray advertises for the node (its private IP).
set -euo pipefail

venv=${1:?usage: node_env.sh VENV}
venv=$(cd "$venv" && pwd)
port=${WSSS_MLFLOW_PORT:-5000}
head_ip=${RAY_HEAD_IP:-$("$venv/bin/python" -c 'import ray; print(ray.util.get_node_ip_address())')}

mkdir -p ~/.wsss
cat > ~/.wsss/env.sh.tmp <<ENV
# Written by wsss/cluster/node_env.sh; sourced from ~/.bashrc.
export PATH="$venv/bin:\$PATH"
export RAY_ADDRESS=auto
export WSSS_HEAD_IP=$head_ip
export MLFLOW_TRACKING_URI=http://$head_ip:$port
export WSSS_STORAGE_PATH=${WSSS_TUNE_STORAGE:-}
export WSSS_MLFLOW_ARTIFACTS=${WSSS_MLFLOW_ARTIFACTS:-}
# Ray's workers at normal priority (Ray's default, niceness 15, lets any other busy process on
# a shared node starve them; wsss.ray_utils does the same for local instances).
export RAY_worker_niceness=0
ENV
mv ~/.wsss/env.sh.tmp ~/.wsss/env.sh
line='[ -f ~/.wsss/env.sh ] && source ~/.wsss/env.sh'
grep -qxF "$line" ~/.bashrc 2>/dev/null || echo "$line" >> ~/.bashrc
echo "node env: MLFLOW_TRACKING_URI=http://$head_ip:$port WSSS_STORAGE_PATH=${WSSS_TUNE_STORAGE:-}"

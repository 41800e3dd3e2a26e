#!/usr/bin/env bash
# Start (or restart) the MLflow tracking server on the head, bound to the head's private address
# only; `stop` stops it. Reads ~/.wsss/env.sh (see node_env.sh). Runs, database and log live in
# ~/.wsss/mlflow; artifacts go to $WSSS_MLFLOW_ARTIFACTS (s3://... or a folder on the head),
# served through the server, so nodes need no storage credentials of their own for MLflow.
set -euo pipefail

source ~/.wsss/env.sh
dir=~/.wsss/mlflow
pidfile=$dir/server.pid
port=${MLFLOW_TRACKING_URI##*:}
mkdir -p "$dir"

if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    kill -- -"$(cat "$pidfile")" 2>/dev/null || kill "$(cat "$pidfile")"
    while kill -0 "$(cat "$pidfile")" 2>/dev/null; do sleep 0.5; done
fi
rm -f "$pidfile"
[ "${1:-start}" = stop ] && { echo "mlflow server stopped"; exit 0; }

artifacts=${WSSS_MLFLOW_ARTIFACTS:-$dir/artifacts}
hosts="$WSSS_HEAD_IP,$WSSS_HEAD_IP:$port,localhost,localhost:$port,127.0.0.1,127.0.0.1:$port"
setsid nohup mlflow server --host "$WSSS_HEAD_IP" --port "$port" --workers 1 \
    --backend-store-uri "sqlite:///$dir/mlflow.db" --artifacts-destination "$artifacts" \
    --allowed-hosts "$hosts" > "$dir/server.log" 2>&1 < /dev/null &
echo $! > "$pidfile"

for _ in $(seq 180); do
    if python -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \
        "$MLFLOW_TRACKING_URI/health" 2>/dev/null; then
        echo "mlflow server at $MLFLOW_TRACKING_URI (artifacts: $artifacts, log: $dir/server.log)"
        exit 0
    fi
    kill -0 "$(cat "$pidfile")" 2>/dev/null || break
    sleep 1
done
echo "mlflow server did not come up; last lines of $dir/server.log:" >&2
tail -n 30 "$dir/server.log" >&2
exit 1

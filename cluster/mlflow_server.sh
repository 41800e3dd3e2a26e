#!/usr/bin/env bash
# The MLflow tracking server of the head, bound to the head's private address only.
#
#   mlflow_server.sh start   # (re)start it in the background
#   mlflow_server.sh wait    # wait until it answers (start it before `ray start`, wait after)
#   mlflow_server.sh stop
#
# Reads ~/.wsss/env.sh (see node_env.sh): it listens on $WSSS_HEAD_IP at the port of
# $MLFLOW_TRACKING_URI. Without them (no env.sh) it listens on 127.0.0.1:5000, this machine
# only, never on every interface. The database and the log live in ~/.wsss/mlflow;
# artifacts go to $WSSS_MLFLOW_ARTIFACTS (s3://... or, by default, a folder on the head) through
# the server, so nodes need no storage credentials of their own for MLflow.
set -euo pipefail

if [ -f ~/.wsss/env.sh ]; then source ~/.wsss/env.sh; fi
host=${WSSS_HEAD_IP:-127.0.0.1}
uri=${MLFLOW_TRACKING_URI:-http://$host:5000}
dir=~/.wsss/mlflow
pidfile=$dir/server.pid
port=${uri##*:}
mkdir -p "$dir"

stop_server() {
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        kill -- -"$(cat "$pidfile")" 2>/dev/null || kill "$(cat "$pidfile")"
        while kill -0 "$(cat "$pidfile")" 2>/dev/null; do sleep 0.5; done
    fi
    rm -f "$pidfile"
}

start_server() {
    stop_server
    local artifacts=${WSSS_MLFLOW_ARTIFACTS:-$dir/artifacts}
    local hosts="$host,$host:$port,localhost,localhost:$port,127.0.0.1,127.0.0.1:$port"
    # One worker: uvicorn's supervisor restarts workers that answer its pings late. No job
    # runners (MLflow's background jobs): this server only records runs.
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false setsid nohup mlflow server --host "$host" --port "$port" --workers 1 \
        --backend-store-uri "sqlite:///$dir/mlflow.db" --artifacts-destination "$artifacts" \
        --allowed-hosts "$hosts" > "$dir/server.log" 2>&1 < /dev/null &
    echo $! > "$pidfile"
    echo "mlflow server starting at $uri (artifacts: $artifacts)"
}

wait_for_server() {
    for _ in $(seq 300); do
        if python -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \
            "$uri/health" 2>/dev/null; then
            echo "mlflow server at $uri (log: $dir/server.log)"
            return 0
        fi
        [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null || break
        sleep 1
    done
    echo "mlflow server did not come up; last lines of $dir/server.log:" >&2
    tail -n 30 "$dir/server.log" >&2
    return 1
}

case "${1:-}" in
    start) start_server ;;
    wait) wait_for_server ;;
    stop) stop_server; echo "mlflow server stopped" ;;
    *) echo "usage: mlflow_server.sh start|wait|stop" >&2; exit 2 ;;
esac

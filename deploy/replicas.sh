#!/usr/bin/env bash
# Two read-only replicas of one index directory behind nginx, on one host standing in for two
# machines: `coins serve --follow` on ports PORT_A and PORT_B, nginx on PORT balancing them
# round robin and retrying the other replica on errors (deploy/nginx.conf.template).
#
#   deploy/replicas.sh INDEX_DIR MODEL.onnx [extra `coins serve` flags...]
#
# Environment: PORT (nginx, default 8080), PORT_A / PORT_B (replicas, 8001 / 8002), HOST (nginx
# bind address, 127.0.0.1), COINS (the command, default `coins`), RUN_DIR (nginx configuration,
# logs and temporary files; default a new temporary folder), FOLLOW_INTERVAL (seconds, 1).
#
# The replicas never write: the directory's one writer (`coins index compact`, or one server
# with an API key and no --follow) commits new generations, and each replica swaps them in
# within FOLLOW_INTERVAL seconds plus a load. Runs in the foreground; Ctrl-C or SIGTERM stops
# nginx and both replicas.
#
# A replica that dies (a crash, kill -9, out of memory) is restarted after RESTART_DELAY
# seconds (default 1) by its own supervising loop, with its death and restart logged on stderr;
# meanwhile nginx sends its requests to the other replica, retrying there the ones refused.
# Only nginx's own exit ends the deployment. A replica that dies more than MAX_RESTARTS times
# (default 10) within a minute is left down and said so (its log names why).
set -euo pipefail

if [[ $# -lt 2 ]]; then
    echo "usage: $0 INDEX_DIR MODEL.onnx [coins serve flags...]" >&2
    exit 2
fi
INDEX_DIR=$1
MODEL=$2
shift 2
PORT=${PORT:-8080}
PORT_A=${PORT_A:-8001}
PORT_B=${PORT_B:-8002}
HOST=${HOST:-127.0.0.1}
COINS=${COINS:-coins}
FOLLOW_INTERVAL=${FOLLOW_INTERVAL:-1}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

command -v nginx >/dev/null || {
    echo "$0: nginx not found; expected it on PATH (Debian: apt-get install -y nginx)" >&2
    exit 1
}
[[ -f $INDEX_DIR/index.json ]] || { echo "$0: expected an index at $INDEX_DIR" >&2; exit 1; }
[[ -f $MODEL ]] || { echo "$0: expected an ONNX model at $MODEL" >&2; exit 1; }

RUN_DIR=${RUN_DIR:-$(mktemp -d -t coins-replicas.XXXXXX)}
mkdir -p "$RUN_DIR"
RUN_DIR=$(cd "$RUN_DIR" && pwd)
chmod 755 "$RUN_DIR"  # nginx's workers (user nobody when started as root) write temp files

pids=()
stop() {
    trap - EXIT INT TERM
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
}
trap stop EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

log() { echo "$(date -u +%FT%TZ) $0: $*" >&2; }

# Run one replica for as long as the deployment runs: restart it whenever it exits.
supervise() {
    local port=$1 child= status deaths=() now
    trap '[[ -n $child ]] && kill -TERM "$child" 2>/dev/null; wait 2>/dev/null; exit 0' TERM
    while true; do
        # shellcheck disable=SC2086  # COINS may be a command with arguments
        $COINS serve "$INDEX_DIR" --model "$MODEL" --follow --follow-interval "$FOLLOW_INTERVAL" \
            --host 127.0.0.1 --port "$port" "${SERVE_FLAGS[@]}" >>"$RUN_DIR/replica-$port.log" 2>&1 &
        child=$!
        log "replica :$port started (pid $child)"
        status=0
        wait "$child" || status=$?
        now=$(date +%s)
        deaths=("$now" "${deaths[@]:0:$MAX_RESTARTS}")
        log "replica :$port (pid $child) exited with status $status; see $RUN_DIR/replica-$port.log"
        if (( ${#deaths[@]} > MAX_RESTARTS && now - deaths[MAX_RESTARTS] < 60 )); then
            log "replica :$port died $((MAX_RESTARTS + 1)) times in a minute; leaving it down"
            return 1
        fi
        sleep "$RESTART_DELAY"
        log "restarting replica :$port"
    done
}

SERVE_FLAGS=("$@")
RESTART_DELAY=${RESTART_DELAY:-1}
MAX_RESTARTS=${MAX_RESTARTS:-10}
for port in "$PORT_A" "$PORT_B"; do
    supervise "$port" &
    pids+=($!)
done

sed -e "s|@RUN_DIR@|$RUN_DIR|g" -e "s|@HOST@|$HOST|g" -e "s|@PORT@|$PORT|g" \
    -e "s|@PORT_A@|$PORT_A|g" -e "s|@PORT_B@|$PORT_B|g" \
    "$HERE/nginx.conf.template" >"$RUN_DIR/nginx.conf"
nginx -p "$RUN_DIR" -e "$RUN_DIR/error.log" -c "$RUN_DIR/nginx.conf" -t -q
nginx -p "$RUN_DIR" -e "$RUN_DIR/error.log" -c "$RUN_DIR/nginx.conf" &
nginx_pid=$!
pids+=("$nginx_pid")
echo "replicas on 127.0.0.1:$PORT_A and :$PORT_B (logs in $RUN_DIR), nginx on $HOST:$PORT"

# nginx is the deployment's front door: its exit ends the deployment (a replica's does not)
status=0
wait "$nginx_pid" || status=$?
log "nginx exited with status $status; stopping the replicas"
exit 1

#!/usr/bin/env bash
# The side-by-side runs behind BENCHMARKS.md: this project's chat server and
# redis-server, each pinned to CPU 0, loaded by chat-bench pinned to CPU 1, on loopback.
# Each shape runs RUNS times (default 3) per server; every run's figures are printed,
# the median is taken by hand (or by the summary at the end).
#
#   scripts/bench.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-3}"
B=target/release
cargo build --release -q -p chat -p chat-bench
TMP="$(mktemp -d)"
trap 'pkill -f "chat-server --listen 127.0.0.1:1900" || true; pkill -f "redis-server.*1900" || true; rm -rf "$TMP"' EXIT

chat_up() {
    rm -rf "$TMP/data"; mkdir -p "$TMP/data"
    # Cheap hashing for the fan-out and idle shapes (they measure delivery, not
    # logins); no rate limits (the bench is one address sending flat out).
    taskset -c 0 $B/chat-server --listen 127.0.0.1:19001 --data "$TMP/data" \
        --argon2-memory-kib 64 --argon2-passes 1 --msg-rate 0 --login-rate 0 \
        --log-level warn "$@" 2>"$TMP/server.log" &
    SERVER=$!
    until ss -ltn | grep -q ":19001 "; do sleep 0.05; done
}
redis_up() {
    taskset -c 0 redis-server --port 19002 --bind 127.0.0.1 --save "" --appendonly no \
        --maxclients 60000 >/dev/null 2>&1 &
    SERVER=$!
    until redis-cli -p 19002 ping >/dev/null 2>&1; do sleep 0.05; done
}
down() { kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; }
bench() { taskset -c 1 $B/chat-bench "$@"; }

for run in $(seq "$RUNS"); do
    for shape in "100 10" "100 1" "1000 10" "1000 1"; do
        set -- $shape
        echo "### run $run fanout N=$1 P=$2"
        chat_up;  bench fanout --target chat  --addr 127.0.0.1:19001 -n "$1" -p "$2" -d 5; down
        redis_up; bench fanout --target redis --addr 127.0.0.1:19002 -n "$1" -p "$2" -d 5; down
    done
    echo "### run $run latency at half of the saturated rate, N=100 P=10"
    chat_up;  bench fanout --target chat  --addr 127.0.0.1:19001 -n 100 -p 10 --rate "${HALF_RATE:-40000}" -d 5; down
    redis_up; bench fanout --target redis --addr 127.0.0.1:19002 -n 100 -p 10 --rate "${HALF_RATE:-40000}" -d 5; down
    echo "### run $run idle C=10000"
    chat_up;  bench idle --target chat  --addr 127.0.0.1:19001 -c 10000 --server-pid "$SERVER"; down
    redis_up; bench idle --target redis --addr 127.0.0.1:19002 -c 10000 --server-pid "$SERVER"; down
    echo "### run $run login storm K=1000 (default argon2id) during a fan-out at 5000 msg/s"
    rm -rf "$TMP/data"; mkdir -p "$TMP/data"
    taskset -c 0 $B/chat-server --listen 127.0.0.1:19001 --data "$TMP/data" \
        --msg-rate 0 --login-rate 0 --log-level warn 2>"$TMP/server.log" &
    SERVER=$!
    until ss -ltn | grep -q ':19001 '; do sleep 0.05; done
    bench login-storm --addr 127.0.0.1:19001 -n 100 -p 10 --rate 5000 -d 3 -k 1000 2>/dev/null; down
done

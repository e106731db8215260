#!/usr/bin/env bash
# The side-by-side runs behind BENCHMARKS.md: this project's chat server and
# redis-server, each pinned to CPU 0, loaded by chat-bench pinned to CPU 1, on loopback.
# Each shape runs RUNS times (default 3) per server; every run's figures are printed,
# and at the end scripts/bench_summary.py prints each figure's median (python3).
#
#   scripts/bench.sh [RUNS]
#
# HALF_RATE (msg/s, default 50000) is the fixed rate of the latency shape: about half
# of this server's saturated rate at N=100, P=10. RECONNECT=1 adds, once at the end, the
# reconnect storm: 10,000 registered users logging back in at once (about 10 minutes).
# BASELINE=path/to/an/older/chat-server runs every chat shape against that binary too,
# right after this one (reported as target "baseline"): a before/after in one run.
# CLUSTER=1 adds the light-load shape on one node, on two nodes sharing one Redis (half
# the receivers on each) and on Redis pub/sub alone. MAIN=0 skips the usual shapes;
# FANOUT_ONLY=1 keeps only the four saturated fan-out shapes of them. LIGHT=1 adds the
# light-load shapes: 2,000 msg/s from 10 publishers to 100 receivers (for the chat also
# with the publishers logged in first), and one publisher whose window of 8 is counted
# at delivery (to every receiver), N=100 and N=1000.
# STORM10K=1 adds 10,000 users (cheap hashing) logging in at once and staying, with the
# server's CPU per login and its peak memory during the storm against after it: as this
# project's clients log in (compact presence) and as the seed's do, with the background
# chat at 1 msg/s and at 10, and that chat's cost by itself against Redis's. TLS=1
# adds plain against TLS on one server (both listeners open, a certificate made with
# openssl for the run): saturated fan-out, light-load latency and idle memory, each over
# the plain port then over the TLS port (reported as target "chat-tls").
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-3}"
B="${CARGO_TARGET_DIR:-target}/release"
cargo build --release -q -p chat -p chat-bench
TMP="$(mktemp -d)"
# On exit (an interrupted run too): stop what this script started, by process id. A
# failed shape also shows the end of the chat server's log.
trap 'rc=$?
if [ "$rc" != 0 ] && [ -s "$TMP/server.log" ]; then
    echo "bench.sh failed ($rc); end of the chat server log:" >&2; tail -n 20 "$TMP/server.log" >&2
fi
for p in ${SERVER:-} ${NODE1:-} ${NODE2:-} ${CLUSTER_REDIS:-}; do kill "$p" 2>/dev/null || true; done; rm -rf "$TMP"' EXIT

# The chat server on a fresh data directory, with no rate limits (the bench is one
# address sending flat out) and the default argon2id cost unless flags say otherwise.
SERVER_BIN=$B/chat-server
chat_start() {
    rm -rf "$TMP/data"; mkdir -p "$TMP/data"
    # Everything comes from 127.0.0.1: no per-address connection limit (older
    # binaries have none to turn off).
    local per_addr=()
    if "$SERVER_BIN" --help | grep -q max-conns-per-addr; then
        per_addr=(--max-conns-per-addr 0)
    fi
    if "$SERVER_BIN" --help | grep -q register-rate; then
        per_addr+=(--register-rate 0)
    fi
    taskset -c 0 "$SERVER_BIN" --listen 127.0.0.1:19001 --data "$TMP/data" \
        --msg-rate 0 --login-rate 0 "${per_addr[@]}" --log-level warn "$@" 2>"$TMP/server.log" &
    SERVER=$!
    until ss -ltn | grep -q ":19001 "; do
        # A server that exits at start (a bad flag, a busy port) is not waited for.
        kill -0 "$SERVER" 2>/dev/null || { echo "bench.sh: the chat server did not start" >&2; exit 1; }
        sleep 0.05
    done
}
# Runs "$@" (a chat shape) against this build, then against BASELINE if set.
both() {
    "$@"
    if [ -n "${BASELINE:-}" ]; then
        echo "#### baseline"
        SERVER_BIN="$BASELINE"; "$@"; SERVER_BIN=$B/chat-server
    fi
}
# Cheap hashing for the fan-out and idle shapes: they measure delivery, not logins.
# Output queues of 32 MiB, Redis's default hard limit for pub/sub clients: at
# saturation the bench's receivers can fall behind this server (1 MiB would drop them).
# CHAT_FLAGS: extra flags for this build only (not BASELINE), e.g. "--history 0".
chat_up() {
    local own=()
    if [ "$SERVER_BIN" = "$B/chat-server" ] && [ -n "${CHAT_FLAGS:-}" ]; then
        read -r -a own <<< "$CHAT_FLAGS"
    fi
    chat_start --argon2-memory-kib 64 --argon2-passes 1 --max-outbuf 33554432 "${own[@]}" "$@"
}
redis_up() {
    taskset -c 0 redis-server --port 19002 --bind 127.0.0.1 --save "" --appendonly no \
        --maxclients 60000 >/dev/null 2>&1 &
    SERVER=$!
    until redis-cli -p 19002 ping >/dev/null 2>&1; do sleep 0.05; done
}
down() { kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; SERVER=; }
bench() { taskset -c 1 $B/chat-bench "$@"; }
chat_fanout() { chat_up; bench fanout --target chat --addr 127.0.0.1:19001 "$@"; down; }
chat_idle() {
    chat_up; bench idle --target chat --addr 127.0.0.1:19001 -c 10000 --server-pid "$SERVER"; down
}
chat_storm() {
    chat_start
    bench login-storm --addr 127.0.0.1:19001 -n 100 -p 10 --rate 5000 -d 3 -k 1000 2>/dev/null
    down
}
# The storm's background chat runs at $1 msg/s; further arguments go to the bench.
chat_storm10k() {
    local rate=$1; shift
    chat_start --argon2-memory-kib 64 --argon2-passes 1
    bench login-storm --addr 127.0.0.1:19001 -n 10 -p 1 --rate "$rate" -d 2 -k 10000 --stay \
        --storm-limit 900 --server-pid "$SERVER" "$@" 2>/dev/null
    down
}

exec > >(tee "$TMP/out.txt")
for run in $(seq "$RUNS"); do
    [ "${MAIN:-1}" = 0 ] && break
    for shape in "100 10" "100 1" "1000 10" "1000 1"; do
        set -- $shape
        echo "### run $run fanout N=$1 P=$2"
        both chat_fanout -n "$1" -p "$2" -d 5
        redis_up; bench fanout --target redis --addr 127.0.0.1:19002 -n "$1" -p "$2" -d 5; down
    done
    [ "${FANOUT_ONLY:-0}" = 1 ] && continue
    echo "### run $run latency at half of the saturated rate, N=100 P=10"
    both chat_fanout -n 100 -p 10 --rate "${HALF_RATE:-50000}" -d 5
    redis_up; bench fanout --target redis --addr 127.0.0.1:19002 -n 100 -p 10 --rate "${HALF_RATE:-50000}" -d 5; down
    echo "### run $run idle C=10000"
    both chat_idle
    redis_up; bench idle --target redis --addr 127.0.0.1:19002 -c 10000 --server-pid "$SERVER"; down
    # Each storm client disconnects once logged in, so the fan-out keeps its N
    # receivers (staying, 1,000 more users would multiply the fan-out's work by 11).
    echo "### run $run login storm K=1000 (default argon2id) during a fan-out at 5000 msg/s"
    both chat_storm
done

if [ "${CLUSTER:-0}" = 1 ]; then
    # Two chat nodes on one Redis (all three on CPU 0), half the receivers on each,
    # the publishers on the first: at 2,000 msg/s x 100 receivers, beside one node and
    # Redis pub/sub alone at the same rate.
    for run in $(seq "$RUNS"); do
        echo "### run $run light load 2000 msg/s N=100 P=10, one node"
        chat_fanout -n 100 -p 10 --rate 2000 -d 5
        echo "### run $run light load 2000 msg/s N=100 P=10, two nodes"
        taskset -c 0 redis-server --port 19003 --bind 127.0.0.1 --save "" --appendonly no \
            >/dev/null 2>&1 &
        CLUSTER_REDIS=$!
        until redis-cli -p 19003 ping >/dev/null 2>&1; do sleep 0.05; done
        for n in 1 2; do
            rm -rf "$TMP/node$n"; mkdir -p "$TMP/node$n"
            taskset -c 0 $B/chat-server --listen "127.0.0.1:1901$n" --data "$TMP/node$n" \
                --redis redis://127.0.0.1:19003 --msg-rate 0 --login-rate 0 \
                --register-rate 0 --max-conns-per-addr 0 --argon2-memory-kib 64 --argon2-passes 1 \
                --max-outbuf 33554432 --log-level warn 2>"$TMP/node$n.log" &
            eval "NODE$n=\$!"
            until ss -ltn | grep -q ":1901$n "; do
                kill -0 "$(eval "echo \$NODE$n")" 2>/dev/null \
                    || { echo "bench.sh: node $n did not start" >&2; exit 1; }
                sleep 0.05
            done
        done
        bench fanout --target chat --addr 127.0.0.1:19011 --addr2 127.0.0.1:19012 \
            -n 100 -p 10 --rate 2000 -d 5
        echo "  redis messages  $(redis-cli -p 19003 info stats | grep -E '^total_commands_processed' | tr -d '\r')"
        kill "$NODE1" "$NODE2"; wait "$NODE1" "$NODE2" 2>/dev/null || true; NODE1=; NODE2=
        kill "$CLUSTER_REDIS"; wait "$CLUSTER_REDIS" 2>/dev/null || true; CLUSTER_REDIS=
        echo "### run $run light load 2000 msg/s N=100 P=10, redis"
        redis_up; bench fanout --target redis --addr 127.0.0.1:19002 -n 100 -p 10 --rate 2000 -d 5; down
    done
fi

if [ "${TLS:-0}" = 1 ]; then
    # A throwaway self-signed certificate for localhost (EC P-256), trusted by the
    # bench with --tls-ca; made for this run, never kept.
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -keyout "$TMP/tls-key.pem" -out "$TMP/tls-cert.pem" -subj /CN=localhost \
        -addext subjectAltName=DNS:localhost -addext basicConstraints=critical,CA:FALSE \
        2>/dev/null
    # Hashing at normal priority, long login and job timeouts: on a machine shared
    # with other work, idle-priority hashing can starve and the setup's logins time out
    # or are refused as busy. None of it touches what is measured, which starts once
    # everyone is logged in.
    TLS_UP=(--tls-listen 127.0.0.1:19004 --tls-cert "$TMP/tls-cert.pem" --tls-key "$TMP/tls-key.pem"
        --worker-priority normal --login-timeout 600 --job-timeout 600)
    OVER_TLS=(--addr 127.0.0.1:19004 --tls-ca "$TMP/tls-cert.pem")
    # Runs one chat shape ("$@": chat-bench arguments) over the plain port, then over
    # TLS, each on a fresh server with both listeners.
    plain_then_tls() {
        chat_up "${TLS_UP[@]}"; bench "$@" --addr 127.0.0.1:19001; down
        chat_up "${TLS_UP[@]}"; bench "$@" "${OVER_TLS[@]}"; down
    }
    for run in $(seq "$RUNS"); do
        for shape in "100 10" "1000 10"; do
            set -- $shape
            echo "### run $run TLS fanout N=$1 P=$2"
            plain_then_tls fanout --target chat -n "$1" -p "$2" -d 5
        done
        echo "### run $run TLS light load 2000 msg/s N=100 P=10"
        plain_then_tls fanout --target chat -n 100 -p 10 --rate 2000 -d 5
        echo "### run $run TLS idle C=10000"
        chat_up "${TLS_UP[@]}"
        bench idle --target chat --addr 127.0.0.1:19001 -c 10000 --server-pid "$SERVER"; down
        chat_up "${TLS_UP[@]}"
        bench idle --target chat "${OVER_TLS[@]}" -c 10000 --server-pid "$SERVER"; down
    done
fi

if [ "${LIGHT:-0}" = 1 ]; then
    for run in $(seq "$RUNS"); do
        echo "### run $run light load 2000 msg/s N=100 P=10"
        both chat_fanout -n 100 -p 10 --rate 2000 -d 5
        redis_up; bench fanout --target redis --addr 127.0.0.1:19002 -n 100 -p 10 --rate 2000 -d 5; down
        # The publishers with the lowest user ids: the chat's round then writes the
        # receivers before the other publishers, where Redis writes its subscribers.
        echo "### run $run light load 2000 msg/s N=100 P=10, publishers first"
        both chat_fanout -n 100 -p 10 --rate 2000 -d 5 --publishers-first
        for n in 100 1000; do
            echo "### run $run one publisher, window 8 counted at delivery, N=$n"
            both chat_fanout -n "$n" -p 1 --window-at delivery -d 5
            redis_up
            bench fanout --target redis --addr 127.0.0.1:19002 -n "$n" -p 1 --window-at delivery -d 5
            down
        done
    done
fi

if [ "${STORM10K:-0}" = 1 ]; then
    # The storm's users log in as this project's clients do (compact presence), then as
    # the seed's clients do; and with the background chat at 10 msg/s, which every user
    # online gets. What that chat costs a server by itself is the last shape, side by
    # side with Redis: 10 msg/s to 5,000 receivers (the storm's average online).
    for run in $(seq "$RUNS"); do
        echo "### run $run login storm: 10,000 users (cheap hashing) log in at once and stay, chat at 1 msg/s"
        both chat_storm10k 1
        echo "### run $run login storm: 10,000 users (cheap hashing), chat at 1 msg/s, seed forms of presence"
        both chat_storm10k 1 --seed-forms
        echo "### run $run login storm: 10,000 users (cheap hashing), chat at 10 msg/s"
        both chat_storm10k 10
        echo "### run $run fanout N=5000 P=1 at 10 msg/s (the storm's chat by itself)"
        chat_up
        bench fanout --target chat --addr 127.0.0.1:19001 -n 5000 -p 1 --rate 10 -d 10 \
            --server-pid "$SERVER"
        down
        redis_up
        bench fanout --target redis --addr 127.0.0.1:19002 -n 5000 -p 1 --rate 10 -d 10 \
            --server-pid "$SERVER"
        down
    done
fi

if [ "${RECONNECT:-0}" = 1 ]; then
    echo "### reconnect storm: 10,000 users log back in at once and stay (default argon2id)"
    chat_start
    bench login-storm --addr 127.0.0.1:19001 -n 10 -p 1 --rate 10 -d 3 -k 10000 --stay \
        --storm-limit 900 2>/dev/null
    grep VmHWM /proc/$SERVER/status
    down
fi
echo "### summary (medians)"
python3 scripts/bench_summary.py "$TMP/out.txt"

#!/usr/bin/env bash
# Soak test: runs the server (release build) under a steady fan-out plus a stream of
# bad clients (garbage, oversized frames, half frames, floods, stalled readers,
# login/logout churn) for MINUTES minutes, and prints the server's memory at the start,
# every minute and at the end. Not part of CI.
#
#   scripts/soak.sh [MINUTES]      (default 10)
#
# Everything stays on 127.0.0.1; the server's data goes to a temporary directory.
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES="${1:-10}"
PORT="${SOAK_PORT:-18999}"

cargo build --release -q -p chat -p chat-bench
DATA="$(mktemp -d)"
LOG="$DATA/server.log"
trap 'kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; rm -rf "$DATA"' EXIT

# Cheaper hashing keeps the login churn from dominating; a short login timeout makes
# the half-frame clients cycle; a higher per-address login rate lets the churn in
# (everything comes from 127.0.0.1, hence no per-address connection limit); a message rate above what the fan-out's
# publishers send (40 messages and 40 pings a second each) but far below the floods.
target/release/chat-server --listen "127.0.0.1:$PORT" --data "$DATA" \
    --argon2-memory-kib 1024 --argon2-passes 1 --login-timeout 5 --login-rate 100000 \
    --register-rate 0 --msg-rate 100 --max-conns-per-addr 0 \
    --max-outbuf 262144 --log-level warn --log-file "$LOG" &
SERVER=$!
for _ in $(seq 100); do
    grep -q "listening on" "$LOG" 2>/dev/null && break
    sleep 0.1
done

target/release/chat-bench soak --addr "127.0.0.1:$PORT" --server-pid "$SERVER" \
    --minutes "$MINUTES" -n 50 -p 5 --rate 200 --bad-per-sec 10

echo "server log: $(wc -l < "$LOG") lines; by kind:"
sed -E 's/^[0-9:]+ //; s/[0-9]+/N/g' "$LOG" | sort | uniq -c | sort -rn | head -15
kill -TERM "$SERVER"
wait "$SERVER" && echo "server exited cleanly (status 0)"

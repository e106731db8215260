#!/usr/bin/env bash
# What a scrape of --metrics-listen costs the event loop (see BENCHMARKS.md, and the
# journal's "Metrics: the cost of a scrape" in docs/benchmarks/). Two measures, both
# of CPU time per thread (from /proc), which holds up on a loaded machine better than
# throughput does:
#  1. idle: N back-to-back scrapes of an idle server; the loop's (main thread) and
#     the metrics thread's CPU per scrape, and the scrapes' latency;
#  2. under a steady fan-out (N=100, P=10, RATE msg/s), the loop's CPU over 5 s with
#     and without a scraper fetching /metrics every 10 ms; alternated RUNS times.
# Server on core 0, bench and scraper on core 1; ports 19101 (chat), 19102 (metrics).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p chat -p chat-bench
B=${CARGO_TARGET_DIR:-target}/release
N=${N:-20000}
RATE=${RATE:-5000}
RUNS=${RUNS:-3}
SERVER=
T=$(mktemp -d)
trap '[ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null; rm -rf "$T"' EXIT

scraper() { # interval_s seconds count -> one summary line
    python3 - "$@" <<'PY'
import socket, sys, time
interval, secs, count = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
lat, end, size = [], time.time() + secs, 0
while (count and len(lat) < count) or (not count and time.time() < end):
    a = time.perf_counter()
    s = socket.create_connection(("127.0.0.1", 19102))
    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    d = b""
    while True:
        b = s.recv(65536)
        if not b: break
        d += b
    s.close()
    assert d.startswith(b"HTTP/1.1 200"), d[:80]
    lat.append((time.perf_counter() - a) * 1e3)
    size = len(d)
    if interval: time.sleep(interval)
lat.sort(); n = len(lat)
print(f"{n} scrapes, latency median {lat[n//2]:.3f} ms, p99 {lat[int(n*.99)]:.3f} ms, {size} bytes")
PY
}
start() {
    rm -rf "$T/data"; mkdir -p "$T/data"
    taskset -c 0 "$B/chat-server" --listen 127.0.0.1:19101 --data "$T/data" --msg-rate 0 \
        --login-rate 0 --register-rate 0 --max-conns-per-addr 0 --log-level warn --argon2-memory-kib 64 \
        --argon2-passes 1 --max-outbuf 33554432 --metrics-listen 127.0.0.1:19102 2>"$T/log" &
    SERVER=$!
    until ss -ltn | grep -q ":19102 "; do sleep 0.05; done
}
stop() { kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; SERVER=; }
thread_cpu() { # thread name -> utime+stime, clock ticks
    for t in /proc/$SERVER/task/*; do
        if [ "$(cat "$t/comm")" = "$1" ]; then awk '{print $14+$15}' "$t/stat"; fi
    done
}
HZ=$(getconf CLK_TCK)

echo "## idle: $N back-to-back scrapes"
start
l0=$(thread_cpu chat-server); m0=$(thread_cpu chat-metrics)
taskset -c 1 bash -c "$(declare -f scraper); scraper 0 0 $N"
l1=$(thread_cpu chat-server); m1=$(thread_cpu chat-metrics)
echo "event loop $(( (l1-l0) * 1000000 / HZ / N )) us CPU per scrape; metrics thread $(( (m1-m0) * 1000000 / HZ / N )) us"
stop

echo "## fan-out N=100 P=10 at $RATE msg/s: loop CPU over 5 s"
for i in $(seq "$RUNS"); do
    for mode in none scrape; do
        start
        taskset -c 1 "$B/chat-bench" fanout --target chat --addr 127.0.0.1:19101 -n 100 -p 10 \
            -d 8 --rate "$RATE" >"$T/bench" 2>&1 &
        BENCH=$!
        sleep 2
        t0=$(thread_cpu chat-server)
        if [ "$mode" = scrape ]; then
            line=$(taskset -c 1 bash -c "$(declare -f scraper); scraper 0.01 5 0")
        else
            sleep 5; line="no scraping"
        fi
        t1=$(thread_cpu chat-server)
        wait "$BENCH"
        echo "run $i $mode: loop $(( (t1-t0) * 1000 / HZ )) ms CPU; $line; bench: $(grep -E 'deliveries/s|latency ' "$T/bench" | tr -s ' ' | tr '\n' ' ')"
        stop
    done
done

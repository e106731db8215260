#!/usr/bin/env python3
"""Medians of the runs printed by scripts/bench.sh (read from stdin or a file).

Groups every figure by the heading it came under (`### run R <shape>`, without the
run number) and by target, and prints the median with the individual values."""
import re
import statistics
import sys
from collections import defaultdict

PATTERNS = {
    "deliveries/s (M)": (r"^\s+deliveries/s\s+(\d+)", 1e-6),
    "latency p50 (ms)": (r"^\s+latency\s+p50 ([\d.]+) ms", 1),
    "latency p99 (ms)": (r"^\s+latency\s+.*?p99 ([\d.]+) ms", 1),
    "bench CPU (%)": (r"^\s+bench CPU\s+[\d.]+ s of [\d.]+ s wall \((\d+)%\)", 1),
    "server CPU (%)": (r"^\s+server CPU\s+[\d.]+ s of [\d.]+ s wall \((\d+)%\)", 1),
    "server CPU per delivery (us)": (r"^\s+server CPU\s+.*wall.*, ([\d.]+) us per delivery", 1),
    "lost": (r"^\s+lost\s+(\d+)$", 1),
    "bytes per connection": (r"^\s+per connection\s+(\d+) bytes", 1),
    "storm logins/s": (r"^\s+storm\s+\d+ logins in [\d.]+ s \((\d+) logins/s\)", 1),
    "storm duration (s)": (r"^\s+storm\s+\d+ logins in ([\d.]+) s", 1),
    "bench CPU during storm (%)": (r"^\s+bench CPU\s+[\d.]+ s of the storm's [\d.]+ s \((\d+)%\)", 1),
    "server CPU per login (ms)": (r"^\s+server CPU\s+([\d.]+) ms per login", 1),
    "server peak RSS / after storm": (r"^\s+server memory .*\(peak / after ([\d.]+)\)", 1),
    "server peak RSS during storm (MiB)": (r"^\s+server memory .*peak (\d+) KiB during", 1 / 1024),
    "fan-out p99 before storm (ms)": (r"^\s+fan-out before .*?p99 ([\d.]+) ms", 1),
    "fan-out p99 during storm (ms)": (r"^\s+fan-out during .*?p99 ([\d.]+) ms", 1),
}

def main():
    text = open(sys.argv[1]).read() if len(sys.argv) > 1 else sys.stdin.read()
    figures = defaultdict(list)
    shape, target, baseline = None, None, False
    for line in text.splitlines():
        if line.startswith("#### baseline"):
            target, baseline = "baseline", True
            continue
        m = re.match(r"^### (?:run \d+ )?(.*)", line)
        if m:
            shape, target, baseline = m.group(1), "chat", False
            continue
        m = re.match(r"^(fanout|idle) target=(\w+)", line)
        if m:
            target = m.group(2).lower()
            if line.rstrip().endswith("over TLS"):
                target += "-tls"
            if baseline and target == "chat":
                target = "baseline"
            continue
        if shape is None:
            continue
        for name, (pat, scale) in PATTERNS.items():
            m = re.match(pat, line)
            if m:
                figures[(shape, target, name)].append(float(m.group(1)) * scale)
    for (shape, target, name), vals in figures.items():
        shown = ", ".join(f"{v:.4g}" for v in vals)
        print(f"{shape} | {target} | {name}: median {statistics.median(vals):.4g} ({shown})")

if __name__ == "__main__":
    main()

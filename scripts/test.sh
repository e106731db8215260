#!/usr/bin/env bash
# Runs every test of the project: the one command behind the README's promise.
#
# The Redis backend's tests start their own redis-server (on a free loopback port, in a
# temporary directory), and the browser test drives headless Chromium through
# chromedriver, so redis-server, chromium and chromedriver must be installed. Where one
# is missing, this installs it from the system's packages if it can (root with apt-get);
# otherwise it stops at once and says what to install.
set -euo pipefail
cd "$(dirname "$0")/.."

need_redis() {
    command -v redis-server >/dev/null 2>&1 && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "test.sh: installing redis-server (the Redis tests start their own)" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q >&2
        apt-get install -y -q redis-server >&2
        return 0
    fi
    echo "test.sh: redis-server is not installed, and the Redis backend's tests need it." >&2
    echo "test.sh: install it (Debian/Ubuntu: sudo apt-get install redis-server;" >&2
    echo "test.sh: macOS: brew install redis), then run scripts/test.sh again." >&2
    exit 2
}

# The browser test drives headless Chromium through chromedriver (Debian's packages).
need_chromium() {
    if [ -n "${CHROMEDRIVER:-}" ] && [ -n "${CHROME:-}" ]; then
        return 0
    fi
    if command -v chromedriver >/dev/null 2>&1 \
        && { command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
             || command -v google-chrome >/dev/null 2>&1; }; then
        return 0
    fi
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "test.sh: installing chromium and chromium-driver (the browser test drives them)" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q >&2
        apt-get install -y -q chromium chromium-driver >&2
        return 0
    fi
    echo "test.sh: chromium and chromedriver are not installed, and the browser test needs them." >&2
    echo "test.sh: install them (Debian: sudo apt-get install chromium chromium-driver;" >&2
    echo "test.sh: Ubuntu: the chromium snap provides chromium.chromedriver, then point" >&2
    echo "test.sh: CHROMEDRIVER and CHROME at them), then run scripts/test.sh again." >&2
    exit 2
}

need_redis
need_chromium
# The sans-I/O core builds and passes its tests without the server's crates.
cargo test -p chat --no-default-features --lib
cargo test --workspace "$@"

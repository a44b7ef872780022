#!/usr/bin/env bash
# System packages the test suite needs (run as root; idempotent).
#
# Why: the integration tests talk to real servers, not mocks: GStreamer's RTSP server (served by a script
# run with Debian's /usr/bin/python3, which holds the GObject bindings), the mosquitto MQTT broker, and
# promtool (from prometheus) to lint the metrics page. The network-fault tests (tests/test_netfaults.py)
# shape a private network namespace with iproute2 (ip, tc), nftables, iptables (NFQUEUE) and
# libnetfilter-queue. Without them those tests skip locally and fail in CI (CI=true).
#
# Modes: no argument: install what is missing (sudo when not root). `--when-root`: install only when
# running as root, else do nothing (`make test` runs this first). `--check-only`: install nothing; print,
# as the last lines of `make test`, which packages are missing and how to get them.
set -euo pipefail
MODE="${1:-install}"

PACKAGES=(
    gstreamer1.0-rtsp
    gir1.2-gst-rtsp-server-1.0
    gstreamer1.0-plugins-base
    gstreamer1.0-plugins-good
    gstreamer1.0-plugins-bad
    gstreamer1.0-plugins-ugly
    python3-gi
    mosquitto
    prometheus
    chromium  # the operator console's real-browser test (Playwright drives /usr/bin/chromium)
    iproute2
    nftables
    iptables
    iputils-ping
    libnetfilter-queue1
)

if ! command -v dpkg-query >/dev/null 2>&1; then
    if [ "$MODE" != "--when-root" ]; then
        echo "system-packages: not a Debian system: install the equivalents of ${PACKAGES[*]} yourself;" \
             "tests needing them skip (CI=true makes them fail)"
    fi
    exit 0
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    [ "$MODE" = "install" ] && echo "system-packages: all present (${PACKAGES[*]})"
    exit 0
fi

if [ "$MODE" = "--check-only" ]; then
    echo "NOTE: ${#missing[@]} system package(s) missing: ${missing[*]}."
    echo "NOTE: the tests that need them were SKIPPED. Install them as root: sudo bash .ci/system-packages.sh"
    exit 0
fi
if [ "$MODE" = "--when-root" ] && [ "$(id -u)" -ne 0 ]; then
    exit 0  # not root: `make test` says what is missing in its last lines
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

echo "system-packages: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"

# The Debian packages enable system-wide daemons; the tests start their own on free loopback ports.
for svc in mosquitto prometheus; do
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
        $SUDO systemctl stop "$svc" || true
    fi
done
echo "system-packages: done"

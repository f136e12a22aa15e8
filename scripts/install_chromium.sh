#!/bin/sh
# Install Debian's Chromium (/usr/bin/chromium) for the browser end-to-end tests
# (tests/e2e). Idempotent: prints nothing and exits 0 when Chromium is already
# there. Non-interactive (CI): runs apt-get as root, or through sudo -n.
#
#   sh scripts/install_chromium.sh
#
# E2E_CHROMIUM may name another Chromium binary to check for instead.
set -eu

CHROMIUM="${E2E_CHROMIUM:-/usr/bin/chromium}"
if [ -x "$CHROMIUM" ]; then
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
else
    echo "install_chromium: $CHROMIUM is missing and this user cannot run apt-get;" >&2
    echo "install_chromium: as root run: apt-get update && apt-get install -y chromium" >&2
    exit 1
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_chromium: $CHROMIUM is missing and apt-get is not available (Debian/Ubuntu only)" >&2
    exit 1
fi

echo "install_chromium: installing Debian chromium (apt-get)..." >&2
export DEBIAN_FRONTEND=noninteractive
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
# Fresh package lists first: stale ones point at versions the mirror no longer has.
if ! $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq >"$log" 2>&1 ||
   ! $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        chromium fonts-liberation >>"$log" 2>&1; then
    cat "$log" >&2
    echo "install_chromium: apt-get failed" >&2
    exit 1
fi

if [ ! -x "$CHROMIUM" ]; then
    echo "install_chromium: apt-get succeeded but $CHROMIUM is still missing" >&2
    exit 1
fi
echo "install_chromium: $("$CHROMIUM" --version 2>/dev/null || echo chromium) installed" >&2

#!/usr/bin/env bash
# Install Debian's headless-capable Chromium for the browser test (tests/e2e/test_ui_browser.py).
# Idempotent: does nothing when /usr/bin/chromium is already there.
# Override the binary checked with CHROMIUM=/path/to/chromium.
set -euo pipefail

CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"

if [ -x "$CHROMIUM" ]; then
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "install-chromium: $CHROMIUM is missing and we are not root; run: sudo apt-get install -y chromium" >&2
  exit 1
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-chromium: $CHROMIUM is missing and apt-get is not available (not Debian/Ubuntu?); install Chromium by hand" >&2
  exit 1
fi

echo "install-chromium: installing Debian's chromium (once, a few minutes)" >&2
export DEBIAN_FRONTEND=noninteractive
if ! apt-get update -qq >/dev/null; then
  echo "install-chromium: apt-get update failed; check the network or /etc/apt/sources.list" >&2
  exit 1
fi
if ! apt-get install -y -qq --no-install-recommends chromium >/dev/null; then
  echo "install-chromium: apt-get install chromium failed (see the apt output above)" >&2
  exit 1
fi

if [ ! -x "$CHROMIUM" ]; then
  echo "install-chromium: apt-get installed chromium but $CHROMIUM is still missing" >&2
  exit 1
fi
echo "install-chromium: $("$CHROMIUM" --version 2>/dev/null || echo chromium) installed" >&2

#!/usr/bin/env bash
# Install Debian's Prometheus (the server and promtool) for the monitoring tests
# (tests/integration/test_prometheus.py, tests/unit/test_prometheus_rules.py).
# Only the binaries are used: the tests start their own server on a free port with
# a config and storage of their own. The package's system service is never left
# running (it would hold :9090 and scrape nothing of ours): its start is refused
# during the install (policy-rc.d, Debian's own mechanism) and it is disabled.
# Idempotent and quick: does nothing when both binaries are there.
# Override the binaries checked with PROMETHEUS=/path/to/prometheus PROMTOOL=/path/to/promtool.
set -euo pipefail

PROMETHEUS="${PROMETHEUS:-/usr/bin/prometheus}"
PROMTOOL="${PROMTOOL:-/usr/bin/promtool}"

if [ -x "$PROMETHEUS" ] && [ -x "$PROMTOOL" ]; then
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "install-prometheus: $PROMETHEUS or $PROMTOOL is missing and we are not root; run: sudo apt-get install -y --no-install-recommends prometheus" >&2
  exit 1
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-prometheus: $PROMETHEUS is missing and apt-get is not available (not Debian/Ubuntu?); install Prometheus 2.x by hand" >&2
  exit 1
fi

echo "install-prometheus: installing Debian's prometheus (once, about a minute)" >&2
export DEBIAN_FRONTEND=noninteractive

# Refuse service starts while the package installs (exit 101 = "action forbidden"),
# unless the machine already has a policy of its own (containers often do).
POLICY=/usr/sbin/policy-rc.d
OWN_POLICY=0
if [ ! -e "$POLICY" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$POLICY"
  chmod 755 "$POLICY"
  OWN_POLICY=1
fi
cleanup() { if [ "$OWN_POLICY" -eq 1 ]; then rm -f "$POLICY"; fi; }
trap cleanup EXIT

if ! apt-get update -qq >/dev/null; then
  echo "install-prometheus: apt-get update failed; check the network or /etc/apt/sources.list" >&2
  exit 1
fi
if ! apt-get install -y -qq --no-install-recommends prometheus >/dev/null; then
  echo "install-prometheus: apt-get install prometheus failed (see the apt output above)" >&2
  exit 1
fi

# Keep the system service from starting at boot (or now, if a policy of the machine let it start).
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  systemctl disable --now prometheus.service >/dev/null 2>&1 || true
elif [ -x /etc/init.d/prometheus ]; then
  /etc/init.d/prometheus stop >/dev/null 2>&1 || true
  update-rc.d prometheus disable >/dev/null 2>&1 || true
fi

if [ ! -x "$PROMETHEUS" ] || [ ! -x "$PROMTOOL" ]; then
  echo "install-prometheus: apt-get installed prometheus but $PROMETHEUS or $PROMTOOL is still missing" >&2
  exit 1
fi
echo "install-prometheus: $("$PROMETHEUS" --version 2>&1 | head -1) installed (system service disabled)" >&2

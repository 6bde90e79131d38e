#!/usr/bin/env bash
# Install Debian's PostgreSQL server programs for the tests that keep Dagster's storage in PostgreSQL
# (chipq_pipelines/local_postgres.py starts its own server from them: initdb into a folder of its
# own, pg_ctl on a free port of 127.0.0.1). No cluster of the package's own is created or started.
# Idempotent: does nothing when initdb and pg_ctl are there, and, for root, the postgres user
# (PostgreSQL refuses to run as root; chipq runs it as that unprivileged user).
# Override the folder checked with CHIPQ_POSTGRES_BIN=/path/to/bin.
set -euo pipefail

have_server() {
  local bin
  if [ -n "${CHIPQ_POSTGRES_BIN:-}" ]; then
    [ -x "$CHIPQ_POSTGRES_BIN/initdb" ] && [ -x "$CHIPQ_POSTGRES_BIN/pg_ctl" ] || return 1
  else
    for bin in /usr/lib/postgresql/*/bin; do
      [ -x "$bin/initdb" ] && [ -x "$bin/pg_ctl" ] && break
      bin=""
    done
    [ -n "${bin:-}" ] || return 1
  fi
  # as root, chipq runs the server as an unprivileged user that Debian's package creates
  [ "$(id -u)" -ne 0 ] || id "${CHIPQ_POSTGRES_OS_USER:-postgres}" >/dev/null 2>&1
}

if have_server; then
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "install-postgres: PostgreSQL's server programs are missing and we are not root; run: sudo apt-get install -y postgresql" >&2
  exit 1
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-postgres: PostgreSQL is missing and apt-get is not available (not Debian/Ubuntu?); install PostgreSQL 13+ by hand and set CHIPQ_POSTGRES_BIN to its bin folder" >&2
  exit 1
fi

echo "install-postgres: installing Debian's postgresql (once, about a minute)" >&2
export DEBIAN_FRONTEND=noninteractive
if ! apt-get update -qq >/dev/null; then
  echo "install-postgres: apt-get update failed; check the network or /etc/apt/sources.list" >&2
  exit 1
fi
# postgresql-common first, told not to create (and start) a cluster of its own on port 5432
if ! apt-get install -y -qq --no-install-recommends postgresql-common >/dev/null; then
  echo "install-postgres: apt-get install postgresql-common failed (see the apt output above)" >&2
  exit 1
fi
conf=/etc/postgresql-common/createcluster.conf
if [ -f "$conf" ] && ! grep -q '^create_main_cluster *= *false' "$conf"; then
  sed -i 's/^#* *create_main_cluster *=.*/create_main_cluster = false/' "$conf"
  grep -q '^create_main_cluster = false' "$conf" || echo 'create_main_cluster = false' >>"$conf"
fi
if ! apt-get install -y -qq --no-install-recommends postgresql >/dev/null; then
  echo "install-postgres: apt-get install postgresql failed (see the apt output above)" >&2
  exit 1
fi

if ! have_server; then
  echo "install-postgres: apt-get installed postgresql but initdb/pg_ctl (or the postgres user) are still missing" >&2
  exit 1
fi
echo "install-postgres: $(ls -d /usr/lib/postgresql/*/bin | tail -1) installed" >&2

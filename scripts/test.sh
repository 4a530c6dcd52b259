#!/usr/bin/env bash
# Runs every test: unit tests of each crate and the end-to-end tests in tests/, which start the
# real vmmon binaries (built first, so the tests find them next to the test binary).
#
# Tests that need root are `#[ignore = "needs root"]` so a plain `cargo test` shows them as
# ignored (visible) instead of passing them silently; this script includes them, and CI runs it
# as root. Run without root, those tests fail loudly.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
    echo "warning: not root: the tests marked 'needs root' will fail" >&2
fi
cargo build --workspace --bins
# The Prometheus scrape test needs Debian's prometheus package (.ci/run installs it); without it
# the test is skipped, and says so, rather than failing on a machine that has not installed it.
skip=()
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  echo "NOTE: prometheus/promtool not installed: SKIPPING prometheus::* (apt-get install prometheus)" >&2
  skip=(--skip prometheus::)
fi
# The static-agent tests run the binaries of packaging/build-packages.sh (.ci/run builds them
# first); on a machine that has not built them they are skipped, and say so.
if ! [ -x target/packages/vmmon-agent-x86_64 ] || ! [ -x target/packages/vmmon-agent-aarch64 ]; then
  echo "NOTE: target/packages/vmmon-agent-* not built: SKIPPING static_agent::* (packaging/build-packages.sh)" >&2
  skip+=(--skip static_agent::)
elif ! command -v qemu-aarch64-static >/dev/null; then
  echo "NOTE: qemu-aarch64-static not installed: SKIPPING static_agent::static_aarch64* (apt-get install qemu-user-static)" >&2
  skip+=(--skip static_agent::static_aarch64)
fi
# The real CloudKitty client (python-cloudkittyclient, pinned) for rating_client::*, in a venv
# under target/ that is reused when present; when python3 -m venv or pip cannot make it, those
# tests are skipped, and this says so.
ck_venv=target/cloudkitty-venv
if [ ! -x "$ck_venv/bin/cloudkitty" ]; then
  rm -rf "$ck_venv"
  mkdir -p target
  if ! { python3 -m venv "$ck_venv" &&
         "$ck_venv/bin/pip" install -q "python-cloudkittyclient==6.2.0"; } >target/cloudkitty-venv.log 2>&1; then
    rm -rf "$ck_venv"
  fi
fi
if [ ! -x "$ck_venv/bin/cloudkitty" ]; then
  echo "NOTE: no python-cloudkittyclient venv (python3 -m venv + pip failed, see target/cloudkitty-venv.log): SKIPPING rating_client::*" >&2
  skip+=(--skip rating_client::)
fi
# The dashboard's browser test needs Debian's chromium and chromium-driver (.ci/run installs them);
# without them it is skipped, visibly.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  echo "NOTE: chromium/chromedriver not installed: SKIPPING dashboard::* (apt-get install chromium chromium-driver)" >&2
  skip+=(--skip dashboard::)
fi
# PostgreSQL (the second store backend): a throw-away cluster in a temp dir on a free port when
# the server binaries are installed (.ci/run installs Debian's postgresql); the tests marked
# "needs PostgreSQL" each create a database of their own in it. Without the binaries they are
# skipped, and this says so.
pg_dir=""
pg_cleanup() { [ -n "$pg_dir" ] && scripts/pg-cluster.sh stop "$pg_dir/cluster" && rm -rf "$pg_dir"; true; }
trap pg_cleanup EXIT
pg_dir=$(mktemp -d /tmp/vmmon-pg.XXXXXX)
chmod 755 "$pg_dir" # the server runs as the unprivileged postgres user when we are root
pg_rc=0
url=$(scripts/pg-cluster.sh start "$pg_dir/cluster") || pg_rc=$?
if [ "$pg_rc" -eq 0 ]; then
  export VMMON_TEST_PG_URL=$url
  echo "PostgreSQL test cluster at $url" >&2
elif [ "$pg_rc" -ne 3 ]; then
  echo "error: PostgreSQL is installed but the test cluster did not start" >&2
  exit 1
else
  echo "NOTE: PostgreSQL server binaries not installed: SKIPPING the PostgreSQL store tests (apt-get install postgresql)" >&2
  rm -rf "$pg_dir"
  pg_dir=""
  skip+=(--skip ::pg:: --skip pg_ --skip shared_store::)
fi
cargo test --workspace "$@" -- --include-ignored ${skip[@]+"${skip[@]}"}
if [ -n "${VMMON_TEST_PG_URL:-}" ]; then
  # The in-process API cases and the end-to-end suites that touch the store once more, with
  # every collector on a PostgreSQL store (a database of its own each).
  VMMON_TEST_STORE=postgres cargo test -p vmmon-collector --lib "$@" -- http::
  VMMON_TEST_STORE=postgres cargo test -p vmmon-tests --test it "$@" -- --include-ignored \
    core_api:: delivery:: rating:: rating_client:: cdn:: mana:: truth:: dashboard:: ${skip[@]+"${skip[@]}"}
fi

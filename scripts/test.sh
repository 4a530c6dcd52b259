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
cargo test --workspace "$@" -- --include-ignored ${skip[@]+"${skip[@]}"}

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
# The dashboard's browser test needs Debian's chromium and chromium-driver (.ci/run installs them);
# without them it is skipped, visibly.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  echo "NOTE: chromium/chromedriver not installed: SKIPPING dashboard::* (apt-get install chromium chromium-driver)" >&2
  skip+=(--skip dashboard::)
fi
cargo test --workspace "$@" -- --include-ignored ${skip[@]+"${skip[@]}"}

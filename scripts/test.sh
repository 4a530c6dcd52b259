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
cargo test --workspace "$@" -- --include-ignored

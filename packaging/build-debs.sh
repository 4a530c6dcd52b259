#!/usr/bin/env bash
# Kept for old habits: the packages (.deb and .rpm, static agent for x86_64 and aarch64) are all
# built by packaging/build-packages.sh into target/packages/.
exec "$(dirname "$0")/build-packages.sh" "$@"

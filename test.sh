#!/usr/bin/env bash
# Runs every rackcast test: unit, integration (real files, loop devices,
# network namespaces and QEMU firmware where the machine allows) and a short
# fuzz run of every fuzz target. Installs what it needs first.
#   ./test.sh            everything
#   FUZZ_SECONDS=60 ./test.sh   fuzz longer
set -euo pipefail
cd "$(dirname "$0")"
scripts/deps.sh test
cargo test --workspace --locked
scripts/fuzz.sh "${FUZZ_SECONDS:-10}"

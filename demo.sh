#!/usr/bin/env bash
# The main job: builds rackcast (release) and runs `rackcast demo` with its
# embedded defaults. Extra arguments go to the demo, e.g. ./demo.sh --size 1G
set -euo pipefail
cd "$(dirname "$0")"
scripts/deps.sh demo
cargo build --release --locked --bin rackcast
exec target/release/rackcast demo "$@"

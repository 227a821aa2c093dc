#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for N seconds each (default 10), starting
# from the seeds in fuzz/seeds/. cargo-fuzz needs nightly compiler flags; the
# machine has only the stable toolchain, so RUSTC_BOOTSTRAP unlocks them.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs="${1:-10}"
export RUSTC_BOOTSTRAP=1
targets=$(cargo fuzz list)
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for t in $targets; do
    mkdir -p "corpus/$t"
    seeds=()
    if [[ -d "seeds/$t" ]]; then seeds=("seeds/$t"); fi
    echo "fuzzing $t for ${secs}s"
    if ! cargo fuzz run --release "$t" "corpus/$t" "${seeds[@]}" -- \
        -max_total_time="$secs" -print_final_stats=1 >"$log" 2>&1; then
        tail -n 60 "$log" >&2
        echo "fuzz target $t failed" >&2
        exit 1
    fi
    grep -E '^stat::number_of_executed_units' "$log" || true
done
echo "fuzz: $(echo $targets | wc -w) targets ran ${secs}s each without a crash"

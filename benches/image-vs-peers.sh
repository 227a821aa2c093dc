#!/usr/bin/env bash
# rackcast image create / restore against the pipeline users run today, side
# by side in one run, on generated inputs:
#   create:  rackcast image create   vs  zstd -T0 -3 (to a file, synced) + b3sum of the source
#   restore: rackcast image restore  vs  zstd -d -c | dd bs=1M conv=fsync
# Inputs: SIZE (default 1G) of "mixed" (25% random, 25% text-like, 50% zero
# runs) and of "random". Each measurement is the best of RUNS (default 3),
# sources warm in the page cache for both tools.
#   benches/image-vs-peers.sh            SIZE=256M RUNS=1 benches/image-vs-peers.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh demo >/dev/null
cargo build --release --locked --bin rackcast >/dev/null 2>&1
RC=$PWD/target/release/rackcast
SIZE=${SIZE:-1G}
RUNS=${RUNS:-3}
W=$(mktemp -d /var/tmp/rackcast-bench.XXXXXX)
trap 'rm -rf "$W"' EXIT

now() { date +%s.%N; }
# best_of CMD...: prints the fastest wall time of RUNS runs, in seconds.
best_of() {
    local best=""
    for _ in $(seq "$RUNS"); do
        rm -f "$W/out.rcimg" "$W/out.zst" "$W/dest"
        local t0 t1
        t0=$(now); "$@" >/dev/null 2>&1; t1=$(now)
        best=$(echo "$t0 $t1 ${best:-999999}" | awk '{d=$2-$1; print (d<$3)?d:$3}')
    done
    echo "$best"
}
peer_create() { zstd -T0 -3 -q -f "$1" -o "$W/out.zst" && sync "$W/out.zst" && b3sum "$1"; }
rc_restore() { "$RC" image restore "$W/keep.rcimg" "$W/dest"; }
peer_restore() { zstd -d -c -q "$W/keep.zst" | dd of="$W/dest" bs=1M conv=fsync status=none; }

echo "machine: $(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r); input $SIZE, best of $RUNS"
printf '%-7s %-34s %9s %10s %12s\n' input tool seconds MB/s stored
declare -A R
for shape in mixed random; do
    src="$W/$shape.raw"
    "$RC" image sample "$src" --size "$SIZE" --shape "$shape" >/dev/null
    bytes=$(stat -c %s "$src")
    cat "$src" >/dev/null
    t_rc=$(best_of "$RC" image create "$src" "$W/out.rcimg")
    "$RC" image create "$src" "$W/keep.rcimg" >/dev/null
    t_peer=$(best_of peer_create "$src")
    zstd -T0 -3 -q -f "$src" -o "$W/keep.zst"
    s_rc=$(stat -c %s "$W/keep.rcimg"); s_peer=$(stat -c %s "$W/keep.zst")
    t_rc_r=$(best_of rc_restore)
    t_peer_r=$(best_of peer_restore)
    mbs() { awk -v b="$bytes" -v t="$1" 'BEGIN{printf "%.1f", b/t/1e6}'; }
    printf '%-7s %-34s %9.3f %10s %12s\n' "$shape" "rackcast image create" "$t_rc" "$(mbs "$t_rc")" "$s_rc"
    printf '%-7s %-34s %9.3f %10s %12s\n' "$shape" "zstd -T0 -3 + sync + b3sum" "$t_peer" "$(mbs "$t_peer")" "$s_peer"
    printf '%-7s %-34s %9.3f %10s\n' "$shape" "rackcast image restore" "$t_rc_r" "$(mbs "$t_rc_r")"
    printf '%-7s %-34s %9.3f %10s\n' "$shape" "zstd -d | dd bs=1M conv=fsync" "$t_peer_r" "$(mbs "$t_peer_r")"
    R[$shape,create]=$(awk -v a="$t_peer" -v b="$t_rc" 'BEGIN{printf "%.2f", a/b}')
    R[$shape,restore]=$(awk -v a="$t_peer_r" -v b="$t_rc_r" 'BEGIN{printf "%.2f", a/b}')
    R[$shape,size]=$(awk -v a="$s_rc" -v b="$s_peer" 'BEGIN{printf "%.3f", a/b}')
done
echo
echo "ratios (peer time / rackcast time; > 1 means rackcast is faster)"
echo "  create  mixed  ${R[mixed,create]}x   (goal >= 1.5x)"
echo "  create  random ${R[random,create]}x   (goal >= 0.95x)"
echo "  restore mixed  ${R[mixed,restore]}x"
echo "  restore random ${R[random,restore]}x"
echo "stored size vs zstd -3: mixed ${R[mixed,size]}x, random ${R[random,size]}x (< 1 means smaller)"

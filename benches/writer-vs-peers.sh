#!/usr/bin/env bash
# rackcast image restore (the agent's io_uring writer) side by side with
#   fio --ioengine=io_uring --rw=write --bs=1M --iodepth=16 --direct=1   (the device ceiling)
#   zstd -d -c IMG.zst | dd oflag=direct bs=1M conv=fsync                (what users do today)
# on a SIZE (default 2G) incompressible ("random") and a "mixed" image, to a
# file on disk and to a loop device backed by a file on the same disk; then a
# --delta restore after changing 5% of the chunks on the target.
# Times are wall clock of the whole command (process start to exit).
# Every rackcast run flushes (fdatasync) and skips read-back (--verify off)
# so it does the same work as fio and dd; images are warm in the page cache.
#   benches/writer-vs-peers.sh          SIZE=512M benches/writer-vs-peers.sh
# Needs root for the loop device (skipped otherwise) and fio, zstd, losetup.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bin rackcast >/dev/null 2>&1
RC=$PWD/target/release/rackcast
SIZE=${SIZE:-2G}
W=$(mktemp -d /var/tmp/rackcast-writer-bench.XXXXXX)
LO=""
cleanup() { if [[ -n "$LO" ]]; then losetup -d "$LO"; fi; rm -rf "$W"; }
trap cleanup EXIT
for t in fio zstd dd; do command -v "$t" >/dev/null || { echo "missing $t"; exit 1; }; done

now() { date +%s.%N; }
# timed CMD...: runs it, prints the wall time in seconds.
timed() { local t0 t1; t0=$(now); "$@" >"$W/last.out" 2>&1 || { cat "$W/last.out" >&2; exit 1; }; t1=$(now); awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b-a}'; }
mbs() { awk -v b="$1" -v t="$2" 'BEGIN{printf "%.0f", b/t/1e6}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", a/b}'; }

rc_restore() { "$RC" image restore "$1" "$2" --verify off --no-resume --state-dir "$W/state" "${@:3}"; }
fio_write() {
    fio --name=ceiling --filename="$1" --ioengine=io_uring --rw=write --bs=1M --iodepth=16 \
        --direct=1 --size="$BYTES" --end_fsync=1 --output="$W/fio.out" >/dev/null
}
zstd_dd() { zstd -d -c -q "$1" | dd of="$2" bs=1M iflag=fullblock oflag=direct conv=fsync,notrunc status=none; }
# change_5pct TARGET CHUNK: overwrites 4 KiB in 5% of the chunks (fixed seed).
change_5pct() {
    local chunks=$((BYTES / $2)) n
    n=$((chunks * 5 / 100))
    shuf -i 0-$((chunks - 1)) -n "$n" --random-source=<(yes) | while read -r c; do
        dd if=/dev/urandom of="$1" bs=4096 count=1 seek=$((c * $2 / 4096 + 3)) conv=notrunc status=none
    done
    sync
}

echo "machine: $(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg); input $SIZE"
printf '%-7s %-6s %-34s %9s %8s\n' image target tool seconds MB/s
SUMMARY=()
for shape in random mixed; do
    "$RC" image sample "$W/$shape.raw" --size "$SIZE" --shape "$shape" >/dev/null
    BYTES=$(stat -c %s "$W/$shape.raw")
    "$RC" image create "$W/$shape.raw" "$W/$shape.rcimg" >/dev/null
    zstd -T0 -3 -q -f "$W/$shape.raw" -o "$W/$shape.zst"
    rm -f "$W/$shape.raw"
    CHUNK=$("$RC" image inspect "$W/$shape.rcimg" --json | awk -F'[:,]' '/"chunk_size"/{gsub(/ /,"",$2); print $2}')
    cat "$W/$shape.rcimg" "$W/$shape.zst" >/dev/null
    targets=(file)
    if [[ $(id -u) -eq 0 ]] && command -v losetup >/dev/null; then targets+=(loop); fi
    for target in "${targets[@]}"; do
        if [[ $target == file ]]; then
            T="$W/dest"; rm -f "$T"; fallocate -l "$BYTES" "$T"
        else
            truncate -s "$BYTES" "$W/loop.bin"
            LO=$(losetup --find --show "$W/loop.bin"); T=$LO
        fi
        # Untimed first pass: every tool then overwrites allocated blocks
        # (a first write into a fresh file or loop backing file pays for
        # block allocation, and fio would pay it alone).
        fio_write "$T"
        t_fio=$(timed fio_write "$T")
        t_dd=$(timed zstd_dd "$W/$shape.zst" "$T")
        t_rc=$(timed rc_restore "$W/$shape.rcimg" "$T")
        change_5pct "$T" "$CHUNK"
        t_delta=$(timed rc_restore "$W/$shape.rcimg" "$T" --delta)
        written=$(awk '/^written/{print $2, $3}' "$W/last.out")
        for row in "fio io_uring qd16 1M direct:$t_fio" "zstd -d | dd oflag=direct:$t_dd" \
                   "rackcast image restore:$t_rc" "rackcast restore --delta (5%):$t_delta"; do
            printf '%-7s %-6s %-34s %9.3f %8s\n' "$shape" "$target" "${row%%:*}" "${row##*:}" "$(mbs "$BYTES" "${row##*:}")"
        done
        SUMMARY+=("$shape/$target: restore = $(awk -v f="$t_fio" -v r="$t_rc" 'BEGIN{printf "%.0f", f/r*100}')% of fio, $(ratio "$t_dd" "$t_rc")x zstd|dd, delta $(ratio "$t_rc" "$t_delta")x faster than full and wrote $written")
        if [[ $target == loop ]]; then losetup -d "$LO"; LO=""; rm -f "$W/loop.bin"; fi
        rm -f "$W/dest"
    done
done
echo
echo "goals: random >= 90% of fio; mixed >= 2x zstd|dd; 5% delta writes ~5% and >= 5x faster than full"
printf '%s\n' "${SUMMARY[@]}"

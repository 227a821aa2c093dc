#!/usr/bin/env bash
# rackcast's filesystem-aware capture and restore against the Clonezilla
# pipeline, side by side in one run, on a generated disk:
#
#   an 8 GiB GPT disk: ESP (FAT32, 512 MiB, 40 MiB of files); ext4 (5 GiB,
#   1.5 GiB of files kept after 2 GiB of other files were written and
#   deleted); swap (512 MiB); XFS (the rest, about 2 GiB, 0.5 GiB of files).
#   File contents are `rackcast image sample` data (mixed: random, text,
#   zero runs), each file its own seed.
#
#   capture:  rackcast image create DISK      vs  sfdisk --dump, then per
#             partition partclone.{fat32,extfs,xfs} -c | zstd -T0 -3
#   restore:  rackcast image restore --grow onto a 12 GiB disk   vs
#             sfdisk, then partclone -r per partition (no growing)
#
# Then the rackcast-restored disk is checked: fsck.fat -n, e2fsck -fn,
# xfs_repair -n clean, every file's BLAKE3 equal to its source (each
# filesystem mounted read-only), the last partition and its XFS grown.
# Caches are dropped before every timed run. Needs root (loop devices,
# mounts) and about 30 GiB in /var/tmp.
#
#   benches/capture-vs-partclone.sh     RACKCAST=path/to/rackcast (skip the build)
#                                       KEEP=1 (keep the work directory)
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $(id -u) -ne 0 ]]; then
    echo "capture-vs-partclone: needs root (loop devices and mounts)" >&2
    exit 2
fi
missing=()
for p in partclone zstd dosfstools xfsprogs e2fsprogs fdisk mtools b3sum; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "installing: ${missing[*]}"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [[ -z ${RACKCAST:-} ]]; then
    cargo build --release --locked --bin rackcast >/dev/null 2>&1
    RACKCAST=$PWD/target/release/rackcast
fi
RC=$RACKCAST

W=$(mktemp -d /var/tmp/rackcast-capture-bench.XXXXXX)
LOOPS=()
MNT=$W/mnt
cleanup() {
    mountpoint -q "$MNT" 2>/dev/null && umount "$MNT"
    for l in "${LOOPS[@]}"; do losetup -d "$l" 2>/dev/null || true; done
    if [[ ${KEEP:-0} == 1 ]]; then echo "kept $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT
mkdir -p "$MNT"

now() { date +%s.%N; }
cold() { sync; echo 3 >/proc/sys/vm/drop_caches; }
# loop VAR FILE OFFSET SIZE: VAR names a loop device over part of FILE
# (not a command substitution: LOOPS must be this shell's, for cleanup).
loop() {
    local d
    d=$(losetup --find --show --offset "$3" --sizelimit "$4" "$2")
    LOOPS+=("$d")
    printf -v "$1" '%s' "$d"
}
# files DIR SEED COUNT SIZE: COUNT sample files of SIZE, seeds SEED...
files() {
    mkdir -p "$1"
    for i in $(seq "$3"); do
        "$RC" image sample "$1/f$i.bin" --size "$4" --seed $(($2 + i)) >/dev/null
    done
}

echo "machine: $(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r)"
echo "generating the disk in $W ..."
MiB=$((1024 * 1024))
DISK=$W/disk.raw
truncate -s 8G "$DISK"
sfdisk -q --no-reread --no-tell-kernel "$DISK" <<'TABLE'
label: gpt
start=2048, size=1048576, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B
size=10485760, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4
size=1048576, type=0657FD6D-A4AB-43C4-84E5-0933C84B4F4F
type=0FC63DAF-8483-4772-8E79-3D69D8477DE4
TABLE
# start and size in bytes of partition N, from the table.
part() {
    local s z
    read -r s z < <(sfdisk -d "$1" | awk -v n="$1$2" '$1 == n {gsub(",", ""); for (i = 1; i <= NF; i++) {if ($i == "start=") s = $(i+1); if ($i == "size=") z = $(i+1)}; print s, z}')
    echo $((s * 512)) $((z * 512))
}
read -r P1 S1 < <(part "$DISK" 1)
read -r P2 S2 < <(part "$DISK" 2)
read -r P3 S3 < <(part "$DISK" 3)
read -r P4 S4 < <(part "$DISK" 4)

files "$W/src/esp" 100 5 8M
files "$W/src/ext4" 200 6 256M
files "$W/gone" 300 8 256M
files "$W/src/xfs" 400 2 256M

loop L1 "$DISK" "$P1" "$S1"
mkfs.vfat -F 32 "$L1" >/dev/null
# mtools, not a mount: this kernel may have no vfat.
mcopy -i "$L1" -s "$W"/src/esp/* ::/
loop L2 "$DISK" "$P2" "$S2"
mkfs.ext4 -q -F -E nodiscard "$L2"
mount "$L2" "$MNT"
cp -r "$W/gone" "$MNT/gone" && sync && rm -rf "$MNT/gone"
cp -r "$W/src/ext4/." "$MNT/"
umount "$MNT"
loop L3 "$DISK" "$P3" "$S3"
mkswap -q "$L3" >/dev/null
loop L4 "$DISK" "$P4" "$S4"
mkfs.xfs -q -f -K "$L4"
mount "$L4" "$MNT" && cp -r "$W/src/xfs/." "$MNT/" && umount "$MNT"
rm -rf "$W/gone"
sync

# Capture.
cold
t0=$(now)
"$RC" image create "$DISK" "$W/disk.rcimg" >"$W/create.txt"
t_rc=$(awk -v a="$t0" -v b="$(now)" 'BEGIN{print b - a}')
s_rc=$(stat -c %s "$W/disk.rcimg")
cold
t0=$(now)
sfdisk --dump "$DISK" >"$W/pc.sfdisk"
partclone.fat32 -q -c -s "$L1" -o - 2>/dev/null | zstd -T0 -3 -q -o "$W/p1.pc.zst"
partclone.extfs -q -c -s "$L2" -o - 2>/dev/null | zstd -T0 -3 -q -o "$W/p2.pc.zst"
partclone.xfs -q -c -s "$L4" -o - 2>/dev/null | zstd -T0 -3 -q -o "$W/p4.pc.zst"
sync
t_pc=$(awk -v a="$t0" -v b="$(now)" 'BEGIN{print b - a}')
s_pc=$(cat "$W"/p*.pc.zst "$W/pc.sfdisk" | wc -c)
sed -n '/^read/,/^chunks/p' "$W/create.txt"
echo "stored per partition: rackcast (image inspect) vs partclone | zstd -3"
"$RC" image inspect "$W/disk.rcimg" --json | awk -F'[:,]' '/"number"/{n=$2} /"stored"/{gsub(/ /, "", $2); print n, $2}' |
    while read -r n bytes; do
        pc=$(stat -c %s "$W/p$n.pc.zst" 2>/dev/null || echo -)
        printf '  part %s  %12s  %12s\n' "$n" "$bytes" "$pc"
    done

# Restore onto 12 GiB disks.
T_RC=$W/target-rc.raw
T_PC=$W/target-pc.raw
truncate -s 12G "$T_RC" "$T_PC"
cold
t0=$(now)
"$RC" image restore "$W/disk.rcimg" "$T_RC" --grow --state-dir "$W" >"$W/restore.txt"
t_rc_r=$(awk -v a="$t0" -v b="$(now)" 'BEGIN{print b - a}')
cold
t0=$(now)
sfdisk -q --no-reread --no-tell-kernel "$T_PC" <"$W/pc.sfdisk"
loop R1 "$T_PC" "$P1" "$S1"
loop R2 "$T_PC" "$P2" "$S2"
loop R4 "$T_PC" "$P4" "$S4"
zstd -d -c -q "$W/p1.pc.zst" | partclone.fat32 -q -r -s - -o "$R1" 2>/dev/null
zstd -d -c -q "$W/p2.pc.zst" | partclone.extfs -q -r -s - -o "$R2" 2>/dev/null
zstd -d -c -q "$W/p4.pc.zst" | partclone.xfs -q -r -s - -o "$R4" 2>/dev/null
sync
t_pc_r=$(awk -v a="$t0" -v b="$(now)" 'BEGIN{print b - a}')
grep -E '^(unused|gpt|grown)' "$W/restore.txt" || true

# Check the rackcast-restored disk.
read -r Q4 Z4 < <(part "$T_RC" 4)
loop C1 "$T_RC" "$P1" "$S1"
loop C2 "$T_RC" "$P2" "$S2"
loop C4 "$T_RC" "$Q4" "$Z4"
sfdisk -V "$T_RC" >/dev/null
fsck.fat -n "$C1" >/dev/null
e2fsck -fn "$C2" >/dev/null
xfs_repair -n "$C4" >/dev/null 2>&1
check_files() { # DEV SRC
    mount -o ro "$1" "$MNT"
    (cd "$2" && b3sum $(find . -type f | sort)) >"$W/want.b3"
    (cd "$MNT" && b3sum --check "$W/want.b3" >/dev/null)
    umount "$MNT"
}
rm -rf "$W/esp-back" && mkdir "$W/esp-back"
mcopy -i "$C1" -s ::/* "$W/esp-back/"
(cd "$W/src/esp" && b3sum $(find . -type f | sort)) >"$W/want.b3"
(cd "$W/esp-back" && b3sum --check "$W/want.b3" >/dev/null)
check_files "$C2" "$W/src/ext4"
check_files "$C4" "$W/src/xfs"
mount -o ro "$C4" "$MNT"
xfs_size=$(df -B1 --output=size "$MNT" | tail -1)
umount "$MNT"
echo "checks: sfdisk -V, fsck.fat -n, e2fsck -fn, xfs_repair -n clean; every file's BLAKE3 equal; partition 4 grown to $((Z4 / MiB)) MiB, its XFS to $((xfs_size / MiB)) MiB (from $((S4 / MiB)) MiB)"

echo
printf '%-44s %10s %12s\n' "8 GiB disk, 2 GiB of files, 2 GiB deleted" seconds stored
printf '%-44s %10.2f %12s\n' "rackcast image create" "$t_rc" "$s_rc"
printf '%-44s %10.2f %12s\n' "sfdisk --dump + partclone -c | zstd -T0 -3" "$t_pc" "$s_pc"
printf '%-44s %10.2f\n' "rackcast image restore --grow (12 GiB)" "$t_rc_r"
printf '%-44s %10.2f\n' "sfdisk + zstd -d | partclone -r (no grow)" "$t_pc_r"
awk -v a="$t_pc" -v b="$t_rc" -v c="$s_pc" -v d="$s_rc" -v e="$t_pc_r" -v f="$t_rc_r" 'BEGIN{
    printf "capture: rackcast %.2fx faster, stores %.5fx the pipeline'"'"'s bytes (%+d); restore: %.2fx faster\n", a/b, d/c, d - c, e/f}'

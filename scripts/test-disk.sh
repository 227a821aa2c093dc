#!/usr/bin/env bash
# Makes a GPT disk image for filesystem-aware capture tests and benches.
#
#   scripts/test-disk.sh OUT [MIB]        (default 64 MiB; at least 32)
#
# OUT holds, from 1 MiB: an EFI system partition (8 MiB, FAT12 holding
# EFI/BOOT/BOOTX64.EFI, 1 MiB of noise), Linux swap (8 MiB), and last an
# ext4 filled from OUT.files (a 3 MiB file of noise, text, a directory) to
# the disk's end (MIB - 18 MiB, from 17 MiB). Every
# block the filesystems leave free holds noise, as on a disk that held other
# data, so a capture that stores free blocks shows it. OUT.files is kept for
# comparing what a restore holds. Needs sfdisk (fdisk), mkfs.ext4
# (e2fsprogs), mkfs.vfat (dosfstools), mtools and mkswap (util-linux).
set -euo pipefail
out=${1:?usage: $0 OUT [MIB]}
mib=${2:-64}
((mib >= 32)) || { echo "$0: at least 32 MiB" >&2; exit 2; }

noise() { head -c "$2" /dev/urandom >"$1"; }
ext_mib=$((mib - 1 - 8 - 8 - 1))   # the GPT, the ESP, the swap, the backup GPT

files=$out.files
rm -rf "$files" && mkdir -p "$files/etc"
noise "$files/big.bin" $((3 * 1024 * 1024 + 123))
echo rack12-u01 >"$files/etc/hostname"
seq 1 40000 >"$files/notes.txt"

noise "$out" $((mib * 1024 * 1024))
sfdisk -q --no-reread --no-tell-kernel "$out" <<TABLE
label: gpt
start=2048, size=$((8 * 2048)), type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B
size=$((8 * 2048)), type=0657FD6D-A4AB-43C4-84E5-0933C84B4F4F
size=$((ext_mib * 2048)), type=0FC63DAF-8483-4772-8E79-3D69D8477DE4
TABLE

part=$(mktemp -p "$(dirname "$out")")
trap 'rm -f "$part"' EXIT
noise "$part" $((8 * 1024 * 1024))
mkfs.vfat "$part" >/dev/null
noise "$files.efi" $((1024 * 1024))
mmd -i "$part" ::/EFI ::/EFI/BOOT
mcopy -i "$part" "$files.efi" ::/EFI/BOOT/BOOTX64.EFI
rm -f "$files.efi"
dd if="$part" of="$out" bs=1M seek=1 conv=notrunc status=none
noise "$part" $((8 * 1024 * 1024))
mkswap -q "$part" >/dev/null
dd if="$part" of="$out" bs=1M seek=9 conv=notrunc status=none
noise "$part" $((ext_mib * 1024 * 1024))
mkfs.ext4 -F -q -b 4096 -E nodiscard -d "$files" "$part"
dd if="$part" of="$out" bs=1M seek=17 conv=notrunc status=none

#!/usr/bin/env bash
# Fetches what `rackcast env build` needs into DEST without installing
# anything: Debian's cloud kernel (linux-image-cloud-amd64 resolves to a
# versioned linux-image-*-cloud-amd64 package) and busybox-static (which
# conflicts with the dynamic `busybox` package, so it is extracted, not
# installed). Quick when DEST is already complete.
#
#   scripts/fetch-kernel.sh DEST
#
# Leaves in DEST:
#   vmlinuz       the kernel             -> root/boot/vmlinuz-VERSION
#   modules       its modules            -> root/lib/modules/VERSION
#   busybox       busybox-static's /bin/busybox
#   VERSION       the kernel version and the two package versions
#   root/         the kernel package's files (dpkg -x)
#
# Then: rackcast env build --kernel DEST/vmlinuz --modules DEST/modules \
#         --busybox DEST/busybox -o ENV_DIR
set -euo pipefail

die() {
    echo "fetch-kernel: $*" >&2
    exit 1
}

[[ $# -eq 1 ]] || die "usage: $0 DEST"
dest=$1
meta=linux-image-cloud-amd64

if [[ -f $dest/VERSION && -e $dest/vmlinuz && -d $dest/modules/kernel && -x $dest/busybox ]]; then
    echo "fetch-kernel: $dest has $(head -n1 "$dest/VERSION")"
    exit 0
fi

for tool in apt-get apt-cache dpkg; do
    command -v "$tool" >/dev/null || die "$tool not found: this script needs Debian's apt and dpkg"
done

# The versioned kernel package the meta-package depends on, e.g.
# linux-image-6.1.0-57-cloud-amd64 (refreshing the package lists once if apt
# does not know the meta-package yet).
versioned() {
    apt-cache depends "$meta" 2>/dev/null |
        awk '$1 == "Depends:" && $2 ~ /^linux-image-.*-cloud-amd64$/ { print $2; exit }'
}
pkg=$(versioned || true)
if [[ -z $pkg ]]; then
    echo "fetch-kernel: apt does not know $meta; running apt-get update"
    sudo=""
    if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
    $sudo apt-get update -qq || die "apt-get update failed"
    pkg=$(versioned || true)
fi
[[ -n $pkg ]] || die "cannot resolve $meta to a versioned kernel package (is this Debian amd64 with main enabled?)"
kver=${pkg#linux-image-}

mkdir -p "$dest"
dest=$(cd "$dest" && pwd)
work=$(mktemp -d "$dest/.fetch.XXXXXX")
trap 'rm -rf "$work"' EXIT
# apt's sandbox user must be able to write where the packages land.
chmod 0777 "$work"

echo "fetch-kernel: downloading $pkg and busybox-static"
(cd "$work" && apt-get download -qq "$pkg" busybox-static 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2) ||
    true
kdeb=$(ls "$work"/"$pkg"_*.deb 2>/dev/null | head -n1)
bdeb=$(ls "$work"/busybox-static_*.deb 2>/dev/null | head -n1)
[[ -n $kdeb ]] || die "apt-get download $pkg failed (network or package lists?)"
[[ -n $bdeb ]] || die "apt-get download busybox-static failed (network or package lists?)"

echo "fetch-kernel: extracting $(basename "$kdeb")"
dpkg -x "$kdeb" "$work/root" || die "dpkg -x $kdeb failed"
dpkg -x "$bdeb" "$work/bb" || die "dpkg -x $bdeb failed"
[[ -f $work/root/boot/vmlinuz-$kver ]] || die "$pkg has no boot/vmlinuz-$kver"
[[ -d $work/root/lib/modules/$kver/kernel ]] || die "$pkg has no lib/modules/$kver"
[[ -x $work/bb/bin/busybox ]] || die "busybox-static has no bin/busybox"

# Replace the old contents only once the new ones are complete.
rm -rf "$dest/root" "$dest/vmlinuz" "$dest/modules" "$dest/busybox" "$dest/VERSION"
mv "$work/root" "$dest/root"
mv "$work/bb/bin/busybox" "$dest/busybox"
ln -s "root/boot/vmlinuz-$kver" "$dest/vmlinuz"
ln -s "root/lib/modules/$kver" "$dest/modules"
{
    echo "$kver"
    echo "kernel-package $(dpkg-deb -f "$kdeb" Package) $(dpkg-deb -f "$kdeb" Version)"
    echo "busybox-package busybox-static $(dpkg-deb -f "$bdeb" Version)"
} >"$dest/VERSION"
echo "fetch-kernel: $dest has $kver"

#!/usr/bin/env bash
# Builds rackcast_VERSION_ARCH.deb: the rackcast and rackcast-agent
# binaries (stripped), the systemd units rackcast-server.service and
# rackcast-netboot.service, an example /etc/rackcast.toml and
# /etc/default/rackcast-netboot (both conffiles), and the README. It uses
# dpkg-deb alone, so nothing beyond Debian's dpkg is needed.
#
# Usage: scripts/deb.sh [--bin-dir DIR] [--out DIR]
#   --bin-dir DIR  take the binaries from DIR (default: build them with
#                  `cargo build --release` and use target/release)
#   --out DIR      where the .deb goes (default: target/deb)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin_dir="" out="$root/target/deb"
while (($#)); do
    case $1 in
        --bin-dir) bin_dir=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "deb.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [[ -z $bin_dir ]]; then
    echo "building the release binaries (cargo build --release)..." >&2
    (cd "$root" && cargo build --release --locked -p rackcast-tools -p rackcast-agent)
    bin_dir="$root/target/release"
fi
for b in rackcast rackcast-agent; do
    [[ -x $bin_dir/$b ]] || { echo "deb.sh: no $bin_dir/$b: build it first" >&2; exit 1; }
done

version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -1)
arch=$(dpkg --print-architecture)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
pkg="$stage/rackcast"
install -d "$pkg/DEBIAN" "$pkg/usr/bin" "$pkg/lib/systemd/system" \
    "$pkg/etc/default" "$pkg/usr/share/doc/rackcast"
for b in rackcast rackcast-agent; do
    # Debug info stays out of the package (the test profile's is ~90% of the file).
    objcopy --strip-debug --strip-unneeded "$bin_dir/$b" "$pkg/usr/bin/$b"
    chmod 0755 "$pkg/usr/bin/$b"
done
install -m 0644 "$root/packaging/systemd/rackcast-server.service" \
    "$root/packaging/systemd/rackcast-netboot.service" "$pkg/lib/systemd/system/"
install -m 0644 "$root/packaging/etc/rackcast.toml" "$pkg/etc/rackcast.toml"
install -m 0644 "$root/packaging/etc/rackcast-netboot" "$pkg/etc/default/rackcast-netboot"
install -m 0644 "$root/README.md" "$pkg/usr/share/doc/rackcast/README.md"
printf 'rackcast\nLicense: %s\n' "$(sed -n 's/^license = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -1)" \
    > "$pkg/usr/share/doc/rackcast/copyright"
printf '/etc/rackcast.toml\n/etc/default/rackcast-netboot\n' > "$pkg/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)
cat > "$pkg/DEBIAN/control" <<CONTROL
Package: rackcast
Version: $version
Architecture: $arch
Maintainer: rackcast developers <rackcast@localhost>
Installed-Size: $size
Depends: libc6 (>= 2.34)
Recommends: ipmitool, zstd
Section: admin
Priority: optional
Homepage: https://github.com/rackcast/rackcast
Description: multicast disk imaging for whole racks
 rackcast captures a disk image once, multicasts it to every target of a
 rack with forward error correction, and verifies every byte: a deployment
 server (REST API, scheduler, image library, netboot, BMC power control)
 and the target agent.
CONTROL
mkdir -p "$out"
deb="$out/rackcast_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$pkg" "$deb" >/dev/null
echo "$deb"

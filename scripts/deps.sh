#!/usr/bin/env bash
# Installs what rackcast's demo and tests need on Debian: the peer tools and
# firmware the tests run for real, and cargo-fuzz. Quiet and quick when
# everything is already there. Usage: scripts/deps.sh demo|test
set -euo pipefail

want=(zstd b3sum)
if [[ "${1:-test}" == test ]]; then
    want+=(qemu-system-x86 ovmf ipxe-qemu busybox atftp tftp-hpa curl dnsmasq
           iproute2 iptables udpcast uftp fio util-linux cpio efibootmgr
           ipxe grub-efi-amd64-bin grub-common mtools e2fsprogs fdisk
           dosfstools xfsprogs qemu-utils ntfs-3g
           ipmitool openipmi python3-venv python3-libvirt python3-bcrypt
           libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients
           prometheus systemd binutils chromium chromium-driver postgresql)
fi

missing=()
for p in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "installing Debian packages: ${missing[*]}"
    sudo=""
    if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The automation-environment test boots Debian's cloud kernel with a
# busybox-static initramfs. busybox-static conflicts with (and would remove)
# the dynamic busybox above, so it is extracted into the cache with the
# kernel rather than installed.
if [[ "${1:-test}" == test ]]; then
    kcache=${RACKCAST_KERNEL_CACHE:-/var/cache/rackcast/kernel}
    if [[ $(id -u) -ne 0 ]] && ! { mkdir -p "$kcache" 2>/dev/null && [[ -w $kcache ]]; }; then
        sudo mkdir -p "$kcache" && sudo chown "$(id -u):$(id -g)" "$kcache"
    fi
    "$(dirname "$0")/fetch-kernel.sh" "$kcache"
fi

# The BMC tests (engine/bmc/tests, tests/server/bmc.rs) run the Redfish
# emulator sushy-tools on libvirt's built-in test:///default driver
# (python3-libvirt, in libvirt0; no daemon); the zero-touch test
# (tests/e2e/zero_touch.rs) runs sushy-tools and virtualbmc in front of a
# libvirt daemon of its own (libvirt-daemon, -driver-qemu; no systemd). Debian's /usr/bin/python3, not a pyenv shim on PATH: only it
# sees python3-libvirt through --system-site-packages.
if [[ "${1:-test}" == test ]]; then
    venv=${RACKCAST_VENV:-/var/cache/rackcast/venv}
    if ! "$venv/bin/python" -c 'import importlib.metadata as m, sys; sys.exit(m.version("sushy-tools") != "2.2.0" or m.version("virtualbmc") != "3.3.0")' 2>/dev/null; then
        echo "installing sushy-tools 2.2.0 and virtualbmc 3.3.0 into $venv (once)"
        if [[ $(id -u) -ne 0 ]] && ! { mkdir -p "$venv" 2>/dev/null && [[ -w $venv ]]; }; then
            sudo mkdir -p "$venv" && sudo chown "$(id -u):$(id -g)" "$venv"
        fi
        /usr/bin/python3 -m venv --system-site-packages "$venv"
        "$venv/bin/pip" install -q --disable-pip-version-check sushy-tools==2.2.0 virtualbmc==3.3.0
    fi
fi

if [[ "${1:-test}" == test ]] && ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz (once)"
    cargo install cargo-fuzz --locked --quiet
fi

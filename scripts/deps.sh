#!/usr/bin/env bash
# Installs what rackcast's demo and tests need on Debian: the peer tools and
# firmware the tests run for real, and cargo-fuzz. Quiet and quick when
# everything is already there. Usage: scripts/deps.sh demo|test
set -euo pipefail

want=(zstd b3sum)
if [[ "${1:-test}" == test ]]; then
    want+=(qemu-system-x86 ovmf ipxe-qemu busybox atftp tftp-hpa curl dnsmasq
           iproute2 iptables udpcast uftp fio util-linux)
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

if [[ "${1:-test}" == test ]] && ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz (once)"
    cargo install cargo-fuzz --locked --quiet
fi

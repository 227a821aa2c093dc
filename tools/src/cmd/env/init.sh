#!/bin/sh
# rackcast automation environment: /init, PID 1 of the initramfs that
# `rackcast env build` assembles (busybox sh). It mounts the kernel file
# systems, loads the NIC and disk modules, brings every ethernet interface up
# by DHCP and runs the rackcast agent with what the kernel command line says:
#
#   rackcast.server=URL       the deployment server
#   rackcast.token=TOKEN      this target's one-time boot token (the server mints it)
#   rackcast.env=NAME         this environment's name (default: the build's)
#   rackcast.disk=PATH        the disk tasks work on (default: the only disk,
#                             when there is one; else tasks must name theirs)
#   rackcast.mac=MAC          the target's identity (also BOOTIF=01-aa-bb-...;
#                             default: the agent's, the NIC routing to the server)
#   rackcast.dhcp=N           DHCP discovers per interface (default 4; 0: none)
#   rackcast.agent_timeout=S  stop the agent after S seconds
#   rackcast.debug=1          a shell on the console when the agent exits
#   rackcast.shell=1          the maintenance shell: a root shell on the console
#                             instead of the agent (the console menu's choice)
#   rackcast.poweroff=1       power off, not reboot, when the agent exits
#
# Every line it prints starts with "rackcast-env: " and ends with the
# seconds since the kernel started, e.g. "[3.12 s]".

export PATH=/bin:/sbin:/usr/bin:/usr/sbin
export HOME=/root
umask 022

mkdir -p /proc /sys /dev /run /tmp
mount -t proc -o nosuid,nodev,noexec proc /proc
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
mount -t devtmpfs -o nosuid,mode=0755 devtmpfs /dev
mkdir -p /dev/pts /dev/shm /run/rackcast
mount -t devpts -o nosuid,noexec,gid=5,mode=0620 devpts /dev/pts
exec </dev/console >/dev/console 2>&1

. /etc/rackcast/build.conf

# Each line ends with the seconds since the kernel started.
say() { echo "rackcast-env: $* [$(cut -d' ' -f1 /proc/uptime) s]"; }

# Waits up to $1 tenths of a second for the command in $2 to succeed.
wait_for() {
    n=0
    while [ "$n" -lt "$1" ]; do
        eval "$2" && return 0
        usleep 100000
        n=$((n + 1))
    done
    return 1
}

server= token= env=$RACKCAST_ENV_NAME disk= mac= dhcp=4 agent_timeout= debug= poweroff= shell=
set -f
for arg in $(cat /proc/cmdline); do
    case "$arg" in
    rackcast.server=*) server=${arg#*=} ;;
    rackcast.token=*) token=${arg#*=} ;;
    rackcast.env=*) env=${arg#*=} ;;
    rackcast.disk=*) disk=${arg#*=} ;;
    rackcast.mac=*) mac=${arg#*=} ;;
    rackcast.dhcp=*) dhcp=${arg#*=} ;;
    rackcast.agent_timeout=*) agent_timeout=${arg#*=} ;;
    rackcast.debug | rackcast.debug=1) debug=1 ;;
    rackcast.poweroff | rackcast.poweroff=1) poweroff=1 ;;
    rackcast.shell | rackcast.shell=1) shell=1 ;;
    BOOTIF=01-*) [ -n "$mac" ] || mac=$(echo "${arg#BOOTIF=01-}" | tr - :) ;;
    esac
done
set +f
case "$dhcp" in '' | *[!0-9]*) dhcp=4 ;; esac

say "init: kernel $(uname -r), environment $RACKCAST_ENV_NAME, built with rackcast $RACKCAST_VERSION"

loaded=
for m in $RACKCAST_MODULES; do
    name=${m##*/}
    name=$(echo "${name%.ko}" | tr - _)
    # efivarfs refuses to load without UEFI firmware.
    [ "$name" = efivarfs ] && [ ! -d /sys/firmware/efi ] && continue
    if insmod "/lib/modules/$RACKCAST_KVER/$m" 2>/run/rackcast/insmod.err; then
        loaded="$loaded $name"
    elif ! grep -q 'File exists' /run/rackcast/insmod.err; then
        say "insmod $name failed: $(cat /run/rackcast/insmod.err)"
    fi
done
say "modules loaded:${loaded:- none}"

# UEFI: the agent sets a one-time network boot with efibootmgr.
if [ -d /sys/firmware/efi ]; then
    mount -t efivarfs -o nosuid,nodev,noexec efivarfs /sys/firmware/efi/efivars 2>/dev/null
    if command -v efibootmgr >/dev/null; then
        say "UEFI firmware, $(efibootmgr 2>/dev/null | grep -c '^Boot[0-9A-Fa-f]') boot entries (efibootmgr)"
    else
        say "UEFI firmware, but no efibootmgr: the agent cannot set a one-time network boot"
    fi
else
    say "BIOS firmware"
fi

nics() {
    for p in /sys/class/net/*; do
        n=${p##*/}
        [ "$n" != lo ] && [ "$(cat "$p/type" 2>/dev/null)" = 1 ] && echo "$n"
    done
}
disks() {
    for p in /sys/block/*; do
        d=${p##*/}
        case "$d" in loop* | ram* | zram* | sr* | fd* | '*') continue ;; esac
        echo "$d"
    done
}
# Drivers probe as they load, but give slow devices a moment.
wait_for 50 '[ -n "$(nics)" ]' || say "no ethernet interface found"
wait_for 20 '[ -n "$(disks)" ]' || say "no disk found"

ip link set lo up
for n in $(nics); do
    say "$n present ($(cat "/sys/class/net/$n/address"))"
    ip link set "$n" up
done
fixed=
for d in $(disks); do
    say "$d present ($(($(cat "/sys/block/$d/size") * 512)) bytes)"
    [ "$(cat "/sys/block/$d/removable" 2>/dev/null)" = 1 ] || fixed="$fixed $d"
done
if [ -z "$disk" ]; then
    set -- $fixed
    if [ $# -eq 1 ]; then
        disk=/dev/$1
    elif [ $# -gt 1 ]; then
        say "$# disks and no rackcast.disk=: tasks must name theirs"
    fi
fi

# DHCP on every interface at once; each udhcpc stays behind to renew.
if [ "$dhcp" -gt 0 ]; then
    for n in $(nics); do
        udhcpc -i "$n" -s /etc/udhcpc/default.script -t "$dhcp" -T 2 -A 1 -n \
            -p "/run/udhcpc.$n.pid" >"/run/rackcast/udhcpc.$n.log" 2>&1 &
    done
    wait
fi
leased=
for n in $(nics); do
    [ -f "/run/rackcast/lease.$n" ] && leased="$leased $n"
done
[ -n "$leased" ] || say "no DHCP lease on any interface; the agent starts anyway and retries"

if [ -n "$shell" ]; then
    say "rackcast.shell: maintenance shell on the console, no agent; exit it to reboot"
    setsid cttyhack sh
    sync
    say "rebooting"
    reboot -f
    while :; do sleep 3600; done
fi

set -- --on-reboot system
shown="rackcast-agent --on-reboot system"
if [ -n "$server" ]; then
    set -- "$@" --server "$server"
    shown="$shown --server $server"
else
    say "no rackcast.server= on the kernel command line"
fi
if [ -n "$token" ]; then
    # In a file only root reads, so `ps` never shows it.
    (umask 077 && printf '%s\n' "$token" >/run/rackcast/token)
    set -- "$@" --token-file /run/rackcast/token
    shown="$shown --token-file /run/rackcast/token"
fi
# The server's CA, when `rackcast env build --server-ca` carried one.
if [ -f /etc/rackcast/ca.pem ]; then
    set -- "$@" --ca /etc/rackcast/ca.pem
    shown="$shown --ca /etc/rackcast/ca.pem"
fi
[ -n "$mac" ] && set -- "$@" --mac "$mac" && shown="$shown --mac $mac"
[ -n "$disk" ] && set -- "$@" --disk "$disk" && shown="$shown --disk $disk"
[ -n "$env" ] && set -- "$@" --env "$env" && shown="$shown --env $env"

export LD_LIBRARY_PATH="$RACKCAST_LIBPATH"
say "agent binary: $(rackcast-agent --version 2>&1)"
say "up, agent starting: $shown"
if [ -n "$agent_timeout" ]; then
    timeout "$agent_timeout" rackcast-agent "$@"
else
    rackcast-agent "$@"
fi
rc=$?
unset LD_LIBRARY_PATH
say "agent exited with status $rc"

if [ -n "$debug" ]; then
    say "rackcast.debug: shell on the console; exit it to continue"
    setsid cttyhack sh
fi
sync
if [ -n "$poweroff" ]; then
    say "powering off"
    poweroff -f
else
    say "rebooting"
    reboot -f
fi
# PID 1 must never exit.
while :; do sleep 3600; done

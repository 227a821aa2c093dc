#!/bin/sh
# udhcpc's event script in the rackcast automation environment (after
# busybox's examples/udhcp/simple.script): sets the address, default route
# and resolv.conf, and leaves /run/rackcast/lease.IFACE for /init.

[ -n "$1" ] || { echo "should be called from udhcpc"; exit 1; }
say() { echo "rackcast-env: $* [$(cut -d' ' -f1 /proc/uptime) s]" >/dev/console; }

case "$1" in
deconfig)
    ip -4 addr flush dev "$interface"
    ip link set dev "$interface" up
    rm -f "/run/rackcast/lease.$interface" "/run/rackcast/resolv.$interface"
    ;;
renew | bound)
    # `replace` keeps a renewed address (and its connections) in place.
    ip addr replace "$ip/${mask:-24}" ${broadcast:+broadcast "$broadcast"} dev "$interface"
    if [ -n "$router" ]; then
        # One default route per interface, ordered by interface index.
        metric=$(($(cat "/sys/class/net/$interface/ifindex") * 10))
        while ip route del default dev "$interface" 2>/dev/null; do :; done
        for r in $router; do
            [ "$mask" = 32 ] && ip route add "$r" dev "$interface"
            ip route add default via "$r" dev "$interface" metric "$metric"
            metric=$((metric + 1))
        done
    fi
    {
        [ -n "$domain" ] && echo "search $domain"
        for d in $dns; do echo "nameserver $d"; done
    } >"/run/rackcast/resolv.$interface"
    cat /run/rackcast/resolv.* >/etc/resolv.conf 2>/dev/null
    [ "$1" = bound ] && say "$interface lease $ip/${mask:-24}${router:+ router $router}${dns:+ dns $dns}${serverid:+ from $serverid}"
    echo "$ip" >"/run/rackcast/lease.$interface"
    ;;
leasefail | nak)
    [ "$1" = nak ] && say "$interface: DHCP NAK ${message:-}"
    ;;
esac
exit 0

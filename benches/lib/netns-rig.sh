# shellcheck shell=bash
# A throwaway L2 rig of network namespaces, sourced by the cast benchmarks.
#
#   rig_up N      a "switch" namespace holding bridge br0 (multicast snooping
#                 off, so every port gets every frame, like an unmanaged
#                 switch), a sender namespace (10.77.0.1) and N receiver
#                 namespaces (10.77.0.2...), each joined to the bridge by a
#                 veth pair: eth0 inside the host, p<idx> in the switch;
#                 224.0.0.0/4 routed to eth0 everywhere.
#   rig_loss PCT  drop PCT% of the UDP packets arriving in every receiver
#                 (iptables -m statistic in the receivers' own namespaces)
#   rig_slow I R  limit receiver I's port (egress toward it) to R with tc tbf
#   rig_down      remove everything rig_up / rig_loss / rig_slow made
#
# RIG_MTU (default 1500) is every link's MTU: veths and the bridge.
#
# Names: RIG_TAG (set by the caller, unique per run: include $$). Everything
# lives inside namespaces this file creates; nothing outside them is touched.
# The caller's EXIT trap must call rig_down.

RIG_TAG=${RIG_TAG:?set RIG_TAG (unique per run) before sourcing netns-rig.sh}
RIG_SW=${RIG_TAG}sw
RIG_MTU=${RIG_MTU:-1500}
RIG_SND=${RIG_TAG}s
RIG_NSS=()    # every namespace created, switch last
RIG_RCV=()    # receiver namespaces, index 1..N (index 0 unused)
RIG_LOSS=""   # current loss rule percentage ("" = none)
RIG_SLOW=()   # switch ports with a tbf qdisc

rig_ns() { # name index: a host namespace on the bridge as 10.77.0.<index>
    local ns=$1 idx=$2
    ip netns add "$ns"
    RIG_NSS=("$ns" "${RIG_NSS[@]}")
    ip -n "$ns" link set lo up
    ip link add eth0 netns "$ns" mtu "$RIG_MTU" type veth peer name "p$idx" netns "$RIG_SW" mtu "$RIG_MTU"
    ip -n "$RIG_SW" link set "p$idx" master br0
    ip -n "$RIG_SW" link set "p$idx" up
    ip -n "$ns" addr add "10.77.0.$idx/24" brd + dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" route add 224.0.0.0/4 dev eth0
}

rig_up() { # N receivers
    local n=$1 i
    ip netns add "$RIG_SW"
    RIG_NSS=("$RIG_SW")
    ip -n "$RIG_SW" link set lo up
    ip -n "$RIG_SW" link add br0 mtu "$RIG_MTU" type bridge mcast_snooping 0 stp_state 0
    ip -n "$RIG_SW" link set br0 up
    rig_ns "$RIG_SND" 1
    RIG_RCV=("")
    for i in $(seq "$n"); do
        rig_ns "${RIG_TAG}r$i" $((i + 1))
        RIG_RCV+=("${RIG_TAG}r$i")
    done
    # wait until every port forwards (no STP, but the carrier comes up async)
    for _ in $(seq 50); do
        if ! ip -n "$RIG_SW" -o link show master br0 | grep -qv 'state UP'; then break; fi
        sleep 0.1
    done
}

rig_rule() { # -A|-D pct ns
    ip netns exec "$3" iptables -w "$1" INPUT -p udp -m statistic --mode random \
        --probability "$(awk -v p="$2" 'BEGIN{printf "%.4f", p/100}')" -j DROP
}

rig_loss() { # pct (0 removes)
    local pct=$1 i
    if [ -n "$RIG_LOSS" ]; then
        for ((i = 1; i < ${#RIG_RCV[@]}; i++)); do rig_rule -D "$RIG_LOSS" "${RIG_RCV[$i]}" || true; done
        RIG_LOSS=""
    fi
    if awk -v p="$pct" 'BEGIN{exit !(p > 0)}'; then
        for ((i = 1; i < ${#RIG_RCV[@]}; i++)); do rig_rule -A "$pct" "${RIG_RCV[$i]}"; done
        RIG_LOSS=$pct
    fi
}

rig_slow() { # receiver-index rate(tc syntax, e.g. 50mbit): tbf on the switch port toward it
    local port="p$(($1 + 1))" rate=$2 bps burst
    bps=$(tc_bits "$rate")
    burst=$((bps / 8 / 100)) # 10 ms worth, at least 64 KiB
    [ "$burst" -ge 65536 ] || burst=65536
    ip netns exec "$RIG_SW" tc qdisc add dev "$port" root tbf rate "$rate" burst "$burst" latency 50ms
    RIG_SLOW+=("$port")
}

rig_unslow() {
    local p
    for p in "${RIG_SLOW[@]}"; do ip netns exec "$RIG_SW" tc qdisc del dev "$p" root 2>/dev/null || true; done
    RIG_SLOW=()
}

tc_bits() { # tc rate (e.g. 80mbit, 2gbit, 500kbit, 1000000) -> bits/s
    awk -v r="$1" 'BEGIN{ m = 1; v = r
        if (r ~ /[gG]bit$/) m = 1e9; else if (r ~ /[mM]bit$/) m = 1e6; else if (r ~ /[kK]bit$/) m = 1e3
        sub(/[a-zA-Z]+$/, "", v); printf "%d", v * m }'
}

rig_down() { # kill what runs inside our namespaces (by PID), remove rules, qdiscs, namespaces
    local ns p
    rig_unslow 2>/dev/null || true
    rig_loss 0 2>/dev/null || true
    for ns in "${RIG_NSS[@]}"; do
        for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
    done
    for ns in "${RIG_NSS[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
    RIG_NSS=()
    RIG_RCV=()
}

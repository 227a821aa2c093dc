#!/usr/bin/env bash
# rackcast netboot against its peers, side by side, one run (a benchmark, not
# a test). Needs root (network namespaces) and atftp, dnsmasq; tftpd-hpa and
# atftpd (whose Debian packages conflict) are used from PATH when installed,
# otherwise unpacked with `apt-get download` + `dpkg -x` into a temp dir.
#
#   1. a 64 MiB file fetched by atftp at blksize 1468, windowsize 1, 4, 16;
#   2. 100 concurrent atftp clients fetching 16 MiB each (blksize 1468);
#   3. proxy-DHCP offer latency under 1000 PXE DISCOVERs/s (dhcp_load example).
#
# Each server runs alone in a network namespace of its own on 127.0.0.1:69
# (dnsmasq cannot move TFTP off port 69); the DHCP load runs across a veth
# pair between two namespaces. Everything started is killed by PID and every
# namespace deleted on exit.
#
# Usage: sudo benches/netboot-vs-peers.sh        (env: RACKCAST, DHCP_LOAD,
#        DHCP_SECS=10, CLIENTS=100, SKIP_BUILD=1, ONLY="rackcast dnsmasq",
#        CASES="many" to run only some of w1 w4 w16 many, NO_DHCP=1)
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
RACKCAST=${RACKCAST:-$REPO/target/release/rackcast}
DHCP_LOAD=${DHCP_LOAD:-$REPO/target/release/examples/dhcp_load}
CLIENTS=${CLIENTS:-100}
CASES=${CASES:-w1 w4 w16 many}
DHCP_SECS=${DHCP_SECS:-10}
BLK=1468

if [ "$(id -u)" != 0 ]; then
    echo "needs root (network namespaces)" >&2
    exit 1
fi
for t in ip atftp dnsmasq cmp; do
    command -v "$t" >/dev/null || { echo "missing $t" >&2; exit 1; }
done
if [ -z "${SKIP_BUILD:-}" ]; then
    (cd "$REPO" && cargo build --release -q -p rackcast-tools \
        && cargo build --release -q -p rackcast-netboot --example dhcp_load)
fi

WORK=$(mktemp -d /tmp/rackcast-netboot-bench.XXXXXX)
TAG=rcb$(( $$ % 100000 ))
PIDS=()
NSS=()

cleanup() {
    set +e
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
    for n in "${NSS[@]}"; do
        for p in $(ip netns pids "$n" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
        ip netns del "$n" 2>/dev/null
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

newns() { # name -> creates and records the namespace, lo up
    ip netns add "$1"
    NSS+=("$1")
    ip -n "$1" link set lo up
}

# --- peers -------------------------------------------------------------------
LIBS=""
find_peer() { # binary package -> path on stdout (each package in its own dir:
    # atftpd also ships an in.tftpd)
    local bin=$1 pkg=$2 dir=$WORK/pkgs/$2
    if command -v "$bin" >/dev/null; then command -v "$bin"; return; fi
    mkdir -p "$dir"
    (cd "$dir" && apt-get download -q "$pkg" >/dev/null 2>&1 \
        && dpkg -x ./"$pkg"_*.deb .) || true
    [ -x "$dir/usr/sbin/$bin" ] && echo "$dir/usr/sbin/$bin"
}
TFTPD_HPA=$(find_peer in.tftpd tftpd-hpa || true)
ATFTPD=$(find_peer atftpd atftpd || true)
# Both link libwrap; unpack it beside them when the system lacks it.
if ! ldconfig -p | grep -q libwrap.so.0; then
    mkdir -p "$WORK/pkgs/libwrap0"
    (cd "$WORK/pkgs/libwrap0" && apt-get download -q libwrap0 >/dev/null 2>&1 \
        && dpkg -x ./libwrap0_*.deb .) || true
    LIBS=$WORK/pkgs/libwrap0/usr/lib/x86_64-linux-gnu
fi

# --- files -------------------------------------------------------------------
ROOT=$WORK/root
mkdir -p "$ROOT" "$WORK/out"
chmod 755 "$WORK" "$ROOT"
head -c $((64 << 20)) /dev/urandom >"$ROOT/big64"
head -c $((16 << 20)) /dev/urandom >"$ROOT/f16"
printf '[default]\naction = "script"\nscript = "#!ipxe\\nexit\\n"\n' >"$WORK/policy.toml"

# --- servers -----------------------------------------------------------------
start_tftp() { # server -> sets NS (server on 127.0.0.1:69 inside it)
    local s=$1 ns=${TAG}$1 log=$WORK/$1.log
    newns "$ns"
    case $s in
    rackcast)
        ip netns exec "$ns" "$RACKCAST" netboot --iface lo --server-ip 127.0.0.1 \
            --root "$ROOT" --tftp 127.0.0.1:69 --http 127.0.0.1:8080 \
            --policy "$WORK/policy.toml" >"$log" 2>&1 &
        ;;
    tftpd-hpa)
        ip netns exec "$ns" env LD_LIBRARY_PATH="$LIBS" "$TFTPD_HPA" -L -u root \
            -a :69 -s "$ROOT" >"$log" 2>&1 &
        ;;
    atftpd)
        ip netns exec "$ns" env LD_LIBRARY_PATH="$LIBS" "$ATFTPD" --daemon --no-fork \
            --user root --group root --port 69 --bind-address 127.0.0.1 -m 400 \
            --logfile /dev/null "$ROOT" >"$log" 2>&1 &
        ;;
    dnsmasq)
        ip netns exec "$ns" dnsmasq --keep-in-foreground --conf-file=/dev/null \
            --port=0 --user=root --pid-file= --interface=lo --bind-interfaces \
            --enable-tftp --tftp-root="$ROOT" --tftp-max=400 \
            --log-facility="$log" >/dev/null 2>&1 &
        ;;
    esac
    PIDS+=($!)
    sleep 0.5
    NS=$ns
}

stop_last() {
    local p=${PIDS[-1]}
    kill "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
}

now() { date +%s.%N; }

# MiB/s of one 64 MiB fetch at windowsize $2 from the server in namespace $1;
# "fail" when the client failed or the bytes differ.
fetch64() {
    local ns=$1 ws=$2 out=$WORK/out/big64 t0 t1
    rm -f "$out"
    t0=$(now)
    if ! ip netns exec "$ns" timeout 300 atftp --option "blksize $BLK" \
        --option "windowsize $ws" --get -r big64 -l "$out" 127.0.0.1 69 \
        >/dev/null 2>&1 || ! cmp -s "$out" "$ROOT/big64"; then
        echo fail
        return
    fi
    t1=$(now)
    echo "$t0 $t1" | awk '{ printf "%.1f", 64 / ($2 - $1) }'
}

# CPU seconds used so far by process $1 and its reaped children.
proc_cpu() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15 + $16 + $17) / hz }' "/proc/$1/stat"; }
# CPU seconds used so far by the whole machine (user, nice, system, irq, softirq).
all_cpu() { awk -v hz="$(getconf CLK_TCK)" '/^cpu / { printf "%.2f", ($2 + $3 + $4 + $7 + $8) / hz }' /proc/stat; }

# Aggregate MiB/s of $CLIENTS concurrent 16 MiB fetches; client 0 is checked
# byte for byte, the others by exit status. Also sets CPU_LINE: the CPU
# seconds the server and the whole machine spent, since on one machine the
# clients share its cores with the server.
fetch_many() {
    local ns=$1 t0 t1 ok=0 pids=() i s0 s1 a0 a1 srv=${PIDS[-1]}
    rm -f "$WORK/out/f16"
    s0=$(proc_cpu "$srv")
    a0=$(all_cpu)
    t0=$(now)
    for i in $(seq 0 $((CLIENTS - 1))); do
        local dst=/dev/null
        [ "$i" = 0 ] && dst=$WORK/out/f16
        ip netns exec "$ns" timeout 300 atftp --option "blksize $BLK" \
            --get -r f16 -l "$dst" 127.0.0.1 69 >/dev/null 2>&1 &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" && ok=$((ok + 1)); done
    t1=$(now)
    s1=$(proc_cpu "$srv")
    a1=$(all_cpu)
    echo "$s0 $s1 $a0 $a1 $t0 $t1" | awk '{ printf "%.1f %.1f %.1f\n", $2 - $1, $4 - $3, $6 - $5 }' \
        >"$WORK/cpu-many"
    if [ "$ok" != "$CLIENTS" ] || ! cmp -s "$WORK/out/f16" "$ROOT/f16"; then
        echo "fail($ok/$CLIENTS)"
        return
    fi
    echo "$t0 $t1" | awk -v n="$CLIENTS" '{ printf "%.1f", n * 16 / ($2 - $1) }'
}

SERVERS=(rackcast)
[ -n "$TFTPD_HPA" ] && SERVERS+=(tftpd-hpa) || echo "note: tftpd-hpa unavailable" >&2
[ -n "$ATFTPD" ] && SERVERS+=(atftpd) || echo "note: atftpd unavailable" >&2
SERVERS+=(dnsmasq)
if [ -n "${ONLY:-}" ]; then read -r -a SERVERS <<<"$ONLY"; fi

echo "# rackcast netboot vs peers: $(date -u +%FT%TZ), $(nproc) cores, load: $(cut -d' ' -f1-3 /proc/loadavg)"
declare -A R CPU
for s in "${SERVERS[@]}"; do
    start_tftp "$s"
    for k in $CASES; do
        case $k in
        many)
            R[$s,many]=$(fetch_many "$NS")
            read -r c_srv c_all c_wall <"$WORK/cpu-many"
            CPU[$s]="server ${c_srv}s, machine ${c_all}s of $(awk -v w="$c_wall" -v n="$(nproc)" 'BEGIN { printf "%.1f", w * n }')s"
            ;;
        w*) R[$s,$k]=$(fetch64 "$NS" "${k#w}") ;;
        esac
    done
    stop_last
    echo "  $s:$(for k in $CASES; do printf ' %s=%s' "$k" "${R[$s,$k]}"; done)" >&2
    for k in $CASES; do
        [[ ${R[$s,$k]} == fail* ]] && { echo "  $s log:" >&2; cat "$WORK/$s.log" >&2; break; }
    done
done

# --- proxy-DHCP offer latency ------------------------------------------------
dhcp_run() { # server -> dhcp_load's line in $WORK/dhcp-$1.out
    local s=$1 srv=${TAG}ds${1:0:2} cli=${TAG}dc${1:0:2}
    newns "$srv"
    newns "$cli"
    ip -n "$srv" link add "${srv}v" type veth peer name "${cli}v"
    ip -n "$srv" link set "${cli}v" netns "$cli"
    ip -n "$srv" addr add 10.234.0.1/24 dev "${srv}v"
    ip -n "$srv" link set "${srv}v" up
    ip -n "$cli" link set "${cli}v" up
    case $s in
    rackcast)
        ip netns exec "$srv" "$RACKCAST" netboot --iface "${srv}v" --root "$ROOT" \
            --policy "$WORK/policy.toml" --tftp 10.234.0.1:69 --http 10.234.0.1:8080 \
            >"$WORK/dhcp-$s.log" 2>&1 &
        ;;
    dnsmasq)
        ip netns exec "$srv" dnsmasq --keep-in-foreground --conf-file=/dev/null \
            --port=0 --user=root --pid-file= --interface="${srv}v" --bind-interfaces \
            --dhcp-range=10.234.0.0,proxy --pxe-service=x86-64_EFI,rackcast,ipxe.efi \
            --log-facility="$WORK/dhcp-$s.log" >/dev/null 2>&1 &
        ;;
    esac
    PIDS+=($!)
    sleep 0.5
    ip netns exec "$cli" timeout $((DHCP_SECS + 30)) "$DHCP_LOAD" --iface "${cli}v" \
        --rate 1000 --secs "$DHCP_SECS" >"$WORK/dhcp-$s.out" 2>&1 \
        || echo "dhcp_load failed" >>"$WORK/dhcp-$s.out"
    stop_last
}
D_RC=skipped D_DM=skipped
if [ -z "${NO_DHCP:-}" ]; then
    dhcp_run rackcast
    dhcp_run dnsmasq
    D_RC=$(cat "$WORK/dhcp-rackcast.out")
    D_DM=$(cat "$WORK/dhcp-dnsmasq.out")
fi

# --- report ------------------------------------------------------------------
best_peer() { # key -> best peer MiB/s (0 when none succeeded)
    local k=$1 best=0 s v
    for s in "${SERVERS[@]}"; do
        [ "$s" = rackcast ] && continue
        v=${R[$s,$k]}
        [[ $v =~ ^[0-9.]+$ ]] || continue
        best=$(awk -v a="$best" -v b="$v" 'BEGIN { print (b > a) ? b : a }')
    done
    echo "$best"
}
echo
printf '%-28s' "TFTP MiB/s (blksize $BLK)"
for s in "${SERVERS[@]}"; do printf '%12s' "$s"; done
printf '%14s\n' "rc/best peer"
for k in $CASES; do
    case $k in
    many) label="$CLIENTS clients x 16 MiB" ;;
    *) label="64 MiB, windowsize ${k#w}" ;;
    esac
    printf '%-28s' "$label"
    for s in "${SERVERS[@]}"; do printf '%12s' "${R[$s,$k]}"; done
    best=$(best_peer "$k")
    rc=${R[rackcast,$k]:-}
    if [[ $rc =~ ^[0-9.]+$ ]] && [ "$best" != 0 ]; then
        printf '%13.2fx\n' "$(awk -v a="$rc" -v b="$best" 'BEGIN { print a / b }')"
    else
        printf '%14s\n' "n/a"
    fi
done
if [[ " $CASES " == *" many "* ]]; then
    echo
    echo "CPU seconds during the $CLIENTS-client case (the clients share the cores; a server's"
    echo "figure is its own process and the children it reaped):"
    for s in "${SERVERS[@]}"; do printf '  %-10s %s\n' "$s" "${CPU[$s]:-n/a}"; done
fi
echo
echo "proxy-DHCP offer latency, 1000 DISCOVERs/s for ${DHCP_SECS}s:"
echo "  rackcast: $D_RC"
echo "  dnsmasq:  $D_DM"
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "goals: rackcast >= best peer everywhere, >= 1.5x for $CLIENTS clients, p99 offer < 1000 us"

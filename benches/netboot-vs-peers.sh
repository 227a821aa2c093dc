#!/usr/bin/env bash
# rackcast netboot against its peers, side by side, one run (a benchmark, not
# a test). Needs root (network namespaces) and atftp, dnsmasq, curl;
# tftpd-hpa, atftpd (whose Debian packages conflict) and nginx are used from
# PATH when installed, otherwise unpacked with `apt-get download` + `dpkg -x`
# into a temp dir.
#
#   1. a 64 MiB file fetched by atftp at blksize 1468, windowsize 1, 4, 16;
#   2. 100 concurrent atftp clients fetching 16 MiB each (blksize 1468);
#   3. `http`: 100 concurrent curl clients each fetching the automation
#      environment's sizes, a 13.5 MiB kernel then a 10.8 MiB initramfs on
#      one connection, from rackcast's boot HTTP server and from nginx;
#   4. proxy-DHCP offer latency under 1000 PXE DISCOVERs/s (dhcp_load example).
#
# Each server runs alone in a network namespace of its own on 127.0.0.1:69
# (dnsmasq cannot move TFTP off port 69) or 127.0.0.1:8080 (HTTP); the DHCP
# load runs across a veth pair between two namespaces. Server CPU is user +
# sys of a cgroup of its own (cgroup v2, or v1's cpuacct) that the server is
# started in, before and after, so that every process it forks counts, even
# one reaped without wait (tftpd-hpa forks a process per transfer and its
# CPU never reaches the parent's /proc figures: those read 0.01 s); where no
# cgroup can be made, /proc of the server and its children. Everything
# started is killed by PID and every namespace and cgroup deleted on exit.
#
# Usage: sudo benches/netboot-vs-peers.sh        (env: RACKCAST, DHCP_LOAD,
#        DHCP_SECS=10, CLIENTS=100, SKIP_BUILD=1, ONLY="rackcast dnsmasq",
#        CASES="many http" to run only some of w1 w4 w16 many http, NO_DHCP=1)
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
RACKCAST=${RACKCAST:-$REPO/target/release/rackcast}
DHCP_LOAD=${DHCP_LOAD:-$REPO/target/release/examples/dhcp_load}
CLIENTS=${CLIENTS:-100}
CASES=${CASES:-w1 w4 w16 many http}
DHCP_SECS=${DHCP_SECS:-10}
BLK=1468

if [ "$(id -u)" != 0 ]; then
    echo "needs root (network namespaces)" >&2
    exit 1
fi
for t in ip atftp dnsmasq cmp curl; do
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
CGS=()

# Where a server's own cgroup goes, and how its CPU is read (see the top).
CG_BASE="" CG_KIND=""
if [ -f /sys/fs/cgroup/cgroup.controllers ] && [ -w /sys/fs/cgroup ]; then
    CG_BASE=/sys/fs/cgroup CG_KIND=v2
elif [ -f /sys/fs/cgroup/cpuacct/cpuacct.usage ] && [ -w /sys/fs/cgroup/cpuacct ]; then
    CG_BASE=/sys/fs/cgroup/cpuacct CG_KIND=v1
fi

cleanup() {
    set +e
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
    for n in "${NSS[@]}"; do
        for p in $(ip netns pids "$n" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
        ip netns del "$n" 2>/dev/null
    done
    for c in "${CGS[@]}"; do rmdir "$c" 2>/dev/null || { sleep 0.5; rmdir "$c" 2>/dev/null; }; done
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
NGINX=""
[[ " $CASES " == *" http "* ]] && NGINX=$(find_peer nginx nginx || true)
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
# The automation environment's kernel and initramfs (issue 18's sizes).
KERNEL_B=$((27 << 19))         # 13.5 MiB
INITRD_B=$(((108 << 20) / 10)) # 10.8 MiB
head -c "$KERNEL_B" /dev/urandom >"$ROOT/kernel"
head -c "$INITRD_B" /dev/urandom >"$ROOT/initramfs"
printf '[default]\naction = "script"\nscript = "#!ipxe\\nexit\\n"\n' >"$WORK/policy.toml"

# --- servers -----------------------------------------------------------------
start_server() { # server [prefix] -> sets NS (TFTP on 127.0.0.1:69, HTTP on :8080
    # inside it) and CG (its cgroup, empty when there is none)
    local s=$1 ns=${TAG}${2:-}$1 log=$WORK/${2:-}$1.log
    newns "$ns"
    CG=""
    if [ -n "$CG_BASE" ] && mkdir "$CG_BASE/$ns" 2>/dev/null; then
        CG=$CG_BASE/$ns
        CGS+=("$CG")
    fi
    case $s in
    rackcast)
        in_cg ip netns exec "$ns" "$RACKCAST" netboot --iface lo --server-ip 127.0.0.1 \
            --root "$ROOT" --tftp 127.0.0.1:69 --http 127.0.0.1:8080 \
            --tftp-max-per-client "$CLIENTS" \
            --policy "$WORK/policy.toml" >"$log" 2>&1 &
        ;;
    tftpd-hpa)
        in_cg ip netns exec "$ns" env LD_LIBRARY_PATH="$LIBS" "$TFTPD_HPA" -L -u root \
            -a :69 -s "$ROOT" >"$log" 2>&1 &
        ;;
    atftpd)
        in_cg ip netns exec "$ns" env LD_LIBRARY_PATH="$LIBS" "$ATFTPD" --daemon --no-fork \
            --user root --group root --port 69 --bind-address 127.0.0.1 -m 400 \
            --logfile /dev/null "$ROOT" >"$log" 2>&1 &
        ;;
    dnsmasq)
        in_cg ip netns exec "$ns" dnsmasq --keep-in-foreground --conf-file=/dev/null \
            --port=0 --user=root --pid-file= --interface=lo --bind-interfaces \
            --enable-tftp --tftp-root="$ROOT" --tftp-max=400 \
            --log-facility="$log" >/dev/null 2>&1 &
        ;;
    nginx)
        nginx_conf >"$WORK/nginx.conf"
        in_cg ip netns exec "$ns" env LD_LIBRARY_PATH="$LIBS" "$NGINX" -p "$WORK/nginx/" \
            -c "$WORK/nginx.conf" -e "$log" >>"$log" 2>&1 &
        ;;
    esac
    PIDS+=($!)
    sleep 0.5
    NS=$ns
}

# Runs "$@" in the cgroup $CG (when set): the shell joins it, then execs, so
# the server and all it forks are in it from the start. Called with `&`, in a
# subshell that execs too, so that $! is the server's PID.
in_cg() {
    if [ -n "$CG" ]; then
        exec sh -c 'echo $$ >"$1/cgroup.procs" && shift && exec "$@"' in_cg "$CG" "$@"
    else
        exec "$@"
    fi
}

# nginx as a boot server would run it: the tree under /files/ by sendfile,
# no access log, one worker per core (as rackcast's runtime has a thread per
# core).
nginx_conf() {
    local t=$WORK/nginx/tmp
    mkdir -p "$t"
    cat <<EOF
daemon off;
user root root;
worker_processes auto;
pid $WORK/nginx/nginx.pid;
events { worker_connections 1024; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    default_type application/octet-stream;
    client_body_temp_path $t/body;
    proxy_temp_path $t/proxy;
    fastcgi_temp_path $t/fastcgi;
    uwsgi_temp_path $t/uwsgi;
    scgi_temp_path $t/scgi;
    server {
        listen 127.0.0.1:8080;
        location /files/ { alias $ROOT/; }
    }
}
EOF
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
# The same for $1 and all its live descendants (nginx's workers, tftpd-hpa's
# transfers): a child that exits in between moves into its parent's figure.
tree_cpu() {
    local sum p
    sum=$(proc_cpu "$1" 2>/dev/null || echo 0)
    for p in $(pgrep -P "$1"); do
        sum=$(awk -v a="$sum" -v b="$(tree_cpu "$p")" 'BEGIN { printf "%.2f", a + b }')
    done
    echo "$sum"
}
# CPU seconds used so far by the server whose PID is $1, started in cgroup
# $2 (empty: none, then /proc's tree).
server_cpu() {
    case ${2:+$CG_KIND} in
    v2) awk '/^usage_usec / { printf "%.2f", $2 / 1e6 }' "$2/cpu.stat" ;;
    v1) awk '{ printf "%.2f", $1 / 1e9 }' "$2/cpuacct.usage" ;;
    *) tree_cpu "$1" ;;
    esac
}
# CPU seconds per GiB: seconds $1 for MiB $2.
per_gib() { awk -v s="$1" -v m="$2" 'BEGIN { printf "%.2f", s / (m / 1024) }'; }
# CPU seconds used so far by the whole machine (user, nice, system, irq, softirq).
all_cpu() { awk -v hz="$(getconf CLK_TCK)" '/^cpu / { printf "%.2f", ($2 + $3 + $4 + $7 + $8) / hz }' /proc/stat; }

# Aggregate MiB/s of $CLIENTS concurrent 16 MiB fetches; client 0 is checked
# byte for byte, the others by exit status. Also sets CPU_LINE: the CPU
# seconds the server and the whole machine spent, since on one machine the
# clients share its cores with the server.
fetch_many() {
    local ns=$1 t0 t1 ok=0 pids=() i s0 s1 a0 a1 srv=${PIDS[-1]}
    rm -f "$WORK/out/f16"
    s0=$(server_cpu "$srv" "$CG")
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
    s1=$(server_cpu "$srv" "$CG")
    a1=$(all_cpu)
    echo "$s0 $s1 $a0 $a1 $t0 $t1" | awk '{ printf "%.2f %.1f %.1f\n", $2 - $1, $4 - $3, $6 - $5 }' \
        >"$WORK/cpu-many"
    if [ "$ok" != "$CLIENTS" ] || ! cmp -s "$WORK/out/f16" "$ROOT/f16"; then
        echo "fail($ok/$CLIENTS)"
        return
    fi
    echo "$t0 $t1" | awk -v n="$CLIENTS" '{ printf "%.1f", n * 16 / ($2 - $1) }'
}

# Aggregate MiB/s of $CLIENTS concurrent curl clients, each fetching the
# kernel then the initramfs on one connection (as iPXE does) from the HTTP
# server in namespace $1; client 0 is checked byte for byte, the others by
# exit status (--fail; a short body fails curl too). Writes the server's and
# the machine's CPU seconds and the wall time to $WORK/cpu-http.
fetch_http() {
    local ns=$1 t0 t1 ok=0 pids=() i s0 s1 a0 a1 srv=${PIDS[-1]}
    local u=http://127.0.0.1:8080/files
    rm -f "$WORK/out/kernel" "$WORK/out/initramfs"
    s0=$(server_cpu "$srv" "$CG")
    a0=$(all_cpu)
    t0=$(now)
    for i in $(seq 0 $((CLIENTS - 1))); do
        local k=/dev/null r=/dev/null
        [ "$i" = 0 ] && k=$WORK/out/kernel r=$WORK/out/initramfs
        ip netns exec "$ns" timeout 300 curl -sS --fail -o "$k" "$u/kernel" \
            -o "$r" "$u/initramfs" 2>>"$WORK/curl.log" &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" && ok=$((ok + 1)); done
    t1=$(now)
    s1=$(server_cpu "$srv" "$CG")
    a1=$(all_cpu)
    echo "$s0 $s1 $a0 $a1 $t0 $t1" | awk '{ printf "%.2f %.1f %.1f\n", $2 - $1, $4 - $3, $6 - $5 }' \
        >"$WORK/cpu-http"
    if [ "$ok" != "$CLIENTS" ] || ! cmp -s "$WORK/out/kernel" "$ROOT/kernel" \
        || ! cmp -s "$WORK/out/initramfs" "$ROOT/initramfs"; then
        echo "fail($ok/$CLIENTS)"
        return
    fi
    echo "$t0 $t1" | awk -v n="$CLIENTS" -v b=$((KERNEL_B + INITRD_B)) \
        '{ printf "%.1f", n * b / 1048576 / ($2 - $1) }'
}

SERVERS=(rackcast)
[ -n "$TFTPD_HPA" ] && SERVERS+=(tftpd-hpa) || echo "note: tftpd-hpa unavailable" >&2
[ -n "$ATFTPD" ] && SERVERS+=(atftpd) || echo "note: atftpd unavailable" >&2
SERVERS+=(dnsmasq)
if [ -n "${ONLY:-}" ]; then read -r -a SERVERS <<<"$ONLY"; fi
HTTP_SERVERS=()
for s in rackcast nginx; do
    [ "$s" = nginx ] && [ -z "$NGINX" ] && { echo "note: nginx unavailable" >&2; continue; }
    [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $s "* ]] && continue
    HTTP_SERVERS+=("$s")
done
TFTP_CASES=""
for k in $CASES; do [ "$k" = http ] || TFTP_CASES+=" $k"; done
HTTP_MIB=$(awk -v n="$CLIENTS" -v b=$((KERNEL_B + INITRD_B)) 'BEGIN { print n * b / 1048576 }')

echo "# rackcast netboot vs peers: $(date -u +%FT%TZ), $(nproc) cores, load: $(cut -d' ' -f1-3 /proc/loadavg)"
declare -A R CPU GIB
[ -n "$TFTP_CASES" ] || SERVERS=()
for s in "${SERVERS[@]}"; do
    start_server "$s"
    for k in $TFTP_CASES; do
        case $k in
        many)
            R[$s,many]=$(fetch_many "$NS")
            read -r c_srv c_all c_wall <"$WORK/cpu-many"
            GIB[$s]=$(per_gib "$c_srv" $((CLIENTS * 16)))
            CPU[$s]="server ${c_srv}s (${GIB[$s]} s/GiB), machine ${c_all}s of $(awk -v w="$c_wall" -v n="$(nproc)" 'BEGIN { printf "%.1f", w * n }')s"
            ;;
        w*) R[$s,$k]=$(fetch64 "$NS" "${k#w}") ;;
        esac
    done
    stop_last
    echo "  $s:$(for k in $TFTP_CASES; do printf ' %s=%s' "$k" "${R[$s,$k]}"; done)" >&2
    for k in $TFTP_CASES; do
        [[ ${R[$s,$k]} == fail* ]] && { echo "  $s log:" >&2; cat "$WORK/$s.log" >&2; break; }
    done
done

# --- HTTP: the automation environment to a powered-on rack -------------------
declare -A H
[[ " $CASES " == *" http "* ]] || HTTP_SERVERS=()
for s in "${HTTP_SERVERS[@]}"; do
    start_server "$s" h
    H[$s]=$(fetch_http "$NS")
    read -r c_srv c_all c_wall <"$WORK/cpu-http"
    H[$s,cpu]=$c_srv
    H[$s,gib]=$(per_gib "$c_srv" "$HTTP_MIB")
    H[$s,machine]="${c_all}s of $(awk -v w="$c_wall" -v n="$(nproc)" 'BEGIN { printf "%.1f", w * n }')s"
    stop_last
    echo "  $s: http=${H[$s]}" >&2
    if [[ ${H[$s]} == fail* ]]; then
        echo "  $s log:" >&2
        cat "$WORK/h$s.log" "$WORK/curl.log" 2>/dev/null | tail -20 >&2
    fi
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
if [ -n "$TFTP_CASES" ]; then
    echo
    printf '%-28s' "TFTP MiB/s (blksize $BLK)"
    for s in "${SERVERS[@]}"; do printf '%12s' "$s"; done
    printf '%14s\n' "rc/best peer"
fi
for k in $TFTP_CASES; do
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
    echo "figure is its cgroup's, every process it forked included):"
    for s in "${SERVERS[@]}"; do printf '  %-10s %s\n' "$s" "${CPU[$s]:-n/a}"; done
    best_gib=""
    for s in "${SERVERS[@]}"; do
        [ "$s" = rackcast ] && continue
        [[ ${R[$s,many]:-} =~ ^[0-9.]+$ && -n ${GIB[$s]:-} ]] || continue
        best_gib=$(awk -v a="$best_gib" -v b="${GIB[$s]}" 'BEGIN { print (a == "" || b < a) ? b : a }')
    done
    if [[ -n $best_gib && -n ${GIB[rackcast]:-} ]]; then
        awk -v a="${GIB[rackcast]}" -v b="$best_gib" \
            'BEGIN { printf "  rackcast/best peer CPU per GiB: %.2fx (%s vs %s s/GiB)\n", (b > 0) ? a / b : 0, a, b }'
    fi
fi
if [ "${#HTTP_SERVERS[@]}" != 0 ]; then
    echo
    echo "HTTP, $CLIENTS clients x (13.5 MiB kernel + 10.8 MiB initramfs), $HTTP_MIB MiB in all:"
    printf '  %-10s %10s %14s %12s   %s\n' server MiB/s "server CPU s" "CPU s/GiB" "machine CPU"
    for s in "${HTTP_SERVERS[@]}"; do
        printf '  %-10s %10s %14s %12s   %s\n' "$s" "${H[$s]}" "${H[$s,cpu]}" "${H[$s,gib]}" "${H[$s,machine]}"
    done
    if [[ ${H[rackcast]:-} =~ ^[0-9.]+$ && ${H[nginx]:-} =~ ^[0-9.]+$ ]]; then
        awk -v a="${H[rackcast]}" -v b="${H[nginx]}" -v c="${H[rackcast,gib]}" -v d="${H[nginx,gib]}" \
            'BEGIN { printf "  rackcast/nginx: throughput %.2fx, CPU per GiB %s\n", a / b, (d > 0) ? sprintf("%.2fx", c / d) : "n/a" }'
    fi
fi
echo
echo "proxy-DHCP offer latency, 1000 DISCOVERs/s for ${DHCP_SECS}s:"
echo "  rackcast: $D_RC"
echo "  dnsmasq:  $D_DM"
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "goals: rackcast >= best peer everywhere, >= 1.5x for $CLIENTS clients, p99 offer < 1000 us;"
echo "       HTTP throughput >= nginx's at CPU per GiB <= nginx's; TFTP CPU per GiB <= 0.7x the best peer's"

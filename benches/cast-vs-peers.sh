#!/usr/bin/env bash
# rackcast multicast against the tools racks are imaged with today, side by
# side in one run (a benchmark, not a test). Needs root (network namespaces).
#
# Rig (benches/lib/netns-rig.sh): one "switch" namespace with a bridge
# (multicast snooping off), a sender namespace and N receiver namespaces, each
# on a veth pair, MTU 1500 (RIG_MTU=9000 for jumbo frames); built afresh for each N so idle ports take no
# copies. Loss: iptables -m statistic DROP of LOSS% of the UDP arriving in
# every receiver. Straggler: one receiver's switch port limited by tc tbf to a
# tenth of the others' rate.
#
# Source: SIZE of "mixed" data (25% random, 25% text-like, 50% zero runs),
# warm in the page cache. Tools, all on the same rig and source:
#   rackcast      cast send IMG.rcimg (made once from the source, not timed)
#                 --rate RC_RATE --min-receivers N / cast recv DEST
#   udpcast       udp-sender --full-duplex --slice-size 1024 --min-receivers N
#                 / udp-receiver --rcvbuf 33554432, raw source file
#   udpcast+zstd  the same with --pipe 'zstd -T0 -ZSTD_LEVEL -c' on the
#                 sender and --pipe 'zstd -d -c' on the receivers (FOG/Clonezilla)
#   uftp          uftp -R UFTP_RATE -B UFTP_BUF -H <all receivers>; uftpd -B
#                 UFTP_BUF -D <dir> in every receiver namespace
# A receiver counts as done when its output is on disk: rackcast recv exits
# after flush + verify; the peers' outputs are fsynced (`sync FILE`) when they
# finish, inside the timed window (PEER_SYNC=0 skips that).
#
# Per case: wall time (sender start -> last receiver done), MB/s of image
# delivered (source bytes / wall), CPU seconds (user+sys, sender side and sum
# over receivers, children included: /usr/bin/time) and the same per GiB of
# image (snd/GiB for the sender; rcv/GiB for one receiver: the sum over
# receivers / N / GiB), integrity per receiver
# (b3sum of its output vs the source), then the ratios (peer wall / rackcast
# wall; > 1 means rackcast is faster). With the straggler: time until the
# healthy receivers are done, and whether (and when) the straggler completes.
#
# Usage: sudo benches/cast-vs-peers.sh
#   env: SIZE=1G RECEIVERS="1 4 16" LOSSES="0 2" RUNS=1 (best wall of RUNS)
#        TOOLS="rackcast udpcast udpcast+zstd uftp"
#        STRAGGLER_N=4 (receivers in the straggler case, one slowed; 0 skips it)
#        STRAGGLER_RATE=<tc rate> (default: a tenth of the best lossless rate
#          measured at STRAGGLER_N in this run, else 200mbit)
#        RC_RATE=1G (bytes/s) UFTP_RATE=1000000 (kbit/s) UFTP_BUF=104857600
#        ZSTD_LEVEL=3 TIMEOUT=900 (s, per transfer) PEER_SYNC=1
#        RIG_MTU=1500 (every link's MTU; 9000: jumbo frames, rackcast's
#          symbols follow the interface, udpcast keeps --slice-size, uftp
#          gets -b to fill the frame)
#        KEEP=1 (keep the work dir and logs) SKIP_BUILD=1 RACKCAST=path
#   quick: SIZE=128M RECEIVERS="1 4" LOSSES=0 benches/cast-vs-peers.sh
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
RC=${RACKCAST:-$REPO/target/release/rackcast}
SIZE=${SIZE:-1G}
RECEIVERS=${RECEIVERS:-"1 4 16"}
LOSSES=${LOSSES:-"0 2"}
RUNS=${RUNS:-1}
TOOLS=${TOOLS:-"rackcast udpcast udpcast+zstd uftp"}
STRAGGLER_N=${STRAGGLER_N:-4}
STRAGGLER_RATE=${STRAGGLER_RATE:-}
RC_RATE=${RC_RATE:-1G}
UFTP_RATE=${UFTP_RATE:-1000000}
UFTP_BUF=${UFTP_BUF:-104857600}
UDPCAST_RCVBUF=33554432
ZSTD_LEVEL=${ZSTD_LEVEL:-3}
TIMEOUT=${TIMEOUT:-900}
PEER_SYNC=${PEER_SYNC:-1}
RIG_MTU=${RIG_MTU:-1500}
# The peers' payload per packet at jumbo MTU (rackcast follows the interface).
PEER_BLOCK_UDPCAST=()
PEER_BLOCK_UFTP=()
if [ "$RIG_MTU" -gt 1500 ]; then
    PEER_BLOCK_UDPCAST=(--blocksize $((RIG_MTU - 100)))
    b=$((RIG_MTU - 200))
    PEER_BLOCK_UFTP=(-b $((b > 8800 ? 8800 : b)))
fi

if [ "$(id -u)" != 0 ]; then
    echo "needs root (network namespaces)" >&2
    exit 1
fi
for t in ip iptables tc udp-sender udp-receiver uftp uftpd zstd b3sum /usr/bin/time timeout; do
    command -v "$t" >/dev/null || { echo "missing $t (scripts/deps.sh test installs the peers)" >&2; exit 1; }
done
if [ -z "${SKIP_BUILD:-}" ] && [ -z "${RACKCAST:-}" ]; then
    (cd "$REPO" && cargo build --release -q --bin rackcast) \
        || { [ -x "$RC" ] && echo "warning: build failed, using the existing $RC" >&2; } \
        || exit 1
fi

W=$(mktemp -d /var/tmp/rackcast-cast-bench.XXXXXX)
RIG_TAG=rcv$$
# shellcheck source=lib/netns-rig.sh
. "$REPO/benches/lib/netns-rig.sh"
PIDS=()

cleanup() {
    set +e
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    rig_down
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
    if [ -n "${KEEP:-}" ]; then echo "kept $W" >&2; else rm -rf "$W"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { date +%s.%N; }
sub() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", a - b}'; }
mbs() { awk -v b="$BYTES" -v t="$1" 'BEGIN{ if (t > 0) printf "%.1f", b / t / 1e6; else print "-" }'; }
# per_gib CPU_SECONDS [RECEIVERS] -> CPU seconds per GiB of image delivered
# (per receiver when RECEIVERS is given: the sum over them divided by N).
per_gib() { awk -v c="$1" -v n="${2:-1}" -v b="$BYTES" 'BEGIN{ printf "%.2f", c / n / (b / 1073741824) }'; }
cpu_of() { # /usr/bin/time -f '%e %U %S' output file -> user+sys seconds
    [ -s "$1" ] && tail -n1 "$1" | awk 'NF == 3 {printf "%.2f", $2 + $3; ok = 1} END{if (!ok) print 0}' || echo 0
}
sum() { awk '{s += $1} END{printf "%.2f", s}'; }

# --- source and image ----------------------------------------------------------
SRC=$W/image.raw
IMG=$W/image.rcimg
"$RC" image sample "$SRC" --size "$SIZE" --shape mixed >/dev/null
BYTES=$(stat -c %s "$SRC")
SRC_HASH=$(b3sum --no-names "$SRC")
t=$(now); "$RC" image create "$SRC" "$IMG" >"$W/create.log"; t_create=$(sub "$(now)" "$t")
ZST_BYTES=$(zstd -q -T0 -"$ZSTD_LEVEL" -c "$SRC" | wc -c)
load=$(cut -d' ' -f1-3 /proc/loadavg)

echo "machine: $(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r); load $load"
echo "source: $SIZE mixed ($BYTES bytes); rackcast image $(stat -c %s "$IMG") bytes (created in ${t_create} s, not timed);" \
    "zstd -$ZSTD_LEVEL stream $ZST_BYTES bytes"
echo "rig: veth + bridge, MTU $RIG_MTU, loss by iptables in receivers; timeout ${TIMEOUT} s per transfer; best wall of $RUNS run(s)"
echo "flags: rackcast --rate $RC_RATE; udpcast --full-duplex --slice-size 1024, --rcvbuf $UDPCAST_RCVBUF;" \
    "uftp -R $UFTP_RATE -B $UFTP_BUF; peers' outputs fsynced: $([ "$PEER_SYNC" = 1 ] && echo yes || echo no)"
echo

# --- one transfer --------------------------------------------------------------
SEQ=0
# run_case TOOL N STRAGGLER_INDEX(0 = none) -> sets R_WALL R_HEALTHY R_CPU_S R_CPU_R
#   R_OK R_INTEG R_STRAG (and logs under $W/logs/<case>)
run_case() {
    local tool=$1 n=$2 slow=$3 i d o p t0 e
    R_STRAG=""
    SEQ=$((SEQ + 1))
    d=$W/logs/$SEQ-$tool-n$n-l${CUR_LOSS}$([ "$slow" = 0 ] || echo -straggler)
    o=$W/out
    rm -rf "$o"
    mkdir -p "$d"
    for i in $(seq "$n"); do mkdir -p "$o/r$i"; done
    cat "$SRC" "$IMG" >/dev/null # warm for every tool alike
    local port=$((20000 + 2 * SEQ)) grp="239.77.$((SEQ % 250)).1"
    local rpids=() spid
    local sync_cmd=""
    [ "$PEER_SYNC" = 1 ] && sync_cmd=' && sync "$0"'

    # receivers, each in its own namespace: end time, exit code, /usr/bin/time
    for i in $(seq "$n"); do
        local ns=${RIG_RCV[$i]} out=$o/r$i/image.raw
        case $tool in
        rackcast)
            set -- "$RC" cast recv "$out" --group "$grp:$port" --iface eth0 ;;
        udpcast)
            set -- bash -c 'udp-receiver "$@" </dev/null'"$sync_cmd" "$out" --file "$out" \
                --interface eth0 --portbase "$port" --nokbd --rcvbuf "$UDPCAST_RCVBUF" ;;
        udpcast+zstd)
            set -- bash -c 'udp-receiver "$@" </dev/null'"$sync_cmd" "$out" --file "$out" \
                --interface eth0 --portbase "$port" --nokbd --rcvbuf "$UDPCAST_RCVBUF" \
                --pipe "zstd -q -d -c" ;;
        uftp)
            set -- uftpd -d -I eth0 -M "$grp" -p "$port" -D "$o/r$i" -B "$UFTP_BUF" \
                -U "$(printf '0x%08x' "$i")" -q -x 2 ;;
        esac
        (
            set +e
            ip netns exec "$ns" /usr/bin/time -f '%e %U %S' -o "$d/r$i.time" \
                timeout -k 5 "$TIMEOUT" "$@" </dev/null >"$d/r$i.log" 2>&1
            echo $? >"$d/r$i.rc"
            now >"$d/r$i.end"
        ) &
        rpids+=($!)
        PIDS+=($!)
    done
    if [ "$tool" = uftp ]; then # daemons up: their port bound
        for _ in $(seq 100); do
            e=0
            for i in $(seq "$n"); do
                ip netns exec "${RIG_RCV[$i]}" ss -Huln "sport = :$port" | grep -q . || e=1
            done
            [ "$e" = 0 ] && break
            sleep 0.1
        done
    fi
    sleep 1

    case $tool in
    rackcast)
        set -- "$RC" cast send "$IMG" --group "$grp:$port" --iface eth0 --rate "$RC_RATE" \
            --min-receivers "$n" --max-wait 60 ;;
    udpcast)
        set -- udp-sender --file "$SRC" --interface eth0 --portbase "$port" --full-duplex \
            --slice-size 1024 --min-receivers "$n" --max-wait 60 --nokbd "${PEER_BLOCK_UDPCAST[@]}" ;;
    udpcast+zstd)
        set -- udp-sender --file "$SRC" --interface eth0 --portbase "$port" --full-duplex \
            --slice-size 1024 --min-receivers "$n" --max-wait 60 --nokbd "${PEER_BLOCK_UDPCAST[@]}" \
            --pipe "zstd -q -T0 -$ZSTD_LEVEL -c" ;;
    uftp)
        local ids
        ids=$(for i in $(seq "$n"); do printf '0x%08x,' "$i"; done)
        set -- uftp -I eth0 -M "$grp" -P "239.78.$((SEQ % 250)).1" -p "$port" -R "$UFTP_RATE" \
            -B "$UFTP_BUF" -H "${ids%,}" -x 2 -S "$d/uftp.status" "${PEER_BLOCK_UFTP[@]}" "$SRC" ;;
    esac
    t0=$(now)
    (
        set +e
        ip netns exec "$RIG_SND" /usr/bin/time -f '%e %U %S' -o "$d/sender.time" \
            timeout -k 5 "$TIMEOUT" "$@" </dev/null >"$d/sender.log" 2>&1
        echo $? >"$d/sender.rc"
        now >"$d/sender.end"
    ) &
    spid=$!
    PIDS+=($spid)
    wait "$spid" || true
    if [ "$tool" = uftp ]; then
        # uftpd is a daemon: it is done with this session once uftp has exited
        sleep 0.5
        local dpids=()
        for i in $(seq "$n"); do
            for p in $(ip netns pids "${RIG_RCV[$i]}"); do
                [ "$(cat /proc/"$p"/comm 2>/dev/null)" = uftpd ] && dpids+=("$p")
            done
        done
        for p in "${dpids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
        for p in "${dpids[@]}"; do # SIGKILL what did not stop in 5 s
            for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
            kill -KILL "$p" 2>/dev/null || true
        done
        for i in $(seq "$n"); do
            # a receiver is done when its daemon logged the group complete
            e=$(grep -a 'Group complete' "$d/r$i.log" 2>/dev/null | tail -n1 | awk '{print $1" "$2}' | tr / - | sed 's/:$//' || true)
            if [ -n "$e" ]; then date -d "$e" +%s.%N >"$d/r$i.done"; fi
        done
        if [ "$PEER_SYNC" = 1 ]; then # then fsync every output, inside the timed window
            local sp=()
            for i in $(seq "$n"); do
                if [ -f "$o/r$i/image.raw" ]; then sync "$o/r$i/image.raw" & sp+=($!); fi
            done
            for p in "${sp[@]}"; do wait "$p" || true; done
            now >"$d/sync.end"
        fi
    fi
    for p in "${rpids[@]}"; do wait "$p" || true; done
    [ "$tool" = uftp ] || for i in $(seq "$n"); do cp "$d/r$i.end" "$d/r$i.done"; done

    # verdicts
    local okc=0 bad="" t_all=0 t_healthy=0 cpu_r=0 h st
    for i in $(seq "$n"); do
        local rc v
        rc=$(cat "$d/r$i.rc" 2>/dev/null || echo '?')
        if [ ! -f "$o/r$i/image.raw" ]; then
            v=missing
        else
            h=$(timeout 600 b3sum --no-names "$o/r$i/image.raw" || echo x)
            if [ "$h" = "$SRC_HASH" ]; then v=ok; else v=BAD; fi
        fi
        # exit code 0 (uftpd: we stop it; it must have logged the group complete)
        if [ "$tool" != uftp ] && [ "$rc" != 0 ]; then v="$v,rc=$rc"; fi
        if [ "$tool" = uftp ] && [ ! -s "$d/r$i.done" ]; then v="$v,no-complete"; fi
        echo "$v" >"$d/r$i.verdict"
        if [ "$v" = ok ]; then okc=$((okc + 1)); else bad="$bad r$i:$v"; fi
        e=$(cat "$d/r$i.done" 2>/dev/null || cat "$d/r$i.end" 2>/dev/null || now)
        st=$(sub "$e" "$t0")
        t_all=$(awk -v a="$t_all" -v b="$st" 'BEGIN{print (b > a) ? b : a}')
        if [ "$i" != "$slow" ]; then t_healthy=$(awk -v a="$t_healthy" -v b="$st" 'BEGIN{print (b > a) ? b : a}'); fi
        if [ "$i" = "$slow" ]; then R_STRAG="$v at $(printf '%.1f' "$st") s"; fi
        cpu_r=$(printf '%s\n%s\n' "$cpu_r" "$(cpu_of "$d/r$i.time")" | sum)
    done
    local s_end
    s_end=$(sub "$(cat "$d/sender.end" 2>/dev/null || now)" "$t0")
    [ ! -s "$d/sync.end" ] || s_end=$(sub "$(cat "$d/sync.end")" "$t0")
    t_all=$(awk -v a="$t_all" -v b="$s_end" 'BEGIN{print (b > a) ? b : a}')
    R_WALL=$(printf '%.2f' "$t_all")
    R_HEALTHY=$(printf '%.2f' "$t_healthy")
    R_CPU_S=$(cpu_of "$d/sender.time")
    R_CPU_R=$cpu_r
    R_OK=$okc
    R_INTEG="$okc/$n ok${bad:+ [${bad# }]}"
    R_SRC=$(cat "$d/sender.rc" 2>/dev/null || echo '?')
    [ "$R_SRC" = 0 ] || R_INTEG="$R_INTEG sender rc=$R_SRC"
    R_DIR=$d
    rm -rf "$o"
    if [ "$okc" != "$n" ] || [ "$R_SRC" != 0 ]; then FAILED+=("$d"); fi
}

# best of RUNS: keeps the run with the lowest wall time; integrity is the worst
best_case() { # tool n slow -> B_* set
    local r
    B_WALL=""; B_INTEG_BAD=""
    for r in $(seq "$RUNS"); do
        run_case "$@"
        if [ "$R_OK" != "$2" ] || [ "$R_SRC" != 0 ]; then B_INTEG_BAD="$R_INTEG"; fi
        if [ -z "$B_WALL" ] || awk -v a="$R_WALL" -v b="$B_WALL" 'BEGIN{exit !(a < b)}'; then
            B_WALL=$R_WALL; B_HEALTHY=$R_HEALTHY; B_CPU_S=$R_CPU_S; B_CPU_R=$R_CPU_R
            B_INTEG=$R_INTEG; B_OK=$R_OK; B_STRAG=${R_STRAG:-}; B_DIR=$R_DIR
        fi
    done
    [ -z "$B_INTEG_BAD" ] || B_INTEG="$B_INTEG; worst run: $B_INTEG_BAD"
}

FAILED=()
declare -A WALL OKS
CUR_LOSS=0
fmt='%4s %5s  %-13s %9s %8s %8s %8s %8s %8s  %s\n'
printf "$fmt" N loss tool wall_s MB/s cpu_snd cpu_rcv snd/GiB rcv/GiB integrity
for n in $RECEIVERS; do
    rig_up "$n"
    for loss in $LOSSES; do
        rig_loss "$loss"
        CUR_LOSS=$loss
        for tool in $TOOLS; do
            best_case "$tool" "$n" 0
            WALL[$n,$loss,$tool]=$B_WALL
            OKS[$n,$loss,$tool]=$([ "$B_OK" = "$n" ] && [ -z "$B_INTEG_BAD" ] && echo 1 || echo 0)
            printf "$fmt" "$n" "$loss%" "$tool" "$B_WALL" "$(mbs "$B_WALL")" "$B_CPU_S" "$B_CPU_R" \
                "$(per_gib "$B_CPU_S")" "$(per_gib "$B_CPU_R" "$n")" "$B_INTEG"
        done
    done
    rig_loss 0
    rig_down
done

# --- straggler -------------------------------------------------------------------
if [ "$STRAGGLER_N" -gt 1 ]; then
    if [ -z "$STRAGGLER_RATE" ]; then
        best=""
        for tool in $TOOLS; do
            w=${WALL[$STRAGGLER_N,0,$tool]:-}
            [ -n "$w" ] && [ "${OKS[$STRAGGLER_N,0,$tool]}" = 1 ] || continue
            if [ -z "$best" ] || awk -v a="$w" -v b="$best" 'BEGIN{exit !(a < b)}'; then best=$w; fi
        done
        if [ -n "$best" ]; then
            STRAGGLER_RATE=$(awk -v b="$BYTES" -v t="$best" 'BEGIN{printf "%dmbit", b / t * 8 / 10 / 1e6}')
            why="a tenth of the best lossless rate measured at N=$STRAGGLER_N"
        else
            STRAGGLER_RATE=200mbit
            why="fixed: no lossless measurement at N=$STRAGGLER_N in this run"
        fi
    else
        why="STRAGGLER_RATE"
    fi
    echo
    echo "straggler: N=$STRAGGLER_N, receiver $STRAGGLER_N's port limited to $STRAGGLER_RATE by tc tbf ($why), loss 0%"
    sfmt='%-13s %10s %10s %9s %8s %8s  %-22s %s\n'
    printf "$sfmt" tool healthy_s healthy_MB/s wall_s cpu_snd cpu_rcv straggler integrity
    rig_up "$STRAGGLER_N"
    rig_slow "$STRAGGLER_N" "$STRAGGLER_RATE"
    CUR_LOSS=0
    for tool in $TOOLS; do
        best_case "$tool" "$STRAGGLER_N" "$STRAGGLER_N"
        WALL[straggler,$tool]=$B_HEALTHY
        printf "$sfmt" "$tool" "$B_HEALTHY" "$(mbs "$B_HEALTHY")" "$B_WALL" "$B_CPU_S" "$B_CPU_R" "$B_STRAG" "$B_INTEG"
    done
    rig_down
fi

# --- ratios ----------------------------------------------------------------------
ratio() { # peer_wall rc_wall
    if [ -z "$1" ] || [ -z "$2" ]; then echo "-"; else awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2fx", a / b}'; fi
}
best_udpcast() { # key -> lowest wall of the two udpcast variants that delivered to all
    local k=$1 b="" v w
    for v in udpcast udpcast+zstd; do
        w=${WALL[$k,$v]:-}
        [ -n "$w" ] && [ "${OKS[$k,$v]:-1}" = 1 ] || continue
        if [ -z "$b" ] || awk -v a="$w" -v c="$b" 'BEGIN{exit !(a < c)}'; then b=$w; fi
    done
    echo "$b"
}
echo
echo "ratios: peer wall / rackcast wall (> 1 means rackcast is faster; '*' = that tool did not deliver to every receiver)"
printf '%4s %5s  %18s %10s\n' N loss "vs best udpcast" "vs uftp"
for n in $RECEIVERS; do
    for loss in $LOSSES; do
        rcw=${WALL[$n,$loss,rackcast]:-}
        mark=""; [ "${OKS[$n,$loss,rackcast]:-1}" = 1 ] || mark="*"
        um=""; [ "${OKS[$n,$loss,uftp]:-1}" = 1 ] || um="*"
        printf '%4s %5s  %18s %10s\n' "$n" "$loss%" "$(ratio "$(best_udpcast "$n,$loss")" "$rcw")$mark" \
            "$(ratio "${WALL[$n,$loss,uftp]:-}" "$rcw")$mark$um"
    done
done
if [ "$STRAGGLER_N" -gt 1 ]; then
    printf '%10s  %18s %10s   (time until the healthy receivers are done)\n' straggler \
        "$(ratio "$(best_udpcast straggler)" "${WALL[straggler,rackcast]:-}")" \
        "$(ratio "${WALL[straggler,uftp]:-}" "${WALL[straggler,rackcast]:-}")"
fi
echo "goals: >= 2x at N 4 and 16, 0% and 2% loss; straggler: healthy >= 5x sooner than udpcast, straggler completes"

if [ "${#FAILED[@]}" -gt 0 ]; then
    echo
    echo "failures (last lines of the logs):"
    for d in "${FAILED[@]}"; do
        echo "== ${d#"$W"/logs/}"
        shown=0
        for f in "$d"/sender.log $(ls "$d"/r*.log | sort -V); do
            [ -f "$f" ] || continue
            if [ "$f" = "$d/sender.log" ]; then
                v=" (rc $(cat "$d/sender.rc"))"
            else
                [ "$(cat "${f%.log}.verdict" 2>/dev/null)" != ok ] || continue
                shown=$((shown + 1))
                if [ "$shown" -gt 3 ]; then echo "-- (more failed receivers: see $(basename "$d")/r*.log)"; break; fi
                v=" ($(cat "${f%.log}.verdict" 2>/dev/null), rc $(cat "${f%.log}.rc" 2>/dev/null))"
            fi
            echo "-- $(basename "$f")$v"
            tail -n 6 "$f" | tr '\r' '\n' | tail -n 6 | sed 's/^/   /'
            echo
        done
    done
fi

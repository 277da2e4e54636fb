#!/usr/bin/env bash
# Side-by-side on loopback, in one run: iperf3 single-stream throughput through three-hop chains, and the
# memory an idle tunnel costs.
#   direct        iperf3 straight to the server
#   socat 3-hop   socat -> socat -> socat -> server (plain TCP copies, the simplest relay)
#   haproxy 3-hop haproxy -> haproxy -> haproxy -> server (mode tcp)
#   hyrelay ws    hyrelay client -> relay -> edge -> server
# Idle memory: N idle tunnels through hyrelay (default 500), proportional set size summed over client,
# relay and edge, before and after, divided by N.
# Usage: Benchmarks/chains.sh [seconds per run, default 10] [idle tunnels, default 500]
# Prints a markdown table and writes Benchmarks/results/chains.json.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-10}
IDLE=${2:-500}
for tool in iperf3 socat haproxy; do
    command -v "$tool" >/dev/null || { echo "$tool is required (apt-get install $tool)" >&2; exit 1; }
done
swift build -c release --product hyrelay >/dev/null 2>&1
BIN=.build/release/hyrelay
source Benchmarks/lib.sh
pss_kib() { # sum of Pss over pids
    local total=0
    for pid in "$@"; do total=$((total + $(awk '/^Pss:/ {print $2}' "/proc/$pid/smaps_rollup"))); done
    echo "$total"
}

SERVER=$(free_port)
iperf3 -s -p "$SERVER" > "$WORK/iperf.log" 2>&1 &
PIDS+=($!)
sleep 0.3
DIRECT=$(measure "$SERVER")

# socat chain
S3=$(free_port); S2=$(free_port); S1=$(free_port)
socat TCP-LISTEN:$S3,fork,reuseaddr,bind=127.0.0.1 TCP:127.0.0.1:$SERVER & PIDS+=($!)
socat TCP-LISTEN:$S2,fork,reuseaddr,bind=127.0.0.1 TCP:127.0.0.1:$S3 & PIDS+=($!)
socat TCP-LISTEN:$S1,fork,reuseaddr,bind=127.0.0.1 TCP:127.0.0.1:$S2 & PIDS+=($!)
sleep 0.3
SOCAT=$(measure "$S1")

# haproxy chain
H3=$(free_port); H2=$(free_port); H1=$(free_port)
for pair in "$H3:$SERVER" "$H2:$H3" "$H1:$H2"; do
    from=${pair%%:*}; to=${pair##*:}
    printf 'defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 1m\n  timeout server 1m\nfrontend f\n  bind 127.0.0.1:%s\n  default_backend b\nbackend b\n  server s 127.0.0.1:%s\n' "$from" "$to" > "$WORK/h$from.cfg"
    haproxy -f "$WORK/h$from.cfg" -db > "$WORK/h$from.log" 2>&1 &
    PIDS+=($!)
done
sleep 0.5
HAPROXY=$(measure "$H1")

# hyrelay chain
KEY=$(head -c 32 /dev/urandom | base64)
RP=$(free_port); CP=$(free_port)
$BIN relay --listen "127.0.0.1:$RP" --hybrid-connection bench --sas-key-name root --sas-key "$KEY" --log-level warning 2>"$WORK/relay.log" &
RELAY=$!; PIDS+=($RELAY)
sleep 0.5
$BIN edge -e "ws://127.0.0.1:$RP" -K root -k "$KEY" -T "bench:127.0.0.1:$SERVER" --log-level warning 2>"$WORK/edge.log" &
EDGE=$!; PIDS+=($EDGE)
$BIN client -e "ws://127.0.0.1:$RP" -K root -k "$KEY" -L "127.0.0.1:$CP:bench" --log-level warning 2>"$WORK/client.log" &
CLIENT=$!; PIDS+=($CLIENT)
sleep 1.5
HYRELAY=$(measure "$CP")

# Idle tunnels: each connection stays open, with nothing to send (the echo target is socat).
ECHO=$(free_port)
socat TCP-LISTEN:$ECHO,fork,reuseaddr,bind=127.0.0.1 EXEC:cat & PIDS+=($!)
CP2=$(free_port)
kill $CLIENT $EDGE 2>/dev/null || true
$BIN edge -e "ws://127.0.0.1:$RP" -K root -k "$KEY" -T "bench:127.0.0.1:$ECHO" --log-level warning 2>"$WORK/edge2.log" &
EDGE=$!; PIDS+=($EDGE)
$BIN client -e "ws://127.0.0.1:$RP" -K root -k "$KEY" -L "127.0.0.1:$CP2:bench" --log-level warning 2>"$WORK/client2.log" &
CLIENT=$!; PIDS+=($CLIENT)
sleep 1.5
BEFORE=$(pss_kib $CLIENT $RELAY $EDGE)
python3 - "$CP2" "$IDLE" "$WORK/ready" <<'PY' &
import socket, sys, time
port, count, ready = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
socks = []
for _ in range(count):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"x"); assert s.recv(1) == b"x"   # the tunnel is fully open
    socks.append(s)
open(ready, "w").close()
time.sleep(60)
PY
HOLDER=$!; PIDS+=($HOLDER)
for _ in $(seq 600); do [ -e "$WORK/ready" ] && break; sleep 0.1; done
[ -e "$WORK/ready" ] || { echo "idle tunnels did not open" >&2; exit 1; }
sleep 2
AFTER=$(pss_kib $CLIENT $RELAY $EDGE)
PER_TUNNEL=$(python3 -c "print('%.1f' % (($AFTER - $BEFORE) / $IDLE))")
kill $HOLDER 2>/dev/null || true

mkdir -p Benchmarks/results
cat > Benchmarks/results/chains.json <<JSON
{"seconds": $SECONDS_PER_RUN, "cores": $(nproc), "gbit_per_s": {"direct": $DIRECT, "socat_3hop": $SOCAT, "haproxy_3hop": $HAPROXY, "hyrelay_ws": $HYRELAY}, "idle_tunnels": $IDLE, "idle_kib_per_tunnel_pss": $PER_TUNNEL}
JSON
echo "| path (iperf3, 1 stream, ${SECONDS_PER_RUN} s) | Gbit/s | vs haproxy 3-hop |"
echo "| --- | --- | --- |"
for row in "direct:$DIRECT" "socat 3-hop:$SOCAT" "haproxy 3-hop:$HAPROXY" "hyrelay client -> relay -> edge (ws):$HYRELAY"; do
    name=${row%%:*}; value=${row##*:}
    echo "| $name | $value | $(python3 -c "print('%.2f' % ($value / $HAPROXY))") |"
done
echo
echo "idle memory: $IDLE idle tunnels cost $PER_TUNNEL KiB each (PSS summed over client, relay and edge)"

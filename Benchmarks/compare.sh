#!/usr/bin/env bash
# HybridRelay side by side with the tools users would use instead, on loopback, in one run.
#
# Chains (each forwards an entry port to a target port):
#   direct          no relay
#   socat 3-hop     socat -> socat -> socat (plain TCP copies)
#   haproxy 3-hop   haproxy -> haproxy -> haproxy (mode tcp)
#   ssh -R/-L       ssh -L -> sshd -> ssh -R (a reverse tunnel through a loopback sshd)
#   v2ray ws        v2ray (dokodemo-door -> VLESS over WebSocket) -> nginx -> v2ray (VLESS -> freedom)
#   hyrelay ws      hyrelay client -> relay -> edge, plain WebSocket
#   hyrelay wss     the same over TLS (self-signed CA)
# Workloads: iperf3 1 and 8 streams (Gbit/s); sockperf 64-byte ping-pong round trip p50/p99 (us); new
# tunnels per second (wrk, Connection: close, to nginx returning 3 bytes); time to first byte of a new
# tunnel p50/p99 (connect, send one byte, read its echo, close; one at a time, 1,000 of them, after 50 warm-up
# ones: what a short-lived client waits for); CPU seconds per GB moved (the
# chain's processes, 1-stream run); idle memory per tunnel (N idle, PSS summed over the chain's processes);
# and hyrelay ws with full telemetry and the exporter on (metrics scraped every second, JSON logs, spans,
# Logs Ingestion exporter posting every second, metric snapshots every 5 s, to a local endpoint) against
# off, alternating rounds, medians. Every relay process runs one thread (haproxy nbthread 1, hyrelay
# --threads 1; socat and ssh are single-threaded): on two cores shared by three relays and the load tools,
# more threads only add cross-thread hops.
#
# Usage: Benchmarks/compare.sh [seconds per run, default 10] [idle tunnels, default 500] [telemetry rounds, default 3]
# Needs: iperf3 socat haproxy openssh-server v2ray nginx sockperf wrk (Debian packages).
# Prints a markdown table and writes Benchmarks/results/compare.json.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-10}
IDLE=${2:-500}
ROUNDS=${3:-3}
for tool in iperf3 socat haproxy ssh v2ray nginx sockperf wrk openssl; do
    command -v "$tool" >/dev/null || { echo "$tool is required (see the header of $0)" >&2; exit 1; }
done
[ -x /usr/sbin/sshd ] || { echo "sshd is required (apt-get install openssh-server)" >&2; exit 1; }
swift build -c release --product hyrelay >/dev/null 2>&1
swift build -c release --product MaskingBenchmark >/dev/null 2>&1
BIN=$PWD/.build/release/hyrelay
source Benchmarks/lib.sh
RESULTS="$WORK/results.jsonl"
: > "$RESULTS"
record() { echo "{\"chain\": \"$1\", \"metric\": \"$2\", \"value\": $3}" >> "$RESULTS"; }

# --- masking: word-wise against NIO's byte loop ---------------------------------------------------------
.build/release/MaskingBenchmark > "$WORK/masking.json"
python3 - "$WORK/masking.json" >> "$RESULTS" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
for key in ("word_wise_gb_per_s", "nio_byte_loop_gb_per_s"):
    print(json.dumps({"chain": "masking", "metric": key, "value": round(m[key], 2)}))
PY

# --- targets --------------------------------------------------------------------------------------------
IPERF=$(free_port); SOCKPERF=$(free_port); HTTP=$(free_port); ECHO=$(free_port)
iperf3 -s -p "$IPERF" > "$WORK/iperf.log" 2>&1 & PIDS+=($!)
sockperf sr --tcp -i 127.0.0.1 -p "$SOCKPERF" > "$WORK/sockperf.log" 2>&1 & PIDS+=($!)
mkdir -p "$WORK/nginx-target"
cat > "$WORK/nginx-target/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $WORK/nginx-target/nginx.pid; error_log $WORK/nginx-target/error.log;
events { worker_connections 16384; }
http { access_log off; client_body_temp_path $WORK/nginx-target; proxy_temp_path $WORK/nginx-target;
  fastcgi_temp_path $WORK/nginx-target; uwsgi_temp_path $WORK/nginx-target; scgi_temp_path $WORK/nginx-target;
  server { listen 127.0.0.1:$HTTP backlog=4096; location / { return 200 "ok\n"; } } }
CONF
nginx -p "$WORK/nginx-target" -c "$WORK/nginx-target/nginx.conf" & PIDS+=($!)
python3 - "$ECHO" > "$WORK/echo.log" 2>&1 <<'PY' &
import asyncio, sys
async def serve(reader, writer):
    while data := await reader.read(65536):
        writer.write(data); await writer.drain()
    writer.close()
async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", int(sys.argv[1]), backlog=4096)
    async with server: await server.serve_forever()
asyncio.run(main())
PY
PIDS+=($!)

# --- chains: chain_up KIND TARGET sets ENTRY and CHAIN (pids); chain_down stops them ------------------------
KEY=$(head -c 32 /dev/urandom | base64)
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$WORK/tls.key" -out "$WORK/tls.crt" -days 1 \
    -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 > /dev/null 2>&1
ssh-keygen -q -t ed25519 -N '' -f "$WORK/hostkey"; ssh-keygen -q -t ed25519 -N '' -f "$WORK/userkey"
cp "$WORK/userkey.pub" "$WORK/authorized_keys"; mkdir -p /run/sshd
UUID=$(python3 -c 'import uuid; print(uuid.uuid4())')
SSH_OPTS=(-N -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o ExitOnForwardFailure=yes -o LogLevel=ERROR -i "$WORK/userkey")
CHAIN=()
bg() { "$@" & CHAIN+=($!); }
wait_listening() { for _ in $(seq 100); do python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',int(sys.argv[1])),0.2).close()" "$1" 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 did not open" >&2; return 1; }
wait_log() { for _ in $(seq 100); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done; echo "'$2' not in $1" >&2; cat "$1" >&2; return 1; }

hyrelay_up() { # scheme target [extra flags for every role]; every role serves /metrics on METRICS_PORTS
    local scheme=$1 target=$2; shift 2
    local rp; rp=$(free_port); ENTRY=$(free_port)
    METRICS_PORTS=($(free_port) $(free_port) $(free_port))
    local tls=() ca=()
    [ "$scheme" = wss ] && tls=(--cert "$WORK/tls.crt" --key "$WORK/tls.key") && ca=(--ca-file "$WORK/tls.crt")
    bg "$BIN" relay --listen "127.0.0.1:$rp" --hybrid-connection bench --sas-key-name root --sas-key "$KEY" "${tls[@]}" \
        --metrics "127.0.0.1:${METRICS_PORTS[0]}" "$@" 2> "$WORK/relay.log"
    wait_listening "$rp"
    bg "$BIN" edge -e "$scheme://127.0.0.1:$rp" -K root -k "$KEY" -T "bench:127.0.0.1:$target" "${ca[@]}" \
        --metrics "127.0.0.1:${METRICS_PORTS[1]}" "$@" 2> "$WORK/edge.log"
    bg "$BIN" client -e "$scheme://127.0.0.1:$rp" -K root -k "$KEY" -L "127.0.0.1:$ENTRY:bench" "${ca[@]}" \
        --metrics "127.0.0.1:${METRICS_PORTS[2]}" "$@" 2> "$WORK/client.log"
    # /readyz answers 200 once the edge's listener is online.
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:${METRICS_PORTS[1]}/readyz" > /dev/null && return 0; sleep 0.1; done
    echo "the edge did not come online" >&2; cat "$WORK/edge.log" >&2; return 1
}

chain_up() {
    CHAIN=()
    local kind=$1 target=$2
    case $kind in
    direct) ENTRY=$target ;;
    socat)
        local a b; a=$(free_port); b=$(free_port); ENTRY=$(free_port)
        bg socat TCP-LISTEN:$b,fork,reuseaddr,backlog=4096,bind=127.0.0.1 TCP:127.0.0.1:$target >> "$WORK/chain.log" 2>&1
        bg socat TCP-LISTEN:$a,fork,reuseaddr,backlog=4096,bind=127.0.0.1 TCP:127.0.0.1:$b >> "$WORK/chain.log" 2>&1
        bg socat TCP-LISTEN:$ENTRY,fork,reuseaddr,backlog=4096,bind=127.0.0.1 TCP:127.0.0.1:$a >> "$WORK/chain.log" 2>&1 ;;
    haproxy)
        local a b; a=$(free_port); b=$(free_port); ENTRY=$(free_port)
        for pair in "$b:$target" "$a:$b" "$ENTRY:$a"; do
            printf 'global\n  maxconn 8000\n  nbthread 1\ndefaults\n  mode tcp\n  maxconn 8000\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\nfrontend f\n  bind 127.0.0.1:%s\n  default_backend b\nbackend b\n  server s 127.0.0.1:%s\n' "${pair%%:*}" "${pair##*:}" > "$WORK/h${pair%%:*}.cfg"
            bg haproxy -f "$WORK/h${pair%%:*}.cfg" -db >> "$WORK/chain.log" 2>&1
        done ;;
    ssh)
        local sp rp; sp=$(free_port); rp=$(free_port); ENTRY=$(free_port)
        printf 'Port %s\nListenAddress 127.0.0.1\nHostKey %s\nAuthorizedKeysFile %s\nPidFile %s\nStrictModes no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nAllowTcpForwarding yes\nMaxStartups 2000\nMaxSessions 2000\n' \
            "$sp" "$WORK/hostkey" "$WORK/authorized_keys" "$WORK/sshd.pid" > "$WORK/sshd_config"
        bg /usr/sbin/sshd -D -e -f "$WORK/sshd_config" 2> "$WORK/sshd.log"
        wait_listening "$sp"
        bg ssh "${SSH_OPTS[@]}" -p "$sp" -R "$rp:127.0.0.1:$target" root@127.0.0.1 >> "$WORK/chain.log" 2>&1
        wait_listening "$rp"
        bg ssh "${SSH_OPTS[@]}" -p "$sp" -L "$ENTRY:127.0.0.1:$rp" root@127.0.0.1 >> "$WORK/chain.log" 2>&1 ;;
    v2ray)
        local vp np; vp=$(free_port); np=$(free_port); ENTRY=$(free_port)
        mkdir -p "$WORK/nginx-ws"
        cat > "$WORK/v2-server.json" <<JSON
{"log": {"loglevel": "warning"}, "inbounds": [{"listen": "127.0.0.1", "port": $vp, "protocol": "vless",
  "settings": {"clients": [{"id": "$UUID"}], "decryption": "none"},
  "streamSettings": {"network": "ws", "wsSettings": {"path": "/v"}}}], "outbounds": [{"protocol": "freedom"}]}
JSON
        cat > "$WORK/v2-client.json" <<JSON
{"log": {"loglevel": "warning"}, "inbounds": [{"listen": "127.0.0.1", "port": $ENTRY, "protocol": "dokodemo-door",
  "settings": {"address": "127.0.0.1", "port": $target, "network": "tcp"}}],
 "outbounds": [{"protocol": "vless", "settings": {"vnext": [{"address": "127.0.0.1", "port": $np,
  "users": [{"id": "$UUID", "encryption": "none"}]}]}, "streamSettings": {"network": "ws", "wsSettings": {"path": "/v"}}}]}
JSON
        cat > "$WORK/nginx-ws/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $WORK/nginx-ws/nginx.pid; error_log $WORK/nginx-ws/error.log;
events { worker_connections 16384; }
http { access_log off; client_body_temp_path $WORK/nginx-ws; proxy_temp_path $WORK/nginx-ws;
  fastcgi_temp_path $WORK/nginx-ws; uwsgi_temp_path $WORK/nginx-ws; scgi_temp_path $WORK/nginx-ws;
  server { listen 127.0.0.1:$np backlog=4096; location /v { proxy_pass http://127.0.0.1:$vp; proxy_http_version 1.1;
    proxy_set_header Upgrade \$http_upgrade; proxy_set_header Connection "upgrade"; proxy_read_timeout 1h;
    proxy_buffering off; } } }
CONF
        bg v2ray -config "$WORK/v2-server.json" >> "$WORK/chain.log" 2>&1
        bg nginx -p "$WORK/nginx-ws" -c "$WORK/nginx-ws/nginx.conf" >> "$WORK/chain.log" 2>&1
        bg v2ray -config "$WORK/v2-client.json" >> "$WORK/chain.log" 2>&1 ;;
    hyrelay_ws) hyrelay_up ws "$target" --threads 1 --log-level warning --no-export ;;
    hyrelay_wss) hyrelay_up wss "$target" --threads 1 --log-level warning --no-export ;;
    esac
    [ "$kind" = direct ] || wait_listening "$ENTRY"
    sleep 0.3
}

chain_down() { for pid in "${CHAIN[@]}"; do kill "$pid" 2>/dev/null || true; done; for pid in "${CHAIN[@]}"; do wait "$pid" 2>/dev/null || true; done; CHAIN=(); sleep 0.3; }

# The chain's processes and all their descendants (socat and sshd fork per connection, nginx has workers).
chain_pids() {
    local all=("${CHAIN[@]}") i=0
    while [ $i -lt ${#all[@]} ]; do
        for child in $(pgrep -P "${all[$i]}" 2>/dev/null); do all+=("$child"); done
        i=$((i + 1))
    done
    echo "${all[@]}"
}
cpu_ticks() { local total=0; for pid in $(chain_pids); do [ -r "/proc/$pid/stat" ] && total=$((total + $(awk '{print $14 + $15 + $16 + $17}' "/proc/$pid/stat"))); done; echo "$total"; }
pss_kib() { local total=0; for pid in $(chain_pids); do [ -r "/proc/$pid/smaps_rollup" ] && total=$((total + $(awk '/^Pss:/ {print $2}' "/proc/$pid/smaps_rollup"))); done; echo "$total"; }

iperf_run() { # entry streams -> prints "gbit bytes"
    iperf3 -c 127.0.0.1 -p "$1" -t "$SECONDS_PER_RUN" -P "$2" -J > "$WORK/run.json"
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1]))["end"]["sum_received"]; print("%.3f %d" % (d["bits_per_second"]/1e9, d["bytes"]))' "$WORK/run.json"
}

CHAINS=(direct socat haproxy ssh v2ray hyrelay_ws hyrelay_wss)
TICKS=$(getconf CLK_TCK)
for kind in "${CHAINS[@]}"; do
    echo "== $kind" >&2
    chain_up "$kind" "$IPERF"
    before=$(cpu_ticks)
    read -r gbit bytes < <(iperf_run "$ENTRY" 1)
    after=$(cpu_ticks)
    record "$kind" iperf_1 "$gbit"
    [ "$kind" = direct ] || record "$kind" cpu_s_per_gb "$(python3 -c "print('%.3f' % (($after - $before) / $TICKS / ($bytes / 1e9)))")"
    read -r gbit bytes < <(iperf_run "$ENTRY" 8)
    record "$kind" iperf_8 "$gbit"
    chain_down

    chain_up "$kind" "$SOCKPERF"
    sockperf pp --tcp -i 127.0.0.1 -p "$ENTRY" -m 64 -t 5 --full-rtt > "$WORK/sp.log" 2>&1 || true
    record "$kind" rtt_p50_us "$(awk '/percentile 50.000 =/ {print $NF}' "$WORK/sp.log" | tail -1)"
    record "$kind" rtt_p99_us "$(awk '/percentile 99.000 =/ {print $NF}' "$WORK/sp.log" | tail -1)"
    chain_down

    chain_up "$kind" "$HTTP"
    wrk -t 2 -c 32 -d 5s -H "Connection: close" "http://127.0.0.1:$ENTRY/" > "$WORK/wrk.log" 2>&1 || true
    record "$kind" new_tunnels_per_s "$(awk '/Requests\/sec/ {print $2}' "$WORK/wrk.log")"
    chain_down

    chain_up "$kind" "$ECHO"
    read -r p50 p99 < <(python3 Benchmarks/ttfb.py "$ENTRY" 1000 50)
    record "$kind" ttfb_p50_us "$p50"
    record "$kind" ttfb_p99_us "$p99"
    chain_down
done

# Idle memory: N connections held open (each checked with a 1-byte echo) through each relay chain.
for kind in haproxy ssh v2ray hyrelay_ws; do
    echo "== idle $kind" >&2
    chain_up "$kind" "$ECHO"
    sleep 1
    before=$(pss_kib)
    rm -f "$WORK/ready"
    python3 - "$ENTRY" "$IDLE" "$WORK/ready" <<'PY' &
import socket, sys, time
port, count, ready = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
socks = []
for _ in range(count):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"x"); assert s.recv(1) == b"x"
    socks.append(s)
open(ready, "w").close()
time.sleep(120)
PY
    holder=$!
    for _ in $(seq 1200); do [ -e "$WORK/ready" ] && break; sleep 0.1; done
    [ -e "$WORK/ready" ] || { echo "idle tunnels did not open through $kind" >&2; exit 1; }
    sleep 2
    after=$(pss_kib)
    record "$kind" idle_kib_per_tunnel "$(python3 -c "print('%.1f' % (($after - $before) / $IDLE))")"
    kill $holder 2>/dev/null || true; wait $holder 2>/dev/null || true
    chain_down
done

# Telemetry and exporter on versus off (hyrelay ws), alternating rounds.
# A local Logs Ingestion endpoint that issues tokens and takes batches without checking them (the
# checking fake lives in the tests): the real one runs elsewhere, so its CPU must not count here.
FAKE=$(free_port)
python3 - "$FAKE" > "$WORK/fake.log" 2>&1 <<'PY' &
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args): pass
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.endswith("/oauth2/v2.0/token"):
            body = json.dumps({"token_type": "Bearer", "expires_in": 3600, "access_token": "t"}).encode()
            self.send_response(200); self.send_header("Content-Type", "application/json")
        else:
            body = b""; self.send_response(204)
        self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
PY
PIDS+=($!)
wait_listening "$FAKE"
DCR="dcr-$(python3 -c 'import uuid; print(uuid.uuid4().hex)')"
for round in $(seq "$ROUNDS"); do
    for mode in off on; do
        echo "== telemetry $mode, round $round" >&2
        if [ $mode = off ]; then
            chain_up hyrelay_ws "$IPERF"
        else
            CHAIN=()
            AZURE_TENANT_ID=tenant AZURE_CLIENT_ID=client AZURE_CLIENT_SECRET=secret AZURE_AUTHORITY_HOST="http://127.0.0.1:$FAKE/" \
                hyrelay_up ws "$IPERF" --threads 1 --log-format json --logs-ingestion-endpoint "http://127.0.0.1:$FAKE" \
                --dcr-immutable-id "$DCR" --export-interval 1 --export-metrics-interval 5 --spool-dir "$WORK/spool"
            # Scrape every role's /metrics once a second, as Prometheus would.
            ( while true; do for p in "${METRICS_PORTS[@]}"; do curl -s "http://127.0.0.1:$p/metrics" > /dev/null; done; sleep 1; done ) &
            CHAIN+=($!)
            sleep 0.3
        fi
        read -r gbit bytes < <(iperf_run "$ENTRY" 1)
        record "hyrelay_ws_telemetry_$mode" iperf_1 "$gbit"
        chain_down
    done
done

mkdir -p Benchmarks/results
python3 - "$RESULTS" "$SECONDS_PER_RUN" "$IDLE" "$ROUNDS" <<'PY'
import json, statistics, sys, platform, os
rows = [json.loads(line) for line in open(sys.argv[1])]
data = {}
for r in rows:
    data.setdefault(r["chain"], {}).setdefault(r["metric"], []).append(r["value"])
value = lambda chain, metric: statistics.median(data[chain][metric]) if chain in data and metric in data[chain] else None
out = {"seconds_per_run": int(sys.argv[2]), "idle_tunnels": int(sys.argv[3]), "telemetry_rounds": int(sys.argv[4]),
       "cores": os.cpu_count(), "kernel": platform.release(), "results": data}
json.dump(out, open("Benchmarks/results/compare.json", "w"), indent=1)
names = {"direct": "direct", "socat": "socat 3-hop", "haproxy": "haproxy 3-hop", "ssh": "ssh -L / sshd / ssh -R",
         "v2ray": "v2ray VLESS ws + nginx", "hyrelay_ws": "hyrelay ws", "hyrelay_wss": "hyrelay wss"}
fmt = lambda v, spec="%.2f": "—" if v is None else spec % v
print("| chain | iperf3 1 stream Gbit/s | 8 streams Gbit/s | RTT p50 µs | RTT p99 µs | new tunnels/s | TTFB p50 µs | TTFB p99 µs | CPU s/GB | idle KiB/tunnel |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for key, name in names.items():
    print("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (name, fmt(value(key, "iperf_1")), fmt(value(key, "iperf_8")),
          fmt(value(key, "rtt_p50_us"), "%.1f"), fmt(value(key, "rtt_p99_us"), "%.1f"),
          fmt(value(key, "new_tunnels_per_s"), "%.0f"), fmt(value(key, "ttfb_p50_us"), "%.0f"),
          fmt(value(key, "ttfb_p99_us"), "%.0f"), fmt(value(key, "cpu_s_per_gb"), "%.3f"),
          fmt(value(key, "idle_kib_per_tunnel"), "%.1f")))
ratio = lambda a, b: None if a is None or b in (None, 0) else a / b
ws = "hyrelay_ws"
targets = [
    ("1-stream ws / haproxy 3-hop", ratio(value(ws, "iperf_1"), value("haproxy", "iperf_1")), ">= 1.0"),
    ("1-stream ws / v2ray ws", ratio(value(ws, "iperf_1"), value("v2ray", "iperf_1")), ">= 1.5"),
    ("RTT p50 ws / socat 3-hop", ratio(value(ws, "rtt_p50_us"), value("socat", "rtt_p50_us")), "<= 1.3"),
    ("new tunnels/s ws / haproxy 3-hop", ratio(value(ws, "new_tunnels_per_s"), value("haproxy", "new_tunnels_per_s")), ">= 0.5"),
    ("new tunnels/s ws / ssh", ratio(value(ws, "new_tunnels_per_s"), value("ssh", "new_tunnels_per_s")), ">= 1.0"),
    ("RTT p50 ws / socat 3-hop (round 2)", ratio(value(ws, "rtt_p50_us"), value("socat", "rtt_p50_us")), "<= 1.2"),
    ("TTFB p50 ws / haproxy 3-hop", ratio(value(ws, "ttfb_p50_us"), value("haproxy", "ttfb_p50_us")), "<= 1.5"),
    ("idle KiB per tunnel (ws)", value(ws, "idle_kib_per_tunnel"), "< 30"),
    ("telemetry+exporter on / off (1 stream, median of %s)" % sys.argv[4],
     ratio(value(ws + "_telemetry_on", "iperf_1"), value(ws + "_telemetry_off", "iperf_1")), ">= 0.97"),
]
print()
print("masking 256 KiB frames: word-wise %s GB/s, NIO byte loop %s GB/s (%sx)" % (
    fmt(value("masking", "word_wise_gb_per_s")), fmt(value("masking", "nio_byte_loop_gb_per_s")),
    fmt(ratio(value("masking", "word_wise_gb_per_s"), value("masking", "nio_byte_loop_gb_per_s")), "%.0f")))
print()
print("| target | measured | wanted |")
print("| --- | --- | --- |")
for name, measured, wanted in targets:
    print("| %s | %s | %s |" % (name, fmt(measured), wanted))
PY

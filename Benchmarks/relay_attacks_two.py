#!/usr/bin/env python3
"""Measures the four attacks of the second security issue (#27) against one hyrelay binary (docs/security.md).

    .venv/bin/python Benchmarks/relay_attacks_two.py BINARY [--only N]

Prints a small table per attack, so the same script run against the binary before the fixes and after them
gives two outputs to set side by side:

  1. Nested JSON in an Entra token: relay CPU per refused token, and a good connect's latency under a flood.
  2. UDP flows from thousands of source addresses: tunnels, descriptors and memory they cost, and whether TCP
     tunnels through the same client still work.
  3. A request header (and a response header) of `"` characters that JSON-escapes past the control channel's
     64 KiB: what normal HTTP-mode requests get, and how often the edge's control channel is lost.
  4. Idle connections on the --metrics port of a relay with 1024 descriptors: what they hold, whether the
     relay's main port still answers, and whether they are ever closed.

Everything runs on 127.0.0.0/8 (extra loopback addresses stand for distinct sources); every process and server
started is stopped at the end, also on an error. Each attack takes well under a minute. Flags that only newer
binaries know are never passed; the output says which of them the binary knows (their defaults then apply).
"""
import argparse
import asyncio
import http.server
import itertools
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "Conformance"))
import hc  # noqa: E402
from conftest import free_port  # noqa: E402
from fake_entra import FakeEntra, b64url  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402

BINARY = None          # set from the command line
WORK = None            # a temporary directory for configs, logs and the processes' state
STARTED = []           # every process started, so that all are stopped whatever happens
NESTING = 511          # the depth of the nested arrays in the Entra tokens


# ---------------------------------------------------------------------------------------------------------
# Processes, measurements and output

class Proc:
    """A hyrelay process with its output in a log file; optionally under a descriptor limit (soft and hard)."""

    def __init__(self, name, args, nofile=None):
        self.name = name
        self.log_path = os.path.join(WORK, "%s.log" % name)
        self.log_file = open(self.log_path, "w")
        # Agents must sign in with the SAS key given, never with Entra variables of the environment.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "IDENTITY_"))}
        env["HYRELAY_STATE_DIR"] = os.path.join(WORK, "state-" + name)

        def limit():
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
        self.popen = subprocess.Popen([BINARY] + args, stdout=self.log_file, stderr=subprocess.STDOUT, env=env,
                                      preexec_fn=limit if nofile else None)
        STARTED.append(self)

    @property
    def pid(self):
        return self.popen.pid

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def wait_for_log(self, text, count=1, timeout=20):
        deadline = time.time() + timeout
        while self.log().count(text) < count:
            if self.popen.poll() is not None or time.time() > deadline:
                raise SystemExit("%s: '%s' not logged:\n%s" % (self.name, text, self.log()[-3000:]))
            time.sleep(0.05)

    def alive(self):
        return self.popen.poll() is None

    def status(self):
        code = self.popen.poll()
        return "running" if code is None else "EXITED %d" % code

    def cpu(self):
        """User plus system CPU seconds used so far (/proc/PID/stat)."""
        with open("/proc/%d/stat" % self.pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def fds(self):
        if not self.alive():
            return None
        try:
            return len(os.listdir("/proc/%d/fd" % self.pid))
        except OSError:
            return None

    def rss_mib(self):
        try:
            with open("/proc/%d/status" % self.pid) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            return None

    def last_words(self, lines=4):
        """When the process exited on its own: its exit status and the last lines of its log."""
        if self.alive():
            return None
        tail = [line[:160] for line in self.log().splitlines() if line.strip()][-lines:]
        return "%s %s; its log ends: %s" % (self.name, self.status(), " | ".join(tail) or "(empty)")

    def stop(self, kill=False):
        """Stops the process: SIGTERM and up to 10 s to finish, or SIGKILL at once with `kill` (a relay whose
        event loops are busy with an attack may not get round to its SIGTERM)."""
        if self.popen.poll() is None and kill:
            self.popen.kill()
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self.log_file.close()


def stop_everything():
    while STARTED:
        STARTED.pop().stop()


def metric(port, name, **labels):
    """The sum of a metric's samples whose labels include `labels` on a /metrics port; None when the process
    does not export the metric (or does not answer)."""
    try:
        text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5).read().decode()
    except OSError:
        return None
    total, seen = 0.0, False
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all('%s="%s"' % item in line for item in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
                seen = True
    return total if seen else None


def knows_flag(subcommand, flag):
    """Whether this binary's `hyrelay SUBCOMMAND --help` lists `flag`."""
    result = subprocess.run([BINARY, subcommand, "--help"], capture_output=True, text=True, timeout=30)
    return flag in result.stdout + result.stderr


def fmt(value, digits=0):
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return "%.*f" % (digits, value)
    return str(value)


def tally(statuses):
    """'20 x 401, 3 x timeout' from a list of answers."""
    counts = {}
    for status in statuses:
        counts[status] = counts.get(status, 0) + 1
    return ", ".join("%d x %s" % (n, s) for s, n in sorted(counts.items(), key=lambda item: -item[1])) or "none"


class Table:
    """Rows of (measure, value), printed aligned under the attack's title."""

    def __init__(self, title):
        self.title = title
        self.rows = []

    def row(self, measure, value):
        self.rows.append((measure, str(value)))

    def note(self, text):
        self.rows.append((None, text))

    def exits(self, *processes):
        """Notes every process that died during the attack, with how its log ends."""
        for process in processes:
            words = process.last_words()
            if words:
                self.note(words)

    def print(self):
        print()
        print(self.title)
        width = max([len(m) for m, _ in self.rows if m] + [10])
        print("  %-*s  %s" % (width, "measure", "value"))
        print("  %s  %s" % ("-" * width, "-" * 30))
        for measure, value in self.rows:
            if measure is None:
                print("  note: %s" % value)
            else:
                print("  %-*s  %s" % (width, measure, value))
        sys.stdout.flush()


# Distinct loopback source addresses, so that no per-source defence (the relay's 30-failure budget per
# address, its connection cap per address) stands between an attacker with many addresses and the cost
# measured. Attack 1 takes them from 127.1.0.0/16 on, attack 2 from 127.0.0.2 on.
_sources = itertools.count()


def next_source():
    n = next(_sources)
    return "127.%d.%d.%d" % (1 + n // (254 * 256), (n // 254) % 256, 1 + n % 254)


def connect_from(port, source=None, timeout=30):
    sock = socket.socket()
    sock.settimeout(timeout)
    if source:
        sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def status_of(port, data, source=None, timeout=30):
    """Sends raw bytes on a new connection; returns the answer's status code as text, or what happened."""
    try:
        sock = connect_from(port, source, timeout)
    except OSError as error:
        return "connect failed (%s)" % error.__class__.__name__
    try:
        sock.sendall(data)
        reply = b""
        while b"\r\n" not in reply:
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
        if not reply:
            return "closed"
        parts = reply.split(b"\r\n")[0].split(b" ")
        return parts[1].decode() if len(parts) > 1 else "garbled"
    except socket.timeout:
        return "timeout"
    except OSError as error:
        return error.__class__.__name__
    finally:
        sock.close()


def upgrade(target, headers):
    """A WebSocket upgrade request, as a sender's SDK sends it."""
    lines = ["GET %s HTTP/1.1" % target, "Host: 127.0.0.1", "Upgrade: websocket", "Connection: Upgrade",
             "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13"]
    lines += ["%s: %s" % item for item in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def config_relay(name, body, nofile=None, metrics=True):
    """A relay run from a config file: `body` is the YAML after `listen:` and the namespace's SAS rule."""
    port = free_port()
    path = os.path.join(WORK, name + ".yaml")
    with open(path, "w") as f:
        f.write('listen: "127.0.0.1:%d"\nnamespaceRules:\n  - {keyName: %s, primaryKey: "%s", rights: [Listen, Send, Manage]}\n%s'
                % (port, hc.KEY_NAME, hc.KEY, body))
    args = ["relay", "--config", path]
    metrics_port = None
    if metrics:
        metrics_port = free_port()
        args += ["--metrics", "127.0.0.1:%d" % metrics_port]
    relay = Proc(name, args, nofile=nofile)
    relay.port, relay.metrics_port, relay.url = port, metrics_port, "ws://127.0.0.1:%d" % port
    relay.wait_for_log("relay listening")
    return relay


def sas(entity):
    return hc.sas_token(hc.dotnet_audience("127.0.0.1", entity))


def sas_headers(entity):
    return {"ServiceBusAuthorization": sas(entity)}


class Listener:
    """A Hybrid Connections listener (SAS) on its own asyncio thread that accepts every sender: it opens the
    rendezvous and holds it until the relay closes it."""

    def __init__(self, relay, entity):
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.control = None
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._run(relay, entity), self.loop)
        if not self.ready.wait(15):
            raise SystemExit("the benchmark's listener did not come online")

    async def _run(self, relay, entity):
        self.control = await connect(hc.listen_uri(relay.url, entity), additional_headers=sas_headers(entity),
                                     ping_interval=None, max_size=None)
        self.ready.set()
        try:
            async for message in self.control:
                kind, body = hc.parse_control(message)
                if kind == "accept":
                    asyncio.ensure_future(self._rendezvous(body["address"]))
        except Exception:
            pass

    async def _rendezvous(self, address):
        try:
            ws = await connect(address, ping_interval=None)
            await ws.wait_closed()
        except Exception:
            pass

    def close(self):
        """Closes the control channel (briefly: its relay may be gone), ends every task, stops the loop."""
        async def shutdown():
            if self.control is not None:
                try:
                    await asyncio.wait_for(self.control.close(), 1)
                except Exception:
                    pass
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        try:
            asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(5)
        except Exception:
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        if not self.loop.is_running():
            self.loop.close()


# ---------------------------------------------------------------------------------------------------------
# 1. Nested JSON in an Entra token

ENTRA_CLIENT_OID = "0d4ee1c4-0000-4000-8000-00000000c1c1"


def nested(depth):
    return "[" * depth + "]" * depth


def header_bomb_token(entra):
    """(a) ~1.4 KB: the header holds arrays nested 511 deep; tiny claims and signature (a forger signs
    nothing)."""
    header = '{"typ":"JWT","alg":"RS256","kid":"%s","x":%s}' % (entra.keys[0].kid, nested(NESTING))
    return b64url(header.encode()) + "." + b64url(b"{}") + "." + b64url(b"forged")


def claims_bomb_token(entra, members=22):
    """(b) ~30 KB: a normal header naming the tenant's real key, claims with `members` members each nested
    511 deep, a signature that is not one (256 bytes of zeros)."""
    header = json.dumps({"typ": "JWT", "alg": "RS256", "kid": entra.keys[0].kid})
    claims = "{" + ",".join('"m%d":%s' % (i, nested(NESTING)) for i in range(members)) + "}"
    return b64url(header.encode()) + "." + b64url(claims.encode()) + "." + b64url(bytes(256))


def bearer_upgrade(token):
    return upgrade("/$hc/hc?sb-hc-action=connect", {"Authorization": "Bearer " + token})


def bearer_post(token):
    return ("POST /hc/x HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\nContent-Length: 2\r\n\r\nhi"
            % token).encode()


def refused_token_cost(relay, request, count, budget, cap):
    """Sends up to `count` requests carrying bad tokens one after another, each from a new source address; none
    is sent after `budget` seconds, and each is given up after `cap` seconds without an answer. Returns
    (answers, relay CPU seconds per request sent, median wall seconds per answered request, whether one went
    unanswered): when one did, the CPU per token is a lower bound and the relay is still busy with it."""
    before = relay.cpu()
    answers, walls = [], []
    deadline = time.time() + budget
    for _ in range(count):
        started = time.time()
        answers.append(status_of(relay.port, request, source=next_source(), timeout=cap))
        if answers[-1] != "timeout":
            walls.append(time.time() - started)
        if time.time() >= deadline:
            break
    time.sleep(0.2)  # let the relay finish answering and closing
    unanswered = "timeout" in answers
    return answers, (relay.cpu() - before) / len(answers), statistics.median(walls) if walls else None, unanswered


def good_connect(relay, timeout):
    """One good SAS sender connecting to `hc` (its listener accepts): (seconds to the relay's answer, status);
    `timeout` seconds when no answer came."""
    started = time.time()
    try:
        ws = hc.RawWebSocket("127.0.0.1", relay.port, "/$hc/hc?sb-hc-action=connect", headers=sas_headers("hc"),
                             timeout=timeout)
        status = str(ws.status)
        ws.close()
    except socket.timeout:
        status = "timeout"
    except OSError as error:
        status = error.__class__.__name__
    return time.time() - started, status


def good_connect_latencies(relay, seconds, every=0.2, timeout=8):
    """Starts a good connect every `every` seconds for `seconds`, each on its own thread, so a relay that stops
    answering still gets one probe per interval (and each probe waits up to `timeout` s). Returns (latencies,
    statuses) once all have finished."""
    results = []
    threads = []
    deadline = time.time() + seconds
    while time.time() < deadline:
        thread = threading.Thread(target=lambda: results.append(good_connect(relay, timeout)), daemon=True)
        thread.start()
        threads.append(thread)
        time.sleep(every)
    for thread in threads:
        thread.join(timeout + 5)
    # A probe that got no answer counts as infinitely slow (printed as a timeout), not as `timeout` seconds.
    return [latency if status != "timeout" else float("inf") for latency, status in results], \
        [status for _, status in results]


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def latency_summary(latencies, statuses):
    def ms(seconds):
        return "timeout" if seconds == float("inf") else "%.1f ms" % (1000 * seconds)
    return "%s / %s (%d connects: %s)" % (ms(percentile(latencies, 0.5)), ms(percentile(latencies, 0.9)),
                                             len(latencies), tally(statuses))


class EntraRelay:
    """A relay with an `entra:` section (as test_entra.py configures it, plus the namespace's SAS rule) and a
    SAS listener on its entity `hc`. `restart()` gives a fresh one: a relay still busy with a token it was
    sent would skew whatever is measured next."""

    def __init__(self, entra):
        self.entra = entra
        self.relay = self.listener = None
        self.starts = 0
        self.warm_up = self.restart()

    def restart(self):
        self.stop()
        self.starts += 1
        self.relay = config_relay("relay-entra-%d" % self.starts, (
            "hybridConnections:\n  - name: hc\n"
            "entra:\n  authority: \"%s\"\n  tenant: \"%s\"\n  principals:\n    - {id: \"%s\", rights: [Send]}\n"
            % (self.entra.authority, self.entra.tenant, ENTRA_CLIENT_OID)))
        self.listener = Listener(self.relay, "hc")
        # A good Entra token first: the relay fetches the tenant's keys, so later tokens meet a warm key set.
        return status_of(self.relay.port, bearer_upgrade(self.entra.token(ENTRA_CLIENT_OID)), timeout=10)

    def stop(self):
        if self.relay:
            self.relay.stop(kill=True)
            STARTED.remove(self.relay)
            self.relay = None
        if self.listener:
            self.listener.close()
            self.listener = None


def attack_entra_nesting():
    table = Table("1. Nested JSON in an Entra token (relay with an entra: section, fake Entra on loopback)")
    entra = FakeEntra()
    target = None
    try:
        target = EntraRelay(entra)
        table.row("good Entra token (warm-up), answer", target.warm_up)
        header_token, claims_token = header_bomb_token(entra), claims_bomb_token(entra)
        kinds = (("(a) header %d deep, %d B" % (NESTING, len(header_token)), header_token),
                 ("(b) 22 claims %d deep, %d B" % (NESTING, len(claims_token)), claims_token))

        # Relay CPU per refused token: 20 upgrades and 3 HTTP-mode POSTs of each kind, within time budgets.
        for label, token in kinds:
            for how, request, count, budget, cap in (("upgrades", bearer_upgrade(token), 20, 5, 6),
                                                     ("HTTP POSTs", bearer_post(token), 3, 2, 4)):
                answers, cpu, wall, unanswered = refused_token_cost(target.relay, request, count, budget, cap)
                table.row("%s, %s: answers" % (label, how), tally(answers))
                if unanswered:
                    table.row("%s, %s: relay CPU/token" % (label, how),
                              ">= %.0f ms (one unanswered after %d s; relay restarted)" % (1000 * cpu, cap))
                    target.restart()
                else:
                    table.row("%s, %s: relay CPU/token" % (label, how), "%.1f ms (median wall %.1f ms)" % (1000 * cpu,
                                                                                                   1000 * wall))

        # A good SAS connect's latency, idle and while two threads flood with bad tokens ((a) and (b) in turn,
        # each from a new source address).
        table.row("good SAS connect, idle: median / p90", latency_summary(*good_connect_latencies(target.relay, 3)))
        stop = threading.Event()
        flood_sent, flood_answers = [], []

        def flood(first):
            for token in itertools.islice(itertools.cycle((header_token, claims_token)), first, None):
                if stop.is_set():
                    return
                flood_sent.append(1)
                flood_answers.append(status_of(target.relay.port, bearer_upgrade(token), source=next_source(), timeout=12))
        cpu_before = target.relay.cpu()
        flooders = [threading.Thread(target=flood, args=(i,), daemon=True) for i in range(2)]
        for thread in flooders:
            thread.start()
        flood_started = time.time()
        busy = good_connect_latencies(target.relay, 10)  # returns when the last probe has its answer
        stop.set()
        flood_cpu = target.relay.cpu() - cpu_before
        flood_seconds = time.time() - flood_started
        table.row("good SAS connect, flooded: median / p90", latency_summary(*busy))
        table.row("flood: bad tokens sent (answers by then)", "%d in %.0f s (%s)" % (len(flood_sent), flood_seconds,
                                                                            tally(flood_answers)))
        table.row("flood: relay CPU s", "%.1f in %.0f s" % (flood_cpu, flood_seconds))
        table.row("relay after the attack", target.relay.status())
        table.exits(target.relay)
        table.note("CPU from /proc/PID/stat (10 ms ticks): a few cheap tokens may read as 0")
        target.stop()  # also ends flood requests still waiting for an answer
        for thread in flooders:
            thread.join(15)
    finally:
        if target:
            target.stop()
        stop_everything()
        entra.close()
    table.print()


# ---------------------------------------------------------------------------------------------------------
# 2. UDP flows from many source addresses

class UdpEcho:
    """A UDP target answering every datagram with the datagram, to its sender."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                data, source = self.sock.recvfrom(65535)
                self.sock.sendto(data, source)
            except OSError:
                if self.sock.fileno() < 0:
                    return

    def close(self):
        self.sock.close()


class TcpEcho:
    """A threaded TCP echo target."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                conn.sendall(data)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self):
        self.sock.close()


def udp_socket_state(port):
    """(bytes queued, datagrams dropped) at the UDP socket bound to 127.0.0.1:`port`, from /proc/net/udp:
    what the process has not read yet, and what the kernel threw away because that queue was full."""
    local = "0100007F:%04X" % port
    with open("/proc/net/udp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1] == local:
                return int(fields[4].split(":")[1], 16), int(fields[-1])
    return None, None


def tcp_echo_ok(port, payload=b"x" * 1000):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(payload)
            received = b""
            while len(received) < len(payload):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
            return received == payload
    except OSError:
        return False


def attack_udp_flows(n=3000):
    table = Table("2. UDP flows: one 1-byte datagram from each of N=%d source addresses (127.0.0.2 on)" % n)
    udp_target, tcp_target = UdpEcho(), TcpEcho()
    senders = []
    try:
        relay = config_relay("relay-udp", "hybridConnections:\n  - name: udp\n  - name: tcp\n")
        edge_metrics, client_metrics = free_port(), free_port()
        edge = Proc("edge-udp", ["edge", "-e", relay.url, "-K", hc.KEY_NAME, "-k", hc.KEY,
                                 "-T", "udp:127.0.0.1:%dU" % udp_target.port, "-T", "tcp:127.0.0.1:%d" % tcp_target.port,
                                 "--metrics", "127.0.0.1:%d" % edge_metrics])
        edge.wait_for_log("listener online", count=2)
        udp_port, tcp_port = free_port(), free_port()
        client = Proc("client-udp", ["client", "-e", relay.url, "-K", hc.KEY_NAME, "-k", hc.KEY,
                                     "-L", "127.0.0.1:%dU:udp" % udp_port, "-L", "127.0.0.1:%d:tcp" % tcp_port,
                                     "--metrics", "127.0.0.1:%d" % client_metrics])
        client.wait_for_log("client port bound", count=2)
        if knows_flag("client", "--udp-max-flows"):
            table.note("this client knows --udp-max-flows (not passed: its default applies)")
        else:
            table.note("this client has no --udp-max-flows (no flow cap)")
        table.note("relay, edge and client run with this shell's descriptor limit, %d" %
                   resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        baseline = (edge.fds(), relay.fds(), edge.rss_mib())

        # One datagram from each source (the sockets stay open so answers have somewhere to go), in bursts of 50,
        # each once the client has read the last: as fast as it takes them, so the kernel drops next to none.
        # After 25 s the bursts no longer wait (the attack must end within a minute): drops are then counted.
        started = time.time()
        for i in range(n):
            k = i + 1  # 127.0.0.2, ... 127.0.0.254, 127.0.1.1, ...
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.%d.%d" % (k // 254, 1 + k % 254), 0))
            sock.sendto(b"x", ("127.0.0.1", udp_port))
            senders.append(sock)
            if i % 50 == 49:
                drain_deadline = min(time.time() + 1, started + 25)
                while (udp_socket_state(udp_port)[0] or 0) > 0 and time.time() < drain_deadline:
                    time.sleep(0.002)
        table.row("datagrams sent (seconds)", "%d (%.1f s)" % (n, time.time() - started))

        # Wait until the tunnels stop changing (3 s steady) or 15 s have passed.
        deadline, last, steady_since = time.time() + 15, None, time.time()
        while time.time() < deadline:
            now = metric(client_metrics, "hyrelay_active_tunnels")
            if now != last:
                last, steady_since = now, time.time()
            elif time.time() - steady_since >= 3:
                break
            time.sleep(0.5)
        table.row("kernel drops at the client's UDP port", fmt(udp_socket_state(udp_port)[1]))
        table.row("tunnels open: client / relay / edge", "%s / %s / %s" % (
            fmt(metric(client_metrics, "hyrelay_active_tunnels")), fmt(metric(relay.metrics_port, "hyrelay_active_tunnels")),
            fmt(metric(edge_metrics, "hyrelay_active_tunnels"))))
        table.row("client udp_drops{reason=flow_limit}",
                  fmt(metric(client_metrics, "hyrelay_udp_drops_total", reason="flow_limit")))
        table.row("edge descriptors (before)", "%s (%s)" % (fmt(edge.fds()), fmt(baseline[0])))
        table.row("edge RSS MiB (before)", "%s (%s)" % (fmt(edge.rss_mib()), fmt(baseline[2])))
        table.row("relay descriptors (before)", "%s (%s)" % (fmt(relay.fds()), fmt(baseline[1])))
        table.row("client descriptors", fmt(client.fds()))
        good = sum(tcp_echo_ok(tcp_port) for _ in range(10))
        table.row("TCP tunnels through the same client", "%d/10" % good)
        table.row("relay / edge / client after", "%s / %s / %s" % (relay.status(), edge.status(), client.status()))
        table.exits(relay, edge, client)
    finally:
        for sock in senders:
            sock.close()
        stop_everything()
        udp_target.close()
        tcp_target.close()
    table.print()


# ---------------------------------------------------------------------------------------------------------
# 3. A header that JSON-escapes past the control channel's 64 KiB

QUOTES_REQUEST = 32_600
QUOTES_RESPONSE = 36 * 1024


class Target(http.server.BaseHTTPRequestHandler):
    """Answers 200 "ok"; /big answers with a 36 KB header of `"` characters."""
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.send_response(200)
        if self.path.endswith("/big"):
            self.send_header("X-Big", '"' * QUOTES_RESPONSE)
        self.send_header("Content-Length", "2")
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def edge_channel_events(edge):
    """(reconnects, closes with 1009 either way) in the edge's log so far."""
    lines = edge.log().splitlines()
    reconnects = sum("listener reconnected" in line for line in lines)
    closes = sum(("relay closed the control channel" in line and "1009" in line)
                 or "the relay sent a control message over" in line for line in lines)
    return reconnects, closes


def normal_gets(relay, count, workers, seconds):
    """`count` GETs through the relay from `workers` threads, spread over about `seconds`; their statuses."""
    statuses = []
    per_worker = count // workers

    def worker(index):
        for n in range(per_worker):
            try:
                status, _, _, _ = hc.http_request("127.0.0.1", relay.port, "GET", "/web/ok-%d-%d" % (index, n),
                                                  timeout=20)
                statuses.append(str(status))
            except socket.timeout:
                statuses.append("timeout")
            except (OSError, ValueError, IndexError) as error:
                statuses.append(error.__class__.__name__)
            time.sleep(seconds / per_worker)
    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(workers)]
    for thread in threads:
        thread.start()
    return threads, statuses


def summarize_normal(statuses):
    ok = statuses.count("200")
    bad_gateway = statuses.count("502")
    return "%d x 200, %d x 502, %d other%s" % (
        ok, bad_gateway, len(statuses) - ok - bad_gateway,
        "" if len(statuses) == ok + bad_gateway else " (%s)" % tally([s for s in statuses if s not in ("200", "502")]))


def attack_quoted_header():
    table = Table("3. A header of '\"' that JSON-escapes past 64 KiB on the control channel (edge -H, HTTP mode)")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Target)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        relay = config_relay("relay-http", "hybridConnections:\n  - name: web\n    requiresClientAuthorization: false\n")
        edge = Proc("edge-http", ["edge", "-e", relay.url, "-K", hc.KEY_NAME, "-k", hc.KEY,
                                  "-H", "web:http/127.0.0.1:%d" % server.server_address[1]])
        edge.wait_for_log("listener online")
        warm = hc.http_request("127.0.0.1", relay.port, "GET", "/web/warm", timeout=10)[0]
        table.row("warm-up GET", warm)

        # (i) the request: one attack a second for 10 s, 100 normal GETs from 5 threads meanwhile.
        before = edge_channel_events(edge)
        attack_answers = []
        attack_request = ("GET /web/attack HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nX-Quotes: %s\r\n\r\n"
                          % ('"' * QUOTES_REQUEST)).encode()
        threads, statuses = normal_gets(relay, 100, 5, 10)
        attackers = []
        for _ in range(10):
            thread = threading.Thread(target=lambda: attack_answers.append(status_of(relay.port, attack_request, timeout=20)),
                                      daemon=True)
            thread.start()
            attackers.append(thread)
            time.sleep(1)
        for thread in threads + attackers:
            thread.join(40)
        time.sleep(1)
        after = edge_channel_events(edge)
        table.row("(i) request header of %d '\"': attacks" % QUOTES_REQUEST, tally(attack_answers))
        table.row("(i) 100 normal GETs", summarize_normal(statuses))
        table.row("(i) edge control channel: reconnects / 1009",
                  "%d / %d" % (after[0] - before[0], after[1] - before[1]))

        # (ii) the response: the target answers /web/big with a 36 KB header; 5 of those among 100 normal GETs.
        before = after
        big_answers = []
        threads, statuses = normal_gets(relay, 100, 5, 10)
        for _ in range(5):
            try:
                big_answers.append(str(hc.http_request("127.0.0.1", relay.port, "GET", "/web/big", timeout=20)[0]))
            except socket.timeout:
                big_answers.append("timeout")
            except (OSError, ValueError, IndexError) as error:
                big_answers.append(error.__class__.__name__)
            time.sleep(2)
        for thread in threads:
            thread.join(40)
        time.sleep(1)
        after = edge_channel_events(edge)
        table.row("(ii) response header of %d '\"': answers" % QUOTES_RESPONSE, tally(big_answers))
        table.row("(ii) 100 normal GETs", summarize_normal(statuses))
        table.row("(ii) edge control channel: reconnects / 1009",
                  "%d / %d" % (after[0] - before[0], after[1] - before[1]))
        table.row("relay / edge after", "%s / %s" % (relay.status(), edge.status()))
        table.exits(relay, edge)
    finally:
        stop_everything()
        server.shutdown()
        server.server_close()
    table.print()


# ---------------------------------------------------------------------------------------------------------
# 4. Idle connections on the telemetry port

def open_sockets(sockets):
    """How many of `sockets` the peer has not closed."""
    still = 0
    for sock in sockets:
        sock.setblocking(False)
        try:
            if sock.recv(1, socket.MSG_PEEK) != b"":
                still += 1  # it sent something (it should not): still open
        except BlockingIOError:
            still += 1
        except OSError:
            pass
    return still


def attack_metrics_port(limit=3000):
    table = Table("4. Idle connections on the --metrics port (relay under RLIMIT_NOFILE 1024)")
    sockets = []
    try:
        for flag in ("--metrics-max-connections", "--metrics-idle-timeout"):
            table.note("this relay %s %s (not passed: %s)" % (
                "knows" if knows_flag("relay", flag) else "has no", flag,
                "its default applies" if knows_flag("relay", flag) else "no such bound"))
        relay = config_relay("relay-metrics", "hybridConnections:\n  - name: hyco\n", nofile=1024)
        table.row("relay descriptors at start", fmt(relay.fds()))
        started = time.time()
        # Connects fail for good only when the listen backlog stays full: a slow accept loop may time one out
        # now and then, so stop after three failures in a row.
        failures, in_a_row = [], 0
        while len(sockets) < limit and in_a_row < 3:
            try:
                sockets.append(socket.create_connection(("127.0.0.1", relay.metrics_port), timeout=1))
                in_a_row = 0
            except OSError as error:
                failures.append(error.__class__.__name__)
                in_a_row += 1
        opened_at = time.time()
        table.row("idle connections opened (failed connects)", "%d in %.1f s (%s)" % (
            len(sockets), opened_at - started, tally(failures) if failures else "none"))
        time.sleep(2)
        table.row("relay descriptors after 2 s", fmt(relay.fds()))
        table.row("idle connections still open after 2 s", open_sockets(sockets))
        # Five SAS-authorized senders on the main port (the entity has no listener: a serving relay says 404).
        answers, times = [], []
        for _ in range(5):
            connect_started = time.time()
            try:
                ws = hc.RawWebSocket("127.0.0.1", relay.port, "/$hc/hyco?sb-hc-action=connect",
                                     headers=sas_headers("hyco"), timeout=3)
                answers.append(str(ws.status))
                ws.close()
            except socket.timeout:
                answers.append("timeout (3 s)")
            except OSError as error:
                answers.append(error.__class__.__name__)
            times.append(time.time() - connect_started)
        table.row("5 SAS connects on the main port (no listener: 404)", "%s, slowest %.2f s" % (tally(answers), max(times)))
        time.sleep(max(0.0, opened_at + 12 - time.time()))
        table.row("idle connections still open after 12 s", open_sockets(sockets))
        table.row("relay descriptors after 12 s", fmt(relay.fds()))
        table.row("relay 'cannot accept' log lines", relay.log().count("cannot accept connections"))
        table.row("relay after", relay.status())
        table.exits(relay)
    finally:
        for sock in sockets:
            sock.close()
        stop_everything()
    table.print()


# ---------------------------------------------------------------------------------------------------------

ATTACKS = {1: attack_entra_nesting, 2: attack_udp_flows, 3: attack_quoted_header, 4: attack_metrics_port}


def main():
    global BINARY, WORK
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("binary", help="the hyrelay binary to attack")
    parser.add_argument("--only", type=int, choices=sorted(ATTACKS), help="run only this attack")
    args = parser.parse_args()
    BINARY = os.path.realpath(args.binary)
    stat = os.stat(BINARY)
    print("command: %s" % " ".join([os.path.basename(sys.executable)] + sys.argv))
    print("binary:  %s (%d bytes, modified %s)" % (BINARY, stat.st_size,
                                                   time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stat.st_mtime))))
    print("load:    %s" % " ".join("%.2f" % x for x in os.getloadavg()))
    WORK = tempfile.mkdtemp(prefix="attacks-two-")
    try:
        for number in sorted(ATTACKS):
            if args.only in (None, number):
                started = time.time()
                ATTACKS[number]()
                print("  (%.0f s)" % (time.time() - started))
    finally:
        stop_everything()
        shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()

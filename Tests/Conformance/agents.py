"""Process helpers for end-to-end agent tests: relays, edges, clients and small TCP targets."""
import hashlib
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.request

from conftest import ROOT, free_port

KEY_NAME = "root"
KEY = "YWdlbnRzLWtleS1mb3ItdGVzdGluZy0xMjM0NTY3OA=="


def binary():
    path = os.environ.get("HYRELAY_BIN", os.path.join(ROOT, ".build", "debug", "hyrelay"))
    assert os.path.exists(path), path
    return path


class Process:
    def __init__(self, args, log_path, env=None, prefix=()):
        """`prefix` runs the binary through another command (`ip netns exec NS`), which execs it in place."""
        self.args = args
        self.log_path = log_path
        self.log_file = open(log_path, "w")
        self.popen = subprocess.Popen(list(prefix) + [binary()] + args, stdout=self.log_file,
                                      stderr=subprocess.STDOUT, env=env)

    def log(self):
        with open(self.log_path) as f:
            return f.read()

    def wait_for_log(self, text, timeout=20):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if text in self.log():
                return
            assert self.popen.poll() is None, "exited: " + self.log()
            time.sleep(0.05)
        raise AssertionError("'%s' not logged within %ss:\n%s" % (text, timeout, self.log()))

    def stop(self, sig=None):
        if self.popen.poll() is None:
            if sig is None:
                self.popen.terminate()
            else:
                self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self.log_file.close()


def start_relay(tmp_path, entities, port=None, tls=None, name="relay", extra=()):
    port = port or free_port()
    args = ["relay", "--listen", "127.0.0.1:%d" % port, "--sas-key-name", KEY_NAME, "--sas-key", KEY] + list(extra)
    for entity in entities:
        args += ["--hybrid-connection", entity]
    if tls:
        args += ["--cert", tls["cert"], "--key", tls["key"]]
    process = Process(args, str(tmp_path / ("%s-%d.log" % (name, time.time_ns()))))
    process.port = port
    process.wait_for_log("relay listening")
    return process


def start_edge(tmp_path, relay_url, specs, extra=()):
    args = ["edge", "-e", relay_url, "-K", KEY_NAME, "-k", KEY, "-a", "1"]
    for spec in specs:
        args += ["-T", spec]
    process = Process(args + list(extra), str(tmp_path / ("edge-%d.log" % time.time_ns())))
    process.wait_for_log("listener online")
    return process


def start_client(tmp_path, relay_url, specs, ports, extra=()):
    args = ["client", "-e", relay_url, "-K", KEY_NAME, "-k", KEY]
    for spec in specs:
        args += ["-L", spec]
    process = Process(args + list(extra), str(tmp_path / ("client-%d.log" % time.time_ns())))
    # Probing the ports with connect() would open tunnels; the log says when they are bound.
    deadline = time.time() + 20
    while process.log().count("client port bound") < len(ports):
        assert time.time() < deadline, "ports not bound: " + process.log()
        assert process.popen.poll() is None, "exited: " + process.log()
        time.sleep(0.05)
    return process


def stop_all(*processes, sig=None):
    """Stops every process given (skipping None: one a test did not get to start)."""
    for process in processes:
        if process:
            process.stop(sig)


def start_relay_from_config(tmp_path, text, name="relay"):
    """A relay run with `--config` holding `text` (YAML), once it listens."""
    config = tmp_path / ("%s.yaml" % name)
    config.write_text(text)
    process = Process(["relay", "--config", str(config)], str(tmp_path / ("%s.log" % name)))
    process.wait_for_log("relay listening")
    return process


def wait_until(predicate, timeout=30, what="condition"):
    """Polls `predicate` every 0.1 s until it is true; fails naming `what` after `timeout` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("not within %ss: %s" % (timeout, what))


def wait_port(port, process=None, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if process is not None:
                assert process.popen.poll() is None, process.log()
            time.sleep(0.05)
    raise AssertionError("port %d not open" % port)


def metric_value(port, name, **labels):
    """The sum of a metric's samples on a process's /metrics whose labels include `labels`."""
    text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all('%s="%s"' % (k, v) in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


def rss(pid):
    """Resident memory of a process, in bytes."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS for %d" % pid)


def fds(pid):
    """Open descriptors of a process."""
    return len(os.listdir("/proc/%d/fd" % pid))


def cpu_seconds(pid):
    """User plus system CPU time a process has used."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def openssl(*args):
    return subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_ca(directory, name="ca"):
    """A self-signed test CA: (key, certificate) paths."""
    key, cert = directory / ("%s.key" % name), directory / ("%s.pem" % name)
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
            "-subj", "/CN=test %s" % name, "-keyout", str(key), "-out", str(cert))
    return key, cert


def make_server_certificate(directory, ca, name, subject_alt="IP:127.0.0.1"):
    """A server certificate for 127.0.0.1 signed by `ca`: (certificate, key) paths."""
    ca_key, ca_cert = ca
    key, csr, cert, ext = (directory / ("%s.%s" % (name, suffix)) for suffix in ("key", "csr", "pem", "ext"))
    ext.write_text("subjectAltName=%s\n" % subject_alt)
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", "/CN=%s" % name,
            "-keyout", str(key), "-out", str(csr))
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key), "-CAcreateserial",
            "-days", "2", "-extfile", str(ext), "-out", str(cert))
    return cert, key


class TcpServer:
    """A threaded TCP target. `mode` echo: echo bytes, then FIN after the peer's FIN. `reply`: read to
    EOF, then answer with a summary (half-close request/reply). `shrink`: read to EOF, then answer with a
    tenth as many bytes (asymmetric traffic, so a hop that swaps directions shows). `tag`: send a fixed
    tag, then echo. `delay`: seconds to wait before the first byte is answered (a slow service)."""

    def __init__(self, mode="echo", tag=b"", delay=0.0, path=None):
        """With `path`, a Unix-socket service at that path instead of a loopback port."""
        self.mode = mode
        self.tag = tag
        self.delay = delay
        if path:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.bind(path)
            self.port = None
        else:
            self.sock = socket.socket()
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind(("127.0.0.1", 0))
            self.port = self.sock.getsockname()[1]
        self.sock.listen(512)
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        buffer = bytearray(1 << 20)
        view = memoryview(buffer)
        try:
            if self.tag:
                conn.sendall(self.tag)
            if self.mode == "shrink":
                total = 0
                while True:
                    n = conn.recv_into(buffer)
                    if n == 0:
                        break
                    total += n
                time.sleep(self.delay)
                conn.sendall(b"d" * (total // 10))
            elif self.mode == "reply":
                digest = hashlib.sha256()
                total = 0
                while True:
                    n = conn.recv_into(buffer)
                    if n == 0:
                        break
                    digest.update(view[:n])
                    total += n
                conn.sendall(("%d %s" % (total, digest.hexdigest())).encode())
            else:
                delay = self.delay
                while True:
                    n = conn.recv_into(buffer)
                    if n == 0:
                        break
                    if delay:
                        time.sleep(delay)
                        delay = 0
                    conn.sendall(view[:n])
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self):
        self.sock.close()


def echo_roundtrip(port, payload, chunk=1 << 20):
    """Sends `payload`, half-closes, reads the echo to EOF; returns (sent digest, received digest, count).
    `port` may be a Unix socket's path."""
    if isinstance(port, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(60)
        sock.connect(port)
    else:
        sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sent = hashlib.sha256()
    received = hashlib.sha256()
    count = {"n": 0}

    def reader():
        buffer = bytearray(1 << 20)
        while True:
            n = sock.recv_into(buffer)
            if n == 0:
                return
            received.update(memoryview(buffer)[:n])
            count["n"] += n

    thread = threading.Thread(target=reader)
    thread.start()
    for offset in range(0, len(payload), chunk):
        part = payload[offset:offset + chunk]
        sock.sendall(part)
        sent.update(part)
    sock.shutdown(socket.SHUT_WR)
    thread.join(timeout=120)
    sock.close()
    return sent.hexdigest(), received.hexdigest(), count["n"]


class Chain:
    """A whole tunnel on its own relay: relay, edge and client processes and an echo target."""

    def __init__(self, tmp_path, name):
        self.port = free_port()
        self.url = "ws://127.0.0.1:%d" % self.port
        self.relay = start_relay(tmp_path, [name], port=self.port, name=name)
        self.target = TcpServer("echo")
        self.edge = start_edge(tmp_path, self.url, ["%s:127.0.0.1:%d" % (name, self.target.port)])
        self.client_port = free_port()
        self.client = start_client(tmp_path, self.url, ["127.0.0.1:%d:%s" % (self.client_port, name)],
                                   [self.client_port])

    def stop(self):
        for process in (self.client, self.edge, self.relay):
            process.stop()
        self.target.close()


def start_prometheus(metrics_ports, directory, *flags, rule_files=(), external_labels=None):
    """A real Prometheus on a free loopback port scraping the given /metrics ports every second and
    evaluating `rule_files` every second. Returns (process, port)."""
    prometheus = shutil.which("prometheus")
    assert prometheus, "prometheus (Debian package) is required"
    port = free_port()
    targets = ", ".join("'127.0.0.1:%d'" % p for p in metrics_ports)
    rules = "".join("  - '%s'\n" % path for path in rule_files)
    labels = "".join("    %s: '%s'\n" % item for item in (external_labels or {}).items())
    config = directory / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                      + ("  external_labels:\n" + labels if labels else "")
                      + ("rule_files:\n" + rules if rules else "")
                      + "scrape_configs:\n  - job_name: hyrelay\n    static_configs:\n      - targets: [%s]\n" % targets)
    log = open(directory / "prometheus.log", "w")
    process = subprocess.Popen([prometheus, "--config.file=%s" % config, "--storage.tsdb.path=%s" % (directory / "data"),
                                "--web.listen-address=127.0.0.1:%d" % port, *flags], stdout=log, stderr=subprocess.STDOUT)
    return process, port

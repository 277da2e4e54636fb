import os
import re
import socket
import subprocess
import sys
import tempfile
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import hc  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
# Every hyrelay the tests start exports to files by default; keep them (and any spool) out of $HOME.
os.environ.setdefault("HYRELAY_STATE_DIR", tempfile.mkdtemp(prefix="hyrelay-state-"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Relay:
    def __init__(self, port, process, log_path):
        self.host = "127.0.0.1"
        self.port = port
        self.process = process
        self.log_path = log_path
        self.ws = "ws://127.0.0.1:%d" % port

    def log(self):
        with open(self.log_path) as f:
            return f.read()


CONFIG = """
listen: "127.0.0.1:{port}"
namespaceRules:
  - keyName: {key_name}
    primaryKey: "{key}"
    rights: [Listen, Send, Manage]
hybridConnections:
  - name: hyco
    rules:
      - keyName: {send_key_name}
        primaryKey: "{send_key}"
        rights: [Send]
  - name: open
    requiresClientAuthorization: false
  - name: microsoft.hybridcompute/machines/abc
  - name: limited
limits:
  acceptTimeoutSeconds: 3
  httpResponseTimeoutSeconds: 3
  pingIntervalSeconds: 1
  handshakeTimeoutSeconds: 2
"""


@pytest.fixture(scope="session")
def relay(tmp_path_factory):
    binary = os.environ.get("HYRELAY_BIN", os.path.join(ROOT, ".build", "debug", "hyrelay"))
    assert os.path.exists(binary), "build hyrelay first (swift build) or set HYRELAY_BIN"
    port = free_port()
    directory = tmp_path_factory.mktemp("relay")
    config = directory / "relay.yaml"
    config.write_text(CONFIG.format(port=port, key_name=hc.KEY_NAME, key=hc.KEY, send_key_name=hc.SEND_KEY_NAME,
                                    send_key=hc.SEND_KEY))
    log_path = directory / "relay.log"
    log = open(log_path, "w")
    process = subprocess.Popen([binary, "relay", "--config", str(config), "--log-level", "debug"],
                               stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            assert process.poll() is None, open(log_path).read()
            time.sleep(0.05)
    else:
        process.kill()
        raise AssertionError("relay did not start: " + open(log_path).read())
    yield Relay(port, process, str(log_path))
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()


# What an operator must never have to read in our logs: NIO's call signatures and errno suffixes, debug forms of
# addresses, Swift's type and case names, decoder boilerplate, crashes. Every log a hyrelay process wrote during
# the session (the files under pytest's temporary directory that our processes write) is scanned at the end.
INTERNALS = re.compile(
    r"\(errno: \d+\)|descriptor:addr:size|\[IPv[46]\]|Cannot initialize \w+ from invalid|failedToLoad\w+"
    r"|NIOCore\.|NIOPosix\.|NIOSSL\.|IOError\(|ChannelError\.|HTTPClientError\.|NIOConnectionError"
    r"|DecodingError|BoringSSL|handshake\.cc|Fatal error|Swift runtime failure")
FOREIGN_LOGS = re.compile(r"nginx|haproxy|prometheus|tinyproxy|dnsmasq|redis|access")


@pytest.fixture(scope="session", autouse=True)
def logs_speak_in_words(tmp_path_factory):
    yield
    offenders = []
    for path in sorted(tmp_path_factory.getbasetemp().rglob("*.log")):
        if FOREIGN_LOGS.search(path.name):
            continue
        with open(path, errors="replace") as f:
            for number, line in enumerate(f, 1):
                if INTERNALS.search(line):
                    offenders.append("%s:%d: %s" % (path.name, number, line.strip()[:300]))
    assert not offenders, "log lines with internals instead of words (%d):\n%s" % (
        len(offenders), "\n".join(offenders[:40]))

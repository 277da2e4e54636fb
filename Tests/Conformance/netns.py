"""Network namespaces for fault tests on a real network path: the relay in one namespace, the edge and its target
in another, joined by a veth pair that the tests shape (tc tbf), thin out (iptables statistic) or cut (iptables
DROP); the client stays in the test's own namespace, joined to the relay's by a second, clean veth pair. The
addresses (10.77.x.x) exist only inside these namespaces and their veth ends."""
import os
import subprocess
import uuid


def run(*args, check=True):
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise AssertionError("%s: %s" % (" ".join(args), result.stderr.strip()))
    return result


class Topology:
    """client (this namespace) ── 10.77.1.0/30 ── relay namespace ── 10.77.2.0/30 ── edge namespace."""

    CLIENT_SIDE, RELAY_FRONT = "10.77.1.1", "10.77.1.2"
    RELAY_BACK, EDGE = "10.77.2.1", "10.77.2.2"

    def __init__(self):
        tag = uuid.uuid4().hex[:6]
        self.relay_ns, self.edge_ns = "hr-relay-" + tag, "hr-edge-" + tag
        self.front_root, self.front_ns = "hrf%s0" % tag, "hrf%s1" % tag
        self.back_relay, self.back_edge = "hrb%s0" % tag, "hrb%s1" % tag
        run("ip", "netns", "add", self.relay_ns)
        run("ip", "netns", "add", self.edge_ns)
        try:
            run("ip", "link", "add", self.front_root, "type", "veth", "peer", "name", self.front_ns)
            run("ip", "link", "set", self.front_ns, "netns", self.relay_ns)
            run("ip", "addr", "add", self.CLIENT_SIDE + "/30", "dev", self.front_root)
            run("ip", "link", "set", self.front_root, "up")
            self.relay("ip", "addr", "add", self.RELAY_FRONT + "/30", "dev", self.front_ns)
            self.relay("ip", "link", "set", self.front_ns, "up")
            self.relay("ip", "link", "set", "lo", "up")
            self.relay("ip", "link", "add", self.back_relay, "type", "veth", "peer", "name", self.back_edge)
            self.relay("ip", "link", "set", self.back_edge, "netns", self.edge_ns)
            self.relay("ip", "addr", "add", self.RELAY_BACK + "/30", "dev", self.back_relay)
            self.relay("ip", "link", "set", self.back_relay, "up")
            self.edge("ip", "addr", "add", self.EDGE + "/30", "dev", self.back_edge)
            self.edge("ip", "link", "set", self.back_edge, "up")
            self.edge("ip", "link", "set", "lo", "up")
        except Exception:
            self.close()
            raise

    def relay(self, *args, check=True):
        return run("ip", "netns", "exec", self.relay_ns, *args, check=check)

    def edge(self, *args, check=True):
        return run("ip", "netns", "exec", self.edge_ns, *args, check=check)

    def in_relay(self, argv):
        return ["ip", "netns", "exec", self.relay_ns] + argv

    def in_edge(self, argv):
        return ["ip", "netns", "exec", self.edge_ns] + argv

    def shape(self, rate="20mbit", loss=0.01):
        """Both directions of the relay–edge link: a token bucket at `rate`, and `loss` of packets dropped."""
        for inside, device in ((self.relay, self.back_relay), (self.edge, self.back_edge)):
            inside("tc", "qdisc", "add", "dev", device, "root", "tbf", "rate", rate, "burst", "32kbit",
                   "latency", "400ms")
            if loss:
                inside("iptables", "-A", "INPUT", "-i", device, "-m", "statistic", "--mode", "random",
                       "--probability", str(loss), "-j", "DROP")

    def cut(self):
        """A black hole between relay and edge: every packet either way dropped, no reset, no ICMP."""
        self.edge("iptables", "-I", "INPUT", "-i", self.back_edge, "-j", "DROP")
        self.edge("iptables", "-I", "OUTPUT", "-o", self.back_edge, "-j", "DROP")

    def heal(self):
        self.edge("iptables", "-D", "INPUT", "-i", self.back_edge, "-j", "DROP")
        self.edge("iptables", "-D", "OUTPUT", "-o", self.back_edge, "-j", "DROP")

    def close(self):
        run("ip", "link", "del", self.front_root, check=False)
        run("ip", "netns", "del", self.relay_ns, check=False)
        run("ip", "netns", "del", self.edge_ns, check=False)


ECHO_SERVER = """
import socket, sys, threading
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", int(sys.argv[1])))
server.listen(64)
def serve(connection):
    with connection:
        while True:
            data = connection.recv(1 << 16)
            if not data:
                connection.shutdown(socket.SHUT_WR)
                return
            connection.sendall(data)
while True:
    connection, _ = server.accept()
    threading.Thread(target=serve, args=(connection,), daemon=True).start()
"""


def can_use_namespaces():
    return os.geteuid() == 0 and subprocess.run(["which", "iptables"], capture_output=True).returncode == 0

"""Relay discovery: an edge given a relay name that resolves to several addresses (as relay pods behind a
Kubernetes headless service do) keeps a listener on each, and follows the set as it grows and shrinks without
touching open tunnels. The name lives in /etc/hosts for the test (loopback addresses 127.0.0.2-4)."""
import os
import socket
import time

import pytest

import agents
from conftest import free_port

NAME = "relays.hyrelay-test.internal"
MARKER = "# hyrelay discovery test"


class HostsFile:
    """Lines for NAME in /etc/hosts, replaced at will and removed at the end."""

    path = "/etc/hosts"

    def __init__(self):
        with open(self.path) as f:
            self.original = [line for line in f.read().splitlines() if MARKER not in line]

    def resolve_to(self, *addresses):
        lines = self.original + ["%s %s %s" % (address, NAME, MARKER) for address in addresses]
        with open(self.path, "w") as f:
            f.write("\n".join(lines) + "\n")

    def restore(self):
        with open(self.path, "w") as f:
            f.write("\n".join(self.original) + "\n")


def start_relay(tmp_path, address, port):
    metrics = free_port()
    process = agents.Process(
        ["relay", "--listen", "%s:%d" % (address, port), "--public-url", "ws://%s:%d" % (address, port),
         "--hybrid-connection", "hc", "--sas-key-name", agents.KEY_NAME, "--sas-key", agents.KEY,
         "--metrics", "127.0.0.1:%d" % metrics],
        str(tmp_path / ("relay-%s.log" % address)))
    process.metrics_port = metrics
    process.wait_for_log("relay listening")
    return process


def listeners(relay):
    return agents.metric_value(relay.metrics_port, "hyrelay_listeners", role="relay", entity="hc")


def wait_for(condition, what, timeout=15):
    agents.wait_until(condition, timeout=timeout, what=what)

def test_an_edge_follows_the_relays_a_name_resolves_to(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the test names its relays in /etc/hosts, which needs root (CI runs as root)")
    hosts = HostsFile()
    port = free_port()
    target = agents.TcpServer("echo")
    relays = {}
    edge = clients = None
    try:
        for address in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
            relays[address] = start_relay(tmp_path, address, port)
        hosts.resolve_to("127.0.0.2", "127.0.0.3")
        edge = agents.Process(
            ["edge", "-e", "ws://%s:%d" % (NAME, port), "-K", agents.KEY_NAME, "-k", agents.KEY, "-a", "1",
             "-T", "hc:127.0.0.1:%d" % target.port, "--discovery-interval", "0.5"],
            str(tmp_path / "edge.log"))
        wait_for(lambda: listeners(relays["127.0.0.2"]) == 1 and listeners(relays["127.0.0.3"]) == 1,
                 "a listener on each address")
        assert listeners(relays["127.0.0.4"]) == 0

        clients = []
        for address in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
            local = free_port()
            clients.append((address, local, agents.start_client(
                tmp_path, "ws://%s:%d" % (address, port), ["127.0.0.1:%d:hc" % local], [local])))
        # A tunnel through 127.0.0.2, kept open across the changes.
        held = socket.create_connection(("127.0.0.1", clients[0][1]), timeout=10)
        held.sendall(b"before")
        assert held.recv(100) == b"before"

        hosts.resolve_to("127.0.0.2", "127.0.0.4")
        wait_for(lambda: listeners(relays["127.0.0.4"]) == 1 and listeners(relays["127.0.0.3"]) == 0,
                 "the listener moved from 127.0.0.3 to 127.0.0.4")
        assert listeners(relays["127.0.0.2"]) == 1, "the listener on an address that stayed was kept"
        held.sendall(b"after")
        assert held.recv(100) == b"after", "the open tunnel outlived the change"
        payload = os.urandom(200_000)
        sent, received, count = agents.echo_roundtrip(clients[2][1], payload)
        assert count == len(payload) and sent == received, "a new tunnel through the added relay works"
        assert "relay addresses changed" in edge.log()
        held.close()
    finally:
        hosts.restore()
        for _, _, client in clients or []:
            client.stop()
        if edge:
            edge.stop()
        for relay in relays.values():
            relay.stop()
        target.close()


def test_the_kubernetes_manifests_hold_valid_configurations(tmp_path):
    """deploy/kubernetes: the relays' and the edge's configurations in their Secrets pass `hyrelay check`, the
    headless Service the edge discovers relays through selects the relay pods, and each pod names itself in
    --public-url."""
    import glob
    import subprocess
    import yaml
    from conftest import ROOT
    documents = {}
    for path in glob.glob(os.path.join(ROOT, "deploy", "kubernetes", "*.yaml")):
        for document in yaml.safe_load_all(open(path)):
            documents[(document["kind"], document["metadata"]["name"])] = document
    for (kind, name), document in documents.items():
        if kind != "Secret" or name == "hyrelay-metrics-token":
            continue
        for file_name, text in document["stringData"].items():
            config = tmp_path / file_name
            config.write_text(text if "AzureRelay" not in text else "AzureRelayEndpoint: ws://relay:9350\n" + text)
            checked = subprocess.run([agents.binary(), "check", "-f", str(config)], capture_output=True, text=True)
            assert checked.returncode == 0, (name, checked.stdout + checked.stderr)
    relay = documents[("Deployment", "hyrelay-relay")]["spec"]["template"]
    headless = documents[("Service", "hyrelay-relay-pods")]["spec"]
    assert headless["clusterIP"] == "None"
    assert headless["selector"] == relay["metadata"]["labels"]
    args = relay["spec"]["containers"][0]["args"]
    assert args[args.index("--public-url") + 1] == "ws://$(POD_IP):9350"
    edge_args = documents[("Deployment", "hyrelay-edge-office")]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "ws://hyrelay-relay-pods:9350" in edge_args and "--discovery-interval" in edge_args
    # A side port bound beyond loopback wants a bearer token, mounted from the token Secret.
    for (kind, name), document in documents.items():
        if kind != "Deployment":
            continue
        pod = document["spec"]["template"]["spec"]
        container_args = pod["containers"][0]["args"]
        address = container_args[container_args.index("--metrics") + 1]
        if address.startswith("127.") or address.startswith("[::1]"):
            continue
        token_file = container_args[container_args.index("--metrics-token-file") + 1]
        mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounted = [n for n, path in mounts.items() if token_file.startswith(path + "/")]
        assert mounted and volumes[mounted[0]]["secret"]["secretName"] == "hyrelay-metrics-token", name
        assert ("Secret", "hyrelay-metrics-token") in documents

"""Entra ID end to end: agents that sign in with only AZURE_* variables (client secret, certificate, workload
identity, managed identity) against a fake Entra the tests run, and the relay checking Entra access tokens with
the tenant's published keys: forgeries and misfits refused with the right status, counted and logged without
the token, key rollovers picked up, tokens renewed on a long-lived listener."""
import os
import subprocess
import time

import pytest

import agents
import hc
from conftest import free_port
from fake_entra import FakeEntra

EDGE_APP, EDGE_OID = "edge-app-id", "0d4ee1c4-0000-4000-8000-00000000e0e0"
CLIENT_APP, CLIENT_OID = "client-app-id", "0d4ee1c4-0000-4000-8000-00000000c1c1"
OWNERS_GROUP = "0d4ee1c4-0000-4000-8000-0000000060a1"

RELAY_CONFIG = """
listen: "127.0.0.1:{port}"
hybridConnections:
  - name: hc
  - name: other
limits:
  clockSkewSeconds: 1
entra:
  authority: "{authority}"
  tenant: "{tenant}"
  principals:
    - {{id: "{edge}", rights: [Listen], entity: hc}}
    - {{id: "{client}", rights: [Send]}}
    - {{id: "{owners}", rights: [Manage]}}
"""


@pytest.fixture
def entra():
    fake = FakeEntra()
    fake.add_application(EDGE_APP, EDGE_OID, secret="edge-secret")
    fake.add_application(CLIENT_APP, CLIENT_OID, secret="client-secret")
    yield fake
    fake.close()


def start_relay(tmp_path, entra):
    port = free_port()
    config = tmp_path / "relay-entra.yaml"
    config.write_text(RELAY_CONFIG.format(port=port, authority=entra.authority, tenant=entra.tenant, edge=EDGE_OID,
                                          client=CLIENT_OID, owners=OWNERS_GROUP))
    metrics = free_port()
    process = agents.Process(["relay", "--config", str(config), "--metrics", "127.0.0.1:%d" % metrics],
                             str(tmp_path / ("relay-%d.log" % time.time_ns())))
    process.port, process.metrics_port = port, metrics
    process.wait_for_log("relay listening")
    return process


def signed_in(entra, client_id, secret=None, **extra):
    """An environment with only Entra variables for credentials (no SAS anywhere)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("AZURE_")}
    env.update({"AZURE_TENANT_ID": entra.tenant, "AZURE_CLIENT_ID": client_id, "AZURE_AUTHORITY_HOST": entra.authority})
    if secret:
        env["AZURE_CLIENT_SECRET"] = secret
    env.update(extra)
    return env


def start_edge(tmp_path, relay, target_port, env, extra=()):
    process = agents.Process(
        ["edge", "-e", "ws://127.0.0.1:%d" % relay.port, "-a", "1", "-T", "hc:127.0.0.1:%d" % target_port]
        + list(extra), str(tmp_path / ("edge-%d.log" % time.time_ns())), env=env)
    process.wait_for_log("listener online")
    return process


def start_client(tmp_path, relay, port, env):
    process = agents.Process(["client", "-e", "ws://127.0.0.1:%d" % relay.port, "-L", "127.0.0.1:%d:hc" % port],
                             str(tmp_path / ("client-%d.log" % time.time_ns())), env=env)
    process.wait_for_log("client port bound")
    return process


def assert_no_tokens(*processes):
    for process in processes:
        # Every JWT starts with the base64url of '{"': logs name principals and reasons, never a token.
        assert "eyJ" not in process.log(), process.log_path


def test_agents_with_only_azure_variables_tunnel_through_the_relay(tmp_path, entra):
    relay = start_relay(tmp_path, entra)
    target = agents.TcpServer("echo")
    edge = client = None
    try:
        edge = start_edge(tmp_path, relay, target.port, signed_in(entra, EDGE_APP, "edge-secret"))
        port = free_port()
        client = start_client(tmp_path, relay, port, signed_in(entra, CLIENT_APP, "client-secret"))
        payload = os.urandom(1 << 20)
        sent, received, count = agents.echo_roundtrip(port, payload)
        assert count == len(payload) and sent == received
        assert entra.count("/oauth2/v2.0/token") >= 2
        assert_no_tokens(relay, edge, client)
    finally:
        agents.stop_all(client, edge, relay)
        target.close()


def test_workload_identity_and_a_certificate_sign_in(tmp_path, entra):
    """The edge with a federated token file (AKS workload identity), the client with a certificate credential
    (a signed client assertion the fake Entra verifies with the certificate's key)."""
    token_file = tmp_path / "federated-token"
    token_file.write_text("federated-assertion-from-kubernetes\n")
    entra.add_application("wi-app", EDGE_OID, assertion="federated-assertion-from-kubernetes")
    key, cert = tmp_path / "app.key", tmp_path / "app.pem"
    agents.openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=client-app",
                   "-keyout", str(key), "-out", str(cert))
    combined = tmp_path / "client-cert.pem"
    combined.write_text(cert.read_text() + key.read_text())
    from cryptography import x509
    entra.certificates["cert-app"] = x509.load_pem_x509_certificate(cert.read_bytes()).public_key()
    entra.add_application("cert-app", CLIENT_OID)
    relay = start_relay(tmp_path, entra)
    target = agents.TcpServer("echo")
    edge = client = None
    try:
        edge = start_edge(tmp_path, relay, target.port,
                          signed_in(entra, "wi-app", AZURE_FEDERATED_TOKEN_FILE=str(token_file)))
        port = free_port()
        client = start_client(tmp_path, relay, port,
                              signed_in(entra, "cert-app", AZURE_CLIENT_CERTIFICATE_PATH=str(combined)))
        sent, received, count = agents.echo_roundtrip(port, os.urandom(100_000))
        assert count == 100_000 and sent == received
    finally:
        agents.stop_all(client, edge, relay)
        target.close()


def test_a_wrong_secret_stops_the_agent_at_start(tmp_path, entra):
    process = agents.Process(["edge", "-e", "ws://127.0.0.1:9", "-T", "hc:127.0.0.1:9"],
                             str(tmp_path / "edge-wrong.log"), env=signed_in(entra, EDGE_APP, "not-the-secret"))
    assert process.popen.wait(20) != 0
    log = process.log()
    assert "Entra ID sign-in (client secret for application edge-app-id" in log and "401" in log, log
    assert "not-the-secret" not in log


def listen_status(relay, token, entity="hc"):
    socket = hc.RawWebSocket("127.0.0.1", relay.port, "/$hc/%s?sb-hc-action=listen&sb-hc-id=t" % entity,
                             headers={"ServiceBusAuthorization": token})
    status, reason = socket.status, socket.reason
    socket.close()
    return status, reason


def test_forged_and_misfit_tokens_are_refused(tmp_path, entra):
    relay = start_relay(tmp_path, entra)
    try:
        assert listen_status(relay, entra.token(EDGE_OID))[0] == 101
        assert listen_status(relay, entra.token("someone", groups=[OWNERS_GROUP]), entity="other")[0] == 101
        cases = [
            (entra.token(EDGE_OID, audience="https://management.azure.com"), 401, "entra_wrong_audience"),
            (entra.token(EDGE_OID, tenant="another-tenant"), 401, "entra_wrong_tenant"),
            (entra.token(EDGE_OID, issuer="https://evil.example/%s/v2.0" % entra.tenant), 401, "entra_wrong_issuer"),
            (entra.token(EDGE_OID, lifetime=-120), 401, "entra_expired"),
            (entra.token(EDGE_OID, not_before=int(time.time()) + 600), 401, "entra_not_yet_valid"),
            (entra.token(EDGE_OID, algorithm="none"), 401, "entra_unsupported_algorithm"),
            (entra.token(EDGE_OID, algorithm="HS256"), 401, "entra_unsupported_algorithm"),
            (entra.token(EDGE_OID)[:-6] + "AAAAAA", 401, "entra_invalid_signature"),
            (entra.token(CLIENT_OID), 403, "entra_insufficient_rights"),
            (entra.token(EDGE_OID), 403, "entra_insufficient_rights"),
        ]
        for index, (token, status, reason) in enumerate(cases):
            entity = "other" if index == len(cases) - 1 else "hc"
            got, text = listen_status(relay, token, entity=entity)
            assert got == status, (reason, got, text)
        for reason, expected in (("entra_wrong_audience", 1), ("entra_unsupported_algorithm", 2),
                                 ("entra_insufficient_rights", 2), ("entra_expired", 1)):
            assert agents.metric_value(relay.metrics_port, "hyrelay_auth_failures_total", reason=reason) == expected
        relay.wait_for_log("entra_insufficient_rights")
        assert "does not hold the Listen right on 'hc'" in relay.log()
        assert_no_tokens(relay)
    finally:
        relay.stop()


def test_a_sas_only_relay_says_it_takes_no_entra_tokens(relay):
    socket = hc.RawWebSocket("127.0.0.1", relay.port, "/$hc/hyco?sb-hc-action=listen&sb-hc-id=t",
                             headers={"ServiceBusAuthorization": FakeEntra().token(EDGE_OID)})
    assert socket.status == 401 and "does not accept Entra ID tokens" in socket.reason
    socket.close()


def test_a_key_rollover_is_picked_up(tmp_path, entra):
    relay = start_relay(tmp_path, entra)
    try:
        assert listen_status(relay, entra.token(EDGE_OID))[0] == 101
        fetches = entra.count("/discovery/v2.0/keys")
        entra.rotate()
        token = entra.token(EDGE_OID)
        deadline, statuses = time.time() + 20, []
        while time.time() < deadline:
            statuses.append(listen_status(relay, token)[0])
            if statuses[-1] == 101:
                break
            time.sleep(0.5)
        assert statuses[-1] == 101, statuses
        assert set(statuses[:-1]) <= {401}, statuses
        assert entra.count("/discovery/v2.0/keys") > fetches
        assert agents.metric_value(relay.metrics_port, "hyrelay_auth_failures_total", reason="entra_unknown_key") \
            == len(statuses) - 1
    finally:
        relay.stop()


def test_tokens_are_renewed_on_a_long_lived_listener(tmp_path, entra):
    """Tokens live 6 s and the relay allows 1 s of skew: the edge's listener stays online for 20 s only because
    it renews, and a tunnel opened at the end still works."""
    entra.token_lifetime = 6
    relay = start_relay(tmp_path, entra)
    target = agents.TcpServer("echo")
    edge = client = None
    try:
        edge = start_edge(tmp_path, relay, target.port, signed_in(entra, EDGE_APP, "edge-secret"))
        time.sleep(20)
        assert "listener offline" not in edge.log() and "reconnected" not in edge.log(), edge.log()[-2000:]
        assert agents.metric_value(relay.metrics_port, "hyrelay_listener_events_total", event="renew") >= 2
        assert entra.count("/oauth2/v2.0/token") >= 3
        port = free_port()
        client = start_client(tmp_path, relay, port, signed_in(entra, CLIENT_APP, "client-secret"))
        sent, received, count = agents.echo_roundtrip(port, os.urandom(10_000))
        assert count == 10_000 and sent == received
    finally:
        agents.stop_all(client, edge, relay)
        target.close()


def test_token_and_check_show_the_sign_in(tmp_path, entra):
    """`hyrelay token --entra` prints the token the agents would send; `hyrelay check` says which credential
    each entry signs in with, never a secret."""
    env = signed_in(entra, EDGE_APP, "edge-secret")
    printed = subprocess.run([agents.binary(), "token", "--entra"], env=env, capture_output=True, text=True,
                             timeout=30)
    assert printed.returncode == 0, printed.stderr
    import fake_entra
    import json
    claims = json.loads(fake_entra.b64url_decode(printed.stdout.strip().split(".")[1]))
    assert claims["oid"] == EDGE_OID and claims["aud"] == fake_entra.RELAY_AUDIENCE
    config = tmp_path / "agent.yml"
    config.write_text("AzureRelayEndpoint: sb://relay.example/\nRemoteForward:\n  - RelayName: hc\n    HostPort: 80\n"
                      "LocalForward:\n  - RelayName: open\n    BindPort: 8080\n    NoAuthentication: true\n")
    checked = subprocess.run([agents.binary(), "check", "-f", str(config)], env=env, capture_output=True, text=True,
                             timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert ("RemoteForward hc signs in with Entra ID: client secret for application %s in tenant %s"
            % (EDGE_APP, entra.tenant)) in checked.stdout
    assert "LocalForward open signs in with no token (NoAuthentication)" in checked.stdout
    assert "edge-secret" not in checked.stdout


def test_managed_identities_sign_in(tmp_path, entra):
    """On a VM: `--entra` and nothing else (the instance metadata service, here at the address
    AZURE_POD_IDENTITY_AUTHORITY_HOST names); on App Service: IDENTITY_ENDPOINT and IDENTITY_HEADER."""
    entra.managed_identity_oid = EDGE_OID
    relay = start_relay(tmp_path, entra)
    target = agents.TcpServer("echo")
    bare = {key: value for key, value in os.environ.items() if not key.startswith(("AZURE_", "IDENTITY_"))}
    edges = []
    try:
        vm = dict(bare, AZURE_POD_IDENTITY_AUTHORITY_HOST=entra.authority)
        edges.append(start_edge(tmp_path, relay, target.port, vm, extra=["--entra"]))
        assert entra.count("/metadata/identity/oauth2/token") == 1
        edges[0].stop()
        app_service = dict(bare, IDENTITY_ENDPOINT=entra.authority + "msi/token", IDENTITY_HEADER="app-service-secret")
        edges.append(start_edge(tmp_path, relay, target.port, app_service))
        assert entra.count("/msi/token") == 1
        assert_no_tokens(*edges)
    finally:
        for process in edges + [relay]:
            process.stop()
        target.close()

"""The Debian package scripts/package.sh builds: installed with dpkg, its binary run (with no Swift runtime on the
library path), its units checked by systemd-analyze, its man pages and completions in place, then removed."""
import glob
import os
import shutil
import subprocess
import tempfile

import pytest

from conftest import ROOT


def built_package():
    packages = sorted(glob.glob(os.path.join(ROOT, "dist", "hyrelay_*.deb")), key=os.path.getmtime)
    assert packages, "no dist/hyrelay_*.deb: scripts/test.sh runs scripts/package.sh first"
    return packages[-1]


def run(*args, **kwargs):
    return subprocess.run(list(args), capture_output=True, text=True, timeout=120, **kwargs)


@pytest.fixture
def installed():
    if os.geteuid() != 0:
        pytest.skip("installing a .deb with dpkg needs root (CI runs as root)")
    package = built_package()
    result = run("dpkg", "-i", package)
    assert result.returncode == 0, result.stdout + result.stderr
    try:
        yield package
    finally:
        removed = run("dpkg", "-P", "hyrelay")
        assert removed.returncode == 0, removed.stdout + removed.stderr


def test_the_package_installs_and_its_binary_runs(installed, tmp_path):
    fields = run("dpkg-deb", "-f", installed, "Package", "Version", "Depends").stdout
    assert "Package: hyrelay" in fields
    assert "swift" not in fields.lower(), "the Swift runtime is linked in, not a dependency"
    version = run("/usr/bin/hyrelay", "--version")
    assert version.returncode == 0 and version.stdout.strip() in fields
    needed = run("objdump", "-p", "/usr/bin/hyrelay").stdout
    assert "libswiftCore" not in needed and "libFoundation" not in needed, needed
    demo = run("/usr/bin/hyrelay", "demo", "--once", "--relay-port", "0", "--client-port", "0", "--log-level", "warning",
               env=dict(os.environ, HYRELAY_STATE_DIR=str(tmp_path)))
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
    listing = run("dpkg", "-L", "hyrelay").stdout.split()
    for path in ("/lib/systemd/system/hyrelay-relay.service", "/lib/systemd/system/hyrelay-edge@.service",
                 "/lib/systemd/system/hyrelay-client@.service", "/usr/share/man/man1/hyrelay.edge.1.gz",
                 "/usr/share/bash-completion/completions/hyrelay", "/usr/share/zsh/vendor-completions/_hyrelay",
                 "/usr/share/fish/vendor_completions.d/hyrelay.fish", "/usr/share/doc/hyrelay/examples/office.yml",
                 "/usr/share/hyrelay/dashboards/prometheus-rules.yml",
                 "/usr/share/hyrelay/dashboards/prometheus-rules.test.yml",
                 "/usr/share/hyrelay/dashboards/grafana-hybridrelay.json",
                 "/usr/share/hyrelay/dashboards/hybridrelay.workbook.json",
                 "/usr/share/hyrelay/queries/tunnel_inventory.kql", "/usr/share/hyrelay/azure-monitor.json"):
        assert path in listing, path
    # The rules ship with their tests, and they pass where they are installed.
    if shutil.which("promtool"):
        tested = run("promtool", "test", "rules", "prometheus-rules.test.yml", cwd="/usr/share/hyrelay/dashboards")
        assert tested.returncode == 0, tested.stdout + tested.stderr
    # generate-manual drops every non-ASCII character: help texts say "..." so the man pages keep it.
    page = run("sh", "-c", "zcat /usr/share/man/man1/hyrelay.client.1.gz").stdout
    assert "Endpoint=sb://...;SharedAccessKeyName=...;SharedAccessKey=..." in page, page[:3000]
    completion = open("/usr/share/bash-completion/completions/hyrelay").read()
    assert "relay" in completion and "edge" in completion


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze comes with systemd")
def test_the_units_verify_and_are_hardened(installed, tmp_path):
    units = []
    for name in ("hyrelay-relay.service", "hyrelay-edge@office.service", "hyrelay-client@laptop.service"):
        source = "/lib/systemd/system/" + name.replace("@office", "@").replace("@laptop", "@")
        copy = tmp_path / name
        shutil.copy(source, copy)
        units.append(str(copy))
        text = copy.read_text()
        for setting in ("DynamicUser=yes", "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes",
                        "PrivateTmp=yes", "SupplementaryGroups=hyrelay", "ExecReload=/bin/kill -HUP $MAINPID",
                        "SystemCallFilter=@system-service"):
            assert setting in text, (name, setting)
        bound = "CapabilityBoundingSet=CAP_NET_BIND_SERVICE" if name.startswith("hyrelay-relay") else "CapabilityBoundingSet=\n"
        assert bound in text, name
    verify = run("systemd-analyze", "verify", *units)
    output = verify.stdout + verify.stderr
    assert verify.returncode == 0, output
    # Warnings about other units on this machine are not ours; any line about ours is a problem.
    assert not [line for line in output.splitlines() if "hyrelay" in line], output
    man = run("man", "-w", "hyrelay.edge") if shutil.which("man") else None
    if man is not None:
        assert man.returncode == 0 and man.stdout.strip().endswith("hyrelay.edge.1.gz")


def unit_command(text, key):
    line = next(l for l in text.splitlines() if l.startswith(key + "="))
    return line.split("=", 1)[1]


def test_a_reload_reads_the_edited_file_as_the_units_run_it(installed, tmp_path):
    """No systemd runs in this sandbox, so the relay unit's own ExecStart and ExecReload lines are run as systemd
    would run them for its dynamic user: an unprivileged uid whose only way to the configuration is the hyrelay
    group. The file is read in place (0640 root:hyrelay), so an edit followed by the reload command is applied
    and logged with what changed; a reload without an edit says `unchanged`; a user outside the group cannot read
    the file at all."""
    import grp
    import socket
    import time
    from conftest import free_port
    group = grp.getgrnam("hyrelay")
    assert oct(os.stat("/etc/hyrelay").st_mode & 0o777) == "0o750" and os.stat("/etc/hyrelay").st_gid == group.gr_gid
    unit = open("/lib/systemd/system/hyrelay-relay.service").read()
    assert "LoadCredential" not in unit
    start = unit_command(unit, "ExecStart").replace("$HYRELAY_ARGS", "").split()
    reload_command = unit_command(unit, "ExecReload")
    config = "/etc/hyrelay/relay.yml"
    assert not os.path.exists(config), "a test must not overwrite a real configuration"
    port = free_port()
    body = 'listen: "127.0.0.1:%d"\nhybridConnections:\n  - name: one\n    requiresClientAuthorization: false\n' % port
    state = tempfile.mkdtemp(prefix="hyrelay-unit-")
    os.chmod(state, 0o777)
    process = None
    try:
        with open(config, "w") as f:
            f.write(body)
        os.chown(config, 0, group.gr_gid)
        os.chmod(config, 0o640)
        env = dict(os.environ, HYRELAY_STATE_DIR=state)
        outsider = run("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *start, env=env)
        assert outsider.returncode != 0 and "relay.yml" in outsider.stderr, outsider.stderr
        log_path = tmp_path / "unit-relay.log"
        log = open(log_path, "w")
        process = subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534", "--groups=%d" % group.gr_gid,
                                    *start], stdout=log, stderr=subprocess.STDOUT, env=env)

        def wait_for(text, count=1):
            deadline = time.time() + 20
            while time.time() < deadline:
                if open(log_path).read().count(text) >= count:
                    return
                assert process.poll() is None, open(log_path).read()
                time.sleep(0.1)
            raise AssertionError("not logged: %s\n%s" % (text, open(log_path).read()))
        wait_for("relay listening")
        time.sleep(0.5)
        with open(config, "a") as f:
            f.write("  - name: two\n    requiresClientAuthorization: false\n")
        reload_args = reload_command.replace("$MAINPID", str(process.pid)).split()
        assert run(*reload_args).returncode == 0
        wait_for("configuration reloaded")
        line = [l for l in open(log_path).read().splitlines() if "configuration reloaded" in l][-1]
        assert "changed=hybridConnections" in line and "hybrid_connections_added=two" in line, line
        assert run(*reload_args).returncode == 0
        wait_for("configuration reloaded", count=2)
        line = [l for l in open(log_path).read().splitlines() if "configuration reloaded" in l][-1]
        assert "changed=unchanged" in line, line
        # The relay now serves the entity the edit added.
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET /two?api-version=2016-07 HTTP/1.1\r\nHost: x\r\nX-PROCESS-AT: ServiceBus\r\n"
                         b"Connection: close\r\n\r\n")
            answer = b""
            while True:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
        assert b"ListenerCount" in answer, answer[:300]
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=40)
        if os.path.exists(config):
            os.remove(config)

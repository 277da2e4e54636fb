"""The Debian package scripts/package.sh builds: installed with dpkg, its binary run (with no Swift runtime on the
library path), its units checked by systemd-analyze, its man pages and completions in place, then removed."""
import glob
import os
import shutil
import subprocess

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
                 "/usr/share/fish/vendor_completions.d/hyrelay.fish", "/usr/share/doc/hyrelay/examples/office.yml"):
        assert path in listing, path
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
                        "PrivateTmp=yes", "LoadCredential=", "SystemCallFilter=@system-service"):
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

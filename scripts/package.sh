#!/usr/bin/env bash
# Builds dist/hyrelay_VERSION_ARCH.deb: the release binary with the Swift runtime linked in (it needs only the C
# and C++ runtimes Debian ships), the systemd units of deploy/systemd, shell completions and man pages generated
# from the argument parser, and the docs. Needs dpkg-deb; run from anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== swift build -c release --static-swift-stdlib"
binary="$(swift build -c release --static-swift-stdlib --show-bin-path)/hyrelay"
# A release build with the shared runtime shares this directory and SwiftPM does not relink for the flag alone:
# remove the binary so this build links it again, statically.
rm -f "$binary"
swift build -c release --product hyrelay --static-swift-stdlib
needed="$(objdump -p "$binary" | awk '/NEEDED/ {print $2}')"
if grep -q '^libswift\|^libFoundation' <<<"$needed"; then
    echo "package.sh: $binary still needs the shared Swift runtime" >&2
    exit 1
fi
version="$("$binary" --version)"
arch="$(dpkg --print-architecture)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
root="$work/hyrelay"

install -D -m 0755 "$binary" "$root/usr/bin/hyrelay"
# Debug information off, symbols kept: crash backtraces still name functions.
strip --strip-debug "$root/usr/bin/hyrelay"
for unit in deploy/systemd/*.service; do
    install -D -m 0644 "$unit" "$root/lib/systemd/system/$(basename "$unit")"
done
install -d -m 0755 "$root/etc/hyrelay"

"$binary" --generate-completion-script bash >"$work/bash"
"$binary" --generate-completion-script zsh >"$work/zsh"
"$binary" --generate-completion-script fish >"$work/fish"
install -D -m 0644 "$work/bash" "$root/usr/share/bash-completion/completions/hyrelay"
install -D -m 0644 "$work/zsh" "$root/usr/share/zsh/vendor-completions/_hyrelay"
install -D -m 0644 "$work/fish" "$root/usr/share/fish/vendor_completions.d/hyrelay.fish"

echo "== man pages (swift-argument-parser's generate-manual, run on the binary)"
# The tool alone: its package plugin would build all of hyrelay again, in another configuration.
tools="$(pwd)/.build/package-tools"
swift build --package-path .build/checkouts/swift-argument-parser --scratch-path "$tools" -c release \
    --product generate-manual >/dev/null
mkdir -p "$work/man"
"$tools/release/generate-manual" "$binary" --multi-page --output-directory "$work/man"
install -d -m 0755 "$root/usr/share/man/man1"
for page in "$work"/man/*.1; do
    gzip -9n <"$page" >"$root/usr/share/man/man1/$(basename "$page").gz"
done

# What operators run beside the binary: alert rules and their promtool tests, the Grafana dashboard, the Azure
# Monitor workbook and the saved KQL queries.
install -d -m 0755 "$root/usr/share/hyrelay/dashboards" "$root/usr/share/hyrelay/queries"
install -m 0644 dashboards/prometheus-rules.yml dashboards/prometheus-rules.test.yml \
    dashboards/grafana-hybridrelay.json dashboards/hybridrelay.workbook.json "$root/usr/share/hyrelay/dashboards/"
install -m 0644 queries/*.kql "$root/usr/share/hyrelay/queries/"
install -m 0644 deploy/azure-monitor.json "$root/usr/share/hyrelay/"

install -d -m 0755 "$root/usr/share/doc/hyrelay/examples"
install -m 0644 README.md docs/*.md "$root/usr/share/doc/hyrelay/"
install -m 0644 deploy/examples/*.yml "$root/usr/share/doc/hyrelay/examples/"

# Shared libraries the binary still needs, as the Debian packages that hold them.
depends="$(while read -r library; do
    path="$(ldconfig -p | awk -v lib="$library" '$1 == lib {print $NF; exit}')"
    # dpkg knows a library by the path it installed (/lib/… on a merged /usr), so try that one first.
    [ -n "$path" ] && { dpkg -S "$path" 2>/dev/null || dpkg -S "$(readlink -f "$path")" 2>/dev/null || true; } \
        | cut -d: -f1 | head -n1
done <<<"$needed" | sort -u | paste -sd, | sed 's/,/, /g')"

install -d "$root/DEBIAN"
cat >"$root/DEBIAN/control" <<CONTROL
Package: hyrelay
Version: $version
Architecture: $arch
Maintainer: HybridRelay <hyrelay@localhost>
Depends: $depends
Section: net
Priority: optional
Homepage: https://github.com/hybridrelay/hyrelay
Description: Azure Relay Hybrid Connections relay, client and edge with telemetry at every hop
 hyrelay lets a public endpoint reach a TCP, UDP, Unix-socket or HTTP service behind a firewall or NAT
 without an inbound port there: a relay speaking the Azure Relay Hybrid Connections protocol, and
 azbridge-compatible agents, with traces, metrics and logs at every hop.
CONTROL
cat >"$root/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
# The services' dynamic users read their configurations in place through this group (so a reload reads the
# edited file); the files stay root:hyrelay 0640, out of other users' reach.
if ! getent group hyrelay >/dev/null; then groupadd --system hyrelay; fi
chgrp hyrelay /etc/hyrelay
chmod 0750 /etc/hyrelay
# Files from before (root-only, handed over by LoadCredential) must be readable by the group now.
for file in /etc/hyrelay/*.yml; do
    [ -f "$file" ] || continue
    chgrp hyrelay "$file"
    chmod g+r,o-rwx "$file"
done
if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
POSTINST
cat >"$root/DEBIAN/postrm" <<'POSTRM'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
POSTRM
chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/postrm"

mkdir -p dist
deb="dist/hyrelay_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb ($(du -h "$deb" | cut -f1)), depends: $depends"

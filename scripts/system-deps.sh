#!/usr/bin/env bash
# Install the Debian packages the tests and engines need, once: each is skipped when already present.
# sysdig (the legacy engine), debootstrap (the modern engine's root), docker.io (the dockerised engine and the
# image tests), docker-registry (the OCI publishing tests), iproute2 (network namespaces), gcc (the plugin),
# curl (the docs' transcripts of the enrich endpoint).
set -euo pipefail
need=()
for pkg in sysdig debootstrap docker.io docker-registry iproute2 gcc libc6-dev curl; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "system-deps: need root to install: ${need[*]} (run: sudo apt-get install -y ${need[*]})" >&2
    exit 1
fi
echo "system-deps: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
# the packages enable services we do not use: the project starts dockerd and the registry itself when needed
for unit in docker.service docker.socket docker-registry.service; do
    systemctl disable --now "$unit" >/dev/null 2>&1 || true
done

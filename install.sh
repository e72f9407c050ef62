#!/usr/bin/env bash
# Install what labctl needs on a Debian/Ubuntu machine, as root: system packages (only those missing)
# and a Python virtualenv in .venv with labctl in it. Idempotent and quick when all is there.
#   ./install.sh          what the lab and the demo need
#   ./install.sh --dev    also what the test suite needs (pytest, ruff, hypothesis, chromium, shellcheck, ...)
set -euo pipefail
cd "$(dirname "$0")"

if [ "$(id -u)" -ne 0 ]; then
  echo "install.sh: run as root (it installs packages and the lab needs root for namespaces)" >&2
  exit 1
fi

dev=0
[ "${1:-}" = "--dev" ] && dev=1

packages=(python3 python3-venv python3-pip openssh-server openssh-client tcpdump tshark iproute2
          nftables ethtool procps util-linux rdate netcat-openbsd ca-certificates)
if [ "$dev" = 1 ]; then
  # tests: the HTML report in a real browser, shellcheck on the provisioners, ruby for the Vagrantfile
  # (HashiCorp's vagrant package puts none on PATH), the Vagrant VM test (vagrant-libvirt on
  # QEMU/TCG; a local Debian box built with debootstrap and mke2fs), and the docker backend's tests (a
  # private dockerd, Debian's docker-compose; the node image is built with mmdebstrap). tshark
  # brings editcap. Every tool a test needs is required by tests/requires.py: under CI=true a missing
  # one fails.
  packages+=(chromium shellcheck git ruby qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-clients
             vagrant vagrant-libvirt debootstrap e2fsprogs dnsmasq-base docker.io docker-compose
             mmdebstrap)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "install.sh: apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# The venv is made with the system python3 (the one the lab's nodes run too).
py=/usr/bin/python3
[ -x "$py" ] || py=$(command -v python3)
if [ ! -x .venv/bin/python ]; then
  echo "install.sh: creating .venv"
  "$py" -m venv .venv
fi
extra=""
[ "$dev" = 1 ] && extra="[dev]"
stamp=".venv/.labctl-installed$extra"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "install.sh: pip install -e .$extra"
  .venv/bin/pip install -q --disable-pip-version-check -e ".$extra"
  touch "$stamp"
fi

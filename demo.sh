#!/usr/bin/env bash
# The README's first command. On a fresh Debian/Ubuntu machine, as root, from anywhere:
#
#     ./demo.sh
#
# installs what is needed (install.sh: apt packages and the .venv), brings the embedded lab up (one
# server and three clients, each a network namespace with its own sshd), deploys the time server and
# client, then for TCP, UDP and the line protocol: captures the server's port with tcpdump while every
# client calls the server at the same instant, and prints the replies, the capture's summary and its
# ladder diagram. The lab is taken down at the end, whatever happens (also on Ctrl-C).
# Exit status 0 only if every step worked. Captures are kept in captures/demo-*.pcap.
set -euo pipefail

cd "$(dirname "$(readlink -f "$0")")"

if [ "$(id -u)" -ne 0 ]; then
    echo "demo.sh: run me as root (the lab uses network namespaces and tcpdump): sudo ./demo.sh" >&2
    exit 1
fi
if [ ! -f install.sh ]; then
    echo "demo.sh: install.sh is missing from $(pwd); it installs the apt packages and the .venv" >&2
    exit 1
fi

if [ -t 1 ]; then
    step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
else
    step() { printf '\n== %s\n' "$*"; }
fi

step "installing what is needed (install.sh)"
bash ./install.sh

PY="$(pwd)/.venv/bin/python"
labctl() { "$PY" labctl.py "$@"; }

lab_is_up=0
cleanup() {
    status=$?
    trap - EXIT INT TERM
    if [ "$lab_is_up" -eq 1 ]; then
        step "taking the lab down"
        labctl down || status=1
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step "bringing the lab up (labctl up)"
lab_is_up=1
labctl up
labctl status

step "deploying the time server and client (labctl deploy)"
labctl deploy

failed=()
for proto in tcp udp proto; do
    step "all clients at once over $proto, captured on the server (labctl capture --run $proto)"
    if ! labctl capture --run "$proto" -o "captures/demo-$proto.pcap"; then
        failed+=("$proto")
    fi
done

if [ "${#failed[@]}" -ne 0 ]; then
    step "FAILED: ${failed[*]}"
    exit 1
fi
step "all worked: captures/demo-tcp.pcap, captures/demo-udp.pcap, captures/demo-proto.pcap"
echo "Next: .venv/bin/python labctl.py analyse captures/demo-tcp.pcap, or open it in Wireshark."

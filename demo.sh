#!/usr/bin/env bash
# The README's first command. On a fresh Debian/Ubuntu machine, as root, from anywhere:
#
#     ./demo.sh
#
# installs what is needed (install.sh: apt packages and the .venv), then runs `labctl exercise`: brings
# the embedded lab up (one server and three clients, each a network namespace with its own sshd),
# deploys the time server and client, then for TCP, UDP and the line protocol captures the server's
# port with tcpdump while every client calls the server at the same instant; writes the pcaps, run.json
# and a self-contained report.html into captures/exercise-<UTC time>/ (or DIR: ./demo.sh -o DIR), and
# takes the lab down at the end, whatever happens (also on Ctrl-C).
# Exit status 0 only if every step worked. Extra arguments go to `labctl exercise` (e.g. --keep, or
# --nodes all to capture on every node: one pcapng per hour, one interface per node).
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

step "the whole exercise (labctl exercise $*)"
exec "$PY" labctl.py exercise "$@"

#!/usr/bin/env bash
# The whole test suite, on a fresh Debian/Ubuntu machine as root: installs what it needs, checks style,
# then runs every test, the real namespace lab and real VMs included. Extra arguments go to pytest,
# e.g. ./test.sh -m 'not slow' to skip the VM test, or ./test.sh tests/test_remote.py.
set -euo pipefail
cd "$(dirname "$0")"
./install.sh --dev
.venv/bin/ruff check .
exec .venv/bin/pytest "$@"

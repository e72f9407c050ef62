#!/usr/bin/env bash
# A client node: the time client program (labctl run triggers it on every client at once).
set -euo pipefail
# shellcheck source=provision/lib.sh
source "$(dirname "$0")/lib.sh"
need_env LABCTL_SOURCE

install_file "$LABCTL_SOURCE/timeclient.py" /opt/labctl/timeclient.py 755 || true

finish

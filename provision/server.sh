#!/usr/bin/env bash
# The server node: the time server program and its systemd unit, bound to the node's lab address.
# LABCTL_SERVER_SERVICE=1 enables and runs the unit (plain `vagrant up`); 0 leaves it stopped, because
# `labctl deploy` starts and restarts the server itself and the two must not share the ports.
set -euo pipefail
# shellcheck source=provision/lib.sh
source "$(dirname "$0")/lib.sh"
need_env LABCTL_SOURCE LABCTL_ADDRESS LABCTL_TCP_PORT LABCTL_PROTO_PORT LABCTL_TIME_PORT

unit=labctl-timeserver.service
restart=0
for f in timeserver.py timeserver_protocol.py timeserver_limits.py timeserver_lines.py; do  # the server imports the others
    if install_file "$LABCTL_SOURCE/$f" "/opt/labctl/$f" 755; then
        restart=1
    fi
done

if write_file "/etc/systemd/system/$unit" 644 <<UNIT
[Unit]
Description=labctl time server (TCP and UDP time, line protocol, RFC 868) on $LABCTL_ADDRESS
After=network-online.target
Wants=network-online.target

[Service]
ExecStart=/usr/bin/python3 /opt/labctl/timeserver.py --bind $LABCTL_ADDRESS --port $LABCTL_TCP_PORT --proto-port $LABCTL_PROTO_PORT --time-port $LABCTL_TIME_PORT --quiet
# the lab address may come up after us at boot: try again
Restart=always
RestartSec=2
DynamicUser=yes
AmbientCapabilities=CAP_NET_BIND_SERVICE
CapabilityBoundingSet=CAP_NET_BIND_SERVICE
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes

[Install]
WantedBy=multi-user.target
UNIT
then
    systemctl daemon-reload
    restart=1
fi

if [ "${LABCTL_SERVER_SERVICE:-1}" = 1 ]; then
    if ! systemctl -q is-enabled "$unit"; then
        systemctl -q enable "$unit"
        changed "enabled $unit"
    fi
    if ! systemctl -q is-active "$unit"; then
        systemctl start "$unit"
        changed "started $unit"
    elif [ "$restart" = 1 ]; then
        systemctl restart "$unit"
        changed "restarted $unit"
    fi
else
    if systemctl -q is-enabled "$unit"; then
        systemctl -q disable "$unit"
        changed "disabled $unit (labctl deploy runs the server)"
    fi
    if systemctl -q is-active "$unit"; then
        systemctl stop "$unit"
        changed "stopped $unit (labctl deploy runs the server)"
    fi
fi

finish

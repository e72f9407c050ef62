# A lab node as a container, for the compose variant of the lab (docker-compose.yml): sshd, python3,
# tcpdump and the node programs. labctl drives the containers with its ssh backend, like any SSH hosts.
#   docker compose build && LABCTL_AUTHORIZED_KEY="$(cat ~/.ssh/id_ed25519.pub)" docker compose up -d
FROM debian:bookworm-slim

RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        openssh-server python3 tcpdump iproute2 procps \
    && rm -rf /var/lib/apt/lists/* \
    && rm -f /etc/ssh/ssh_host_* \
    && mkdir -p /run/sshd /opt/labctl

# key-only root login; each container makes its own host keys at first start (see the entrypoint)
RUN printf '%s\n' 'PermitRootLogin prohibit-password' 'PasswordAuthentication no' \
        'KbdInteractiveAuthentication no' 'UsePAM no' 'X11Forwarding no' 'AllowAgentForwarding no' \
        'UseDNS no' > /etc/ssh/sshd_config.d/labctl.conf

COPY scripts/timeserver.py scripts/timeserver_protocol.py scripts/timeserver_limits.py scripts/timeclient.py /opt/labctl/
COPY provision/compose/entrypoint.sh /usr/local/sbin/labctl-entrypoint
RUN chmod 755 /opt/labctl/*.py /usr/local/sbin/labctl-entrypoint

EXPOSE 22
ENTRYPOINT ["/usr/local/sbin/labctl-entrypoint"]
CMD ["/usr/sbin/sshd", "-D", "-e"]

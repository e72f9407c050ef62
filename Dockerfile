# The lab node image from a registry's Debian, for machines where one is reachable (Docker Desktop, ...):
# the same packages, sshd settings and entrypoint as the image labctl builds without a registry
# (provision/node/image.sh, debootstrap + docker import; tests/test_compose.py keeps the two equal).
#   docker compose build      # tags labctl-node:latest, the image docker-compose.yml runs
FROM debian:bookworm-slim

RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 openssh-server openssh-sftp-server tcpdump iproute2 nftables ethtool procps \
    && rm -rf /var/lib/apt/lists/* \
    && rm -f /etc/ssh/ssh_host_* \
    && mkdir -p /run/sshd

COPY provision/node/sshd.conf /etc/ssh/sshd_config.d/labctl.conf
COPY provision/node/entrypoint.sh /usr/local/sbin/labctl-entrypoint
RUN chmod 644 /etc/ssh/sshd_config.d/labctl.conf && chmod 755 /usr/local/sbin/labctl-entrypoint

EXPOSE 22
ENTRYPOINT ["/usr/local/sbin/labctl-entrypoint"]
CMD ["/usr/sbin/sshd", "-D", "-e"]

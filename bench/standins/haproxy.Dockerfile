# Stand-in for the official HAProxy image, for hosts that cannot pull it (see
# bench/standins.py): Debian's haproxy, reading the official image's config path in the
# foreground (-db), logs to stdout as the config says.
ARG BASE
FROM ${BASE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends haproxy \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /usr/local/etc/haproxy
EXPOSE 8000
CMD ["haproxy", "-W", "-db", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]

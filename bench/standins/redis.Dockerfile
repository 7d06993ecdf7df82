# Stand-in for the official Redis image, for hosts that cannot pull it (see
# bench/standins.py): Debian's redis-server behind an entrypoint that starts it like the
# official image does (as user redis, in /data, protected mode off).
ARG BASE
FROM ${BASE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /data && chown redis:redis /data
COPY redis-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
WORKDIR /data
EXPOSE 6379
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["redis-server"]

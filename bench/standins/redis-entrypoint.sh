#!/bin/sh
# What the official Redis image's entrypoint does for a plain `redis-server ...`: listen
# for other containers (protected mode off: without it, clients on the compose network are
# refused), own /data, and drop root.
set -eu
case "${1-}" in
    -*) set -- redis-server "$@" ;;
esac
if [ "${1-}" = "redis-server" ]; then
    shift
    case "${1-}" in
        *.conf) ;;  # a config file must come first; it says what it wants
        *) set -- --protected-mode no "$@" ;;  # later arguments win over this one
    esac
    set -- redis-server "$@"
    if [ "$(id -u)" = 0 ]; then
        chown -R redis:redis /data
        exec setpriv --reuid=redis --regid=redis --init-groups "$@"
    fi
fi
exec "$@"

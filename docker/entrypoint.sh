#!/bin/sh
# Entry point of the fmrec image. The model bundle is mounted, never baked in: when
# `fmrec serve` is started without one, say so on one line and how to fix it, instead of
# starting a server that can never become ready. Any other command runs unchanged.
set -eu

if [ "${1-}" = "fmrec" ] && [ "${2-}" = "serve" ]; then
    bundle="${FMREC_BUNDLE:-bundles/current}"
    prev=""
    for arg in "$@"; do
        case "$arg" in
            --bundle=*) bundle="${arg#--bundle=}" ;;
            *) [ "$prev" = "--bundle" ] && bundle="$arg" ;;
        esac
        prev="$arg"
    done
    if [ ! -f "$bundle/model_id" ]; then
        echo "fmrec: error: no model bundle at $bundle: mount a bundle directory there" \
             "(docker run -v /path/to/bundle:$bundle:ro ...), or start the stack with" \
             "'docker compose up', whose train service creates one" >&2
        exit 2
    fi
fi
exec "$@"

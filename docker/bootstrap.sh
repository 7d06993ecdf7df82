#!/bin/sh
# The one-shot `train` job of docker-compose.yml. On the first run there is no model bundle
# in the shared volume: train one (on MovieLens when $FMREC_DATA holds a MovieLens folder,
# else on synthetic demo data), then load the users it was trained on into Redis. Later
# runs find the bundle and keep it, and leave Redis alone (it holds newer ratings by then).
set -eu

bundle="${FMREC_BUNDLE:?set FMREC_BUNDLE to the bundle directory}"
case "${FMREC_DEMO_RATINGS:-50000}" in
    *[!0-9]* | 0*)
        echo "fmrec-bootstrap: error: FMREC_DEMO_RATINGS must be a positive whole number," \
             "not '$FMREC_DEMO_RATINGS'" >&2
        exit 2 ;;
esac
if [ -f "$bundle/model_id" ]; then
    echo "fmrec-bootstrap: model $(cat "$bundle/model_id") already at $bundle; not training"
    exit 0
fi

if [ -n "${FMREC_DATA-}" ] && { [ -f "$FMREC_DATA/u.data" ] ||
        [ -f "$FMREC_DATA/ratings.dat" ] || [ -f "$FMREC_DATA/ratings.csv" ]; }; then
    set -- --data "$FMREC_DATA"
    echo "fmrec-bootstrap: training on MovieLens at $FMREC_DATA"
else
    set -- --synthetic "${FMREC_DEMO_RATINGS:-50000}"
    echo "fmrec-bootstrap: no MovieLens folder at ${FMREC_DATA:-\$FMREC_DATA}; training on" \
         "synthetic demo data"
fi
python3 -c "import tensorflow as tf; print('fmrec-bootstrap: TensorFlow', tf.__version__,
 'GPUs:', [d.name for d in tf.config.list_physical_devices('GPU')] or 'none (CPU)')"
fmrec train "$@" --out "$bundle" --quiet
fmrec load-users --bundle "$bundle" "$@"

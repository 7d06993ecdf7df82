# fmrec API image.
#
# Base: the official TensorFlow GPU image, pinned to the TensorFlow release the project is
# developed and tested with. It already holds TensorFlow with its CUDA libraries, so the
# package is installed WITHOUT its `cpu`/`gpu` extras; with no GPU visible it runs on CPU.
# docker-compose.cpu.yml builds the same file FROM the CPU image (a much smaller download).
ARG BASE_IMAGE=tensorflow/tensorflow:2.21.0-gpu
FROM ${BASE_IMAGE}

# PIP_NO_CACHE_DIR keeps pip's download cache out of the layers. TF_FORCE_GPU_ALLOW_GROWTH:
# TensorFlow otherwise reserves all GPU memory in the first process, so a second uvicorn
# worker (FMREC_WORKERS=2) could not start on the same GPU.
# Container logs are read without a terminal: TF_CPP_MIN_LOG_LEVEL=2 keeps TensorFlow's
# start-up INFO/WARNING lines out (errors still show); TF_ENABLE_ONEDNN_OPTS=0 because the
# "oneDNN custom operations are on" notice is printed before that level is read, in every
# process, unless the choice is made explicitly (off: TensorFlow's reference CPU kernels,
# bit-for-bit repeatable).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    TF_ENABLE_ONEDNN_OPTS=0 \
    TF_FORCE_GPU_ALLOW_GROWTH=true

# The service runs as an unprivileged user. /bundles is where the model bundle volume is
# mounted (never baked in); a new named volume takes this directory's owner, so the
# compose `train` job, running as the same user, can write the bundle into it.
RUN useradd --create-home --uid 10001 --user-group fmrec \
 && mkdir -p /bundles /var/lib/fmrec \
 && chown fmrec:fmrec /bundles /var/lib/fmrec

WORKDIR /opt/fmrec

# Behind a TLS-intercepting proxy pip must trust the proxy's CA. Nothing is baked in: pass
# a CA bundle that includes it as the build secret `pip_ca` (README, Docker); it is mounted
# for the pip steps only and is in no layer.
# Dependencies first, read from pyproject.toml itself: this layer is rebuilt only when
# pyproject.toml changes, not on every source edit.
COPY pyproject.toml ./
RUN --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
 && python3 -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
 && python3 -m pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

# Then the package itself, from the repository: plain `pip install .` (no extras).
COPY README.md ./
COPY model ./model
COPY app ./app
RUN --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
 && python3 -m pip install --no-deps . \
 && rm -rf build ./*.egg-info
COPY docker/entrypoint.sh /usr/local/bin/fmrec-entrypoint
COPY docker/bootstrap.sh /usr/local/bin/fmrec-bootstrap

# Inside a container the server must listen on all interfaces; docker-compose.yml
# publishes it on the host's loopback only.
ENV FMREC_BUNDLE=/bundles/current \
    FMREC_HOST=0.0.0.0 \
    FMREC_PORT=8000 \
    FMREC_EMBEDDED_REDIS_PATH=/var/lib/fmrec/fmrec-redis.db

# Numeric, so that runtimes which enforce non-root (runAsNonRoot) can check it.
USER 10001:10001
WORKDIR /home/fmrec
EXPOSE 8000

# Liveness: /healthz of the running server (/readyz, which also waits for the warmed model,
# is what a load balancer should ask). Any failure raises, so python3 exits 1: unhealthy.
HEALTHCHECK --interval=15s --timeout=5s --start-period=90s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ['FMREC_PORT']}/healthz\", timeout=4)"]

# The entrypoint stops `fmrec serve` with a one-line error when no bundle is mounted.
ENTRYPOINT ["fmrec-entrypoint"]
CMD ["fmrec", "serve"]

# Stand-in for the official TensorFlow CPU image, for hosts that cannot pull it (see
# bench/standins.py): Debian's Python with TensorFlow from PyPI, importable as `tensorflow`,
# pip usable as root (no PEP 668 marker), as in the official image.
ARG BASE
FROM ${BASE}
ARG TF_VERSION
RUN rm -f /usr/lib/python3*/EXTERNALLY-MANAGED \
 && ln -sf python3 /usr/bin/python \
 && python3 -m pip install --no-cache-dir "tensorflow-cpu==${TF_VERSION}"
CMD ["python3"]

"""fmrec's model package: feature map, Factorization Machine, data, training, bundles.

Never imports `app`: a model can be trained and evaluated without the service.
"""

from model.quiet_tf import quiet_tensorflow

quiet_tensorflow()  # before any model module imports TensorFlow (TF_CPP_MIN_LOG_LEVEL=0: logs)

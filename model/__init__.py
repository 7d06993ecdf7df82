"""fmrec's model package: feature map, Factorization Machine, data, training, bundles.

Never imports `app`: a model can be trained and evaluated without the service.
"""

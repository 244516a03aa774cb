"""Judging a model: image metrics (``metrics``), comparison with codecs at the same rate
(``compare``: k-means patches, JPEG), and the photographs the default model is trained and
evaluated on (``sample_data``).

May import: data, utils.
"""

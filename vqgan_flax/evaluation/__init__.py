"""Judging a model: image metrics (``metrics``), comparison with codecs at the same rate
(``compare``: k-means patches, JPEG), and the photographs the default model is trained and
evaluated on (``sample_data``); where a published number came from (``provenance``: the commit,
harness, command, packages and machine every benchmark and evaluation record carries).

May import: data, utils.
"""

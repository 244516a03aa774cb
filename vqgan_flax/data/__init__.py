"""Data in and tokens out: image files, tar shards, datasets and videos as one stream of items
(``sources``), image I/O (``image_io``) and the image processor (``processing``), tokenizing a
stream (``tokenize``), token files written and read (``writers``, ``readers``), and many devices
(``parallel``) and hosts (``distributed``).

May import: hub, models, conversion, utils.
"""

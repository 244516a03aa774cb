"""Our tokenizer inside other engines: ``ray`` holds ``VQGANTokenizer``, the callable class for
Ray Data's ``map_batches`` (the optional ``[ray]`` extra; nothing here imports Ray until used).

May import: data, hub, models, utils.
"""

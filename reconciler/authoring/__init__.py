"""Writing fleet files for people: ``fleetkeeper release new`` and ``fleetkeeper model new``.

``digest`` (I/O) hashes a local file or streams a URL; ``gguf_header`` (I/O) reads a model
file's header; ``documents`` (pure) builds the new file from the previous version's.
"""

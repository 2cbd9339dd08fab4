"""Interchange formats other tools load without this suite: compressed-tensors
(:mod:`compress.export.compressed_tensors`) and GGUF (:mod:`compress.export.gguf`)."""

from compress.export import compressed_tensors  # noqa: F401,E402  (registers the save format)

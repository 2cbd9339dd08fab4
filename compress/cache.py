"""The suite's cache folder: built zoo models and cleaned corpora.

``$COMPRESS_CACHE`` or ``~/.cache/compress-suite``; :mod:`compress.zoo` keeps models
under ``zoo/``, :mod:`compress.corpora` cleaned text under ``data/``.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "COMPRESS_CACHE"


def cache_dir() -> Path:
    """``$COMPRESS_CACHE`` or ``~/.cache/compress-suite``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "compress-suite").expanduser()

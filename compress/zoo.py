"""Zoo of ready models built once into a cache folder (work in progress)."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "COMPRESS_CACHE"


def cache_dir() -> Path:
    """``$COMPRESS_CACHE`` or ``~/.cache/compress-suite``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "compress-suite").expanduser()

"""Memory checks before the operating system has to step in.

Before loading or compressing, estimate what a step needs (parameters x bytes, plus
calibration activations, plus optimizer state for fine-tuning) and stop with a clear
message naming a cheaper option when it cannot fit, instead of being killed.

Weights are sized from safetensors headers (no tensor is read); the free memory is
``psutil.virtual_memory().available`` (plus, on CUDA, the device's free memory when
the model goes there).

>>> need = estimate_load_bytes("path/to/model")          # doctest: +SKIP
>>> require_memory(need, "loading path/to/model", hint="pass --device-map auto")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path

from compress.errors import UserError
from compress.safety import DTYPE_BYTES  # re-exported: where callers have looked for it
from compress.safety import safetensors_header as safetensors_header

#: headroom on top of an estimate: allocator slack, Python objects, temporary copies.
SAFETY = 1.15
#: environment variable to override the available memory (tests, containers with odd limits).
AVAILABLE_ENV = "COMPRESS_AVAILABLE_MEMORY"


def checkpoint_numel(folder: str | os.PathLike) -> tuple[int, int]:
    """(number of parameters, bytes as stored) of the safetensors files in ``folder``."""
    numel = nbytes = 0
    for path in sorted(Path(folder).glob("*.safetensors")):
        for name, meta in safetensors_header(path).items():
            if name == "__metadata__":
                continue
            count = 1
            for dim in meta["shape"]:
                count *= dim
            numel += count
            nbytes += count * DTYPE_BYTES.get(meta["dtype"], 4)
    return numel, nbytes


def estimate_load_bytes(folder: str | os.PathLike, bytes_per_param: int = 4) -> int:
    """Bytes to hold the model of ``folder`` in memory at ``bytes_per_param`` (fp32: 4)."""
    numel, _ = checkpoint_numel(folder)
    return numel * bytes_per_param


def available_bytes() -> int:
    override = os.environ.get(AVAILABLE_ENV)
    if override:
        return int(float(override))
    import psutil

    return int(psutil.virtual_memory().available)


def fmt_bytes(n: float) -> str:
    """``1.2 GiB``, ``340 MiB``."""
    if n >= 2**30:
        return f"{n / 2**30:.1f} GiB"
    return f"{n / 2**20:.0f} MiB"


def require_memory(needed: int, what: str, hint: str) -> None:
    """Raise a one-line :class:`UserError` if ``needed`` bytes (plus headroom) do not fit."""
    have = available_bytes()
    if needed * SAFETY > have:
        raise UserError(
            f"{what} needs about {fmt_bytes(needed)} but only {fmt_bytes(have)} "
            f"is available; {hint}"
        )

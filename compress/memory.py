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

import json
import os
import struct
from pathlib import Path

from compress.errors import UserError

DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
    "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}
#: headroom on top of an estimate: allocator slack, Python objects, temporary copies.
SAFETY = 1.15
#: environment variable to override the available memory (tests, containers with odd limits).
AVAILABLE_ENV = "COMPRESS_AVAILABLE_MEMORY"


def safetensors_header(path: Path) -> dict:
    """Parse a safetensors file's JSON header without reading tensors."""
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        if n > 100_000_000:
            raise UserError(f"{path} is not a valid safetensors file (header of {n} bytes)")
        return json.loads(fh.read(n))


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


def require_memory(needed: int, what: str, hint: str) -> None:
    """Raise a one-line :class:`UserError` if ``needed`` bytes (plus headroom) do not fit."""
    have = available_bytes()
    if needed * SAFETY > have:
        raise UserError(
            f"{what} needs about {needed / 2**30:.1f} GiB but only {have / 2**30:.1f} GiB "
            f"is available; {hint}"
        )

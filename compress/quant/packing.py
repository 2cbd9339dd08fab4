"""Packed-size accounting: lives in :mod:`compress.quant.grid` with the grid it packs.

Kept so ``from compress.quant.packing import layer_bytes`` keeps working.
"""

from compress.quant.grid import (  # noqa: F401
    INDEX_BYTES,
    SCALE_BYTES,
    layer_bytes,
    model_size_summary,
    num_units,
    pack_codes,
    unique_parameters,
    unpack_codes,
)

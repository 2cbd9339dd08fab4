"""Round-to-nearest: the grid math lives in :mod:`compress.quant.grid` (one shared module).

Kept so ``from compress.quant.rtn import QuantSpec, fake_quantize`` keeps working.
"""

from compress.quant.grid import (  # noqa: F401
    GRANULARITIES,
    SCHEME_CHOICES,
    SCHEMES,
    QuantSpec,
    dequantize_rows,
    fake_quantize,
    from_units,
    quantize_matrix,
    quantize_rows,
    resolve_scheme,
    scale_zero,
    set_weight_matrix,
    snr_db,
    step_sizes,
    to_units,
    weight_matrix,
)

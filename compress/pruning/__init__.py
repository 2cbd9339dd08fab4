"""Pruning: masks and exact selection, scores, N:M, calibration, sparse format, surgery.

* :mod:`~compress.pruning.targets` - which matrices (through the architecture table).
* :mod:`~compress.pruning.masks` - in-place exact selection (row, layer, global, N:M).
* :mod:`~compress.pruning.scoring` - magnitude and Wanda scores.
* :mod:`~compress.pruning.calibration` - calibration batches, sequential block driver.
* :mod:`~compress.pruning.unstructured` - the magnitude and Wanda steps, measurement.
* :mod:`~compress.pruning.recovery` - iterative schedules, fine-tuning, rewinding.
* :mod:`~compress.pruning.sparse_format` - the ``sparse-bitmask`` save format.
* :mod:`~compress.pruning.surgery` - structured removal of heads and FFN neurons.

Importing this package registers the save formats: ``structured-heads`` first (a
head-pruned model must be rebuilt before its weights load, even when it is also
sparse), then ``sparse-bitmask``.
"""

from compress.pruning import surgery  # noqa: F401, I001  (registered first, see above)
from compress.pruning import sparse_format  # noqa: F401  (registers "sparse-bitmask")

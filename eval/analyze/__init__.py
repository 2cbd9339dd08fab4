"""Where the small weights are: streamed, exact weight statistics of any checkpoint.

``python -m eval.analyze smollm2-135m minilm-l6 <hub id or folder> --out reports/analysis/``

Before pruning, one asks what fraction of the parameters is far from zero, overall
and by layer, and how attention, FFN, encoder and decoder differ. This module
answers that for any model the architecture table knows, including models larger
than memory:

* **Streaming.** Tensors are read one at a time (big ones in row chunks of
  ``chunk_elements``) from the safetensors files (and shards listed in
  ``model.safetensors.index.json``); the model is never built. Only a skeleton on
  the ``meta`` device (no storage) is made, to map checkpoint names to the
  architecture table's components, block indices and roles. The safetensors file
  is reopened for every chunk of a large tensor so that its memory map never
  holds more than one chunk's pages (a map kept open grows resident memory by
  every page read).
* **Exact.** Statistics are accumulated in float64 from every element, not
  sampled: counts, mean and the central moments M2..M4 of each slice of
  ``SUB_CHUNK`` elements, merged with the pairwise update of Chan et al. (1979)
  extended to third and fourth moments by Pebay (2008, "Formulas for robust,
  one-pass parallel computation of covariances and arbitrary-order statistical
  moments"); exact counts of ``|w| > t`` for each threshold, of zeros, and max
  ``|w|``. Skewness and excess kurtosis are population values
  (``scipy.stats.skew/kurtosis`` with ``bias=True``); the standard deviation is
  the population one (``ddof=0``). For float32 (and float16 / bfloat16, upcast
  exactly) ``|w| > t`` is compared in float32 against the largest float32 not
  above ``t``, which gives the same answer as comparing the exact values;
  float64 tensors are compared in float64.
* **Histogram.** One exact histogram of the float32 bit patterns: sign, exponent
  and the top 5 mantissa bits (``bits >> 18``), i.e. 32 log-spaced bins per
  octave (about 2 % wide) over the whole float range, for each sign, kept for
  four kinds of tensors (attention, FFN, embeddings + head, the rest). The
  cumulative plot reads the fraction of ``|w|`` below each bin edge off it
  exactly; the histogram plot redistributes each bin uniformly over linear bins
  of ``w`` (a display approximation inside 2 %-wide bins). No range has to be
  known in advance, so one pass suffices.

Components come from :mod:`compress.arch`: self-attention ``attn_*``,
cross-attention ``cross_*``, FFN ``ffn_in/gate/out``, plus ``embedding``,
``lm_head``, ``norm``, ``bias`` (every ``*.bias`` tensor; it still counts for
its block and role) and ``other``. Checkpoint keys are matched to skeleton
names by their longest common dotted suffix, so checkpoints saved with or
without a wrapper prefix (``bert.``, ``transformer.``, ``model.``) map alike.
Tied weights stored once in the file (GPT-2's ``lm_head``) are counted once,
under the name the file stores; the report lists the absent tied names.

Output: ``<out>/<slug>.json`` (written atomically), ``<slug>_hist.png``,
``<slug>_blocks.png`` and ``cumulative.png`` (all models of the run), and
``rich`` tables on stdout. The JSON (``schema_version`` 1) holds ``model``,
``source``, ``family``/``kind``, ``thresholds``, and one statistics record
(``params``, ``frac_above``/``count_above`` per threshold, ``frac_zero``,
``mean``, ``std``, ``skewness``, ``excess_kurtosis``, ``max_abs``; ``None`` where
undefined) for ``overall``, each entry of ``by_role``, ``by_group``,
``by_component``, ``weights_vs_biases``, and per block (``by_block``: role,
index, ``all`` and ``components``); the bit histogram (``histograms``), one
line per tensor (``tensors``), what the files lack (``absent_from_files``), and
timing and peak RSS.

Checkpoints without safetensors are refused with a hint to convert them, or read
with ``torch.load(weights_only=True, mmap=True)`` under ``--allow-pickle`` (the
memory map of a pickle file stays open for the whole file, so that fallback does
not bound resident memory the way the safetensors reader does).

>>> result = analyze("minilm-l6")                                  # doctest: +SKIP
>>> result["by_group"]["ffn"]["frac_above"]["0.01"]                # doctest: +SKIP
0.8276...
"""

from eval.analyze.cli import build_tables, main
from eval.analyze.core import (
    DEFAULT_THRESHOLDS,
    SCHEMA,
    SCHEMA_VERSION,
    analyze,
    analyze_folder,
    model_slug,
    resolve_model,
    validate_thresholds,
)
from eval.analyze.plots import (
    cumulative_fraction,
    linear_histogram,
    plot_blocks,
    plot_cumulative,
    plot_histogram,
    write_outputs,
)
from eval.analyze.readers import NameMap, TensorInfo, checkpoint_files
from eval.analyze.stats import Moments

__all__ = [
    "DEFAULT_THRESHOLDS",
    "SCHEMA",
    "SCHEMA_VERSION",
    "Moments",
    "NameMap",
    "TensorInfo",
    "analyze",
    "analyze_folder",
    "build_tables",
    "checkpoint_files",
    "cumulative_fraction",
    "linear_histogram",
    "main",
    "model_slug",
    "plot_blocks",
    "plot_cumulative",
    "plot_histogram",
    "resolve_model",
    "validate_thresholds",
    "write_outputs",
]

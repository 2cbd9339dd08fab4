"""Task metrics for a model in memory: perplexity, classification, similarity, seq2seq.

Two layers:

* **Core functions** take the texts and labels explicitly and are pure given the model:
  :func:`perplexity`, :func:`classification_scores`, :func:`embed`,
  :func:`similarity_spearman`, :func:`linear_probe_accuracy`, :func:`seq2seq_scores`,
  :func:`seq2seq_perplexity`, :func:`copy_baseline`. They run under
  ``torch.inference_mode``, in batches, with inputs on the device of the model's input
  embeddings (so CPU, CUDA and ``device_map``-dispatched models all work), and they only
  need the model to return ``.logits`` (or hidden states), never a loss: ONNX wrappers
  that return logits are measured exactly like PyTorch models.
* **Suites** (:data:`SUITES`, :func:`run_benchmarks`) pull fixed splits from
  :mod:`compress.data` and return :class:`Metric` records that carry their protocol
  (corpus, split, number of examples, window, stride, batch size, truncation, quick flag
  and the data protocol), so a number is never separated from how it was measured.

Every metric carries a 95% bootstrap interval over its windows or examples
(:mod:`eval.benchmark.samples`). Given the dense model's cached reference
(:mod:`eval.benchmark.reference`), :func:`run_benchmarks` also gives each metric its
paired change against dense on the same items and adds agreement with dense measured
in the same forward passes (token KL and top-1 agreement, prediction agreement,
embedding cosine: :mod:`eval.benchmark.agreement`).

Perplexity follows the transformers guide "Perplexity of fixed-length models": the
texts are joined into one token stream, cut into windows of ``seq_len`` tokens every
``stride`` tokens, and with ``stride < seq_len`` only the tokens new to a window are
scored (the rest is context). The result is ``exp(sum of token NLLs / tokens scored)``,
token level (not word-normalised), so it is comparable only with numbers measured the
same way (the published numbers in ``eval/report/anchors.toml`` say how each was).

>>> ppl, n = perplexity(model, tokenizer, ["Some held-out text."], seq_len=512)  # doctest: +SKIP
>>> metrics = run_benchmarks(model, tokenizer, "causal-lm", quick=True)          # doctest: +SKIP
>>> ref = dense_reference(dense_model, tokenizer, "causal-lm")                  # doctest: +SKIP
>>> metrics = run_benchmarks(compressed, tokenizer, "causal-lm", reference=ref) # doctest: +SKIP
"""

from compress.models import input_device
from eval.benchmark.agreement import Agreement, DenseReference
from eval.benchmark.metrics import (
    Metric,
    classification_scores,
    embed,
    linear_probe_accuracy,
    linear_probe_scores,
    max_positions,
    pair_cosines,
    perplexity,
    predict_logits,
    similarity_spearman,
    window_nll,
)
from eval.benchmark.reference import dense_reference
from eval.benchmark.samples import Samples
from eval.benchmark.seq2seq import (
    copy_baseline,
    decoder_start_id,
    seq2seq_perplexity,
    seq2seq_scores,
    target_nll,
)
from eval.benchmark.suites import SUITES, Suite, run_benchmarks

__all__ = [
    "SUITES",
    "Agreement",
    "DenseReference",
    "Metric",
    "Samples",
    "Suite",
    "classification_scores",
    "copy_baseline",
    "decoder_start_id",
    "dense_reference",
    "embed",
    "input_device",
    "max_positions",
    "linear_probe_accuracy",
    "linear_probe_scores",
    "pair_cosines",
    "perplexity",
    "predict_logits",
    "run_benchmarks",
    "seq2seq_perplexity",
    "seq2seq_scores",
    "similarity_spearman",
    "target_nll",
    "window_nll",
]

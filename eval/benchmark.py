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

Perplexity follows the transformers guide "Perplexity of fixed-length models": the
texts are joined into one token stream, cut into windows of ``seq_len`` tokens every
``stride`` tokens, and with ``stride < seq_len`` only the tokens new to a window are
scored (the rest is context). The result is ``exp(sum of token NLLs / tokens scored)``,
token level (not word-normalised), so it is comparable only with numbers measured the
same way (see /work/shared/ANCHORS.md).

>>> ppl, n = perplexity(model, tokenizer, ["Some held-out text."], seq_len=512)  # doctest: +SKIP
>>> metrics = run_benchmarks(model, tokenizer, "causal-lm", quick=True)          # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from compress.errors import UserError, did_you_mean
from compress.models import input_device

log = logging.getLogger(__name__)

__all__ = [
    "Metric",
    "SUITES",
    "Suite",
    "classification_scores",
    "copy_baseline",
    "decoder_start_id",
    "embed",
    "input_device",
    "linear_probe_accuracy",
    "linear_probe_scores",
    "perplexity",
    "run_benchmarks",
    "seq2seq_perplexity",
    "seq2seq_scores",
    "similarity_spearman",
]


@dataclass
class Metric:
    """One measured number and how it was measured.

    ``protocol`` says what was measured (corpus, split, n_examples, seq_len, stride,
    batch_size, truncation, quick, data); ``extra`` holds side facts (tokens scored,
    baselines, ``seconds``: wall time, the only field that varies between runs).
    """

    name: str
    value: float
    higher_is_better: bool
    protocol: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- helpers


def _logits(out: Any) -> torch.Tensor:
    """Logits from a model output (ModelOutput with ``.logits``, tuple, or bare tensor)."""
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if logits is not None:
        return logits
    if isinstance(out, (tuple, list)):
        return out[0]
    raise UserError(f"model output {type(out).__name__} has no logits")


def _no_cache_kwargs(model: nn.Module) -> dict[str, Any]:
    """``use_cache=False`` for Hugging Face models (no KV cache needed when scoring)."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "use_cache") and hasattr(model, "generate"):
        return {"use_cache": False}
    return {}


def _order_by_length(texts: Sequence[str]) -> list[int]:
    """Indices sorted by text length (stable), so batches pad little; results are reordered."""
    return sorted(range(len(texts)), key=lambda i: len(texts[i]))


def _batches(indices: list[int], batch_size: int):
    for start in range(0, len(indices), batch_size):
        yield indices[start : start + batch_size]


def _check_positive(**values: int | None) -> None:
    for name, value in values.items():
        if value is not None and value < 1:
            raise UserError(f"{name} must be at least 1 (got {value})")


def _encoder_inputs(tokenizer: Any, texts: Sequence[str], max_len: int, device) -> dict:
    enc = tokenizer(
        list(texts), padding=True, truncation=True, max_length=max_len, return_tensors="pt"
    )
    # token_type_ids are all zero for single sentences and some wrappers reject them
    return {k: enc[k].to(device) for k in ("input_ids", "attention_mask") if k in enc}


# --------------------------------------------------------------------------- perplexity


def perplexity(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    seq_len: int = 512,
    stride: int = 512,
    batch_size: int = 4,
    max_windows: int | None = None,
    separator: str = "\n\n",
) -> tuple[float, int]:
    """Token-level perplexity of a causal LM on ``texts``; returns ``(ppl, tokens_scored)``.

    The texts are joined with ``separator`` (the GPTQ/SparseGPT protocol joins
    WikiText with ``"\\n\\n"``) and tokenized once without special tokens. Window ``i``
    covers tokens ``[i*stride, i*stride + seq_len)``; it scores the tokens after the
    previous window's end (all of them when ``stride == seq_len``, except the window's
    first token, which has no context). Every token is scored at most once; with
    ``stride < seq_len`` every token but the very first is scored. ``max_windows`` keeps
    that many windows spread evenly over the stream (window ``i * W // max_windows`` of
    ``W``), each scoring the same tokens as in the uncapped run. The model is called as ``model(input_ids=..,
    attention_mask=..)`` and only its logits are used; the NLL is summed in float64 over
    all scored tokens and divided by their count (not a mean of window means).

    >>> perplexity(model, tok, texts, seq_len=512, stride=256)   # doctest: +SKIP
    (21.7, 40123)
    """
    _check_positive(seq_len=seq_len, stride=stride, batch_size=batch_size, max_windows=max_windows)
    if stride > seq_len:
        raise UserError(
            f"stride ({stride}) must not exceed seq_len ({seq_len}): tokens would go unscored"
        )
    if seq_len < 2:
        raise UserError("seq_len must be at least 2 (one token of context, one to score)")
    text = separator.join(t for t in texts if t)
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    ids = torch.as_tensor(ids, dtype=torch.long).flatten()  # (N,)
    n = ids.numel()
    if n < 2:
        raise UserError("perplexity needs at least 2 tokens of text")

    # windows as in the transformers guide: (begin, end, first scored position)
    windows: list[tuple[int, int, int]] = []
    prev_end = 0
    for begin in range(0, n, stride):
        end = min(begin + seq_len, n)
        first = max(prev_end, begin + 1)
        if first < end:
            windows.append((begin, end, first))
        prev_end = end
        if end == n:
            break
    if max_windows is not None and max_windows < len(windows):
        # spread the kept windows over the whole stream (every article gets a say); each
        # keeps its own scored span, so no token is scored twice or without its context
        total = len(windows)
        windows = [windows[i * total // max_windows] for i in range(max_windows)]

    device = input_device(model)
    kwargs = _no_cache_kwargs(model)
    nll_sum = 0.0
    count = 0
    # full-length windows are batched together; a shorter tail window runs alone
    groups: dict[int, list[tuple[int, int, int]]] = {}
    for w in windows:
        groups.setdefault(w[1] - w[0], []).append(w)
    with torch.inference_mode():
        for group in groups.values():
            for start in range(0, len(group), batch_size):
                batch = group[start : start + batch_size]
                input_ids = torch.stack([ids[b:e] for b, e, _ in batch]).to(device)  # (B, T)
                mask = torch.ones_like(input_ids)
                logits = _logits(model(input_ids=input_ids, attention_mask=mask, **kwargs))
                for row, (b, e, first) in enumerate(batch):
                    # logits at position t predict token t+1: rows first-1 .. e-2 of the window
                    pred = logits[row, first - 1 - b : e - 1 - b].float()  # (S, V)
                    target = ids[first:e].to(pred.device)  # (S,)
                    nll_sum += F.cross_entropy(pred, target, reduction="sum").double().item()
                    count += e - first
    return math.exp(nll_sum / count), count


# --------------------------------------------------------------------------- classification


def _predict_logits(
    model: nn.Module, tokenizer: Any, texts: Sequence[str], batch_size: int, max_len: int
) -> torch.Tensor:
    device = input_device(model)
    order = _order_by_length(texts)
    out: list[torch.Tensor | None] = [None] * len(texts)
    with torch.inference_mode():
        for idx in _batches(order, batch_size):
            inputs = _encoder_inputs(tokenizer, [texts[i] for i in idx], max_len, device)
            logits = _logits(model(**inputs)).float().cpu()  # (B, C)
            for row, i in enumerate(idx):
                out[i] = logits[row]
    return torch.stack(out)  # (N, C)


def classification_scores(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    labels: Sequence[int],
    batch_size: int = 32,
    max_len: int = 128,
) -> dict[str, float]:
    """Accuracy and macro-F1 of ``model(**inputs).logits.argmax(-1)`` against ``labels``.

    Inputs are truncated to ``max_len`` tokens. Macro-F1 averages over the classes that
    occur in the labels or the predictions (scikit-learn's default), a class never
    predicted scoring 0.

    >>> classification_scores(model, tok, ["great!", "awful"], [2, 0])   # doctest: +SKIP
    {'accuracy': 1.0, 'macro_f1': 1.0}
    """
    from sklearn.metrics import accuracy_score, f1_score

    if len(texts) != len(labels):
        raise UserError(f"{len(texts)} texts but {len(labels)} labels")
    if not texts:
        raise UserError("classification_scores needs at least one example")
    _check_positive(batch_size=batch_size, max_len=max_len)
    pred = _predict_logits(model, tokenizer, texts, batch_size, max_len).argmax(-1).numpy()
    y = np.asarray(labels)
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, average="macro", zero_division=0)),
    }


# --------------------------------------------------------------------------- embeddings


def _last_hidden(model: nn.Module, inputs: dict) -> torch.Tensor:
    """Last hidden state (B, T, H) of an encoder, with or without a task head."""
    # a model with a head (BertForSequenceClassification) is not its own base_model
    with_head = getattr(model, "base_model", model) is not model
    out = model(**inputs, output_hidden_states=True) if with_head else model(**inputs)
    hidden = getattr(out, "last_hidden_state", None)
    if hidden is None and getattr(out, "hidden_states", None) is not None:
        hidden = out.hidden_states[-1]
    if hidden is None and isinstance(out, torch.Tensor) and out.dim() == 3:
        hidden = out
    if hidden is None:
        raise UserError(
            f"{type(model).__name__} returns no hidden states; embeddings need "
            "last_hidden_state or hidden_states"
        )
    return hidden


def embed(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    batch_size: int = 32,
    max_len: int = 256,
) -> torch.Tensor:
    """Mean-pooled (over non-padding tokens), L2-normalised last hidden states: (N, H) float32 CPU.

    Works for a bare encoder (``BertModel``: ``last_hidden_state``) and for one with a
    head (``BertForSequenceClassification``: ``hidden_states[-1]``). Texts are truncated
    to ``max_len`` tokens.

    >>> embed(model, tok, ["a cat", "a dog"]).shape   # doctest: +SKIP
    torch.Size([2, 384])
    """
    _check_positive(batch_size=batch_size, max_len=max_len)
    device = input_device(model)
    order = _order_by_length(texts)
    out: list[torch.Tensor | None] = [None] * len(texts)
    with torch.inference_mode():
        for idx in _batches(order, batch_size):
            inputs = _encoder_inputs(tokenizer, [texts[i] for i in idx], max_len, device)
            hidden = _last_hidden(model, inputs).float()  # (B, T, H)
            mask = inputs["attention_mask"].to(hidden.device).unsqueeze(-1).float()  # (B, T, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)  # (B, H)
            pooled = F.normalize(pooled, dim=-1).cpu()
            for row, i in enumerate(idx):
                out[i] = pooled[row]
    return torch.stack(out) if out else torch.empty(0, 0)


def similarity_spearman(
    model: nn.Module,
    tokenizer: Any,
    pairs_a: Sequence[str],
    pairs_b: Sequence[str],
    scores: Sequence[float],
    batch_size: int = 32,
    max_len: int = 256,
) -> float:
    """Spearman rho between embedding cosine similarity and human similarity ``scores``.

    Each distinct text is embedded once (the Lee pairs reuse 50 documents).

    >>> similarity_spearman(model, tok, docs_a, docs_b, human)   # doctest: +SKIP
    0.61
    """
    from scipy.stats import spearmanr

    if not (len(pairs_a) == len(pairs_b) == len(scores)):
        raise UserError(
            f"pair lists differ in length: {len(pairs_a)}, {len(pairs_b)}, {len(scores)}"
        )
    if len(scores) < 2:
        raise UserError("similarity_spearman needs at least 2 pairs")
    unique = sorted(set(pairs_a) | set(pairs_b))
    where = {t: i for i, t in enumerate(unique)}
    emb = embed(model, tokenizer, unique, batch_size=batch_size, max_len=max_len)  # (U, H)
    a = emb[[where[t] for t in pairs_a]]
    b = emb[[where[t] for t in pairs_b]]
    cos = (a * b).sum(-1).double().numpy()  # normalised, so the dot product is the cosine
    rho = spearmanr(cos, np.asarray(scores, dtype=float)).statistic
    return float(rho)


def linear_probe_scores(
    model: nn.Module,
    tokenizer: Any,
    train_texts: Sequence[str],
    train_labels: Sequence[int],
    test_texts: Sequence[str],
    test_labels: Sequence[int],
    batch_size: int = 32,
    max_len: int = 128,
    C: float = 1.0,
) -> dict[str, float]:
    """Accuracy and macro-F1 of a logistic regression on frozen :func:`embed` features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    if len(train_texts) != len(train_labels) or len(test_texts) != len(test_labels):
        raise UserError("texts and labels differ in length")
    x_train = embed(model, tokenizer, train_texts, batch_size, max_len).numpy()
    x_test = embed(model, tokenizer, test_texts, batch_size, max_len).numpy()
    clf = LogisticRegression(C=C, max_iter=2000)  # lbfgs: deterministic
    clf.fit(x_train, np.asarray(train_labels))
    pred = clf.predict(x_test)
    y = np.asarray(test_labels)
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, average="macro", zero_division=0)),
    }


def linear_probe_accuracy(
    model: nn.Module,
    tokenizer: Any,
    train_texts: Sequence[str],
    train_labels: Sequence[int],
    test_texts: Sequence[str],
    test_labels: Sequence[int],
    **kwargs: Any,
) -> float:
    """Test accuracy of a linear probe (logistic regression) on frozen mean-pooled embeddings.

    >>> linear_probe_accuracy(encoder, tok, tr_x, tr_y, te_x, te_y)   # doctest: +SKIP
    0.68
    """
    return linear_probe_scores(
        model, tokenizer, train_texts, train_labels, test_texts, test_labels, **kwargs
    )["accuracy"]


# --------------------------------------------------------------------------- seq2seq


def _text_scores(hyps: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
    import sacrebleu

    return {
        "chrf": float(sacrebleu.corpus_chrf(list(hyps), [list(refs)]).score),
        "bleu": float(sacrebleu.corpus_bleu(list(hyps), [list(refs)]).score),
    }


def copy_baseline(sources: Sequence[str], targets: Sequence[str]) -> dict[str, float]:
    """chrF and BLEU of the trivial system that outputs its input unchanged.

    >>> copy_baseline(["a b c"], ["a b c"])["chrf"]
    100.0
    """
    if len(sources) != len(targets):
        raise UserError(f"{len(sources)} sources but {len(targets)} targets")
    return _text_scores(sources, targets)


def _target_ids(tokenizer: Any, targets: Sequence[str], max_len: int) -> dict:
    return tokenizer(
        text_target=list(targets),
        padding=True,
        truncation=True,
        max_length=max_len,
        return_tensors="pt",
    )


def seq2seq_scores(
    model: nn.Module,
    tokenizer: Any,
    sources: Sequence[str],
    targets: Sequence[str],
    max_new_tokens: int | None = None,
    batch_size: int = 16,
    max_source_len: int = 256,
    max_target_len: int = 256,
) -> dict[str, Any]:
    """chrF and BLEU (sacrebleu) of greedy ``model.generate`` outputs against ``targets``.

    Outputs are decoded with ``skip_special_tokens=True``. ``max_new_tokens=None`` caps
    each batch at 1.5x its longest target (in tokens) plus 2; the cap never exceeds
    ``max_target_len``. Also returns the
    ``outputs`` in input order.

    >>> seq2seq_scores(model, tok, ["hello world"], ["Hello world."])   # doctest: +SKIP
    {'chrf': 87.1, 'bleu': 61.0, 'outputs': ['Hello world.']}
    """
    if len(sources) != len(targets):
        raise UserError(f"{len(sources)} sources but {len(targets)} targets")
    if not sources:
        raise UserError("seq2seq_scores needs at least one example")
    _check_positive(
        batch_size=batch_size, max_new_tokens=max_new_tokens, max_source_len=max_source_len
    )
    device = input_device(model)
    order = _order_by_length(sources)
    outputs: list[str] = [""] * len(sources)
    pad = getattr(tokenizer, "pad_token_id", None)
    with torch.inference_mode():
        for idx in _batches(order, batch_size):
            inputs = _encoder_inputs(tokenizer, [sources[i] for i in idx], max_source_len, device)
            cap = max_new_tokens
            if cap is None:
                lengths = _target_ids(tokenizer, [targets[i] for i in idx], 4096)["attention_mask"]
                cap = int(math.ceil(1.5 * int(lengths.sum(-1).max()))) + 2
            cap = min(cap, max_target_len)  # decoders with learned positions stop there
            gen = model.generate(
                **inputs, max_new_tokens=cap, do_sample=False, num_beams=1, pad_token_id=pad
            )
            texts = tokenizer.batch_decode(gen, skip_special_tokens=True)
            for row, i in enumerate(idx):
                outputs[i] = texts[row].strip()
    return _text_scores(outputs, targets) | {"outputs": outputs}


def decoder_start_id(model: nn.Module) -> int:
    """The model's ``decoder_start_token_id`` (generation config first, then config)."""
    for cfg in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        start = getattr(cfg, "decoder_start_token_id", None)
        if start is not None:
            return int(start)
    raise UserError(f"{type(model).__name__} has no decoder_start_token_id in its config")


def seq2seq_perplexity(
    model: nn.Module,
    tokenizer: Any,
    sources: Sequence[str],
    targets: Sequence[str],
    batch_size: int = 16,
    max_source_len: int = 256,
    max_target_len: int = 256,
) -> tuple[float, int]:
    """Teacher-forced perplexity of the target tokens; returns ``(ppl, tokens_scored)``.

    Labels are ``tokenizer(text_target=targets)`` (whatever special tokens the family
    adds: T5 ``</s>``, BART ``<s>..</s>``, BERT ``[CLS]..[SEP]``); ``decoder_input_ids`` are
    the labels shifted right with the model's ``decoder_start_token_id``, which is what
    the models build internally from ``labels``. The cross-entropy is computed here from
    the logits, over the non-padding label positions (the tokenizer's attention mask,
    since pad and start ids can coincide), summed and divided by the count.
    """
    if len(sources) != len(targets):
        raise UserError(f"{len(sources)} sources but {len(targets)} targets")
    if not sources:
        raise UserError("seq2seq_perplexity needs at least one example")
    _check_positive(batch_size=batch_size)
    device = input_device(model)
    start = decoder_start_id(model)
    order = _order_by_length(sources)
    nll_sum = 0.0
    count = 0
    with torch.inference_mode():
        for idx in _batches(order, batch_size):
            inputs = _encoder_inputs(tokenizer, [sources[i] for i in idx], max_source_len, device)
            tgt = _target_ids(tokenizer, [targets[i] for i in idx], max_target_len)
            labels, label_mask = tgt["input_ids"], tgt["attention_mask"]  # (B, T)
            dec = torch.full_like(labels, start)
            dec[:, 1:] = labels[:, :-1]  # (B, T); padding only feeds unscored later positions
            logits = _logits(model(**inputs, decoder_input_ids=dec.to(device))).float()  # (B, T, V)
            keep = label_mask.bool().to(logits.device)
            nll_sum += (
                F.cross_entropy(logits[keep], labels.to(logits.device)[keep], reduction="sum")
                .double()
                .item()
            )
            count += int(keep.sum())
    return math.exp(nll_sum / count), count


# --------------------------------------------------------------------------- suites


@dataclass(frozen=True)
class Suite:
    """What :func:`run_benchmarks` measures for a task, with its full and quick settings."""

    task: str
    metrics: tuple[str, ...]
    full: dict[str, Any]
    quick: dict[str, Any]
    run: Callable[[nn.Module, Any, dict[str, Any], bool], list[Metric]]
    description: str = ""


def _data():
    try:
        from compress import data
    except ImportError as exc:  # pragma: no cover - only before compress.data exists
        raise UserError(f"the benchmark suites need compress.data ({exc})") from None
    return data


def _data_protocol(corpus: str, split: str) -> dict[str, Any] | None:
    data = _data()
    fn = getattr(data, "protocol", None)
    if fn is None:
        return None
    try:
        return fn(corpus, split)
    except Exception as exc:  # the protocol is documentation; never fail a benchmark for it
        log.warning("no data protocol for %s/%s: %s", corpus, split, exc)
        return None


def _columns(corpus: str, split: str, names: Sequence[str], n: int | None = None) -> list[list]:
    ds = _data().load_split(corpus, split)
    if n is not None and n < len(ds):
        ds = ds.select(range(n))  # the splits are fixed and shuffled once: first n is fixed
    return [list(ds[name]) for name in names]


def _protocol(corpus: str, split: str, quick: bool, **kw: Any) -> dict[str, Any]:
    return {
        "corpus": corpus,
        "split": split,
        **kw,
        "quick": quick,
        "data": _data_protocol(corpus, split),
    }


def _run_causal_lm(model, tokenizer, s: dict[str, Any], quick: bool) -> list[Metric]:
    metrics = []
    for name, corpus in (("ppl_wiki", "wiki"), ("ppl_news", "news")):
        t0 = time.perf_counter()
        (texts,) = _columns(corpus, "test", ["text"])
        ppl, n_tok = perplexity(
            model, tokenizer, texts, s["seq_len"], s["stride"], s["batch_size"], s["max_windows"]
        )
        metrics.append(
            Metric(
                name,
                ppl,
                False,
                _protocol(
                    corpus,
                    "test",
                    quick,
                    n_examples=len(texts),
                    seq_len=s["seq_len"],
                    stride=s["stride"],
                    batch_size=s["batch_size"],
                    max_windows=s["max_windows"],
                    window_selection="evenly spaced over the joined split",
                    separator="\n\n",
                    level="token",
                    truncation=None,
                ),
                {"n_tokens": n_tok, "seconds": round(time.perf_counter() - t0, 2)},
            )
        )
    return metrics


def _similarity_metric(model, tokenizer, s: dict[str, Any], quick: bool) -> Metric:
    t0 = time.perf_counter()
    a, b, score = _columns("lee-similarity", "test", ["text_a", "text_b", "score"])
    proto = _protocol(
        "lee-similarity",
        "test",
        quick,
        n_examples=len(score),
        batch_size=s["batch_size"],
        truncation=s["doc_len"],
        pooling="mean over attention mask, L2-normalised, last hidden state",
    )
    try:
        rho = similarity_spearman(model, tokenizer, a, b, score, s["batch_size"], s["doc_len"])
    except UserError as exc:
        log.warning("similarity_spearman skipped: %s", exc)
        return Metric("similarity_spearman", float("nan"), True, proto, {"skipped": str(exc)})
    return Metric(
        "similarity_spearman", rho, True, proto, {"seconds": round(time.perf_counter() - t0, 2)}
    )


def _run_classification(model, tokenizer, s: dict[str, Any], quick: bool) -> list[Metric]:
    t0 = time.perf_counter()
    texts, labels = _columns("tweets", "test", ["text", "label"], s["n_test"])
    scores = classification_scores(model, tokenizer, texts, labels, s["batch_size"], s["max_len"])
    seconds = round(time.perf_counter() - t0, 2)
    proto = _protocol(
        "tweets",
        "test",
        quick,
        n_examples=len(texts),
        batch_size=s["batch_size"],
        truncation=s["max_len"],
    )
    return [
        Metric("accuracy", scores["accuracy"], True, proto, {"seconds": seconds}),
        Metric("macro_f1", scores["macro_f1"], True, dict(proto), {"seconds": seconds}),
        _similarity_metric(model, tokenizer, s, quick),
    ]


def _run_embedding(model, tokenizer, s: dict[str, Any], quick: bool) -> list[Metric]:
    sim = _similarity_metric(model, tokenizer, s, quick)
    t0 = time.perf_counter()
    tr_x, tr_y = _columns("tweets", "train", ["text", "label"], s["n_train"])
    te_x, te_y = _columns("tweets", "test", ["text", "label"], s["n_test"])
    probe = linear_probe_scores(
        model, tokenizer, tr_x, tr_y, te_x, te_y, batch_size=s["batch_size"], max_len=s["max_len"]
    )
    proto = _protocol(
        "tweets",
        "test",
        quick,
        n_examples=len(te_x),
        n_train=len(tr_x),
        train_split="train",
        batch_size=s["batch_size"],
        truncation=s["max_len"],
        probe="LogisticRegression(C=1.0, lbfgs) on frozen mean-pooled embeddings",
        train_data=_data_protocol("tweets", "train"),
    )
    return [
        sim,
        Metric(
            "probe_accuracy",
            probe["accuracy"],
            True,
            proto,
            {"macro_f1": probe["macro_f1"], "seconds": round(time.perf_counter() - t0, 2)},
        ),
    ]


def _run_seq2seq(model, tokenizer, s: dict[str, Any], quick: bool) -> list[Metric]:
    sources, targets = _columns("punct", "test", ["source", "target"], s["n_test"])
    base = copy_baseline(sources, targets)
    proto = _protocol(
        "punct",
        "test",
        quick,
        n_examples=len(sources),
        batch_size=s["batch_size"],
        truncation=s["max_len"],
        decoding="greedy",
        max_new_tokens="1.5 x longest target in batch + 2, at most max_len",
    )
    t0 = time.perf_counter()
    scores = seq2seq_scores(
        model,
        tokenizer,
        sources,
        targets,
        batch_size=s["batch_size"],
        max_source_len=s["max_len"],
        max_target_len=s["max_len"],
    )
    gen_seconds = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    ppl, n_tok = seq2seq_perplexity(
        model, tokenizer, sources, targets, s["batch_size"], s["max_len"], s["max_len"]
    )
    extra = {
        "copy_baseline": base,
        "seconds": gen_seconds,
        "examples": [
            {"source": sources[i], "target": targets[i], "output": scores["outputs"][i]}
            for i in range(min(3, len(sources)))
        ],
    }
    ppl_proto = {k: v for k, v in proto.items() if k not in ("decoding", "max_new_tokens")}
    ppl_proto["level"] = "target token, teacher forced"
    return [
        Metric("chrf", scores["chrf"], True, proto, dict(extra)),
        Metric("bleu", scores["bleu"], True, dict(proto), dict(extra)),
        Metric(
            "ppl_seq2seq",
            ppl,
            False,
            ppl_proto,
            {
                "n_tokens": n_tok,
                "copy_baseline": base,
                "seconds": round(time.perf_counter() - t0, 2),
            },
        ),
    ]


#: per task: the metrics, full and quick settings, and the runner.
SUITES: dict[str, Suite] = {
    "causal-lm": Suite(
        "causal-lm",
        ("ppl_wiki", "ppl_news"),
        # 24 windows x 512 tokens per corpus: about a minute per corpus for a 135M model on 2 cores
        full=dict(seq_len=512, stride=512, batch_size=4, max_windows=24),
        quick=dict(seq_len=256, stride=256, batch_size=4, max_windows=4),
        run=_run_causal_lm,
        description="token-level perplexity on held-out Wikipedia and news text",
    ),
    "classification": Suite(
        "classification",
        ("accuracy", "macro_f1", "similarity_spearman"),
        full=dict(n_test=2000, batch_size=32, max_len=128, doc_len=256),
        quick=dict(n_test=200, batch_size=32, max_len=128, doc_len=256),
        run=_run_classification,
        description="tweet sentiment (3 classes) and Lee document similarity",
    ),
    "embedding": Suite(
        "embedding",
        ("similarity_spearman", "probe_accuracy"),
        full=dict(n_train=2000, n_test=2000, batch_size=32, max_len=128, doc_len=256),
        quick=dict(n_train=200, n_test=200, batch_size=32, max_len=128, doc_len=256),
        run=_run_embedding,
        description="Lee document similarity and a linear sentiment probe",
    ),
    "seq2seq": Suite(
        "seq2seq",
        ("chrf", "bleu", "ppl_seq2seq"),
        full=dict(n_test=300, batch_size=16, max_len=256),
        quick=dict(n_test=32, batch_size=16, max_len=256),
        run=_run_seq2seq,
        description="punctuation and case restoration (greedy), teacher-forced perplexity",
    ),
}


def run_benchmarks(
    model: nn.Module, tokenizer: Any, task: str, quick: bool = False
) -> list[Metric]:
    """Run the suite of ``task`` (see :data:`SUITES`) on the fixed splits of :mod:`compress.data`.

    ``quick=True`` uses far fewer examples/windows (a smoke test, not comparable with
    full runs; every metric records the flag).

    >>> [m.name for m in run_benchmarks(model, tok, "causal-lm")]   # doctest: +SKIP
    ['ppl_wiki', 'ppl_news']
    """
    if task not in SUITES:
        raise did_you_mean("task", task, SUITES)
    suite = SUITES[task]
    settings = suite.quick if quick else suite.full
    was_training = model.training if isinstance(model, nn.Module) else False
    if isinstance(model, nn.Module):
        model.eval()
    try:
        metrics = suite.run(model, tokenizer, settings, quick)
    finally:
        if was_training:
            model.train()
    for m in metrics:
        log.info("%s = %.4g (%s)", m.name, m.value, m.protocol.get("corpus"))
    return metrics

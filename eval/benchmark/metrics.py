"""The core metrics of decoders and encoders: perplexity, classification scores, sentence
embeddings, similarity and a linear probe (see :mod:`eval.benchmark`)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.stats import spearmanr
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score

from compress.errors import UserError
from compress.models import input_device


@dataclass
class Metric:
    """One measured number and how it was measured.

    ``protocol`` says what was measured (corpus, split, n_examples, seq_len, stride,
    batch_size, truncation, quick, data); ``extra`` holds side facts (tokens scored,
    baselines, ``seconds``: wall time, the only field that varies between runs).
    ``interval`` is the 95% bootstrap interval over the metric's items (``low``, ``high``,
    ``n``, ``unit``, ``method``) and ``vs_dense`` the paired change against the dense
    model on the same items (``delta``, ``low``, ``high``, ``within_noise``), see
    :mod:`eval.benchmark.samples`. ``samples`` (the per-item statistics both come from)
    stays in memory: :meth:`to_dict` leaves it out.
    """

    name: str
    value: float
    higher_is_better: bool
    protocol: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    interval: dict[str, Any] | None = None
    vs_dense: dict[str, Any] | None = None
    samples: Any = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "samples"}
        return copy.deepcopy(out)


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
    nll, tokens = window_nll(model, tokenizer, texts, seq_len, stride, batch_size, max_windows,
                             separator)
    return math.exp(nll.sum() / tokens.sum()), int(tokens.sum())


def _windows(
    n: int, seq_len: int, stride: int, max_windows: int | None
) -> list[tuple[int, int, int]]:
    """(begin, end, first scored position) of each window, as in the transformers guide."""
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
    return windows


#: ``observe(item, logits (S, V), targets (S,))``: what the agreement collectors read
Observer = Callable[[int, torch.Tensor, torch.Tensor], None]


def window_nll(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    seq_len: int = 512,
    stride: int = 512,
    batch_size: int = 4,
    max_windows: int | None = None,
    separator: str = "\n\n",
    observe: Observer | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per window (in stream order): summed NLL (float64) and tokens scored, ``(W,)`` each.

    The windows and scoring of :func:`perplexity` (which is ``exp(sum nll / sum
    tokens)`` of these). ``observe``, if given, sees each window's scored logits and
    target tokens in the same forward (agreement with dense, :mod:`eval.benchmark.agreement`).
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
    if ids.numel() < 2:
        raise UserError("perplexity needs at least 2 tokens of text")
    windows = _windows(ids.numel(), seq_len, stride, max_windows)
    device = input_device(model)
    kwargs = _no_cache_kwargs(model)
    nll = np.zeros(len(windows))
    tokens = np.array([e - first for _, e, first in windows], dtype=np.int64)
    # full-length windows are batched together; a shorter tail window runs alone
    groups: dict[int, list[int]] = {}
    for i, (b, e, _) in enumerate(windows):
        groups.setdefault(e - b, []).append(i)
    with torch.inference_mode():
        for group in groups.values():
            for start in range(0, len(group), batch_size):
                batch = group[start : start + batch_size]
                input_ids = torch.stack([ids[windows[i][0] : windows[i][1]] for i in batch])
                input_ids = input_ids.to(device)  # (B, T)
                mask = torch.ones_like(input_ids)
                logits = _logits(model(input_ids=input_ids, attention_mask=mask, **kwargs))
                for row, i in enumerate(batch):
                    b, e, first = windows[i]
                    # logits at position t predict token t+1: rows first-1 .. e-2 of the window
                    pred = logits[row, first - 1 - b : e - 1 - b].float()  # (S, V)
                    target = ids[first:e].to(pred.device)  # (S,)
                    nll[i] = F.cross_entropy(pred, target, reduction="sum").double().item()
                    if observe is not None:
                        observe(i, pred, target)
    return nll, tokens


def predict_logits(
    model: nn.Module, tokenizer: Any, texts: Sequence[str], batch_size: int, max_len: int
) -> torch.Tensor:
    """Classifier logits ``(N, C)`` float32 on CPU, in input order."""
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
    if len(texts) != len(labels):
        raise UserError(f"{len(texts)} texts but {len(labels)} labels")
    if not texts:
        raise UserError("classification_scores needs at least one example")
    _check_positive(batch_size=batch_size, max_len=max_len)
    pred = predict_logits(model, tokenizer, texts, batch_size, max_len).argmax(-1).numpy()
    y = np.asarray(labels)
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, average="macro", zero_division=0)),
    }


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

    Each distinct text is embedded once (the Lee pairs reuse 50 documents; see
    :func:`pair_cosines`).

    >>> similarity_spearman(model, tok, docs_a, docs_b, human)   # doctest: +SKIP
    0.61
    """
    if not (len(pairs_a) == len(pairs_b) == len(scores)):
        raise UserError(
            f"pair lists differ in length: {len(pairs_a)}, {len(pairs_b)}, {len(scores)}"
        )
    if len(scores) < 2:
        raise UserError("similarity_spearman needs at least 2 pairs")
    cos = pair_cosines(model, tokenizer, pairs_a, pairs_b, batch_size, max_len)
    return float(spearmanr(cos, np.asarray(scores, dtype=float)).statistic)


def pair_cosines(
    model: nn.Module,
    tokenizer: Any,
    pairs_a: Sequence[str],
    pairs_b: Sequence[str],
    batch_size: int = 32,
    max_len: int = 256,
) -> np.ndarray:
    """Cosine similarity of the :func:`embed` embeddings of each pair: ``(P,)`` float64.

    Each distinct text is embedded once.
    """
    unique = sorted(set(pairs_a) | set(pairs_b))
    where = {t: i for i, t in enumerate(unique)}
    emb = embed(model, tokenizer, unique, batch_size=batch_size, max_len=max_len)  # (U, H)
    a = emb[[where[t] for t in pairs_a]]
    b = emb[[where[t] for t in pairs_b]]
    return (a * b).sum(-1).double().numpy()  # normalised, so the dot product is the cosine


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
    if len(train_texts) != len(train_labels) or len(test_texts) != len(test_labels):
        raise UserError("texts and labels differ in length")
    x_train = embed(model, tokenizer, train_texts, batch_size, max_len).numpy()
    x_test = embed(model, tokenizer, test_texts, batch_size, max_len).numpy()
    pred = probe_predict(x_train, train_labels, x_test, C)
    y = np.asarray(test_labels)
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, average="macro", zero_division=0)),
    }


def probe_predict(
    x_train: np.ndarray, train_labels: Sequence[int], x_test: np.ndarray, C: float = 1.0
) -> np.ndarray:
    """Fit the linear probe (logistic regression, lbfgs: deterministic) and predict ``x_test``."""
    clf = LogisticRegression(C=C, max_iter=2000)
    clf.fit(x_train, np.asarray(train_labels))
    return clf.predict(x_test)


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


def max_positions(model: nn.Module) -> int | None:
    """The model's position limit (``max_position_embeddings`` / ``n_positions``, sub-configs
    of composite models included), or None where its config names none."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    from transformers import PretrainedConfig

    # composite models (bert2bert) keep sizes in sub-configs
    configs = [config] + [v for v in vars(config).values() if isinstance(v, PretrainedConfig)]
    for cfg in configs:
        for attr in ("max_position_embeddings", "n_positions"):
            value = getattr(cfg, attr, None)
            if isinstance(value, int):
                return value
    return None

"""The benchmark suites: per task, which metrics on which fixed splits, full and quick
(see :mod:`eval.benchmark`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch.nn as nn
from scipy.stats import spearmanr
from sklearn.metrics import accuracy_score, f1_score

from compress import data
from compress.errors import UserError, did_you_mean
from eval import protocol
from eval.benchmark.agreement import Agreement, DenseReference
from eval.benchmark.metrics import (
    Metric,
    embed,
    max_positions,
    pair_cosines,
    predict_logits,
    probe_predict,
    window_nll,
)
from eval.benchmark.samples import Samples, interval, sentence_stats, vs_dense
from eval.benchmark.seq2seq import copy_baseline, seq2seq_scores, target_nll

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Suite:
    """What :func:`run_benchmarks` measures for a task, with its full and quick settings."""

    task: str
    metrics: tuple[str, ...]
    full: dict[str, Any]
    quick: dict[str, Any]
    run: Callable[[nn.Module, Any, dict[str, Any], bool, Agreement], list[Metric]]
    description: str = ""
    #: the main job's protocol (:mod:`eval.protocol`): a subset of ``full``'s items
    lean: dict[str, Any] | None = None

    def settings(self, quick: bool) -> dict[str, Any]:
        """The settings of the protocol in force (:func:`eval.protocol.of`)."""
        name = protocol.of(quick)
        if name == "quick":
            return self.quick
        return self.lean if name == "lean" and self.lean is not None else self.full


def _data_protocol(corpus: str, split: str) -> dict[str, Any] | None:
    try:
        return data.protocol(corpus, split)
    except Exception as exc:  # the protocol is documentation; never fail a benchmark for it
        log.warning("no data protocol for %s/%s: %s", corpus, split, exc)
        return None


def _columns(corpus: str, split: str, names: Sequence[str], n: int | None = None) -> list[list]:
    ds = data.load_split(corpus, split)
    if n is not None and n < len(ds):
        ds = ds.select(range(n))  # the splits are fixed and shuffled once: first n is fixed
    return [list(ds[name]) for name in names]


def _protocol(corpus: str, split: str, quick: bool, **kw: Any) -> dict[str, Any]:
    return {
        "corpus": corpus,
        "split": split,
        **kw,
        "quick": quick,
        "protocol": protocol.of(quick),
        "data": _data_protocol(corpus, split),
    }


def _run_causal_lm(model, tokenizer, s: dict[str, Any], quick: bool, agree: Agreement):
    metrics = []
    for name, corpus in (("ppl_wiki", "wiki"), ("ppl_news", "news")):
        t0 = time.perf_counter()
        (texts,) = _columns(corpus, "test", ["text"])
        collector = agree.token_collector(corpus, "windows")
        nll, tokens = window_nll(
            model, tokenizer, texts, s["seq_len"], s["stride"], s["batch_size"], s["max_windows"],
            observe=collector.observe if collector else None,
        )
        samples = Samples("ppl", "windows", {"nll": nll, "tokens": tokens})
        proto = _protocol(
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
        )
        extra = {"n_tokens": int(tokens.sum()), "seconds": round(time.perf_counter() - t0, 2)}
        metrics.append(Metric(name, samples.value(), False, proto, extra, samples=samples))
        agree.finish_tokens(corpus, proto)
    return metrics


#: why the similarity interval is optimistic (pairs are not independent items)
_PAIRS_NOTE = (
    "the 1,225 pairs reuse 50 documents; resampling pairs treats them as independent, "
    "so the interval is narrower than one over documents would be"
)


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
        if len(score) < 2:
            raise UserError("similarity_spearman needs at least 2 pairs")
        cos = pair_cosines(model, tokenizer, a, b, s["batch_size"], s["doc_len"])
    except UserError as exc:  # e.g. a wrapper without hidden states: no embeddings
        log.warning("similarity_spearman skipped: %s", exc)
        return Metric("similarity_spearman", float("nan"), True, proto, {"skipped": str(exc)})
    samples = Samples("rho", "pairs", {"a": cos, "b": np.asarray(score, dtype=float)})
    rho = float(spearmanr(cos, np.asarray(score, dtype=float)).statistic)
    extra = {"seconds": round(time.perf_counter() - t0, 2), "interval_note": _PAIRS_NOTE}
    return Metric("similarity_spearman", rho, True, proto, extra, samples=samples)


def _class_metrics(y, pred, proto: dict[str, Any], extra: dict[str, Any]) -> list[Metric]:
    """Accuracy and macro-F1 of predicted classes, each with its per-example samples."""
    acc = Samples("mean", "examples", {"x": (pred == y).astype(float)})
    f1 = Samples("f1", "examples", {"y": y, "pred": pred})
    macro = float(f1_score(y, pred, average="macro", zero_division=0))
    return [
        Metric("accuracy", float(accuracy_score(y, pred)), True, proto, dict(extra), samples=acc),
        Metric("macro_f1", macro, True, dict(proto), dict(extra), samples=f1),
    ]


def _run_classification(model, tokenizer, s: dict[str, Any], quick: bool, agree: Agreement):
    t0 = time.perf_counter()
    texts, labels = _columns("tweets", "test", ["text", "label"], s["n_test"])
    if not texts:
        raise UserError("classification needs at least one test example")
    logits = predict_logits(model, tokenizer, texts, s["batch_size"], s["max_len"])  # (N, C)
    pred = logits.argmax(-1).numpy()
    seconds = round(time.perf_counter() - t0, 2)
    proto = _protocol(
        "tweets",
        "test",
        quick,
        n_examples=len(texts),
        batch_size=s["batch_size"],
        truncation=s["max_len"],
    )
    agree.outputs("tweets", pred, "agreement", proto)
    metrics = _class_metrics(np.asarray(labels), pred, proto, {"seconds": seconds})
    return [*metrics, _similarity_metric(model, tokenizer, s, quick)]


def _run_embedding(model, tokenizer, s: dict[str, Any], quick: bool, agree: Agreement):
    sim = _similarity_metric(model, tokenizer, s, quick)
    t0 = time.perf_counter()
    tr_x, tr_y = _columns("tweets", "train", ["text", "label"], s["n_train"])
    te_x, te_y = _columns("tweets", "test", ["text", "label"], s["n_test"])
    emb_train = embed(model, tokenizer, tr_x, s["batch_size"], s["max_len"]).numpy()
    emb_test = embed(model, tokenizer, te_x, s["batch_size"], s["max_len"]).numpy()  # (N, H)
    pred = probe_predict(emb_train, tr_y, emb_test)
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
    agree.outputs("tweets", emb_test, "cosine", proto)
    y = np.asarray(te_y)
    samples = Samples("mean", "examples", {"x": (pred == y).astype(float)})
    extra = {
        "macro_f1": float(f1_score(y, pred, average="macro", zero_division=0)),
        "seconds": round(time.perf_counter() - t0, 2),
        "interval_note": "over test examples, for the one probe fitted on the train split",
    }
    acc = float(accuracy_score(y, pred))
    return [sim, Metric("probe_accuracy", acc, True, proto, extra, samples=samples)]


def _run_seq2seq(model, tokenizer, s: dict[str, Any], quick: bool, agree: Agreement):
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
    ppl_proto = {k: v for k, v in proto.items() if k not in ("decoding", "max_new_tokens")}
    ppl_proto["level"] = "target token, teacher forced"
    ppl_proto["targets"] = "a leading decoder-start token is fed, not scored"
    collector = agree.token_collector("punct", "sentences")
    nll, tokens = target_nll(
        model, tokenizer, sources, targets, s["batch_size"], s["max_len"], s["max_len"],
        observe=collector.observe if collector else None,
    )
    agree.finish_tokens("punct", ppl_proto)
    ppl = Samples("ppl", "sentences", {"nll": nll, "tokens": tokens})
    extra = {
        "copy_baseline": base,
        "seconds": gen_seconds,
        "examples": [
            {"source": sources[i], "target": targets[i], "output": scores["outputs"][i]}
            for i in range(min(3, len(sources)))
        ],
    }
    ppl_extra = {"n_tokens": int(tokens.sum()), "copy_baseline": base,
                 "seconds": round(time.perf_counter() - t0, 2)}
    text = {k: Samples(k, "sentences", {"stats": sentence_stats(k, scores["outputs"], targets)})
            for k in ("chrf", "bleu")}
    return [
        Metric("chrf", scores["chrf"], True, proto, dict(extra), samples=text["chrf"]),
        Metric("bleu", scores["bleu"], True, dict(proto), dict(extra), samples=text["bleu"]),
        Metric("ppl_seq2seq", ppl.value(), False, ppl_proto, ppl_extra, samples=ppl),
    ]


#: per task: the metrics, full and quick settings, and the runner.
SUITES: dict[str, Suite] = {
    "causal-lm": Suite(
        "causal-lm",
        ("ppl_wiki", "ppl_news"),
        # 24 windows x 512 tokens per corpus: about a minute per corpus for a 135M model on 2 cores
        full=dict(seq_len=512, stride=512, batch_size=4, max_windows=24),
        quick=dict(seq_len=256, stride=256, batch_size=4, max_windows=4),
        lean=dict(seq_len=512, stride=512, batch_size=4, max_windows=8),
        run=_run_causal_lm,
        description="token-level perplexity on held-out Wikipedia and news text",
    ),
    "classification": Suite(
        "classification",
        ("accuracy", "macro_f1", "similarity_spearman"),
        full=dict(n_test=2000, batch_size=32, max_len=128, doc_len=256),
        quick=dict(n_test=200, batch_size=32, max_len=128, doc_len=256),
        lean=dict(n_test=1000, batch_size=32, max_len=128, doc_len=256),
        run=_run_classification,
        description="tweet sentiment (3 classes) and Lee document similarity",
    ),
    "embedding": Suite(
        "embedding",
        ("similarity_spearman", "probe_accuracy"),
        full=dict(n_train=2000, n_test=2000, batch_size=32, max_len=128, doc_len=256),
        quick=dict(n_train=200, n_test=200, batch_size=32, max_len=128, doc_len=256),
        lean=dict(n_train=1000, n_test=1000, batch_size=32, max_len=128, doc_len=256),
        run=_run_embedding,
        description="Lee document similarity and a linear sentiment probe",
    ),
    "seq2seq": Suite(
        "seq2seq",
        ("chrf", "bleu", "ppl_seq2seq"),
        # targets: a target's leading decoder-start token is fed, not scored (the dense
        # reference cached before this was scored differently: the key changes with it)
        full=dict(n_test=300, batch_size=16, max_len=256, targets="start fed"),
        quick=dict(n_test=32, batch_size=16, max_len=256, targets="start fed"),
        lean=dict(n_test=100, batch_size=16, max_len=256, targets="start fed"),
        run=_run_seq2seq,
        description="punctuation and case restoration (greedy), teacher-forced perplexity",
    ),
}


#: settings that are token lengths fed to the model's positions at once
LENGTHS = ("seq_len", "max_len", "doc_len")


def fit_to_positions(settings: dict[str, Any], limit: int | None) -> dict[str, Any]:
    """``settings`` with every token length cut to what the model can position.

    A model with fewer than two positions to spare beyond a length (a small GPT-2 has
    learned absolute positions; RoBERTa's start at ``padding_idx + 1``) is measured on
    windows and texts two short of its limit, and the settings record
    ``fitted_to_positions``; every model whose limit covers the lengths (all the default
    models) keeps them unchanged.

    >>> fit_to_positions({"seq_len": 512, "stride": 512, "max_windows": 8}, 256)
    {'seq_len': 254, 'stride': 254, 'max_windows': 8, 'fitted_to_positions': 256}
    >>> fit_to_positions({"seq_len": 512, "stride": 512}, 8192)
    {'seq_len': 512, 'stride': 512}
    """
    cap = max(limit - 2, 8) if limit is not None else None
    if cap is None or all(settings.get(k, 0) <= cap for k in LENGTHS):
        return settings
    out = {k: min(v, cap) if k in LENGTHS else v for k, v in settings.items()}
    if "stride" in out:
        out["stride"] = min(out["stride"], out["seq_len"])
    return out | {"fitted_to_positions": limit}


def run_benchmarks(
    model: nn.Module,
    tokenizer: Any,
    task: str,
    quick: bool = False,
    reference: DenseReference | None = None,
) -> list[Metric]:
    """Run the suite of ``task`` (see :data:`SUITES`) on the fixed splits of :mod:`compress.data`.

    ``quick=True`` uses far fewer examples/windows (a smoke test, not comparable with
    full runs; every metric records the flag). Every metric carries its 95% bootstrap
    ``interval``. With the dense model's ``reference`` (:mod:`eval.benchmark.reference`)
    each metric also gets ``vs_dense`` (paired on the same items) and the agreement
    metrics (``kl_*``, ``top1_*``, ``agreement_*``, ``cosine_*``) follow the task's own,
    measured in the same forward passes.

    >>> [m.name for m in run_benchmarks(model, tok, "causal-lm")]   # doctest: +SKIP
    ['ppl_wiki', 'ppl_news']
    """
    agree = Agreement(reference.outputs, recording=False) if reference else Agreement.off()
    metrics = measure(model, tokenizer, task, quick, agree)
    for m in metrics:
        if m.samples is None:
            continue
        m.interval = interval(m.samples)
        dense = reference.samples.get(m.name) if reference else None
        if dense is not None:
            try:
                m.vs_dense = vs_dense(m.samples, dense)
            except UserError as exc:
                log.warning("%s: no paired comparison with dense: %s", m.name, exc)
    for m in agree.metrics:
        log.info("%s = %.4g (agreement with dense)", m.name, m.value)
    return metrics + agree.metrics


def record_reference(
    model: nn.Module, tokenizer: Any, task: str, quick: bool = False
) -> DenseReference:
    """Benchmark the dense ``model`` once, keeping its per-item samples and outputs."""
    agree = Agreement.record()
    metrics = measure(model, tokenizer, task, quick, agree)
    samples = {m.name: m.samples for m in metrics if m.samples is not None}
    return DenseReference(samples, agree.recorded)


def measure(
    model: nn.Module, tokenizer: Any, task: str, quick: bool, agree: Agreement
) -> list[Metric]:
    """The task's metrics with their per-item samples (no intervals yet), in eval mode."""
    if task not in SUITES:
        raise did_you_mean("task", task, SUITES)
    suite = SUITES[task]
    settings = fit_to_positions(suite.settings(quick), max_positions(model))
    was_training = model.training if isinstance(model, nn.Module) else False
    if isinstance(model, nn.Module):
        model.eval()
    try:
        metrics = suite.run(model, tokenizer, settings, quick, agree)
    finally:
        if was_training:
            model.train()
    for m in metrics:
        if "fitted_to_positions" in settings:
            m.protocol["fitted_to_positions"] = settings["fitted_to_positions"]
        log.info("%s = %.4g (%s)", m.name, m.value, m.protocol.get("corpus"))
    return metrics

"""The benchmark suites: per task, which metrics on which fixed splits, full and quick
(see :mod:`eval.benchmark`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from compress import data
from compress.errors import UserError, did_you_mean
from eval.benchmark.metrics import (
    Metric,
    classification_scores,
    linear_probe_scores,
    perplexity,
    similarity_spearman,
)
from eval.benchmark.seq2seq import copy_baseline, seq2seq_perplexity, seq2seq_scores

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Suite:
    """What :func:`run_benchmarks` measures for a task, with its full and quick settings."""

    task: str
    metrics: tuple[str, ...]
    full: dict[str, Any]
    quick: dict[str, Any]
    run: Callable[[nn.Module, Any, dict[str, Any], bool], list[Metric]]
    description: str = ""


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

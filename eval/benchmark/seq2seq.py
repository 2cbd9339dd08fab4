"""Sequence-to-sequence metrics: chrF and BLEU of greedy outputs, the copy-the-input
baseline and the perplexity of the targets (see :mod:`eval.benchmark`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import sacrebleu
import torch
import torch.nn as nn
import torch.nn.functional as F

from compress.errors import UserError
from compress.models import input_device
from eval.benchmark.metrics import (
    Observer,
    _batches,
    _check_positive,
    _encoder_inputs,
    _logits,
    _order_by_length,
)


def _text_scores(hyps: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
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


def _target_ids(tokenizer: Any, targets: Sequence[str], max_len: int,
                start: int | None = None) -> dict:
    """Padded target ids and mask; with ``start``, a leading decoder-start token is dropped
    (:func:`compress.tasks.without_start`: the decoder is fed it, not asked for it)."""
    if start is None:
        return tokenizer(text_target=list(targets), padding=True, truncation=True,
                         max_length=max_len, return_tensors="pt")
    from compress.tasks import pad_ids, without_start

    ids = tokenizer(text_target=list(targets), truncation=True, max_length=max_len)["input_ids"]
    out, mask = pad_ids([without_start(r, start) for r in ids],
                        getattr(tokenizer, "pad_token_id", None) or 0)
    return {"input_ids": out, "attention_mask": mask}


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
    from compress.tasks import decoder_start

    start = decoder_start(model)
    if start is not None:
        return start
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
    adds: T5 ``</s>``, BART ``<s>..</s>``, BERT ``[CLS]..[SEP]``) less a leading token
    equal to the decoder start (bert2bert's ``[CLS]``: fed, not predicted);
    ``decoder_input_ids`` are the labels shifted right with the model's
    ``decoder_start_token_id``, which is what the models build internally from ``labels``.
    The cross-entropy is computed here from
    the logits, over the non-padding label positions (the tokenizer's attention mask,
    since pad and start ids can coincide), summed and divided by the count.
    """
    nll, tokens = target_nll(
        model, tokenizer, sources, targets, batch_size, max_source_len, max_target_len
    )
    return math.exp(nll.sum() / tokens.sum()), int(tokens.sum())


def target_nll(
    model: nn.Module,
    tokenizer: Any,
    sources: Sequence[str],
    targets: Sequence[str],
    batch_size: int = 16,
    max_source_len: int = 256,
    max_target_len: int = 256,
    observe: Observer | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per example (input order): summed target NLL (float64) and tokens scored, ``(N,)`` each.

    The scoring of :func:`seq2seq_perplexity`; ``observe(i, logits (S, V), targets (S,))``,
    if given, sees each example's scored logits in the same forward.
    """
    if len(sources) != len(targets):
        raise UserError(f"{len(sources)} sources but {len(targets)} targets")
    if not sources:
        raise UserError("seq2seq_perplexity needs at least one example")
    _check_positive(batch_size=batch_size)
    device = input_device(model)
    start = decoder_start_id(model)
    nll = np.zeros(len(sources))
    tokens = np.zeros(len(sources), dtype=np.int64)
    with torch.inference_mode():
        for idx in _batches(_order_by_length(sources), batch_size):
            inputs = _encoder_inputs(tokenizer, [sources[i] for i in idx], max_source_len, device)
            tgt = _target_ids(tokenizer, [targets[i] for i in idx], max_target_len, start)
            labels, label_mask = tgt["input_ids"], tgt["attention_mask"]  # (B, T)
            dec = torch.full_like(labels, start)
            dec[:, 1:] = labels[:, :-1]  # (B, T); padding only feeds unscored later positions
            logits = _logits(model(**inputs, decoder_input_ids=dec.to(device))).float()  # (B, T, V)
            keep = label_mask.bool().to(logits.device)
            labels = labels.to(logits.device)
            for row, i in enumerate(idx):
                pred, target = logits[row][keep[row]], labels[row][keep[row]]  # (S, V), (S,)
                nll[i] = F.cross_entropy(pred, target, reduction="sum").double().item()
                tokens[i] = target.numel()
                if observe is not None:
                    observe(i, pred, target)
    return nll, tokens

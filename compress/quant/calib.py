"""Calibration inputs for data-dependent quantization (GPTQ, outlier thresholds, quanto).

``Context.calibration`` holds raw texts, ``(text, label)`` pairs (classification) or
``(source, target)`` pairs (sequence-to-sequence); this module tokenizes them into
model-ready batches and runs them with every hook removed afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn as nn

from compress.errors import UserError


def _is_seq2seq(model: nn.Module) -> bool:
    cfg = getattr(model, "config", None)
    return bool(getattr(cfg, "is_encoder_decoder", False))


def _first(item: Any) -> tuple[str, str | None]:
    """(text, target-or-None) of one calibration item."""
    if isinstance(item, str):
        return item, None
    if isinstance(item, (tuple, list)) and item and isinstance(item[0], str):
        second = item[1] if len(item) > 1 and isinstance(item[1], str) else None
        return item[0], second
    if isinstance(item, dict) and "text" in item:
        return item["text"], item.get("target")
    raise UserError(f"calibration item of type {type(item).__name__} is not text or a (text, x) pair")


def calibration_batches(
    model: nn.Module,
    tokenizer: Any,
    calibration: Sequence[Any],
    *,
    n_samples: int,
    seq_len: int,
    batch_size: int = 8,
    recipe: str = "quantization",
) -> list[dict[str, torch.Tensor]]:
    """Tokenized, padded batches of the first ``n_samples`` calibration items.

    Seq2seq models get ``decoder_input_ids`` from the target text (or, with no target,
    from the source text, which still exercises the decoder's weights).
    """
    if not calibration:
        raise UserError(
            f"{recipe} needs calibration text: pass texts in context.calibration "
            "(the command line does so with --calibration-samples N, N > 0)"
        )
    if tokenizer is None:
        raise UserError(f"{recipe} needs the model's tokenizer in context.tokenizer")
    items = [_first(x) for x in list(calibration)[:n_samples]]
    from compress.models import input_device

    device = input_device(model)
    seq2seq = _is_seq2seq(model)
    batches = []
    for i in range(0, len(items), batch_size):
        chunk = items[i : i + batch_size]
        enc = tokenizer(
            [t for t, _ in chunk], return_tensors="pt", padding=True, truncation=True,
            max_length=seq_len,
        )
        batch = {"input_ids": enc["input_ids"].to(device),
                 "attention_mask": enc["attention_mask"].to(device)}
        if seq2seq:
            targets = [tgt if tgt is not None else src for src, tgt in chunk]
            dec = tokenizer(targets, return_tensors="pt", padding=True, truncation=True,
                            max_length=seq_len)
            batch["decoder_input_ids"] = dec["input_ids"].to(device)
            batch["decoder_attention_mask"] = dec["attention_mask"].to(device)
        batches.append(batch)
    return batches


def forward(model: nn.Module, batch: dict[str, torch.Tensor]) -> Any:
    """One inference forward (no cache, no grad)."""
    kwargs = dict(batch)
    cfg = getattr(model, "config", None)
    # EncoderDecoderModel's own config has no use_cache, but its decoder builds a cache
    # unless told not to.
    if getattr(cfg, "use_cache", None) is not None or _is_seq2seq(model):
        kwargs["use_cache"] = False
    with torch.no_grad():
        return model(**kwargs)


@contextlib.contextmanager
def hooks(handles: list[Any]) -> Iterator[None]:
    """Remove every hook handle in ``handles`` on exit, whatever happens."""
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        handles.clear()


def input_absmax(
    model: nn.Module, modules: dict[str, nn.Module], batches: list[dict[str, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """Per-input-feature max |x| seen by each module over the calibration batches."""
    stats: dict[str, torch.Tensor] = {}

    def make(name: str):
        def hook(_mod, args):
            x = args[0].detach()
            m = x.abs().reshape(-1, x.shape[-1]).amax(dim=0).float().cpu()
            stats[name] = m if name not in stats else torch.maximum(stats[name], m)

        return hook

    handles = [mod.register_forward_pre_hook(make(name)) for name, mod in modules.items()]
    with hooks(handles):
        for batch in batches:
            forward(model, batch)
    return stats

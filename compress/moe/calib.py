"""Calibration tokens for MoEfication: the hidden states entering every FFN.

Texts are run one at a time (batch 1, truncated to ``seq_len``), so no padding token
ever reaches the statistics. ``Context.calibration`` items are texts, ``(text, label)``
pairs, or ``(source, target)`` pairs; encoder-decoders get the target (or the source
again) as decoder input, so decoder FFNs see real tokens too. Hooks are removed
before this returns, whatever happens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from compress.errors import UserError
from compress.moe.convert import Site


def _text_pair(item: Any) -> tuple[str, str | None]:
    if isinstance(item, str):
        return item, None
    if isinstance(item, (tuple, list)) and item and isinstance(item[0], str):
        return item[0], item[1] if len(item) > 1 and isinstance(item[1], str) else None
    if isinstance(item, dict) and "text" in item:
        return item["text"], item.get("target")
    raise UserError(f"moefy: calibration item of type {type(item).__name__} is not text "
                    "or a (text, x) pair")


def _is_seq2seq(model: nn.Module) -> bool:
    cfg = getattr(model, "config", None)
    return bool(getattr(cfg, "is_encoder_decoder", False))


def calibration_inputs(
    model: nn.Module, tokenizer: Any, calibration: Sequence[Any], *, max_tokens: int, seq_len: int
) -> list[dict[str, torch.Tensor]]:
    """Model inputs (batch 1 each) until ``max_tokens`` encoder tokens are collected."""
    if not calibration:
        raise UserError(
            "moefy needs calibration text for this setting (co-activation partition, learned "
            "router, sparsity): pass texts in context.calibration (command line: "
            "--calibration-samples N with N > 0)"
        )
    if tokenizer is None:
        raise UserError("moefy needs the model's tokenizer in context.tokenizer")
    from compress.models import input_device

    device = input_device(model)
    seq2seq = _is_seq2seq(model)
    inputs, total = [], 0
    for item in calibration:
        src, tgt = _text_pair(item)
        enc = tokenizer(src, return_tensors="pt", truncation=True, max_length=seq_len)
        ids = enc["input_ids"]
        if ids.shape[1] < 2:
            continue
        batch = {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}
        if seq2seq:
            dec = tokenizer(tgt if tgt is not None else src, return_tensors="pt",
                            truncation=True, max_length=seq_len)["input_ids"]
            batch["decoder_input_ids"] = dec.to(device)
        inputs.append(batch)
        total += ids.shape[1]
        if total >= max_tokens:
            break
    if not inputs:
        raise UserError("moefy: the calibration texts produced no tokens")
    return inputs


@torch.no_grad()
def capture_ffn_inputs(
    model: nn.Module, sites: list[Site], inputs: list[dict[str, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """Site name -> (tokens, d) float32 CPU tensor of the hidden states entering its FFN."""
    store: dict[str, list[torch.Tensor]] = {s.name: [] for s in sites}

    def make(name: str, d: int):
        def hook(_module, args):
            store[name].append(args[0].detach().reshape(-1, d).float().cpu())

        return hook

    handles = []
    try:
        for site in sites:
            parent, attr = site.owner
            d = site.dense().hidden
            handles.append(getattr(parent, attr).register_forward_pre_hook(make(site.name, d)))
        for batch in inputs:
            kwargs = dict(batch)
            if getattr(getattr(model, "config", None), "use_cache", None) is not None:
                kwargs["use_cache"] = False
            model(**kwargs)
    finally:
        for h in handles:
            h.remove()
    return {name: torch.cat(chunks) for name, chunks in store.items() if chunks}

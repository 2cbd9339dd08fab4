"""``qlora``: a 4-bit NF4 base plus LoRA adapters trained to recover quality (QLoRA).

Dettmers et al. (2023), "QLoRA: Efficient Finetuning of Quantized LLMs": the targeted
linears are quantized to 4-bit NormalFloat with bitsandbytes (``bnb-4bit``), frozen,
and LoRA adapters (peft) on the same linears are trained on the task's training split
with the shared loop :func:`compress.finetune.finetune`. The result is merged:

* ``merge=nf4`` (default): peft merges ``B @ A`` into the 4-bit layers, i.e. the sum is
  re-quantized to NF4. The model stays 4-bit; part of the adapters' correction, being
  smaller than one NF4 step, is rounded away again.
* ``merge=fp32``: the NF4 base is dequantized to fp32 (exactly the values the 4-bit
  layers compute with at ``compute_dtype=float32``) *before* the LoRA training, and
  the adapters are merged in fp32: the quality of QLoRA as trained (NF4 base +
  adapters), stored as fp32. ``quant.packed_bytes`` then reports the NF4 base plus the
  adapters in fp32, the size of deploying it unmerged.

    python -m eval.run --model smollm2-135m --recipe qlora --steps 100
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch.nn as nn

from compress.config import RecipeConfig, option
from compress.context import Context
from compress.errors import UserError
from compress.footprint import ModelFacts, Need
from compress.quant import bnb as bnb_q
from compress.quant.layers import select_targets
from compress.quant.report import record
from compress.registry import register_recipe
from compress.stats import parameter_counts
from compress.traits import Traits


@dataclass(frozen=True)
class QLoRAConfig(RecipeConfig):
    """4-bit NF4 base + LoRA trained on the training split, merged."""

    quant_type: str = option("nf4", "4-bit data type of the base", choices=("nf4", "fp4"))
    double_quant: bool = option(True, "also quantize the per-block scales")
    steps: int = option(100, "optimizer steps of LoRA training", low=0)
    lr: float = option(2e-4, "peak learning rate", low=0.0, high=1.0, low_inclusive=False)
    batch_size: int = option(4, "sequences per step", low=1)
    seq_len: int = option(256, "tokens per training sequence", low=8)
    lora_r: int = option(8, "LoRA rank", low=1)
    lora_alpha: int = option(16, "LoRA alpha (scale = alpha / r)", low=1)
    merge: str = option("nf4", "nf4: merge into the 4-bit weights; fp32: dequantize the "
                        "NF4 base and merge in fp32", choices=("nf4", "fp32"))


def qlora_memory(config: QLoRAConfig, facts: ModelFacts) -> Need:
    """The 4-bit reload (as bnb-4bit: the serialised copy, the file's pages and the new
    model), still resident under LoRA training on the 4-bit base beside the original
    model: adapters,
    their optimizer and inputs, the saved activations, logits and loss, one weight
    dequantized at a time, and for a causal LM the training split tokenized as one
    text."""
    from compress.footprint import finetune_parts
    from compress.recipes.bnb import BNB_HINT, reload_parts

    reload = reload_parts(facts, 4)
    train = finetune_parts(facts, steps=config.steps, method="lora", batch=config.batch_size,
                           seq=config.seq_len, lora_r=config.lora_r)
    # the reload's pages stay resident under the training (measured: SmolLM2's training
    # peak is the reload plus the training parts)
    train.update(reload)
    train["dequantized weight"] = 2 * facts.largest_linear() * 4
    return Need.peak(Need(reload, BNB_HINT),
                     Need(train, f"use a smaller batch_size or seq_len (seq_len="
                                 f"{max(8, config.seq_len // 2)}), or fewer lora_r"))


# merge=nf4 leaves bitsandbytes 4-bit layers (a runtime format); merge=fp32 plain fp32
@register_recipe(
    "qlora", QLoRAConfig, family="quantization", knobs=(),
    traits=Traits(
        keeps_zeros=False,
        trains=True,
        runtime_format=lambda c: getattr(c, "merge", "nf4") == "nf4",
        zeros_note="the merged low-rank update is dense",
    ),
    formats=(), memory=qlora_memory,
)
def qlora(model: nn.Module, config: QLoRAConfig, context: Context) -> nn.Module:
    """4-bit NF4 base plus LoRA (peft) trained on the training split, merged."""
    import torch
    from transformers import BitsAndBytesConfig

    from compress.finetune import finetune

    device = bnb_q.check_device(model, "qlora")
    task = context.task
    if task is None:
        from compress.quant.onnx import task_of_model

        task = task_of_model(model)
    if config.steps and task != "embedding" and not context.train:
        raise UserError("qlora needs training data in context.train (the command line passes "
                        "the task's training split)")
    before = parameter_counts(model)
    targets = set(select_targets(model, views=False))
    qc = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=config.quant_type,
                            bnb_4bit_use_double_quant=config.double_quant,
                            bnb_4bit_compute_dtype=torch.float32)
    base = bnb_q.requantize(model, qc, targets)
    kept_fp32 = base._compress_kept_fp32
    base_counts = bnb_q.storage_counts(base, before)
    if config.merge == "fp32":
        # the NF4 values, written back into the original fp32 model in its own layout
        # (transformers' dequantize() would turn GPT-2 Conv1D into Linear).
        bnb_q.copy_dequantized(base, model)
        base = model
    seq_len = config.seq_len
    if task == "causal-lm" and config.steps and context.tokenizer is not None:
        # a short training text still gives at least two windows (recorded below)
        n_tok = len(context.tokenizer("\n\n".join(map(str, context.train)),
                                      add_special_tokens=False)["input_ids"])
        seq_len = max(2, min(seq_len, n_tok // 2))
    train_info: dict = {}
    out = finetune(
        base, context.tokenizer, task, list(context.train), steps=config.steps, lr=config.lr,
        batch_size=config.batch_size, seq_len=seq_len, method="lora",
        lora_r=config.lora_r, lora_alpha=config.lora_alpha, keep_zero=False, seed=config.seed,
        info=train_info,
    )
    out.eval()
    adapter_params = train_info.get("trainable_params", 0)
    if config.merge == "nf4":
        counts = bnb_q.storage_counts(out, before)
        packed = counts["bytes"]
        out.compress_parameter_counts = counts
    else:
        packed = base_counts["bytes"] + 4 * adapter_params
    record(
        context, method="qlora", simulated=config.merge == "fp32",
        device=device, bits=4,
        quant_type=config.quant_type, double_quant=config.double_quant, merge=config.merge,
        layers=len(targets) - len(kept_fp32), kept_fp32=kept_fp32,
        dense_bytes=before["bytes"], packed_bytes=packed,
        nf4_base_bytes=base_counts["bytes"], adapter_params=adapter_params,
        training=train_info,
        note=("LoRA merged into the 4-bit weights (re-quantized)" if config.merge == "nf4" else
              "NF4 base dequantized to fp32, LoRA merged in fp32; packed_bytes = NF4 base + "
              "fp32 adapters (unmerged deployment); the saved checkpoint is fp32"),
    )
    return out


if __name__ == "__main__":
    from compress.cli import recipe_main

    sys.exit(recipe_main("qlora"))

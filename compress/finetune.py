"""Recovery fine-tuning shared by every recipe: full or LoRA, zeros kept at zero.

One function, :func:`finetune`, trains a model in place on the task's training data
for a fixed number of steps and returns it as a plain model:

* ``method="full"``: AdamW on every parameter; after each step, the weights that were
  zero when fine-tuning started are set back to zero (``keep_zero=True``), so an
  unstructured-sparse model stays exactly as sparse.
* ``method="lora"``: LoRA adapters (Hu et al. 2021, via peft) on the block linears
  named by ``target_components`` (default: every attention and FFN linear); after
  training the adapters are merged into the weights and the model is unwrapped; the
  merge adds ``B @ A`` to every entry, so the zeros are restored afterwards
  (``keep_zero=True``). Nothing of peft remains on the returned model.

Objectives by task:

* ``"causal-lm"``: ``list[str]``; the texts are joined and cut into ``seq_len``-token
  windows; next-token loss.
* ``"classification"``: ``list[(text, label)]``; the model's own classification loss.
* ``"seq2seq"``: ``list[(source, target)]``; the model's loss on the target tokens.
* ``"embedding"``: a bare encoder has no loss of its own. With ``teacher`` (for
  example the model before compression) the student's last hidden states are fit to
  the teacher's (mean squared error over real tokens); without a teacher the model
  is returned unchanged and ``info["skipped"]`` says why.

>>> model = finetune(model, tok, "causal-lm", texts, steps=100, method="lora")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn as nn

from compress.errors import UserError

log = logging.getLogger(__name__)

METHODS = ("full", "lora")
TASKS = ("causal-lm", "classification", "embedding", "seq2seq")


# --- data ------------------------------------------------------------------------


def _pairs(data: Sequence[Any], task: str) -> list[tuple[str, Any]]:
    out = []
    for item in data:
        if isinstance(item, str):
            out.append((item, None))
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            out.append((str(item[0]), item[1]))
        else:
            raise UserError(f"{task} training item {item!r} is neither a text nor a pair")
    return out


def _batches(
    tokenizer: Any, task: str, data: Sequence[Any], batch_size: int, seq_len: int, seed: int
) -> Iterator[dict[str, torch.Tensor]]:
    """An endless, seeded stream of training batches for ``task``."""
    rng = random.Random(seed)
    pairs = _pairs(data, task)
    if task == "causal-lm":
        sep = tokenizer.eos_token or "\n\n"
        ids = tokenizer(sep.join(p[0] for p in pairs), return_tensors="pt",
                        add_special_tokens=False)["input_ids"][0]
        n = ids.numel() // seq_len
        if n == 0:
            raise UserError(
                f"training text has {ids.numel()} tokens, fewer than one window of {seq_len}"
            )
        windows = ids[: n * seq_len].view(n, seq_len)  # (n, seq_len)
        while True:
            order = list(range(n))
            rng.shuffle(order)
            for i in range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size):
                x = windows[order[i:i + batch_size]]
                yield {"input_ids": x, "attention_mask": torch.ones_like(x), "labels": x.clone()}
    if task == "classification" and not all(isinstance(p[1], int) for p in pairs):
        raise UserError("classification training data must be (text, integer label) pairs")
    if task == "seq2seq" and not all(isinstance(p[1], str) for p in pairs):
        raise UserError("seq2seq training data must be (source, target) text pairs")
    while True:
        order = list(range(len(pairs)))
        rng.shuffle(order)
        for i in range(0, len(order), batch_size):
            chunk = [pairs[j] for j in order[i:i + batch_size]]
            enc = tokenizer([p[0] for p in chunk], truncation=True, max_length=seq_len,
                            padding=True, return_tensors="pt")
            batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
            if task == "classification":
                batch["labels"] = torch.tensor([p[1] for p in chunk])
            elif task == "seq2seq":
                tgt = tokenizer(text_target=[p[1] for p in chunk], truncation=True,
                                max_length=seq_len, padding=True, return_tensors="pt")
                batch["labels"] = tgt["input_ids"].masked_fill(tgt["attention_mask"] == 0, -100)
            yield batch


# --- zeros --------------------------------------------------------------------------


@torch.no_grad()
def zero_masks(model: nn.Module, names: set[str] | None = None) -> dict[str, torch.Tensor]:
    """Boolean masks (True = zero) of the matrices of ``model`` holding zeros.

    Only parameters with at least one zero are kept (1 byte per weight); ``names``
    restricts the search to those parameter names.
    """
    masks = {}
    for name, p in model.named_parameters():
        if p.dim() < 2 or (names is not None and name not in names):
            continue
        zero = p == 0
        if bool(zero.any()):
            masks[name] = zero
    return masks


@torch.no_grad()
def apply_zero_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    for name, zero in masks.items():
        params[name].masked_fill_(zero, 0)


# --- LoRA -----------------------------------------------------------------------------


def lora_module_names(model: nn.Module, target_components: Sequence[str] | None) -> list[str]:
    """Full names of the block linears for ``target_components`` (default: all of them)."""
    from compress.arch import COMPONENTS, iter_blocks

    wanted = set(target_components or COMPONENTS)
    unknown = wanted - set(COMPONENTS)
    if unknown:
        from compress.errors import did_you_mean

        raise did_you_mean("component", sorted(unknown)[0], COMPONENTS)
    modules = dict(model.named_modules())
    names = [  # real modules only (native MoE expert slices are views, not modules)
        block.linear_names[comp]
        for block in iter_blocks(model)
        for comp in block.linears
        if comp.split(".")[0] in wanted and block.linear_names[comp] in modules
    ]
    if not names:
        raise UserError(f"no linears of components {sorted(wanted)} in this model for LoRA")
    return names


def _loss(model: nn.Module, batch: dict[str, torch.Tensor], task: str,
          teacher: nn.Module | None) -> torch.Tensor:
    from compress.models import input_device, to_device

    batch = to_device(batch, input_device(model))
    if task == "embedding":
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        with torch.no_grad():
            ref = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        mask = batch["attention_mask"].unsqueeze(-1).to(out.last_hidden_state.dtype)
        diff = (out.last_hidden_state - ref.last_hidden_state) * mask  # (B, T, H)
        return diff.pow(2).sum() / (mask.sum() * diff.shape[-1]).clamp_min(1)
    out = model(**batch)
    if getattr(out, "loss", None) is None:
        raise UserError(f"{type(model).__name__} returned no loss for task {task}")
    return out.loss


def finetune(
    model: nn.Module,
    tokenizer: Any,
    task: str,
    train_data: Sequence[Any],
    *,
    steps: int,
    lr: float | None = None,
    batch_size: int = 8,
    seq_len: int = 128,
    method: str = "lora",
    lora_r: int = 8,
    lora_alpha: int = 16,
    lora_dropout: float = 0.05,
    target_components: Sequence[str] | None = None,
    keep_zero: bool = True,
    teacher: nn.Module | None = None,
    warmup: float = 0.05,
    weight_decay: float = 0.0,
    max_grad_norm: float = 1.0,
    seed: int = 0,
    info: dict[str, Any] | None = None,
) -> nn.Module:
    """Fine-tune ``model`` for ``steps`` optimizer steps and return it (a plain model).

    ``lr`` defaults to 2e-4 for LoRA and 2e-5 for full fine-tuning; the schedule is a
    linear warm-up over ``warmup`` of the steps, then linear decay to zero. ``info``,
    when given, receives the method, steps, seconds and first/last losses.
    """
    if method not in METHODS:
        from compress.errors import did_you_mean

        raise did_you_mean("fine-tuning method", method, METHODS)
    if task not in TASKS:
        from compress.errors import did_you_mean

        raise did_you_mean("task", task, TASKS)
    if steps < 0 or batch_size < 1 or seq_len < 2:
        raise UserError("fine-tuning needs steps >= 0, batch size >= 1 and seq_len >= 2")
    info = info if info is not None else {}
    info.update({"method": method, "steps": steps, "batch_size": batch_size, "seq_len": seq_len})
    if steps == 0:
        return model
    if task == "embedding" and teacher is None:
        info["skipped"] = "a bare encoder has no training loss; pass a teacher to distil from"
        log.warning("fine-tuning skipped: %s", info["skipped"])
        return model
    if not train_data:
        raise UserError(f"fine-tuning for {steps} steps needs training data for task {task}")
    lr = lr if lr is not None else (2e-4 if method == "lora" else 2e-5)
    info["lr"] = lr
    torch.manual_seed(seed)
    was_training = model.training
    grad_flags = {name: p.requires_grad for name, p in model.named_parameters()}
    batches = _batches(tokenizer, task, train_data, batch_size, seq_len, seed)

    trained: nn.Module = model
    lora_names: list[str] = []
    masks: dict[str, torch.Tensor] = {}
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        lora_names = lora_module_names(model, target_components)
        if keep_zero:
            masks = zero_masks(model, {f"{n}.weight" for n in lora_names})
        from compress.arch import is_transposed

        conv1d = is_transposed(model.get_submodule(lora_names[0]))
        cfg = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                         target_modules=lora_names, fan_in_fan_out=conv1d, bias="none")
        trained = get_peft_model(model, cfg)
        info.update({"lora_r": lora_r, "lora_alpha": lora_alpha, "lora_modules": len(lora_names)})
    else:
        if keep_zero:
            masks = zero_masks(model)
        for p in model.parameters():
            p.requires_grad_(True)
    params = [p for p in trained.parameters() if p.requires_grad]
    info["trainable_params"] = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    n_warm = max(1, int(math.ceil(warmup * steps)))

    def lr_at(step: int) -> float:
        if step < n_warm:
            return (step + 1) / n_warm
        return max(0.0, (steps - step) / max(1, steps - n_warm))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    losses: list[float] = []
    t0 = time.perf_counter()
    trained.train()
    if teacher is not None:
        teacher.eval()
    ok = False
    try:
        for step in range(steps):
            batch = next(batches)
            loss = _loss(trained, batch, task, teacher)
            if not torch.isfinite(loss):
                raise UserError(f"fine-tuning loss became {loss.item()} at step {step}; lower the lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            opt.step()
            sched.step()
            if masks and method == "full":
                apply_zero_masks(model, masks)
            losses.append(float(loss.detach()))
            if step % max(1, steps // 10) == 0 or step == steps - 1:
                log.info("fine-tune step %d/%d loss %.4f", step + 1, steps, losses[-1])
        ok = True
    finally:
        del opt, sched
        if method == "lora":  # unwrap; merge only a finished run
            model = trained.merge_and_unload() if ok else trained.unload()
        for name, p in model.named_parameters():
            p.requires_grad_(grad_flags.get(name, True))
            p.grad = None
        if masks:
            apply_zero_masks(model, masks)
        model.train(was_training)
    head = losses[: max(1, len(losses) // 10)]
    tail = losses[-max(1, len(losses) // 10):]
    info.update({
        "seconds": round(time.perf_counter() - t0, 1),
        "loss_first": round(sum(head) / len(head), 4),
        "loss_last": round(sum(tail) / len(tail), 4),
    })
    return model

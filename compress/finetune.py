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
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn as nn

from compress.arch import COMPONENTS, is_transposed, iter_blocks
from compress.errors import UserError, did_you_mean
from compress.models import input_device, to_device
from compress.tasks import check_task
from compress.training import LoopSettings, StepOut, linear_warmup_decay, train_loop

log = logging.getLogger(__name__)

METHODS = ("full", "lora")


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
    tokenizer: Any, task: str, data: Sequence[Any], batch_size: int, seq_len: int, seed: int,
    start: int | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """An endless, seeded stream of training batches for ``task`` (seq2seq labels lose a
    leading decoder-start token ``start``: :func:`compress.tasks.without_start`)."""
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
                                max_length=seq_len)["input_ids"]
                from compress.tasks import pad_ids, without_start

                batch["labels"] = pad_ids([without_start(t, start) for t in tgt], -100)[0]
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
    wanted = set(target_components or COMPONENTS)
    unknown = wanted - set(COMPONENTS)
    if unknown:
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
    info = info if info is not None else {}
    if not _worth_training(task, train_data, steps, method, batch_size, seq_len, teacher, info):
        return model
    lr = lr if lr is not None else (2e-4 if method == "lora" else 2e-5)
    info["lr"] = lr
    torch.manual_seed(seed)
    was_training = model.training
    grad_flags = {name: p.requires_grad for name, p in model.named_parameters()}
    from compress.tasks import decoder_start

    batches = _batches(tokenizer, task, train_data, batch_size, seq_len, seed,
                       decoder_start(model))
    lora = {"r": lora_r, "lora_alpha": lora_alpha, "lora_dropout": lora_dropout}
    trained, masks = _trainable(model, method, keep_zero, target_components, lora, info)
    params = [p for p in trained.parameters() if p.requires_grad]
    info["trainable_params"] = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    factor = linear_warmup_decay(steps, max(1, int(math.ceil(warmup * steps))))

    def step_fn(step: int) -> StepOut:
        loss = _loss(trained, next(batches), task, teacher)
        if not torch.isfinite(loss):
            raise UserError(f"fine-tuning loss became {loss.item()} at step {step}; lower the lr")
        loss.backward()
        return StepOut({"loss": float(loss.detach())})

    if teacher is not None:
        teacher.eval()
    ok, result = False, None
    try:
        result = train_loop(trained, opt, step_fn, LoopSettings(
            steps=steps, lr_at=lambda step, base: base * factor(step),
            max_grad_norm=max_grad_norm, clip_params=params, label="fine-tune",
            log_every=max(1, steps // 10),
            after_step=(lambda: apply_zero_masks(model, masks))
            if masks and method == "full" else None,
        ))
        ok = True
    finally:
        del opt
        if method == "lora":  # unwrap; merge only a finished run
            model = trained.merge_and_unload() if ok else trained.unload()
        for name, p in model.named_parameters():
            p.requires_grad_(grad_flags.get(name, True))
            p.grad = None
        if masks:
            apply_zero_masks(model, masks)
        model.train(was_training)
    info.update(_loss_summary(result.losses, result.seconds))
    return model


def _loss_summary(losses: list[float], seconds: float) -> dict[str, float]:
    """Seconds, and the mean loss of the first and of the last tenth of the steps."""
    head = losses[: max(1, len(losses) // 10)]
    tail = losses[-max(1, len(losses) // 10):]
    return {
        "seconds": round(seconds, 1),
        "loss_first": round(sum(head) / len(head), 4),
        "loss_last": round(sum(tail) / len(tail), 4),
    }


def _worth_training(
    task: str,
    train_data: Sequence[Any],
    steps: int,
    method: str,
    batch_size: int,
    seq_len: int,
    teacher: nn.Module | None,
    info: dict[str, Any],
) -> bool:
    """Check the arguments; False when there is nothing to train (``info`` says why)."""
    if method not in METHODS:
        raise did_you_mean("fine-tuning method", method, METHODS)
    check_task(task)
    if steps < 0 or batch_size < 1 or seq_len < 2:
        raise UserError("fine-tuning needs steps >= 0, batch size >= 1 and seq_len >= 2")
    info.update({"method": method, "steps": steps, "batch_size": batch_size, "seq_len": seq_len})
    if steps == 0:
        return False
    if task == "embedding" and teacher is None:
        info["skipped"] = "a bare encoder has no training loss; pass a teacher to distil from"
        log.warning("fine-tuning skipped: %s", info["skipped"])
        return False
    if not train_data:
        raise UserError(f"fine-tuning for {steps} steps needs training data for task {task}")
    return True


def _trainable(
    model: nn.Module,
    method: str,
    keep_zero: bool,
    target_components: Sequence[str] | None,
    lora: dict[str, Any],
    info: dict[str, Any],
) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """(the module to train, zero masks to keep): LoRA adapters on the block linears, or
    every parameter trainable for full fine-tuning."""
    if method != "lora":
        masks = zero_masks(model) if keep_zero else {}
        for p in model.parameters():
            p.requires_grad_(True)
        return model, masks
    lora_names = lora_module_names(model, target_components)
    masks = zero_masks(model, {f"{n}.weight" for n in lora_names}) if keep_zero else {}
    # deferred: peft takes seconds to import and pulls in bitsandbytes (which warns about
    # missing kernels); only LoRA needs it
    from peft import LoraConfig, get_peft_model

    conv1d = is_transposed(model.get_submodule(lora_names[0]))
    cfg = LoraConfig(**lora, target_modules=lora_names, fan_in_fan_out=conv1d, bias="none")
    info.update({"lora_r": lora["r"], "lora_alpha": lora["lora_alpha"],
                 "lora_modules": len(lora_names)})
    return get_peft_model(model, cfg), masks

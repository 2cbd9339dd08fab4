"""``recover``: recover what a structural step cost by distilling from the dense teacher.

The step any structural recipe can end with (``depth``, ``structured``, ``moefy``):
the compressed model is the student, the dense model the pipeline started from is the
teacher, and the student is trained, shapes unchanged, on

    alpha_kd * T^2 * KL(softmax(teacher/T) || softmax(student/T))     (Hinton et al. 2015)
  + alpha_hidden * (1 - cos) between student block j's output and its teacher block's
  + alpha_task * cross-entropy on the hard labels (0 by default: the teacher alone)

Hinton, Vinyals and Dean 2015, "Distilling the Knowledge in a Neural Network"
(arXiv:1503.02531) for the soft targets; Minitron (Muralidharan et al. 2024, "Compact
Language Models via Pruning and Knowledge Distillation", arXiv:2407.14679) for pruning
followed by distillation from the unpruned model, logit KL plus intermediate states,
with a learned linear projection where the student's hidden width differs; MoEBERT (Zuo
et al. 2022, "MoEBERT: from BERT to Mixture-of-Experts via Importance-Guided
Adaptation", arXiv:2204.07675) for distilling a MoEfied model from its dense original
with a layer-wise hidden-state loss.

Which teacher block a student block answers to (:func:`compress.distill.recovery.block_maps`):
the map ``depth`` records in the config, else the identity where the depths agree, else
an even spread. After ``moefy`` the experts and the routers train (MoEBERT trains both;
``train_routers=False`` keeps the routers as ``moefy`` fitted them). A token's experts
are chosen by top-k (or a threshold) on the router's scores and their outputs are
summed unweighted, which passes a router no gradient; during recovery every expert's
output is multiplied by ``mask + (p - p.detach())`` (``p`` the softmax of the router's
scores: exactly the 0/1 selection in value, so the forward and the saved model are
unchanged), a straight-through gate whose gradient gives each expert, selected or not,
the first-order change in the loss from its output on that token
(:meth:`compress.moe.layer.MoEFFN.gates`; the training forward computes every expert).
Routers train at their own peak rate ``router_lr`` on the same schedule.

The teacher comes from ``context.teacher`` (:class:`compress.context.Context`):
``eval.run`` sets it to reload the pipeline's model (nothing is loaded unless a step
asks); standalone, ``--teacher``. The training loop is distillation's
(:func:`compress.distill.trainer.train`: AdamW, warmup and linear decay, checkpoints
and exact resume, best-so-far by held-out KL to the teacher). Budget: ``steps`` (the
schedule spans them), ``tokens`` (the schedule is shortened to fit them, and training
stops at them) and ``minutes`` (a clean stop; the schedule still spans ``steps``).

The report's ``info.recover`` holds the tokens seen, minutes, the loss curve and the
recovery curve: held-out KL to the teacher (and the task loss, accuracy or perplexity)
against tokens seen, from step 0 (the structural step's result) to the end.

    python -m eval.run --model smollm2-135m --recipe depth --target 0.75 \\
        --then "recover tokens=2000000 minutes=30"
    python -m compress.recipes.recover --model out/d75 --teacher smollm2-135m \\
        --tokens 2000000 --out out/d75-recovered
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from compress.arch import arch_for
from compress.config import RecipeConfig, option
from compress.context import Context
from compress.distill import trainer
from compress.distill.inputs import Inputs, training_inputs, training_task
from compress.distill.recovery import (
    TeacherAgreement,
    block_maps,
    check_heads,
    projections_for,
)
from compress.distill.step import Weights
from compress.distill.teacher import Teacher
from compress.errors import UserError
from compress.footprint import (
    ModelFacts,
    Need,
    forward_bytes,
    hidden_states_bytes,
    logits_bytes,
    saved_activation_bytes,
)
from compress.models import input_device
from compress.moe.layer import MoEFFN
from compress.registry import register_recipe
from compress.traits import RECOVERY, Traits

log = logging.getLogger(__name__)

#: config fields that may change between an interrupted run and its resumption.
RESUME_FREE = ("resume", "minutes", "checkpoint_dir")
#: the one line a step without a teacher stops with.
NO_TEACHER = (
    "recover distils from the dense teacher and none was given: run it after a structural "
    "step in a pipeline (python -m eval.run --model M --recipe depth --then recover), "
    "standalone with --teacher (python -m compress.recipes.recover --model PRUNED --teacher "
    "DENSE --out DIR), or from Python with Context(teacher=lambda: dense_model)"
)
#: a tokenized training example kept as Python ints, per character of training text.
TOKEN_LIST_BYTES_PER_CHAR = 11


@dataclass(frozen=True)
class RecoverConfig(RecipeConfig):
    """Recover quality by distilling from the dense teacher (shapes unchanged)."""

    steps: int = option(200, "optimizer steps at most (the learning-rate schedule spans "
                        "them; 0: evaluate only)", low=0)
    tokens: int | None = option(None, "stop after training on this many (unpadded) tokens; "
                                "the schedule is shortened to end there", low=1)
    minutes: float | None = option(None, "stop cleanly after this many minutes of training",
                                   low=0.0, low_inclusive=False)
    temperature: float = option(1.0, "softmax temperature of the KL to the teacher",
                                low=0.1, high=100.0)
    alpha_kd: float = option(1.0, "weight of the KL to the teacher's outputs", low=0.0)
    alpha_hidden: float = option(1.0, "weight of the hidden-state loss (1 - cos between each "
                                 "student block's output and its teacher block's; 0: outputs "
                                 "only)", low=0.0)
    alpha_task: float = option(0.0, "weight of the task loss on hard labels", low=0.0)
    batch_size: int = option(8, "examples per micro-batch", low=1)
    grad_accum: int = option(1, "micro-batches per optimizer step", low=1)
    lr: float = option(5e-5, "peak learning rate (AdamW)", low=0.0, low_inclusive=False,
                       high=1.0)
    warmup: float = option(0.05, "fraction of the steps with linear warmup (then linear "
                           "decay)", low=0.0, high=1.0, high_inclusive=False)
    weight_decay: float = option(0.0, "AdamW weight decay on weight matrices", low=0.0,
                                 high=1.0)
    max_grad_norm: float = option(1.0, "gradient clipping norm (0: off)", low=0.0)
    seq_len: int = option(128, "tokens per example (language models: window length)",
                          low=8, high=65536)
    eval_every: int = option(25, "evaluate on held-out data (a point of the recovery curve) "
                             "and checkpoint every N steps", low=1)
    eval_samples: int = option(128, "held-out examples per evaluation", low=1)
    keep_best: bool = option(True, "return the student closest to the teacher on held-out "
                             "data (lowest KL), not the last")
    checkpoint_dir: str | None = option(None, "folder for checkpoints (last + best); needed "
                                        "for resume")
    resume: bool = option(False, "continue from the last checkpoint in checkpoint_dir")
    data_file: str | None = option(None, "local .txt/.csv/.json training file instead of the "
                                   "context's training rows (the last 5 percent held out)")
    train_routers: bool = option(True, "after moefy: train the MoE routers too, through a "
                                 "straight-through gate (False: routers stay as fitted)")
    router_lr: float = option(1e-3, "peak learning rate of the MoE routers (train_routers)",
                              low=0.0, low_inclusive=False, high=1.0)

    def validate(self) -> None:
        for name in ("alpha_kd", "alpha_hidden", "alpha_task", "max_grad_norm", "minutes"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise UserError(f"recover: {name} must be a finite number, got {value}")
        if self.resume and not self.checkpoint_dir:
            raise UserError("recover: resume needs checkpoint_dir (where the first run saved)")
        if self.alpha_kd == 0 and self.alpha_hidden == 0 and self.alpha_task == 0:
            raise UserError("recover: alpha_kd, alpha_hidden and alpha_task are all 0; "
                            "nothing to train on")


def recover_memory(config: RecoverConfig, facts: ModelFacts) -> Need:
    """The teacher (at least the student's size: the dense model it came from), the
    student's gradients and AdamW moments, the best weights so far (``keep_best`` without
    a checkpoint folder), the tokenized training examples, and a step's peak: the
    student's saved activations, the teacher's forward, both models' block outputs and
    the logits of both with the KL's softmax copies and gradients."""
    b, t = config.batch_size, config.seq_len
    blocks = sum(s.blocks for s in facts.stacks) if config.alpha_hidden > 0 else 0
    parts = {
        "the dense teacher": facts.param_bytes,
        "gradients and AdamW moments": 3 * facts.param_bytes + 2 * facts.largest_param_bytes,
        "activations of a step": saved_activation_bytes(facts, b, t)
        + forward_bytes(facts, b, t, logits=False)
        + hidden_states_bytes(facts, b * t, 4 + 2 * blocks),
        "logits and losses": logits_bytes(facts, b, t, 7),
        "tokenized training examples": facts.data.train_chars * TOKEN_LIST_BYTES_PER_CHAR,
    }
    if config.keep_best and not config.checkpoint_dir:
        parts["best student so far"] = facts.param_bytes
    hint = (f"use a smaller batch_size (batch_size={max(1, b // 4)}) with grad_accum, a "
            "shorter seq_len, or checkpoint_dir (keeps the best student on disk)")
    return Need(parts, hint)


@register_recipe(
    "recover", RecoverConfig, family=RECOVERY, knobs=(),
    traits=Traits(keeps_zeros=False, trains=True,
                  zeros_note="training updates every weight, zeroed ones included; recover "
                  "follows structural steps (depth, structured, moefy)"),
    formats=(), memory=recover_memory,
)
def recover(model: nn.Module, config: RecoverConfig, context: Context) -> nn.Module:
    """Distil the compressed model from the dense teacher (KD + hidden states), in place."""
    t0 = time.perf_counter()
    if context.teacher is None:
        raise UserError(NO_TEACHER)
    task = training_task(model, context)
    kind = arch_for(model).kind
    device = input_device(model)
    teacher_model = _teacher(context, device)
    check_heads(model, teacher_model)
    maps, map_source = block_maps(model, teacher_model)
    inputs = training_inputs(model, context, task, seq_len=config.seq_len,
                             eval_samples=config.eval_samples, data_file=config.data_file)
    hidden = config.alpha_hidden > 0
    project = projections_for(model, teacher_model, maps, device) if hidden else None
    teacher = Teacher(teacher_model, task, kind, maps if hidden else {})
    dtype = next(model.parameters()).dtype
    if dtype in (torch.float16, torch.bfloat16):
        model.float()  # AdamW in half precision is unstable; train in fp32, cast back after
    frozen, routers = _set_trainable(model, config.train_routers)
    router_weights = sum(p.numel() for p in routers)
    evaluator = TeacherAgreement(inputs.eval_examples, inputs.collator, task, kind,
                                 config.batch_size, Teacher(teacher_model, task, kind, {}),
                                 device)  # held-out: outputs only, no block states
    try:
        result = trainer.train(model, teacher, inputs.examples, evaluator, inputs.collator,
                               task, kind, maps,
                               _settings(config, inputs, maps, task,
                                         routers if config.train_routers else []),
                               extra=project, project=project)
    finally:
        for p in frozen:
            p.requires_grad_(not config.train_routers)
        for m in model.modules():
            if isinstance(m, MoEFFN):
                m.router_grad = False
    if dtype != next(model.parameters()).dtype:
        model.to(dtype)
    model.eval()
    context.info["recover"] = _info(config, task, maps, map_source, inputs, result, project,
                                    router_weights, time.perf_counter() - t0)
    return model


def _teacher(context: Context, device: torch.device) -> nn.Module:
    """The dense model from the context's provider, on the student's device, frozen."""
    teacher = context.teacher()
    if not isinstance(teacher, nn.Module):
        raise TypeError(f"context.teacher() returned {type(teacher).__name__}, not a model")
    if not getattr(teacher, "hf_device_map", None):
        teacher.to(device)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def _set_trainable(model: nn.Module, train_routers: bool
                   ) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Every floating-point parameter trains. MoE routers train through their
    straight-through gate when ``train_routers`` (their modules' ``router_grad`` set);
    otherwise they are frozen, as no gradient would reach them. Returns the parameters
    whose ``requires_grad`` must be put back after (routers frozen here, or similarity
    routers' fixed centroids thawed here) and the router parameters."""
    moes = [m for m in model.modules() if isinstance(m, MoEFFN)]
    routers = {id(p): p for m in moes for p in m.router.parameters()}
    restore = [p for p in routers.values() if p.requires_grad != train_routers]
    for p in model.parameters():
        if id(p) in routers:
            p.requires_grad_(train_routers)
        elif p.dtype.is_floating_point:
            p.requires_grad_(True)
    for m in moes:
        m.router_grad = train_routers
    return restore, list(routers.values())


def planned_steps(config: RecoverConfig, inputs: Inputs) -> int:
    """``steps``, or fewer where ``tokens`` ends the run first (at the examples' mean length)."""
    if config.tokens is None or not inputs.examples:
        return config.steps
    per_example = sum(len(e["input_ids"]) + len(e.get("target_ids", ()))
                      for e in inputs.examples) / len(inputs.examples)
    per_step = config.batch_size * config.grad_accum * per_example
    return max(1, min(config.steps, math.ceil(config.tokens / max(per_step, 1.0))))


def _settings(config: RecoverConfig, inputs: Inputs, maps: dict[str, list[int]], task: str,
              routers: list[nn.Parameter] = ()) -> trainer.TrainSettings:
    identity = {k: v for k, v in config.to_dict().items() if k not in RESUME_FREE}
    identity |= {"data": inputs.data_fp, "maps": maps, "task": task}
    return trainer.TrainSettings(
        steps=planned_steps(config, inputs), batch_size=config.batch_size,
        grad_accum=config.grad_accum, lr=config.lr, warmup=config.warmup,
        weight_decay=config.weight_decay, max_grad_norm=config.max_grad_norm,
        eval_every=config.eval_every, max_minutes=config.minutes, seed=config.seed,
        weights=Weights(config.alpha_kd, config.alpha_task, config.alpha_hidden,
                        config.temperature),
        checkpoint_dir=Path(config.checkpoint_dir) if config.checkpoint_dir else None,
        resume=config.resume, keep_best=config.keep_best,
        identity=json.loads(json.dumps(identity)), max_tokens=config.tokens, label="recover",
        own_lr={id(p): config.router_lr for p in routers},
    )


def _info(config: RecoverConfig, task: str, maps: dict[str, list[int]],
          map_source: dict[str, str], inputs: Inputs, result: trainer.TrainResult,
          project: nn.Module | None, router_weights: int, seconds: float) -> dict[str, Any]:
    """What the report records (``info.recover``)."""
    quality = [k for k in ("accuracy", "ppl", "cosine") if result.curve and
               k in result.curve[0]["eval"]]
    recovery_curve = [
        {"tokens": p.get("tokens", 0), "step": p["step"],
         ("kl" if task != "embedding" else "mse"): p["eval"]["loss"],
         **{k: p["eval"][k] for k in ("task_loss", *quality) if k in p["eval"]}}
        for p in result.curve
    ]
    return {
        "method": "distillation from the dense teacher (Hinton et al. 2015; Minitron, "
        "arXiv:2407.14679; MoEBERT, arXiv:2204.07675)",
        "task": task,
        "block_maps": maps,
        "block_map_source": map_source,
        "loss_weights": {"kd": config.alpha_kd, "hidden": config.alpha_hidden,
                         "task": config.alpha_task, "temperature": config.temperature},
        "projection": None if project is None else {
            "from": project.width_in, "to": project.width_out, "blocks": len(project.proj),
            "weight_change": round(project.change(), 6)},
        # MoE routers (after moefy): trained through the straight-through gate, or fixed
        "routers": None if not router_weights else {
            "weights": router_weights, "trained": config.train_routers,
            "lr": config.router_lr if config.train_routers else None,
            "gradient": "straight-through gate mask + (p - p.detach()) on every expert"
            if config.train_routers else None},
        "data": {"train": inputs.source, "train_examples": len(inputs.examples),
                 "eval_examples": len(inputs.eval_examples), "seq_len": config.seq_len},
        "steps_done": result.steps_done,
        "steps_planned": planned_steps(config, inputs),
        "stopped_by": result.stopped_by,
        "tokens_seen": result.tokens,
        "minutes": round(result.seconds / 60.0, 3),
        "train_seconds": result.seconds,
        "train_cpu_seconds": result.cpu_seconds,
        "recipe_seconds": round(seconds, 2),
        "returned": result.returned,
        "best_step": result.best_step,
        "initial_eval": result.curve[0]["eval"] if result.curve else {},
        "best_eval": result.best_eval,
        "final_eval": result.final_eval,
        "resumed_from": result.resumed_from,
        "recovery_metric": "held-out KL(teacher || student) at T=1" if task != "embedding"
        else "held-out pooled-embedding MSE to the teacher",
        "recovery_curve": recovery_curve,
        "loss_curve": [{"step": p["step"], "tokens": p.get("tokens", 0), **p["train"]}
                       for p in result.curve if "train" in p],
    }


# --------------------------------------------------------------------------- command line


def _load_student(args: argparse.Namespace) -> Any:
    """The compressed model (any format :func:`compress.saving.save_model` writes) with
    its tokenizer and task, as :class:`compress.models.Loaded`."""
    from compress.models import Loaded, load_model, resolve_path, task_of
    from compress.saving import FORMAT_FILE, load_compressed

    folder = Path(args.model)
    if not (folder / FORMAT_FILE).exists():
        return load_model(args.model, args.task, device_map=args.device_map,
                          allow_pickle=args.allow_pickle,
                          trust_remote_code=args.trust_remote_code)
    import transformers as tf

    model = load_compressed(folder)
    tokenizer = tf.AutoTokenizer.from_pretrained(
        str(folder) if (folder / "tokenizer_config.json").exists()
        else resolve_path(args.teacher)[1], trust_remote_code=args.trust_remote_code)
    return Loaded(model, tokenizer, args.task or task_of(model.config),
                  f"local:{folder.resolve()}", str(folder))


def main(argv: list[str] | None = None) -> int:
    """``python -m compress.recipes.recover --model PRUNED --teacher DENSE --out DIR``."""
    from compress.api import compress
    from compress.cli import (
        add_config_arguments,
        add_model_arguments,
        build_context,
        calibration_spec_from_args,
        config_from_args,
    )
    from compress.fileio import atomic_write_json
    from compress.models import check_model_name, load_model
    from compress.saving import save_model

    parser = argparse.ArgumentParser(
        prog="python -m compress.recipes.recover",
        description="Distil a compressed model (the student) from the dense model it came "
        "from (the teacher). Saves the student (its format, and tokenizer) plus recover.json.")
    add_model_arguments(parser)
    parser.add_argument("--teacher", required=True,
                        help="the dense model the student was compressed from: zoo name, "
                        "local folder or hub id (loaded with the same --device-map and flags)")
    parser.add_argument("--out", required=True, type=Path, help="folder to save the student in")
    add_config_arguments(parser, RecoverConfig)
    args = parser.parse_args(argv)
    config = config_from_args(RecoverConfig, args)
    check_model_name(args.model)
    check_model_name(args.teacher)
    loaded = _load_student(args)
    context = build_context(loaded, calibration_spec_from_args(args))
    context.teacher = lambda: load_model(
        args.teacher, loaded.task, device_map=args.device_map, allow_pickle=args.allow_pickle,
        trust_remote_code=args.trust_remote_code).model
    student = compress(loaded.model, config, context)
    save_model(student, loaded.tokenizer, args.out)
    info = context.info["recover"]
    atomic_write_json(args.out / "recover.json", {"student": args.model, "teacher": args.teacher,
                                                  "config": config.to_dict(), "info": info})
    first, best = info["initial_eval"], info["best_eval"]
    print(f"recover: {args.model} (teacher {args.teacher}) -> {args.out}  "
          f"{info['steps_done']} steps, {info['tokens_seen']:,} tokens ({info['stopped_by']}) "
          f"in {info['train_seconds']:.0f} s; held-out {info['recovery_metric'].split(' at')[0]}"
          f" {first.get('loss', float('nan')):.4g} -> {best.get('loss', float('nan')):.4g}")
    return 0


if __name__ == "__main__":
    from compress.errors import run_main
    from compress.recipes import recover as registered  # the module the registry knows

    sys.exit(run_main(registered.main))

"""``distill``: DistilBERT-style distillation into a shallower copy of the teacher.

Sanh et al. 2019 (arXiv:1910.01108). The student is the teacher with fewer blocks
(by default half of every stack), initialised from the teacher's corresponding blocks,
embeddings and head. Which blocks: by default (``layer_choice=importance``) the most
important ones, measured on the shared calibration text as ``depth`` measures them
(:mod:`compress.pruning.influence`: the KL of the outputs when a block is skipped, the
task-loss increase, or block influence), one block at a time with the rest re-measured
(:func:`compress.recipes.depth.select_blocks`, SLEB's iterative choice; Minitron,
Muralidharan et al. 2024, arXiv:2407.14679, and ShortGPT, arXiv:2403.03853, measure
blocks this way);
``layer_choice=spread`` keeps DistilBERT's fixed even spread, first and last kept
(``0,2,4,7,9,11`` for 12 -> 6), the baseline a measured choice is compared against;
``layer_map`` names the blocks outright. The student is trained on

    alpha_kd * T^2 * KL(softmax(teacher/T) || softmax(student/T))
  + alpha_task * cross-entropy on the hard labels
  + alpha_cos * (1 - cos) between the hidden states of mapped blocks

over the vocabulary for language models (causal, masked, sequence-to-sequence) and
over the classes for classifiers. Encoders without a head (sentence embedders such as
``minilm-l6``) have neither logits nor labels: their soft target is the teacher's
mean-pooled embedding (mean squared error, weighted by ``alpha_kd``) plus the cosine
term on every mapped block.

``hard_labels_only`` trains the same student with the task loss alone and no teacher:
the baseline that shows what distillation itself buys for the same budget.

    python -m compress.recipes.distill --teacher minilm-l6-sentiment --student-layers 3 \\
        --steps 400 --out out/minilm-l3
    python -m compress.recipes.distill --teacher bert2bert-punct --decoder-layers 3 --out out/b2b
    python -m compress.recipes.distill --teacher smollm2-135m --student-layers 15 \\
        --max-minutes 12 --checkpoint-dir ckpt/smol --out out/smol-15   # then --resume true

``--teacher`` takes a zoo name, a local folder or a hub id; short names such as
``bert-large``, ``bert-base``, ``gpt2-xl``, ``t5-3b`` resolve to their hub ids.
"""

from __future__ import annotations

import argparse
import hashlib
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

from compress.api import compress
from compress.arch import arch_for
from compress.cache import cache_dir
from compress.calib_footprint import CALIB_BATCH, calib_forward_parts, calib_hint
from compress.calibration import calibration_batches
from compress.cli import (
    add_config_arguments,
    add_model_arguments,
    build_context,
    calibration_spec_from_args,
    config_from_args,
    run_main,
)
from compress.config import RecipeConfig, option
from compress.context import Context
from compress.distill import trainer
from compress.distill.inputs import Inputs, training_inputs, training_task
from compress.distill.step import Weights
from compress.distill.student import (
    make_student,
    parse_layer_map,
    resolve_layer_maps,
    teacher_layer_counts,
)
from compress.distill.teacher import (
    CachedTeacher,
    Teacher,
    check_cache_size,
    estimate_cache_bytes,
    weights_fingerprint,
)
from compress.errors import UserError
from compress.fileio import atomic_write_json
from compress.footprint import (
    ModelFacts,
    Need,
    forward_bytes,
    hidden_states_bytes,
    logits_bytes,
    saved_activation_bytes,
)
from compress.models import check_model_name, input_device, load_model
from compress.pruning.influence import BLOCK_METRICS
from compress.pruning.recovery import task_for
from compress.recipes.depth import select_blocks
from compress.registry import register_recipe
from compress.saving import save_model
from compress.stats import parameter_counts
from compress.traits import Traits

log = logging.getLogger(__name__)

#: how the student's blocks are chosen without an explicit layer_map.
LAYER_CHOICES = ("importance", "spread")
#: config fields that may change between an interrupted run and its resumption (soft
#: targets read from the teacher cache are float16, so toggling cache_teacher on resume
#: changes the numbers slightly; everything else must match or resume is refused).
RESUME_FREE = ("resume", "max_minutes", "checkpoint_dir", "cache_teacher")


@dataclass(frozen=True)
class DistillConfig(RecipeConfig):
    """Distil the model into a student with fewer blocks (DistilBERT-style)."""

    student_layers: int | None = option(
        None, "blocks per stack of the student (default: half the teacher's)", low=1
    )
    layer_map: str | None = option(
        None,
        "teacher blocks kept, e.g. 0,2,4 (every stack) or encoder=0,2,4;decoder=0,2 "
        "(instead of the block counts)",
    )
    layer_choice: str = option(
        "importance", "without layer_map, which blocks the student keeps: importance (the "
        "most important, measured on the calibration text as depth measures them) or spread "
        "(DistilBERT's fixed even spread, first and last kept)", choices=LAYER_CHOICES)
    importance_metric: str = option(
        "skip", "block importance for layer_choice=importance: skip (KL of the outputs when "
        "the block is skipped), loss (task-loss increase) or bi (block influence)",
        choices=BLOCK_METRICS)
    importance_selection: str = option(
        "iterative", "layer_choice=importance: iterative (drop one block at a time, "
        "re-measuring the rest with it skipped, as depth does) or oneshot (rank once)",
        choices=("iterative", "oneshot"))
    encoder_layers: int | None = option(
        None, "encoder-decoder: blocks of the student's encoder (others: use student_layers)", low=1
    )
    decoder_layers: int | None = option(
        None, "encoder-decoder: blocks of the student's decoder", low=1
    )
    temperature: float = option(
        2.0, "softmax temperature of the soft-target loss", low=0.1, high=100.0
    )
    alpha_kd: float = option(1.0, "weight of the soft-target (KL) loss", low=0.0)
    alpha_task: float = option(1.0, "weight of the task loss on hard labels", low=0.0)
    alpha_cos: float = option(1.0, "weight of the hidden-state cosine loss", low=0.0)
    steps: int = option(300, "optimizer steps (0: return the initialised student untrained)",
                        low=0)
    max_minutes: float | None = option(
        None, "stop cleanly after this many minutes of training (checkpoint, best student)",
        low=0.0, low_inclusive=False,
    )
    batch_size: int = option(16, "examples per micro-batch", low=1)
    grad_accum: int = option(1, "micro-batches per optimizer step (gradient accumulation)", low=1)
    lr: float = option(5e-5, "peak learning rate (AdamW)", low=0.0, low_inclusive=False, high=1.0)
    warmup: float = option(0.05, "fraction of the steps with linear warmup (then linear decay)",
                           low=0.0, high=1.0, high_inclusive=False)
    weight_decay: float = option(0.01, "AdamW weight decay on weight matrices", low=0.0, high=1.0)
    max_grad_norm: float = option(1.0, "gradient clipping norm (0: off)", low=0.0)
    seq_len: int = option(128, "tokens per example (language models: window length)",
                          low=8, high=65536)
    eval_every: int = option(50, "evaluate on the held-out split (and checkpoint) every N steps",
                             low=1)
    eval_samples: int = option(256, "held-out examples per evaluation", low=1)
    keep_best: bool = option(True, "return the best student by held-out loss, not the last")
    checkpoint_dir: str | None = option(
        None, "folder for checkpoints (last + best); needed for resume"
    )
    resume: bool = option(False, "continue from the last checkpoint in checkpoint_dir")
    cache_teacher: bool = option(
        False, "store the teacher's outputs on disk and reuse them in later runs"
    )
    hard_labels_only: bool = option(
        False, "baseline: train the same student on the task loss alone, no teacher"
    )
    data_file: str | None = option(
        None, "local .txt/.csv/.json training file instead of the zoo's training split "
        "(the last 5 percent held out for evaluation)"
    )

    #: 2: the student's blocks are chosen by measured importance by default (was: spread).
    #: 3: and iteratively (``importance_selection``; was: ranked once).
    VERSION = 3

    def validate(self) -> None:
        for name in ("alpha_kd", "alpha_task", "alpha_cos", "max_minutes", "max_grad_norm"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise UserError(f"distill: {name} must be a finite number, got {value}")
        counts = [n for n in ("student_layers", "encoder_layers", "decoder_layers")
                  if getattr(self, n) is not None]
        if self.layer_map is not None:
            if counts:
                raise UserError(
                    f"distill: give either layer_map or {counts[0]}, not both"
                )
            if self.layer_choice == "spread":
                raise UserError("distill: give either layer_map or layer_choice=spread, not both")
            parse_layer_map(self.layer_map)
        if self.resume and not self.checkpoint_dir:
            raise UserError("distill: resume needs checkpoint_dir (where the first run saved)")
        if self.hard_labels_only:
            if self.alpha_task == 0:
                raise UserError("distill: hard_labels_only trains on the task loss; alpha_task "
                                "must be above 0")
            if self.cache_teacher:
                raise UserError("distill: hard_labels_only uses no teacher; drop cache_teacher")
        elif self.alpha_kd == 0 and self.alpha_task == 0 and self.alpha_cos == 0:
            raise UserError("distill: alpha_kd, alpha_task and alpha_cos are all 0; "
                            "nothing to train on")


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _kept_blocks(config: DistillConfig, facts: ModelFacts) -> dict[str, int]:
    """Student blocks per stack role, as :func:`resolve_layer_maps` will choose them."""
    counts = {s.role: s.blocks for s in facts.stacks}
    if config.layer_map is not None:
        try:
            parsed = parse_layer_map(config.layer_map, tuple(counts))
        except UserError:
            parsed = {}
        return {r: len(parsed.get(r, parsed.get("*", range(n)))) for r, n in counts.items()}
    per_stack = {r: v for r, v in (("encoder", config.encoder_layers),
                                   ("decoder", config.decoder_layers)) if v is not None}
    out = {}
    for role, n in counts.items():
        want = per_stack.get(role, config.student_layers)
        if want is None:
            want = n if per_stack else max(1, n // 2)
        out[role] = min(n, want)
    return out


#: a tokenized training example kept as Python ints (28 bytes each and a list slot,
#: about four characters per token), per character of training text.
TOKEN_LIST_BYTES_PER_CHAR = 11


def distill_memory(config: DistillConfig, facts: ModelFacts) -> Need:
    """The student is a deep copy of the teacher with blocks dropped (one whole copy
    while it is built); training holds the student, its gradients and AdamW moments (plus
    the largest parameter's two temporaries), the best weights so far (``keep_best``
    without a checkpoint folder keeps them in memory), the tokenized training examples,
    and a step's peak: the student's saved activations, the teacher's outputs (no grad),
    the mapped blocks' hidden states of both, and the logits of both with the
    softmax/log-softmax copies and gradients of the KD and task losses."""
    kept = _kept_blocks(config, facts)
    per_block = {s.role: sum(i * o for b in s.linears[:1] for i, o in b) * facts.elem
                 for s in facts.stacks}
    dropped = sum((s.blocks - kept.get(s.role, s.blocks)) * per_block[s.role]
                  for s in facts.stacks)
    student = max(facts.param_bytes - dropped, facts.param_bytes // 8)
    b, t = config.batch_size, config.seq_len
    mapped = sum(kept.values()) if config.alpha_cos > 0 else 0
    train = {
        "student with gradients and AdamW moments": 4 * student
        + 2 * facts.largest_param_bytes,
        "activations of a step": saved_activation_bytes(facts, b, t, kept)
        + forward_bytes(facts, b, t, logits=False)
        + hidden_states_bytes(facts, b * t, 4 + 2 * mapped),
        "logits and losses": logits_bytes(facts, b, t, 3 if config.hard_labels_only else 7),
        "tokenized training examples": facts.data.train_chars * TOKEN_LIST_BYTES_PER_CHAR,
    }
    if config.keep_best and not config.checkpoint_dir:
        train["best student so far"] = student
    hint = (f"use a smaller batch_size (batch_size={max(1, b // 4)}) with grad_accum, a "
            "shorter seq_len, fewer student_layers, or checkpoint_dir (keeps the best "
            "student on disk)")
    build = Need({"copy of the teacher while the student is built": facts.param_bytes},
                 "free memory: the student is built from a copy of the teacher")
    if not _measures(config) or not facts.data.calib_sequences:
        return Need.peak(build, Need(train, hint))
    measure = calib_forward_parts(facts, hooked=config.importance_metric == "bi")
    if config.importance_metric != "bi":
        measure["reference and skipped outputs"] = logits_bytes(
            facts, min(CALIB_BATCH, facts.data.calib_sequences), facts.data.calib_len(), 3)
    return Need.peak(Need(measure, calib_hint(facts, "layer_choice=spread (no measurement)")),
                     build, Need(train, hint))


def _measures(config: DistillConfig) -> bool:
    """True when the student's blocks are chosen by measured importance."""
    return config.layer_map is None and config.layer_choice == "importance"


@register_recipe(
    "distill", DistillConfig, family="distillation", knobs=(),
    traits=Traits(
        keeps_zeros=False,
        trains=True,
        calibrates=lambda c: isinstance(c, DistillConfig) and _measures(c),
        zeros_note="training updates every weight, pruned ones included",
    ),
    formats=(), memory=distill_memory,
)
def distill(model: nn.Module, config: DistillConfig, context: Context) -> nn.Module:
    """Distil the model into a shallower student (DistilBERT-style KD + task + cosine losses)."""
    t0 = time.perf_counter()
    device_map = getattr(model, "hf_device_map", None)
    if device_map and len(set(map(str, device_map.values()))) > 1:
        raise UserError("distill needs the teacher on one device; load it without a multi-device "
                        "device_map")
    task = training_task(model, context)
    if task == "embedding" and config.hard_labels_only:
        raise UserError("distill: an embedding model has no hard labels, so there is no "
                        "hard_labels_only baseline; distil it with the teacher")
    kind = arch_for(model).kind
    counts = teacher_layer_counts(model)
    maps, importance = _choose_blocks(model, config, context, counts)
    student, maps = make_student(model, maps, adjust=config.layer_map is None)
    inputs = training_inputs(model, context, task, seq_len=config.seq_len,
                             eval_samples=config.eval_samples, data_file=config.data_file)
    teacher, cache = _teacher(model, config, task, kind, maps, inputs)
    dtype = next(student.parameters()).dtype
    if dtype in (torch.float16, torch.bfloat16):
        student.float()  # AdamW in half precision is unstable; train in fp32, cast back after
    for p in student.parameters():
        p.requires_grad_(True)
    evaluator = trainer.Evaluator(inputs.eval_examples, inputs.collator, task, config.batch_size,
                                  teacher if task == "embedding" else None,
                                  input_device(student))
    result = trainer.train(student, teacher, inputs.examples, evaluator, inputs.collator, task,
                           kind, maps, _settings(config, inputs.data_fp, maps, task))
    if dtype != next(student.parameters()).dtype:
        student.to(dtype)
    student.eval()
    info = _info(config, task, counts, maps, inputs, result, time.perf_counter() - t0)
    if importance is not None:
        info["importance"] = importance
    if isinstance(teacher, CachedTeacher):
        info["teacher_cache"] = {"folder": str(cache), "hits": teacher.hits,
                                 "misses": teacher.misses}
    context.info["distill"] = info
    return student


def _choose_blocks(model: nn.Module, config: DistillConfig, context: Context,
                   counts: dict[str, int]) -> tuple[dict[str, list[int]], dict[str, Any] | None]:
    """Per stack role the teacher blocks the student keeps, and the measured importance
    they were chosen by (None: named or spread)."""
    maps = resolve_layer_maps(
        model,
        student_layers=config.student_layers,
        per_stack={"encoder": config.encoder_layers, "decoder": config.decoder_layers},
        layer_map=config.layer_map,
    )
    if all(maps[r] == list(range(n)) for r, n in counts.items()):
        shown = ", ".join(f"{r} {n}" for r, n in counts.items())
        raise UserError(
            f"the student would keep every block of the teacher ({shown}); ask for fewer"
        )
    if not _measures(config):
        return maps, None
    metric = config.importance_metric
    batches = calibration_batches(context, model, recipe="distill's layer_choice=importance "
                                  "(layer_choice=spread needs none)")
    maps, scores, trace = select_blocks(model, batches, task_for(model, context), metric,
                                        config.importance_selection,
                                        keep={r: len(m) for r, m in maps.items()})
    return maps, {"metric": metric, "selection": config.importance_selection, "drops": trace,
                  "scores": {r: s.to_dict() for r, s in scores.items()}}


def _teacher(
    model: nn.Module, config: DistillConfig, task: str, kind: str,
    maps: dict[str, list[int]], inputs: Inputs,
) -> tuple[Teacher | None, Path | None]:
    """The teacher's outputs, on the fly or cached on disk (None: hard labels only)."""
    if config.hard_labels_only:
        return None, None
    wanted = maps if config.alpha_cos > 0 else {}
    if not config.cache_teacher:
        return Teacher(model, task, kind, wanted), None
    used = min(len(inputs.examples), config.steps * config.batch_size * config.grad_accum)
    n_hidden = sum(len(v) for v in wanted.values())
    check_cache_size(estimate_cache_bytes(model, task, used, config.seq_len, n_hidden))
    fp = _fingerprint(weights_fingerprint(model), inputs.data_fp, wanted, task, config.seq_len)
    base = (Path(config.checkpoint_dir) if config.checkpoint_dir else _default_cache())
    folder = base / "teacher-cache" / fp
    return CachedTeacher(model, task, kind, wanted, folder), folder


def _settings(
    config: DistillConfig, data_fp: str, maps: dict[str, list[int]], task: str
) -> trainer.TrainSettings:
    identity = {k: v for k, v in config.to_dict().items() if k not in RESUME_FREE}
    identity |= {"data": data_fp, "maps": maps, "task": task}
    return trainer.TrainSettings(
        steps=config.steps,
        batch_size=config.batch_size,
        grad_accum=config.grad_accum,
        lr=config.lr,
        warmup=config.warmup,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        eval_every=config.eval_every,
        max_minutes=config.max_minutes,
        seed=config.seed,
        weights=Weights(config.alpha_kd, config.alpha_task, config.alpha_cos,
                        config.temperature),
        checkpoint_dir=Path(config.checkpoint_dir) if config.checkpoint_dir else None,
        resume=config.resume,
        keep_best=config.keep_best,
        identity=json.loads(json.dumps(identity)),
    )


def _info(
    config: DistillConfig, task: str, counts: dict[str, int], maps: dict[str, list[int]],
    inputs: Inputs, result: trainer.TrainResult, seconds: float,
) -> dict[str, Any]:
    """What the report records of the run (``info.distill``)."""
    return {
        "task": task,
        "teacher_blocks": counts,
        "student_blocks": {r: len(m) for r, m in maps.items()},
        "layer_maps": maps,
        "layer_choice": "layer_map" if config.layer_map is not None else config.layer_choice,
        "hard_labels_only": config.hard_labels_only,
        "loss_weights": {"kd": 0.0 if config.hard_labels_only else config.alpha_kd,
                         "task": config.alpha_task,
                         "cos": 0.0 if config.hard_labels_only else config.alpha_cos,
                         "temperature": config.temperature},
        "data": {"train": inputs.source, "train_examples": len(inputs.examples),
                 "eval_examples": len(inputs.eval_examples), "seq_len": config.seq_len,
                 "epochs": round(result.steps_done * config.batch_size * config.grad_accum
                                 / max(len(inputs.examples), 1), 3)},
        "steps_done": result.steps_done,
        "steps_planned": config.steps,
        "stopped_by": result.stopped_by,
        "train_seconds": result.seconds,
        "train_cpu_seconds": result.cpu_seconds,
        "recipe_seconds": round(seconds, 2),
        "train_tokens": result.tokens,
        "returned": result.returned,
        "best_step": result.best_step,
        "best_eval": result.best_eval,
        "final_eval": result.final_eval,
        "initial_eval": result.curve[0]["eval"] if result.curve else {},
        "resumed_from": result.resumed_from,
        "curve": result.curve,
        "eval_selection": "lowest held-out task cross-entropy" if task != "embedding"
        else "lowest held-out pooled-embedding MSE to the teacher",
    }


def _default_cache() -> Path:
    return cache_dir() / "distill"


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    """``python -m compress.recipes.distill --teacher M --out DIR [flags]``."""
    parser = argparse.ArgumentParser(
        prog="python -m compress.recipes.distill",
        description="Distil a teacher into a student with fewer blocks (DistilBERT-style: "
        "soft targets at temperature T, hard labels, hidden-state cosine). Saves the student "
        "with save_pretrained (and tokenizer) plus distill.json (training record).",
        conflict_handler="resolve",
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--teacher", "--model", dest="model", required=True,
        help="teacher: zoo name (smollm2-135m, minilm-l6, minilm-l6-sentiment, bert2bert-punct), "
        "a local folder, a hub id, or a short hub name (bert-base, bert-large, gpt2-xl, t5-3b, ...)",
    )
    parser.add_argument("--out", required=True, type=Path, help="folder to save the student in")
    add_config_arguments(parser, DistillConfig)
    args = parser.parse_args(argv)
    config = config_from_args(DistillConfig, args)
    check_model_name(args.model)

    t0 = time.perf_counter()
    loaded = load_model(args.model, args.task, device_map=args.device_map,
                        allow_pickle=args.allow_pickle, trust_remote_code=args.trust_remote_code)
    before = parameter_counts(loaded.model)
    context = build_context(loaded, calibration_spec_from_args(args))
    student = compress(loaded.model, config, context)
    after = parameter_counts(student)
    save_model(student, loaded.tokenizer, args.out)
    info = context.info["distill"]
    atomic_write_json(args.out / "distill.json",
                      {"teacher": args.model, "config": config.to_dict(), "info": info})
    best = ", ".join(f"{k} {v:.4g}" for k, v in info["best_eval"].items())
    print(
        f"distill: {args.model} -> {args.out}  blocks {info['teacher_blocks']} -> "
        f"{info['student_blocks']}, parameters {before['total']:,} -> {after['total']:,}; "
        f"{info['steps_done']} steps ({info['stopped_by']}) in {info['train_seconds']:.0f} s; "
        f"best eval (step {info['best_step']}): {best}  ({time.perf_counter() - t0:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    from compress.recipes import distill as registered  # the module the registry knows

    sys.exit(run_main(registered.main))

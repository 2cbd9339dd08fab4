"""The distillation training loop: AdamW, warmup then linear decay, gradient accumulation,
held-out evaluation, best-so-far tracking, checkpoints that resume bit-exactly, a time
budget and a ``rich`` progress bar.

Determinism: the batches of step ``s`` are a pure function of (seed, s)
(:class:`compress.distill.data.Batches`); the learning rate is a pure function of
``s``; the torch RNG (dropout) is saved at step boundaries. A run resumed from a
checkpoint therefore ends with the same weights, bit for bit on the CPU, as one that
was never interrupted (the tests check it).

Checkpoint folder (``checkpoint_dir``), every file safetensors or JSON, no pickle::

    last/student.safetensors     weights (shared tensors stored once)
    last/optimizer.safetensors   AdamW moments and step counts, flattened
    last/rng.safetensors         torch RNG states (CPU and CUDA) at the step boundary
    last/state.json              step, clock, best, loss curve, what the run was
    best/student.safetensors     weights of the best evaluation so far (+ state.json)

``last`` and ``best`` are each replaced atomically (:func:`compress.fileio.atomic_dir`),
so a run killed at any moment (SIGKILL included) leaves the previous complete checkpoint
or the new complete one; ``--resume`` then clears the killed writer's ``.tmp-`` leftovers.

The best student is chosen by held-out loss: the task cross-entropy where there are
hard labels (so distilled and hard-label-only runs are selected the same way), the
pooled-embedding error to the teacher for embedders. The step-0 student (before any
update) is evaluated too, so training can never return something worse on that
measure than it started from.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from compress.distill import losses
from compress.distill.data import Batches, Collator
from compress.distill.step import Weights, loss_terms, run_model
from compress.distill.teacher import Teacher
from compress.errors import UserError
from compress.fileio import (
    atomic_dir,
    atomic_write_json,
    clean_stale_tmp,
    restore_interrupted_dir,
)
from compress.models import input_device, to_device

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1


@dataclass
class TrainSettings:
    steps: int
    batch_size: int
    grad_accum: int
    lr: float
    warmup: float
    weight_decay: float
    max_grad_norm: float
    eval_every: int
    max_minutes: float | None
    seed: int
    weights: Weights
    checkpoint_dir: Path | None = None
    resume: bool = False
    keep_best: bool = True
    #: what must match between a checkpoint and a resumed run (config, data, maps).
    identity: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainResult:
    steps_done: int
    stopped_by: str  # "steps" | "time" | "no-steps"
    seconds: float
    cpu_seconds: float
    tokens: int
    best_step: int
    best_eval: dict[str, float]
    final_eval: dict[str, float]
    curve: list[dict[str, Any]]
    resumed_from: int | None
    returned: str  # "best" | "last"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def lr_at(step: int, settings: TrainSettings) -> float:
    """Linear warmup over ``warmup * steps`` steps, then linear decay to 0 at ``steps``."""
    warm = int(settings.warmup * settings.steps)
    if warm > 0 and step < warm:
        return settings.lr * (step + 1) / warm
    rest = max(1, settings.steps - warm)
    return settings.lr * max(0.0, (settings.steps - step) / rest)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only (not on biases, norms' gains)."""
    decay, no_decay = [], []
    seen: set[int] = set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _n_tokens(batch: Mapping[str, torch.Tensor]) -> int:
    n = int(batch["attention_mask"].sum())
    if "decoder_mask" in batch:
        n += int(batch["decoder_mask"].sum())
    return n


# --------------------------------------------------------------------------- evaluation


class Evaluator:
    """Held-out loss of the student (and accuracy / perplexity where they apply)."""

    def __init__(
        self,
        examples: Sequence[dict[str, Any]],
        collator: Collator,
        task: str,
        batch_size: int,
        teacher: Teacher | None,
        device: torch.device,
    ):
        self.examples = list(examples)
        self.collator = collator
        self.task = task
        self.batch_size = batch_size
        self.device = device
        self.targets: list[torch.Tensor] = []
        if task == "embedding":
            if teacher is None:
                raise UserError("an embedding model has no hard labels; distil it with a teacher")
            # the teacher's pooled embeddings of the held-out texts, computed once
            for batch in self._batches():
                self.targets.append(teacher.compute(batch).pooled.float())

    def _batches(self):
        for k, start in enumerate(range(0, len(self.examples), self.batch_size)):
            chunk = self.examples[start:start + self.batch_size]
            yield to_device(self.collator(chunk, mlm_seed=10_000_019 + k), self.device)

    def __call__(self, model: nn.Module) -> dict[str, float]:
        was_training = model.training
        model.eval()
        nll, count, correct, n_ex, sq, cos = 0.0, 0, 0, 0, 0.0, 0.0
        try:
            with torch.inference_mode():
                for k, batch in enumerate(self._batches()):
                    out = run_model(model, batch, self.task, {})
                    if self.task == "embedding":
                        t = self.targets[k]
                        s = out.pooled.float()
                        sq += float(((s - t) ** 2).mean(-1).sum())
                        cos += float(torch.nn.functional.cosine_similarity(s, t, dim=-1).sum())
                        n_ex += s.shape[0]
                        continue
                    logits, labels = out.logits.float(), batch["labels"]
                    if self.task == "causal-lm":
                        logits, labels = logits[:, :-1], labels[:, 1:]
                    keep = labels != -100
                    nll += float(
                        torch.nn.functional.cross_entropy(logits[keep], labels[keep], reduction="sum")
                    )
                    count += int(keep.sum())
                    if self.task == "classification":
                        correct += int((logits.argmax(-1) == labels).sum())
                        n_ex += labels.shape[0]
        finally:
            model.train(was_training)
        if self.task == "embedding":
            return {"loss": sq / n_ex, "cosine": cos / n_ex}
        res = {"loss": nll / max(count, 1)}
        if self.task == "classification":
            res["accuracy"] = correct / max(n_ex, 1)
        if self.task in ("causal-lm", "masked-lm", "seq2seq"):
            res["ppl"] = math.exp(min(res["loss"], 50.0))
        return res


# --------------------------------------------------------------------------- checkpoints


def _save_weights(model: nn.Module, path: Path) -> None:
    from safetensors.torch import save_model

    save_model(model, str(path))


def _load_weights(model: nn.Module, path: Path) -> None:
    from safetensors.torch import load_model

    missing, unexpected = load_model(model, str(path), strict=False)
    if missing or unexpected:
        raise UserError(
            f"checkpoint {path} does not fit the student (missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]}); it was written for another model"
        )


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors = {}
    for pid, st in sd["state"].items():
        for key, value in st.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"state.{pid}.{key}"] = t.detach().cpu().contiguous()
    return tensors, {"param_groups": sd["param_groups"]}


def _restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, t in tensors.items():
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = t
    groups = meta["param_groups"]
    for g in groups:
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
    opt.load_state_dict({"state": state, "param_groups": groups})


def save_checkpoint(
    folder: Path,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    rng: dict[str, torch.Tensor],
    state: dict[str, Any],
) -> None:
    from safetensors.torch import save_file

    with atomic_dir(folder / "last") as tmp:
        _save_weights(model, tmp / "student.safetensors")
        tensors, meta = _optimizer_tensors(opt)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        save_file(rng, str(tmp / "rng.safetensors"))
        atomic_write_json(tmp / "state.json", state | {"optimizer": meta})


def _rng_state() -> dict[str, torch.Tensor]:
    out = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"cuda.{i}"] = s
    return out


def _set_rng_state(rng: Mapping[str, torch.Tensor]) -> None:
    torch.set_rng_state(rng["cpu"])
    cuda = [rng[k] for k in sorted(rng) if k.startswith("cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def load_checkpoint(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict, dict]:
    """(state, optimizer tensors, optimizer meta, rng) of ``folder/last``."""
    from safetensors.torch import load_file

    last = folder / "last"
    restore_interrupted_dir(last)  # a swap cut short (systems without an atomic exchange)
    if not (last / "state.json").exists():
        raise UserError(
            f"nothing to resume in {folder}: no checkpoint (last/state.json); "
            "run once without --resume"
        )
    try:
        state = json.loads((last / "state.json").read_text())
        opt_t = load_file(str(last / "optimizer.safetensors"))
        rng = load_file(str(last / "rng.safetensors"))
    except (OSError, ValueError) as exc:
        raise UserError(f"checkpoint {last} is unreadable ({exc})") from None
    if state.get("version") != CHECKPOINT_VERSION:
        raise UserError(f"checkpoint {last} has version {state.get('version')}; expected "
                        f"{CHECKPOINT_VERSION}")
    return state, opt_t, state.pop("optimizer"), rng


def _identity_mismatch(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    keys = sorted(set(saved) | set(now))
    return [k for k in keys if saved.get(k) != now.get(k)]


# --------------------------------------------------------------------------- progress


@contextlib.contextmanager
def _progress(console, total: int, start: int):
    """A rich progress bar on stderr (a no-op where stderr is not a terminal)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    progress = Progress(
        TextColumn("[bold]distill"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[terms]}"),
        TextColumn("{task.fields[speed]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal,
    )
    with progress:
        task = progress.add_task("distill", total=total, completed=start, terms="", speed="")
        yield progress, task


# --------------------------------------------------------------------------- the loop


def train(
    student: nn.Module,
    teacher: Teacher | None,
    examples: Sequence[dict[str, Any]],
    evaluator: Evaluator,
    collator: Collator,
    task: str,
    kind: str,
    layer_maps: Mapping[str, Sequence[int]],
    settings: TrainSettings,
    *,
    interrupt_at: Callable[[int], bool] | None = None,
) -> TrainResult:
    """Train ``student`` in place; on return it holds the best (or last) weights, in eval mode.

    ``teacher=None`` trains on the task loss alone (the hard-label baseline).
    ``interrupt_at(step)`` (tests) raises ``KeyboardInterrupt`` before that step's update.
    """
    device = input_device(student)
    s = settings
    w = s.weights if teacher is not None else Weights(0.0, s.weights.task, 0.0, s.weights.temperature)
    student_wanted = {r: list(range(len(m))) for r, m in layer_maps.items()} if w.cos > 0 else {}
    batches = Batches(len(examples), s.batch_size, s.grad_accum, s.seed)
    opt = torch.optim.AdamW(_param_groups(student, s.weight_decay), lr=s.lr)
    ckpt = s.checkpoint_dir
    state: dict[str, Any] = {
        "version": CHECKPOINT_VERSION,
        "step": 0,
        "seconds": 0.0,
        "cpu_seconds": 0.0,
        "tokens": 0,
        "best_step": -1,
        "best_eval": None,
        "curve": [],
        "identity": s.identity,
    }
    resumed_from = None
    if s.resume:
        if ckpt is None:
            raise UserError("resume needs checkpoint_dir (where the interrupted run saved)")
        saved, opt_t, opt_meta, rng = load_checkpoint(ckpt)
        if clean_stale_tmp(ckpt):  # half-written checkpoints of the killed run
            log.info("removed leftovers of an interrupted checkpoint save in %s", ckpt)
        diff = _identity_mismatch(saved.get("identity", {}), s.identity)
        if diff:
            raise UserError(
                f"checkpoint in {ckpt} was written by a different run ({', '.join(diff[:4])} "
                "differ); resume with the same settings or use another checkpoint_dir"
            )
        _load_weights(student, ckpt / "last" / "student.safetensors")
        _restore_optimizer(opt, opt_t, opt_meta)
        _set_rng_state(rng)
        state = saved
        resumed_from = state["step"]
        log.info("resumed from step %d of %d", state["step"], s.steps)
    best_weights: dict[str, torch.Tensor] | None = None  # in memory when there is no folder

    def keep_if_best(ev: dict[str, float], step: int) -> None:
        nonlocal best_weights
        best = state["best_eval"]
        if best is not None and not ev["loss"] < best["loss"]:
            return
        state["best_eval"], state["best_step"] = ev, step
        if not s.keep_best:
            return
        if ckpt is not None:
            with atomic_dir(ckpt / "best") as tmp:
                _save_weights(student, tmp / "student.safetensors")
                atomic_write_json(tmp / "state.json", {"step": step, "eval": ev})
        else:
            best_weights = {k: v.detach().clone() for k, v in student.state_dict().items()}

    def evaluate(step: int) -> dict[str, float]:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            ev = evaluator(student)
        keep_if_best(ev, step)
        return ev

    if not math.isfinite(s.max_minutes or 0.0):
        raise UserError("max_minutes must be a finite number")
    budget = None if s.max_minutes is None else s.max_minutes * 60.0
    t_run = time.perf_counter()
    seconds_before = state["seconds"]
    cpu_before, c_run = state.get("cpu_seconds", 0.0), time.process_time()

    def elapsed() -> float:
        # wall clock (what max_minutes limits) and, alongside, this process's CPU time,
        # which on a shared or throttled machine says more about the work done
        state["cpu_seconds"] = round(cpu_before + time.process_time() - c_run, 2)
        return seconds_before + time.perf_counter() - t_run

    from rich.console import Console

    console = Console(stderr=True)
    what = "task loss only (no teacher)" if teacher is None else (
        f"kd {w.kd} (T={w.temperature}), task {w.task}, cos {w.cos}")
    console.print(
        f"distill: {s.steps} steps of {s.grad_accum} x {s.batch_size} examples from "
        f"{len(examples)}; loss: {what}"
        + (f"; resuming at step {state['step']}" if resumed_from is not None else ""),
        highlight=False, markup=False, soft_wrap=True,
    )
    if state["step"] == 0 and not state["curve"]:
        ev = evaluate(0)
        state["curve"].append({"step": 0, "eval": ev, "seconds": 0.0})
        console.print(f"step 0: eval {_fmt(ev)}", highlight=False, markup=False, soft_wrap=True)

    stopped_by = "steps" if s.steps > 0 else "no-steps"
    sums: dict[str, float] = {}
    n_micro = 0
    tokens_window, t_window = 0, time.perf_counter()
    student.train()
    step = state["step"]
    in_update = False
    rng_at_step = _rng_state()
    with _progress(console, s.steps, step) as (progress, bar):
        try:
            while step < s.steps:
                # the RNG as of this step boundary: what an interrupt checkpoint must hold
                rng_at_step = _rng_state()
                if budget is not None and time.perf_counter() - t_run >= budget:
                    stopped_by = "time"
                    break
                if interrupt_at is not None and interrupt_at(step):
                    raise KeyboardInterrupt
                lr = lr_at(step, s)
                for g in opt.param_groups:
                    g["lr"] = lr
                opt.zero_grad(set_to_none=True)
                for micro, idx in batches.for_step(step):
                    batch = to_device(collator([examples[i] for i in idx], mlm_seed=s.seed * 7919 + micro),
                                device)
                    t_out = teacher.outputs(batch, idx) if teacher is not None else None
                    s_out = run_model(student, batch, task, student_wanted)
                    total, terms = loss_terms(s_out, t_out, batch, task, kind, layer_maps, w)
                    if not torch.isfinite(total):
                        raise UserError(
                            f"the loss became {float(total)} at step {step + 1} ({_fmt(terms)}); "
                            "lower lr or temperature"
                        )
                    (total / s.grad_accum).backward()
                    for k, v in terms.items():
                        sums[k] = sums.get(k, 0.0) + v
                    sums["total"] = sums.get("total", 0.0) + float(total.detach())
                    n_micro += 1
                    n_tok = _n_tokens(batch)
                    tokens_window += n_tok
                    state["tokens"] += n_tok
                if s.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(
                        [p for g in opt.param_groups for p in g["params"]], s.max_grad_norm
                    )
                in_update = True
                opt.step()
                in_update = False
                step += 1
                state["step"] = step
                now = time.perf_counter()
                speed = tokens_window / max(now - t_window, 1e-9)
                progress.update(
                    bar,
                    completed=step,
                    terms=" ".join(f"{k} {v / n_micro:.4f}" for k, v in sums.items()),
                    speed=f"{speed:,.0f} tok/s",
                )
                over_time = budget is not None and now - t_run >= budget
                if step % s.eval_every == 0 or step == s.steps or over_time:
                    state["seconds"] = elapsed()
                    ev = evaluate(step)
                    point = {
                        "step": step,
                        "lr": lr,
                        "train": {k: v / n_micro for k, v in sums.items()},
                        "eval": ev,
                        "seconds": round(state["seconds"], 2),
                        "cpu_seconds": state["cpu_seconds"],
                        "tokens_per_s": round(speed, 1),
                    }
                    state["curve"].append(point)
                    msg = (f"step {step}/{s.steps}: train {_fmt(point['train'])}; eval {_fmt(ev)}; "
                           f"{speed:,.0f} tok/s, {state['seconds']:.0f} s")
                    # one line per evaluation, also when stderr is a log file
                    progress.console.print(msg, highlight=False, markup=False, soft_wrap=True)
                    log.info(msg)
                    sums, n_micro = {}, 0
                    tokens_window, t_window = 0, time.perf_counter()
                    if ckpt is not None:
                        save_checkpoint(ckpt, student, opt, _rng_state(), state)
                    if over_time:
                        stopped_by = "time"
                        break
        except KeyboardInterrupt:
            if ckpt is not None and not in_update and step > 0:
                state["step"], state["seconds"] = step, elapsed()
                save_checkpoint(ckpt, student, opt, rng_at_step, state)
                log.warning("interrupted: checkpoint of step %d saved in %s", step, ckpt)
            raise
    state["seconds"] = elapsed()
    final = state["curve"][-1]["eval"] if state["curve"] else {}
    returned = "last"
    if s.keep_best and state["best_step"] >= 0 and state["best_step"] != step:
        if ckpt is not None:
            _load_weights(student, ckpt / "best" / "student.safetensors")
        elif best_weights is not None:
            student.load_state_dict(best_weights)
        returned = "best"
    elif s.keep_best:
        returned = "best"
    student.eval()
    return TrainResult(
        steps_done=step,
        stopped_by=stopped_by,
        seconds=round(state["seconds"], 2),
        cpu_seconds=state["cpu_seconds"],
        tokens=state["tokens"],
        best_step=state["best_step"],
        best_eval=state["best_eval"] or {},
        final_eval=final,
        curve=state["curve"],
        resumed_from=resumed_from,
        returned=returned,
    )


def _fmt(values: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in values.items())


__all__ = [
    "Evaluator",
    "TrainResult",
    "TrainSettings",
    "load_checkpoint",
    "losses",
    "lr_at",
    "save_checkpoint",
    "train",
]

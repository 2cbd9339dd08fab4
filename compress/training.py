"""The suite's one training loop: zoo fine-tuning, recovery fine-tuning, QLoRA, distillation.

The caller owns the model, the optimizer (its parameter groups and base learning
rates) and the step: ``step_fn(step)`` runs the forward and backward passes of one
optimizer step (over as many micro-batches as it likes) and returns their loss terms.
:func:`train_loop` does the rest, the same way for every caller:

* the learning rate of each parameter group set from ``lr_at(step, base_lr)`` before
  the step, gradients zeroed, clipped to ``max_grad_norm``, the optimizer stepped, then
  ``after_step()`` (e.g. zeros put back);
* a ``rich`` progress bar (a no-op where stderr is not a terminal) and log lines;
* optional held-out evaluation (``evaluate()``, at step 0 and every ``eval_every``
  steps, on a forked RNG so it does not perturb training) with best-so-far tracking:
  the best weights (lowest ``loss``) are kept on disk or in memory and returned;
* optional checkpoints (:mod:`compress.checkpoint`) after each evaluation and on
  Ctrl-C, and resume from them;
* a wall-clock budget (``max_minutes``) and a token budget (``max_tokens``: the loop
  stops after the step that reaches it); every evaluation point of the curve records
  the tokens trained on so far.

Determinism: the loop draws no random numbers of its own; ``step_fn`` must make the
batches of step ``s`` a pure function of ``s`` (and the seed), and the torch RNG
(dropout) is saved at step boundaries, so a run resumed from a checkpoint ends with the
same weights, bit for bit on the CPU, as one never interrupted.

>>> result = train_loop(model, opt, step_fn, LoopSettings(steps=100, lr_at=lambda s, lr: lr))  # doctest: +SKIP
"""

from __future__ import annotations

import collections
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

# the checkpoint writers are looked up on the module at each call, so a test can slow
# them down to kill a process in the middle of one (tests/test_checkpoint_kill.py)
from compress import checkpoint
from compress.checkpoint import (
    CHECKPOINT_VERSION,
    WEIGHTS_FILE,
    identity_mismatch,
    load_checkpoint,
    load_weights,
    restore_optimizer,
    rng_state,
    set_rng_state,
)
from compress.errors import UserError
from compress.fileio import clean_stale_tmp

log = logging.getLogger(__name__)


@dataclass
class StepOut:
    """What one optimizer step's forward/backward passes report."""

    terms: dict[str, float]  # loss terms summed over the step's micro-batches
    micro: int = 1  # micro-batches in the step
    tokens: int = 0


@dataclass
class LoopSettings:
    steps: int
    #: learning rate of a parameter group at ``step``, given the group's base rate.
    lr_at: Callable[[int, float], float]
    max_grad_norm: float = 0.0
    #: the parameters clipped together (default: those of the optimizer, group by group).
    clip_params: Sequence[torch.Tensor] | None = None
    evaluate: Callable[[], dict[str, float]] | None = None
    eval_every: int = 0
    keep_best: bool = False
    checkpoint_dir: Path | None = None
    resume: bool = False
    #: what must match between a checkpoint and a resumed run (config, data, maps).
    identity: dict[str, Any] = field(default_factory=dict)
    #: name of the weights file in checkpoints.
    weights_file: str = WEIGHTS_FILE
    max_minutes: float | None = None
    #: stop after the step at which this many tokens have been trained on.
    max_tokens: int | None = None
    after_step: Callable[[], None] | None = None
    label: str = "train"
    log_every: int = 0
    #: the progress bar shows the mean terms of this many recent steps.
    recent: int = 20
    console: Console | None = None
    #: tests: ``interrupt_at(step)`` raises ``KeyboardInterrupt`` before that step's update.
    interrupt_at: Callable[[int], bool] | None = None


@dataclass
class LoopResult:
    steps_done: int
    stopped_by: str  # "steps" | "time" | "tokens" | "no-steps"
    seconds: float
    cpu_seconds: float
    tokens: int
    best_step: int
    best_eval: dict[str, float]
    final_eval: dict[str, float]
    curve: list[dict[str, Any]]
    resumed_from: int | None
    returned: str  # "best" | "last"
    #: mean loss (``terms["total"]`` per micro-batch) of every step run in this process.
    losses: list[float]


def fmt_terms(values: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in values.items())


def train_loop(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    step_fn: Callable[[int], StepOut],
    settings: LoopSettings,
) -> LoopResult:
    """Train ``model`` in place for ``settings.steps`` optimizer steps (see the module doc).

    On return the model holds the best weights where ``keep_best`` (else the last);
    its train/eval mode is left as training set it.
    """
    return _Loop(model, opt, step_fn, settings).run()


class _Loop:
    def __init__(self, model, opt, step_fn, settings: LoopSettings):
        s = settings
        if not math.isfinite(s.max_minutes or 0.0):
            raise UserError("max_minutes must be a finite number")
        self.model, self.opt, self.step_fn, self.s = model, opt, step_fn, s
        self.base_lrs = [g["lr"] for g in opt.param_groups]
        self.clip = list(s.clip_params) if s.clip_params is not None else [
            p for g in opt.param_groups for p in g["params"]
        ]
        self.device = next((p.device for p in model.parameters()), torch.device("cpu"))
        self.state: dict[str, Any] = {
            "version": CHECKPOINT_VERSION, "step": 0, "seconds": 0.0, "cpu_seconds": 0.0,
            "tokens": 0, "best_step": -1, "best_eval": None, "curve": [],
            "identity": s.identity, "weights_file": s.weights_file,
        }
        self.resumed_from: int | None = None
        self.best_weights: dict[str, torch.Tensor] | None = None
        self.losses: list[float] = []
        self.budget = None if s.max_minutes is None else s.max_minutes * 60.0
        self.console = s.console or Console(stderr=True)

    # -- resume, clock, evaluation -------------------------------------------------
    def resume(self) -> None:
        ckpt = self.s.checkpoint_dir
        if ckpt is None:
            raise UserError("resume needs checkpoint_dir (where the interrupted run saved)")
        saved, opt_t, opt_meta, rng = load_checkpoint(ckpt)
        if clean_stale_tmp(ckpt):  # half-written checkpoints of the killed run
            log.info("removed leftovers of an interrupted checkpoint save in %s", ckpt)
        diff = identity_mismatch(saved.get("identity", {}), self.s.identity)
        if diff:
            raise UserError(
                f"checkpoint in {ckpt} was written by a different run ({', '.join(diff[:4])} "
                "differ); resume with the same settings or use another checkpoint_dir"
            )
        load_weights(self.model, ckpt / "last" / self.s.weights_file)
        restore_optimizer(self.opt, opt_t, opt_meta)
        set_rng_state(rng)
        self.state = saved | {"weights_file": self.s.weights_file}
        self.resumed_from = saved["step"]
        log.info("resumed from step %d of %d", saved["step"], self.s.steps)

    def start_clock(self) -> None:
        self.t_run = time.perf_counter()
        self.seconds_before = self.state["seconds"]
        self.cpu_before, self.c_run = self.state.get("cpu_seconds", 0.0), time.process_time()

    def elapsed(self) -> float:
        # wall clock (what max_minutes limits) and, alongside, this process's CPU time,
        # which on a shared or throttled machine says more about the work done
        self.state["cpu_seconds"] = round(self.cpu_before + time.process_time() - self.c_run, 2)
        return self.seconds_before + time.perf_counter() - self.t_run

    def over_time(self) -> bool:
        return self.budget is not None and time.perf_counter() - self.t_run >= self.budget

    def over_tokens(self) -> bool:
        cap = self.s.max_tokens
        return cap is not None and self.state["tokens"] >= cap

    def evaluate(self, step: int) -> dict[str, float]:
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            ev = self.s.evaluate()
        best = self.state["best_eval"]
        if best is None or ev["loss"] < best["loss"]:
            self.state["best_eval"], self.state["best_step"] = ev, step
            if self.s.keep_best and self.s.checkpoint_dir is not None:
                checkpoint.save_best(self.s.checkpoint_dir, self.model, step, ev,
                                     self.s.weights_file)
            elif self.s.keep_best:
                self.best_weights = {
                    k: v.detach().clone() for k, v in self.model.state_dict().items()
                }
        return ev

    # -- the loop --------------------------------------------------------------------
    def run(self) -> LoopResult:
        s = self.s
        if s.resume:
            self.resume()
        self.start_clock()
        if s.evaluate is not None and self.state["step"] == 0 and not self.state["curve"]:
            ev = self.evaluate(0)
            self.state["curve"].append({"step": 0, "eval": ev, "seconds": 0.0, "tokens": 0})
            self.console.print(f"step 0: eval {fmt_terms(ev)}", highlight=False, markup=False,
                               soft_wrap=True)
        self.stopped_by = "steps" if s.steps > 0 else "no-steps"
        self.model.train()
        with self._progress() as (progress, bar):
            self._steps(progress, bar)
        self.state["seconds"] = self.elapsed()
        return self._result()

    def _steps(self, progress: Progress, bar: Any) -> None:
        s, state = self.s, self.state
        self.sums: dict[str, float] = {}
        self.n_micro = 0
        self.tokens_window, self.t_window = 0, time.perf_counter()
        self.recent: collections.deque = collections.deque(maxlen=max(1, s.recent))
        step = first = state["step"]
        in_update = False
        rng_at_step = rng_state()
        try:
            while step < s.steps:
                # the RNG as of this step boundary: what an interrupt checkpoint must hold
                rng_at_step = rng_state()
                # after a step, _after_update alone decides a stop, so that a stop always
                # follows that step's evaluation and checkpoint (a second clock reading here
                # could stop between them and leave the last steps unsaved)
                if step == first and self.over_time():
                    self.stopped_by = "time"
                    break
                if step == first and self.over_tokens():
                    self.stopped_by = "tokens"
                    break
                if s.interrupt_at is not None and s.interrupt_at(step):
                    raise KeyboardInterrupt
                lr = self._update(step)
                in_update = True
                self.opt.step()
                in_update = False
                if s.after_step is not None:
                    s.after_step()
                step += 1
                state["step"] = step
                if self._after_update(step, lr, progress, bar):
                    break
        except KeyboardInterrupt:
            if s.checkpoint_dir is not None and not in_update and step > 0:
                state["step"], state["seconds"] = step, self.elapsed()
                checkpoint.save_checkpoint(s.checkpoint_dir, self.model, self.opt, rng_at_step,
                                           state)
                log.warning("interrupted: checkpoint of step %d saved in %s", step,
                            s.checkpoint_dir)
            raise

    def _update(self, step: int) -> float:
        """Set the learning rates, run the step's passes and clip; returns the first lr."""
        for g, base in zip(self.opt.param_groups, self.base_lrs, strict=True):
            g["lr"] = self.s.lr_at(step, base)
        self.opt.zero_grad(set_to_none=True)
        out = self.step_fn(step)
        for k, v in out.terms.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.n_micro += out.micro
        self.tokens_window += out.tokens
        self.state["tokens"] += out.tokens
        total = out.terms.get("total", next(iter(out.terms.values()), 0.0))
        self.losses.append(total / max(out.micro, 1))
        self.recent.append({k: v / max(out.micro, 1) for k, v in out.terms.items()})
        if self.s.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.clip, self.s.max_grad_norm)
        return self.opt.param_groups[0]["lr"] if self.opt.param_groups else 0.0

    def _after_update(self, step: int, lr: float, progress: Progress, bar: Any) -> bool:
        """Progress, logging, evaluation and checkpoint after a step; True: stop (time)."""
        s, state = self.s, self.state
        now = time.perf_counter()
        speed = self.tokens_window / max(now - self.t_window, 1e-9)
        recent = {k: sum(r.get(k, 0.0) for r in self.recent) / len(self.recent)
                  for k in self.recent[-1]}
        progress.update(bar, completed=step, terms=fmt_terms(recent),
                        speed=f"{speed:,.0f} tok/s" if self.tokens_window else "")
        if s.log_every and (step % s.log_every == 0 or step == s.steps):
            log.info("%s: step %d/%d %s (%.0f s)", s.label, step, s.steps, fmt_terms(recent),
                     now - self.t_run)
        over_time = self.budget is not None and now - self.t_run >= self.budget
        over_tokens = self.over_tokens()
        boundary = (
            step % max(s.eval_every, 1) == 0 or step == s.steps or over_time or over_tokens
        )
        if boundary and s.evaluate is None and s.checkpoint_dir is not None:
            state["seconds"] = self.elapsed()
            checkpoint.save_checkpoint(s.checkpoint_dir, self.model, self.opt, rng_state(),
                                       state)
        if boundary and s.evaluate is not None:
            state["seconds"] = self.elapsed()
            ev = self.evaluate(step)
            point = {
                "step": step, "lr": lr,
                "train": {k: v / self.n_micro for k, v in self.sums.items()},
                "eval": ev, "seconds": round(state["seconds"], 2), "tokens": state["tokens"],
                "cpu_seconds": state["cpu_seconds"], "tokens_per_s": round(speed, 1),
            }
            state["curve"].append(point)
            msg = (f"step {step}/{s.steps}: train {fmt_terms(point['train'])}; eval "
                   f"{fmt_terms(ev)}; {speed:,.0f} tok/s, {state['seconds']:.0f} s")
            # one line per evaluation, also when stderr is a log file
            progress.console.print(msg, highlight=False, markup=False, soft_wrap=True)
            log.info(msg)
            self.sums, self.n_micro = {}, 0
            self.tokens_window, self.t_window = 0, time.perf_counter()
            if s.checkpoint_dir is not None:
                checkpoint.save_checkpoint(s.checkpoint_dir, self.model, self.opt, rng_state(),
                                           state)
        if over_time:
            self.stopped_by = "time"
        elif over_tokens:
            self.stopped_by = "tokens"
        return over_time or over_tokens

    def _result(self) -> LoopResult:
        s, state = self.s, self.state
        step = state["step"]
        returned = "last"
        if s.keep_best and state["best_step"] >= 0 and state["best_step"] != step:
            if s.checkpoint_dir is not None:
                load_weights(self.model, s.checkpoint_dir / "best" / s.weights_file)
            elif self.best_weights is not None:
                self.model.load_state_dict(self.best_weights)
            returned = "best"
        elif s.keep_best:
            returned = "best"
        return LoopResult(
            steps_done=step,
            stopped_by=self.stopped_by,
            seconds=round(state["seconds"], 2),
            cpu_seconds=state["cpu_seconds"],
            tokens=state["tokens"],
            best_step=state["best_step"],
            best_eval=state["best_eval"] or {},
            final_eval=state["curve"][-1]["eval"] if state["curve"] else {},
            curve=state["curve"],
            resumed_from=self.resumed_from,
            returned=returned,
            losses=self.losses,
        )

    def _progress(self):
        progress = Progress(
            TextColumn(f"[bold]{self.s.label}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[terms]}"),
            TextColumn("{task.fields[speed]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            disable=not self.console.is_terminal,
        )
        return _ProgressBar(progress, self.s.label, self.s.steps, self.state["step"])


class _ProgressBar:
    def __init__(self, progress: Progress, label: str, total: int, start: int):
        self.progress, self.label, self.total, self.start = progress, label, total, start

    def __enter__(self) -> tuple[Progress, Any]:
        self.progress.__enter__()
        task = self.progress.add_task(self.label, total=self.total, completed=self.start,
                                      terms="", speed="")
        return self.progress, task

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)


def linear_warmup_decay(steps: int, warmup_steps: int) -> Callable[[int], float]:
    """The factor ``(s + 1) / warmup`` over the warm-up, then linear decay to 0 at ``steps``
    (the schedule of transformers' ``get_linear_schedule_with_warmup``)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (steps - step) / max(1, steps - warmup_steps))

    return factor


__all__ = [
    "LoopResult",
    "LoopSettings",
    "StepOut",
    "fmt_terms",
    "linear_warmup_decay",
    "train_loop",
]


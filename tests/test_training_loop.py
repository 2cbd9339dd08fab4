"""The shared training loop's stops: a time or token stop always follows a saved checkpoint."""

import json
import time
import types

import pytest
import torch

from compress import training
from compress.training import LoopSettings, StepOut, train_loop


def _run(tmp_path, monkeypatch, budget_ticks: float, evaluate: bool):
    clock = {"t": 0.0}

    def tick() -> float:  # every clock reading advances by one "second"
        clock["t"] += 1.0
        return clock["t"]

    monkeypatch.setattr(training, "time", types.SimpleNamespace(
        perf_counter=tick, process_time=time.process_time))
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(8, 4)

    def step_fn(step: int) -> StepOut:
        loss = model(x).pow(2).mean()
        loss.backward()
        return StepOut({"total": float(loss)}, tokens=8)

    ck = tmp_path / f"b{budget_ticks}-{evaluate}"
    res = train_loop(model, opt, step_fn, LoopSettings(
        steps=10_000, lr_at=lambda s, base: base, eval_every=1000, checkpoint_dir=ck,
        max_minutes=budget_ticks / 60.0,
        evaluate=(lambda: {"loss": float(model(x).pow(2).mean())}) if evaluate else None))
    return res, ck


@pytest.mark.parametrize("evaluate", [True, False])
def test_time_stop_always_checkpoints_its_last_step(tmp_path, monkeypatch, evaluate):
    # every phase of the budget against the loop's clock readings: a stop decided by a
    # reading between a step's checkpoint and the next step would leave steps unsaved
    for budget in range(6, 40):
        res, ck = _run(tmp_path, monkeypatch, budget, evaluate)
        assert res.stopped_by == "time" and res.steps_done > 0, budget
        state = json.loads((ck / "last" / "state.json").read_text())
        assert state["step"] == res.steps_done, budget

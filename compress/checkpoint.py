"""Training checkpoints that resume bit-exactly: safetensors and JSON, never pickle.

A checkpoint folder (``checkpoint_dir`` of :func:`compress.training.train_loop`)::

    last/<weights file>           weights (shared tensors stored once)
    last/optimizer.safetensors    optimizer moments and step counts, flattened
    last/rng.safetensors          torch RNG states (CPU and CUDA) at the step boundary
    last/state.json               step, clock, best, loss curve, what the run was, and
                                  the name of the weights file (``weights_file``)
    best/<weights file>           weights of the best evaluation so far (+ state.json)

``last`` and ``best`` are each replaced atomically (:func:`compress.fileio.atomic_dir`),
so a run killed at any moment (SIGKILL included) leaves the previous complete checkpoint
or the new complete one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors.torch import load_file, load_model, save_file, save_model

from compress.errors import UserError
from compress.fileio import atomic_dir, atomic_write_json, restore_interrupted_dir

CHECKPOINT_VERSION = 1
#: the weights file of a checkpoint unless the loop names another.
WEIGHTS_FILE = "model.safetensors"


def save_weights(model: nn.Module, path: Path) -> None:
    save_model(model, str(path))


def load_weights(model: nn.Module, path: Path) -> None:
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


def restore_optimizer(
    opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict
) -> None:
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
    """Replace ``folder/last`` with the model (in ``state["weights_file"]``), optimizer,
    RNG and loop state."""
    with atomic_dir(folder / "last") as tmp:
        save_weights(model, tmp / state.get("weights_file", WEIGHTS_FILE))
        tensors, meta = _optimizer_tensors(opt)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        save_file(rng, str(tmp / "rng.safetensors"))
        atomic_write_json(tmp / "state.json", state | {"optimizer": meta})


def save_best(folder: Path, model: nn.Module, step: int, ev: dict[str, float],
              weights: str = WEIGHTS_FILE) -> None:
    """Replace ``folder/best`` with the model's weights and the evaluation that made it best."""
    with atomic_dir(folder / "best") as tmp:
        save_weights(model, tmp / weights)
        atomic_write_json(tmp / "state.json", {"step": step, "eval": ev})


def rng_state() -> dict[str, torch.Tensor]:
    out = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"cuda.{i}"] = s
    return out


def set_rng_state(rng: Mapping[str, torch.Tensor]) -> None:
    torch.set_rng_state(rng["cpu"])
    cuda = [rng[k] for k in sorted(rng) if k.startswith("cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def load_checkpoint(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict, dict]:
    """(state, optimizer tensors, optimizer meta, rng) of ``folder/last``."""
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


def identity_mismatch(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The keys of two run identities that differ (a checkpoint from another run)."""
    keys = sorted(set(saved) | set(now))
    return [k for k in keys if saved.get(k) != now.get(k)]

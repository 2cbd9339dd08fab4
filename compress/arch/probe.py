"""One traced forward on probe inputs: what every linear, activation and block saw.

Discovery reads names and shapes first; where they do not tell (which input
projection goes through the activation, which attention reads the encoder, whether a
block runs more than once per forward, whether attention is causal, how a fused qkv
projection orders its rows) it looks at one forward of the model on a few random token
ids. Every hook is removed before returning, the model's train/eval flags are
restored, and no global random state is touched.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

log = logging.getLogger(__name__)

ENC_LEN, DEC_LEN = 9, 5


@dataclass
class Record:
    order: int  # position in call order (first call)
    inp: torch.Tensor | None
    out: torch.Tensor | None
    calls: int = 1


@dataclass
class BlockCall:
    args: tuple
    kwargs: dict
    out: torch.Tensor | None


@dataclass
class Trace:
    records: dict[str, Record] = field(default_factory=dict)  # full module name -> record
    blocks: dict[str, BlockCall] = field(default_factory=dict)  # first call of each block
    block_calls: dict[str, int] = field(default_factory=dict)
    enc_len: int = ENC_LEN
    dec_len: int = DEC_LEN


def _first_tensor(x: Any) -> torch.Tensor | None:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (tuple, list)) and x and isinstance(x[0], torch.Tensor):
        return x[0]
    if hasattr(x, "last_hidden_state"):
        return x.last_hidden_state
    return None


def forward_kwargs(model: nn.Module) -> dict[str, Any]:
    """``use_cache=False`` where the model takes it (a cache is not what we probe)."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return {}
    if "use_cache" in params or any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return {"use_cache": False}
    return {}


def probe_inputs(model: nn.Module, seq2seq: bool, seed: int = 0,
                 last_token: int | None = None) -> dict[str, torch.Tensor]:
    """A batch of one random sequence (decoder inputs of another length for seq2seq)."""
    from compress.models import input_device

    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    vocab = int(getattr(emb, "num_embeddings", 0) or getattr(model.config, "vocab_size", 0) or 100)
    g = torch.Generator().manual_seed(seed)
    lo = min(5, vocab - 1)
    ids = torch.randint(lo, vocab, (1, ENC_LEN), generator=g)
    if last_token is not None:
        ids[0, -1] = last_token
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if seq2seq:
        inputs["decoder_input_ids"] = torch.randint(lo, vocab, (1, DEC_LEN), generator=g)
    device = input_device(model)
    return {k: v.to(device) for k, v in inputs.items()}


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, t in flags.items():
            m.training = t


def run(model: nn.Module, watch: dict[str, nn.Module], blocks: dict[str, nn.Module],
        seq2seq: bool, keep_tensors: bool = True, last_token: int | None = None) -> Trace:
    """One forward with hooks on ``watch`` (records) and ``blocks`` (first call and count)."""
    trace = Trace()
    counter = [0]
    handles: list[Any] = []

    def on_module(name: str):
        def hook(_m: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
            rec = trace.records.get(name)
            if rec is not None:
                rec.calls += 1
                return
            x = args[0] if args else next(iter(kwargs.values()), None)
            x = x if isinstance(x, torch.Tensor) else None
            y = _first_tensor(out)
            trace.records[name] = Record(
                counter[0],
                x.detach() if (x is not None and keep_tensors) else None,
                y.detach() if (y is not None and keep_tensors) else None,
            )
            counter[0] += 1
        return hook

    def on_block(name: str):
        def hook(_m: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
            trace.block_calls[name] = trace.block_calls.get(name, 0) + 1
            if name not in trace.blocks:
                y = _first_tensor(out)
                trace.blocks[name] = BlockCall(args, kwargs, y.detach() if y is not None else None)
        return hook

    try:
        for name, m in watch.items():
            handles.append(m.register_forward_hook(on_module(name), with_kwargs=True))
        for name, m in blocks.items():
            handles.append(m.register_forward_hook(on_block(name), with_kwargs=True))
        with torch.no_grad(), eval_mode(model):
            model(**probe_inputs(model, seq2seq, last_token=last_token), **forward_kwargs(model))
    finally:
        for h in handles:
            h.remove()
    return trace


def is_causal(model: nn.Module, last_block: str, block: nn.Module, first: Trace) -> bool | None:
    """Whether changing the last token leaves earlier positions of the stack's output alone."""
    ref = first.blocks.get(last_block)
    if ref is None or ref.out is None or ref.out.dim() < 3 or ref.out.shape[1] < 2:
        return None
    ids = probe_inputs(model, False)["input_ids"]
    other = int(ids[0, -1]) + 1
    vocab = int(getattr(model.get_input_embeddings(), "num_embeddings", other + 1))
    if other >= vocab:
        other = max(int(ids[0, -1]) - 1, 0)
    again = run(model, {}, {last_block: block}, False, last_token=other)
    out = again.blocks[last_block].out
    if out is None or out.shape != ref.out.shape:
        return None
    head_same = torch.allclose(out[:, :-1], ref.out[:, :-1], rtol=1e-4, atol=1e-5)
    tail_same = torch.allclose(out[:, -1:], ref.out[:, -1:], rtol=1e-4, atol=1e-5)
    if tail_same:
        return None  # the token change did not reach the output: cannot tell
    return bool(head_same)


def rerun_block(block: nn.Module, call: BlockCall, watch: nn.Module) -> torch.Tensor | None:
    """Run ``block`` on its recorded first call; return the input ``watch`` received."""
    seen: list[torch.Tensor] = []

    def hook(_m: nn.Module, args: tuple, kwargs: dict) -> None:
        x = args[0] if args else next(iter(kwargs.values()), None)
        if isinstance(x, torch.Tensor) and not seen:
            seen.append(x.detach().clone())

    h = watch.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            block(*call.args, **call.kwargs)
    finally:
        h.remove()
    return seen[0] if seen else None

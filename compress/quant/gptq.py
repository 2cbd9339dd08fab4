"""GPTQ: error-compensating weight quantization with second-order updates.

Frantar, Ashkboos, Hoefler, Alistarh (2022), "GPTQ: Accurate Post-Training Quantization
for Generative Pre-trained Transformers". For a linear layer with calibration inputs
``X`` (``[in, tokens]``) it quantizes the weight one input column at a time and spreads
each column's rounding error over the not-yet-quantized columns, using the inverse of
the Hessian of the layer's squared output error, ``H = 2 X X^T``:

    err      = (w[:, j] - q(w[:, j])) / Hinv[j, j]
    w[:, j:] -= err  Hinv[j, j:]                       # OBS update, upper Cholesky of H^-1

Columns are processed in blocks of ``blocksize``; updates to columns past the block
are applied once per block (lazy batch updates). ``act_order`` quantizes columns in
order of decreasing ``diag(H)``. ``H`` is dampened by ``damp * mean(diag(H))``.

:func:`gptq_model` runs this block by block over the model: the calibration inputs of
block ``i`` are the outputs of block ``i - 1`` *after* it was quantized, collected with
hooks on one block at a time (all removed at the end).
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn as nn

from compress.arch import arch_for, routed_through_proxies
from compress.quant import calib
from compress.quant.packing import INDEX_BYTES, layer_bytes
from compress.quant.rtn import (
    QuantSpec,
    dequantize_rows,
    quantize_rows,
    scale_zero,
    set_weight_matrix,
    weight_matrix,
)

log = logging.getLogger(__name__)


class HessianAccumulator:
    """Running ``H = 2/n sum x x^T`` over the rows of a layer's inputs."""

    def __init__(self, in_features: int):
        self.in_features = in_features
        self.H: torch.Tensor | None = None  # made on the first input's device
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).to(torch.float64)  # (tokens, in)
        if self.H is None:
            self.H = torch.zeros(self.in_features, self.in_features, dtype=torch.float64,
                                 device=x.device)
        m = x.shape[0]
        self.H *= self.n / (self.n + m)
        self.n += m
        x = math.sqrt(2 / self.n) * x
        self.H += x.t() @ x


def gptq_quantize(
    W: torch.Tensor,
    H: torch.Tensor,
    spec: QuantSpec,
    *,
    blocksize: int = 128,
    damp: float = 0.01,
    act_order: bool = False,
) -> tuple[torch.Tensor, float]:
    """Quantize ``W`` (``[out, in]``) given Hessian ``H`` (``[in, in]``).

    Returns (dequantized weights ``[out, in]`` in float32, summed OBS loss).
    """
    W = W.detach().clone().float()
    H = H.detach().clone().double()
    out_f, in_f = W.shape
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0

    perm = None
    if act_order:
        perm = torch.argsort(torch.diag(H), descending=True)
        W = W[:, perm]
        H = H[perm][:, perm]

    # fixed parameters for per-tensor / per-channel grids (computed on the original W).
    if spec.granularity == "tensor":
        s, z = scale_zero(W.reshape(1, -1), spec)
        scale, zero = s.expand(out_f, 1), z.expand(out_f, 1)
    elif spec.granularity == "channel":
        scale, zero = scale_zero(W, spec)  # (out, 1)
    else:
        scale = zero = None

    Hinv = _inverse_cholesky(H, damp).float()

    Q = torch.zeros_like(W)
    loss = 0.0
    g = spec.group_size
    for i1 in range(0, in_f, blocksize):
        i2 = min(i1 + blocksize, in_f)
        W1 = W[:, i1:i2].clone()  # (out, count)
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if spec.granularity == "group" and col % g == 0:
                # the group's current (error-updated) values: the rest of this block,
                # then columns past it, which carry all updates up to the last block.
                group = torch.cat([W1[:, i:], W[:, i2:]], dim=1)[:, :g]
                scale, zero = scale_zero(group, spec)
            w = W1[:, i : i + 1]  # (out, 1)
            d = Hinv1[i, i]
            q = dequantize_rows(quantize_rows(w, scale, zero, spec), scale, zero)
            Q1[:, i : i + 1] = q
            err = (w - q) / d
            loss += float((err.pow(2) * d * d).sum() / 2)
            W1[:, i:] -= err @ Hinv1[i : i + 1, i:]
            Err1[:, i : i + 1] = err
        Q[:, i1:i2] = Q1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]

    if perm is not None:
        Q = Q[:, torch.argsort(perm)]
    return Q, loss


def _inverse_cholesky(H: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + lambda I)^-1``, ``lambda = damp * mean(diag(H))``.

    With fewer calibration tokens than input features ``H`` is singular; if the
    factorization fails, the dampening grows tenfold until it succeeds (as other GPTQ
    implementations do), and the value used is logged.
    """
    eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    mean = float(torch.mean(torch.diag(H)))
    lam = max(damp * mean, 1e-10 * mean, 1e-12)
    for _ in range(20):
        L, info = torch.linalg.cholesky_ex(H + lam * eye)
        if int(info) == 0:
            inv = torch.cholesky_inverse(L)
            U, info = torch.linalg.cholesky_ex(inv, upper=True)
            if int(info) == 0:
                if lam > damp * mean * 1.0001:
                    log.info("gptq: Hessian dampening raised to %.3g x mean diagonal", lam / mean)
                return U
        lam *= 10
    raise RuntimeError("gptq: the Hessian stays singular after dampening; give more calibration text")


class _Stop(Exception):
    pass


def _no_cache(value):
    """``None`` for a key/value cache object, else ``value``.

    A block replayed with the cache recorded at capture time would append its keys to
    it again and, worse, read cross-attention keys/values cached on the first run
    instead of computing them: the cross-attention ``k``/``v`` linears would then see
    no calibration input at all (the cause of a bert2bert GPTQ collapse).
    """
    from transformers.cache_utils import Cache

    return None if isinstance(value, Cache) else value


def _capture_stack(model, blocks, batches):
    """Run the model on every batch, recording each block's call; stop after the stack.

    Returns (hidden inputs of block 0 per batch, per-block per-batch (args, kwargs,
    hidden_is_positional)). Other arguments (masks, position embeddings, T5's
    position bias, a seq2seq decoder's encoder states) do not depend on this stack's
    linear weights, so the recorded ones are reused while the stack is quantized.
    """
    calls: list[list] = [[] for _ in blocks]
    hidden0: list[torch.Tensor] = []
    last = len(blocks) - 1

    def make(i):
        def hook(_mod, args, kwargs):
            positional = len(args) > 0
            h = args[0] if positional else kwargs["hidden_states"]
            rest_kwargs = {k: _no_cache(v) for k, v in kwargs.items() if k != "hidden_states"}
            if "use_cache" in rest_kwargs:
                rest_kwargs["use_cache"] = False
            calls[i].append((tuple(_no_cache(a) for a in args[1:]), rest_kwargs, positional))
            if i == 0:
                hidden0.append(h.detach())
            if i == last:
                raise _Stop

        return hook

    handles = [b.register_forward_pre_hook(make(i), with_kwargs=True) for i, b in enumerate(blocks)]
    with calib.hooks(handles):
        for batch in batches:
            try:
                calib.forward(model, batch)
            except _Stop:
                pass
    return hidden0, calls


def _run_block(block, hidden, call):
    args, kwargs, positional = call
    with torch.no_grad():
        out = block(hidden, *args, **kwargs) if positional else block(*args, hidden_states=hidden, **kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


def gptq_model(
    model: nn.Module,
    targets: dict[str, nn.Module],
    spec: QuantSpec,
    batches: list[dict[str, torch.Tensor]],
    *,
    blocksize: int = 128,
    damp: float = 0.01,
    act_order: bool = False,
) -> tuple[dict[str, dict[str, int]], list[str]]:
    """Quantize ``targets`` (full name -> module) block by block.

    Returns (packed bytes per module, names of the linears no calibration input reached,
    which were rounded to nearest instead).
    """
    arch = arch_for(model)
    packed: dict[str, dict[str, int]] = {}
    uncalibrated: list[str] = []
    for stack in arch.stacks:
        list_name, blocks = stack.path, model.get_submodule(stack.path)
        if stack.shared:
            hidden, calls = [], [[] for _ in blocks]  # replayed below as whole-model passes
        else:
            with routed_through_proxies(model):
                hidden, calls = _capture_stack(model, blocks, batches)
            if not hidden:
                raise RuntimeError(f"gptq: calibration never reached {list_name}")
        for i, block in enumerate(blocks):
            prefix = f"{list_name}.{i}."
            layers = {n: m for n, m in targets.items() if n.startswith(prefix)}
            acc = {name: HessianAccumulator(weight_matrix(m).shape[1]) for name, m in layers.items()}

            def make(a: HessianAccumulator):
                return lambda _mod, args: a.add(args[0])

            handles = [m.register_forward_pre_hook(make(acc[name])) for name, m in layers.items()]
            with calib.hooks(handles), routed_through_proxies(model):
                if stack.shared:  # one block run many times: every call adds to its Hessians
                    for batch in batches:
                        calib.forward(model, batch)
                for h, call in zip(hidden, calls[i], strict=False):
                    _run_block(block, h, call)
            for name, m in layers.items():
                W = weight_matrix(m)
                H = acc[name].H
                if H is None:
                    # never reached by calibration (an expert no token was routed to):
                    # an identity Hessian spreads no error, which is plain rounding.
                    uncalibrated.append(name)
                    H = torch.eye(W.shape[1], dtype=torch.float64, device=W.device)
                Q, loss = gptq_quantize(W, H, spec, blocksize=blocksize, damp=damp,
                                        act_order=act_order)
                with torch.no_grad():
                    set_weight_matrix(m, Q)
                out_f, in_f = W.shape
                packed[name] = layer_bytes(out_f, in_f, spec)
                if act_order and spec.granularity == "group":
                    # groups follow activation order: a packed format needs each column's group.
                    packed[name]["g_idx"] = INDEX_BYTES * in_f
                    packed[name]["total"] += INDEX_BYTES * in_f
                log.debug("gptq %s loss %.4g", name, loss)
            with routed_through_proxies(model):
                hidden = [_run_block(block, h, call)
                          for h, call in zip(hidden, calls[i], strict=False)]
    missing = set(targets) - set(packed)
    if missing:
        raise RuntimeError(f"gptq: {len(missing)} targeted linears sit outside the blocks: "
                           f"{sorted(missing)[:3]}")
    if uncalibrated:
        log.warning("gptq: %d linears saw no calibration input and were rounded to nearest: %s",
                    len(uncalibrated), ", ".join(uncalibrated[:5]))
    return packed, uncalibrated

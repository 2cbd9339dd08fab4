"""Hidden-dimension pruning: remove channels of the residual stream, physically.

Minitron's width axis (Muralidharan et al. 2024, "Compact Language Models via Pruning
and Knowledge Distillation", arXiv:2407.14679, section 2: "embedding channels"): one
set of channels leaves every tensor that reads or writes the residual stream, the
embeddings, every norm, every projection's input (q, k, v, FFN in/gate, LM head) and
output (attention o, FFN out), so all blocks keep one width.

Which tensor axes follow the hidden size is found from the model's own config, not
from a table: two weightless (meta-device) copies of the model are built, one from
its config and one with the hidden size smaller by ``delta``; every parameter and
buffer axis whose length changes by exactly ``delta`` is a hidden axis
(:mod:`compress.pruning.hidden_plan`). Where the config derives the head size as
hidden / heads (BERT, GPT-2, OPT, BART, bert2bert, falcon: no field holds it apart),
channels leave with whole heads: ``hidden_ratio`` removes the least important heads
from every attention module (:mod:`compress.pruning.surgery`, checked exact), then
``head size`` channels per head, so the head size stays and the config's head count
and width both state the result. Any other derived size (an FFN width of 4 x hidden
with no field for it, BLOOM; grouped KV heads of size hidden / heads) is refused in one
line rather than pruned into something a reload would not rebuild. After removal
``model.config`` states the new sizes (an unset FFN width such as GPT-2's ``n_inner``
is written, and another size equal to the hidden one that must follow it, OPT's
``word_embed_proj_dim``, follows), tensors a save leaves out (sinusoidal position
tables) are recomputed for the new width as a reload computes them, and
``save_pretrained`` / ``from_pretrained`` reload the model with plain transformers.

Importance (lower goes first), one score per channel, summed over the stacks:

* ``activation`` (Minitron's): the mean absolute value of each channel at the input
  of every linear that reads the residual stream (the normalised stream in pre-norm
  blocks, what Minitron reads at the LayerNorm outputs), padding excluded, summed
  over those linears; calibration text from :mod:`compress.calibration`;
* ``magnitude``: per tensor, the mean squared weight of each channel, summed over the
  hidden-axis tensors (no calibration).

Removing channels changes what every norm divides by (the mean over fewer channels),
so :func:`rescale_norms` scales each norm by the removed channels' share of its input
energy, measured on the same calibration tokens: exact for RMS norms when the removed
channels carry nothing (a test checks the logits), an expectation otherwise. The result
is still not the dense model with some weights zeroed, as FFN neuron or head removal
is (:mod:`compress.pruning.surgery`); Minitron recovers with distillation from the
dense model (the ``recover`` recipe, which projects the student's narrower hidden
states onto the teacher's).

Configs whose head size is ``hidden / heads`` but which read an explicit ``head_dim``
when one is present (qwen2, olmo2, phi, ...) get ``head_dim`` written, so the heads
keep their size. Kept widths are multiples of the heads' least common multiple, since
configs such as transformers' llama check ``hidden % heads == 0``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from compress.arch import arch_for
from compress.arch.weights import is_transposed
from compress.errors import UserError
from compress.pruning.hidden_plan import MODULE_HIDDEN_ATTRS, HiddenPlan, plan_hidden

__all__ = ["HiddenPlan", "plan_hidden", "activation_importance", "magnitude_importance",
           "norm_modules", "norm_input_energy", "rescale_norms", "channels_removed",
           "keep_channels", "shrink_hidden", "check_rebuilds"]

# --- importance ---------------------------------------------------------------------------


@torch.no_grad()
def activation_importance(model: nn.Module, plan: HiddenPlan, batches: list) -> torch.Tensor:
    """Per channel: mean |x| at the input of each residual-stream reader, summed."""
    if not plan.readers:
        raise UserError("no linear reads the residual stream here; use importance=magnitude")
    means = _input_means(model, plan.readers, batches, torch.abs)
    if not means:
        raise UserError("no calibration activations reached the residual-stream readers")
    return sum(means.values())


def _input_means(model: nn.Module, modules: dict[str, tuple[nn.Module, str]], batches: list,
                 fn) -> dict[str, torch.Tensor]:
    """Per module: the mean over real tokens of ``fn(input)``, per channel."""
    from compress.sequential import collect_model_inputs

    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def add(name: str, x: torch.Tensor) -> None:
        s = fn(x).sum(0)
        sums[name] = sums[name] + s if name in sums else s
        counts[name] = counts.get(name, 0) + x.shape[0]

    collect_model_inputs(model, batches, modules, add)
    return {n: sums[n].cpu() / max(counts[n], 1) for n in sums}


@torch.no_grad()
def magnitude_importance(model: nn.Module, plan: HiddenPlan) -> torch.Tensor:
    """Per channel: each hidden-axis weight's mean square over its other axes, summed."""
    score = torch.zeros(plan.hidden)
    seen: set[int] = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if name not in plan.axes or id(p) in seen or p.dim() < 2:
            continue
        seen.add(id(p))
        for ax in plan.axes[name]:
            sq = p.detach().float().pow(2).movedim(ax, 0).reshape(plan.hidden, -1).mean(1)
            score += sq.cpu()
    return score


# --- norms --------------------------------------------------------------------------------


def norm_modules(model: nn.Module, plan: HiddenPlan) -> dict[str, tuple[nn.Module, str]]:
    """Modules whose own parameters are all hidden-sized vectors (RMSNorm, LayerNorm),
    with the role whose padding mask fits their input."""
    spec = arch_for(model)
    prefixes = sorted(((s.path.rsplit(".", 1)[0] if "." in s.path else "", s.role)
                       for s in spec.stacks), key=lambda p: -len(p[0]))
    last = "encoder" if spec.kind == "encoder" else "decoder"
    out = {}
    for name, module in model.named_modules():
        own = [(f"{name}.{p}" if name else p, t) for p, t in module._parameters.items()
               if t is not None]
        if own and "weight" in module._parameters and all(
                t.dim() == 1 and plan.axes.get(full) == (0,) for full, t in own):
            role = next((r for pre, r in prefixes if pre and name.startswith(pre + ".")), last)
            out[name] = (module, role)
    return out


@torch.no_grad()
def norm_input_energy(model: nn.Module, norms: dict[str, tuple[nn.Module, str]],
                      batches: list) -> dict[str, torch.Tensor]:
    """Mean squared input of each channel at each norm (padding excluded)."""
    return _input_means(model, norms, batches, torch.square)


@torch.no_grad()
def rescale_norms(norms: dict[str, tuple[nn.Module, str]], energy: dict[str, torch.Tensor],
                  keep: torch.Tensor, old: int) -> dict[str, float]:
    """After removal, scale each norm's output so a kept channel's expected output stays.

    A norm divides by the root mean square over its channels: removing channels of
    input energy ``E_gone`` (of ``E_all``) changes that divisor, in expectation, by
    ``sqrt((1 - E_gone / E_all) * old / new)``; the norm's weight (and bias) is scaled by
    that factor. Exact for an RMS norm when the removed channels carry nothing; for a
    mean-centring LayerNorm an approximation. The scaling is checked on a probe input
    (an ``x * (1 + w)`` parametrisation, Gemma's, is recognised and scaled as such); a
    norm whose output does not scale is left as it is. Returns the factors applied.
    """
    new = len(keep)
    applied: dict[str, float] = {}
    for name, (module, _) in norms.items():
        e = energy.get(name)
        if e is None or float(e.sum()) <= 0:
            continue
        k = math.sqrt(float(e[keep].sum() / e.sum()) * old / new)
        if _scale_output(module, k, new):
            applied[name] = round(k, 6)
    return applied


def _scale_output(module: nn.Module, k: float, width: int) -> bool:
    w = module.weight
    b = getattr(module, "bias", None)
    probe = torch.randn(3, width, generator=torch.Generator().manual_seed(0)).to(w.device, w.dtype)
    saved = (w.detach().clone(), None if b is None else b.detach().clone())
    ref = module(probe).float()
    for form in ("linear", "one-plus"):
        if form == "linear":
            w.mul_(k)
        else:
            w.copy_((saved[0].float() * k + (k - 1)).to(w.dtype))
        if isinstance(b, torch.Tensor):
            b.copy_(saved[1] * k)
        got = module(probe).float()
        if torch.allclose(got, ref * k, rtol=1e-3, atol=1e-5 * float(ref.abs().max() + 1)):
            return True
        w.copy_(saved[0])
        if isinstance(b, torch.Tensor):
            b.copy_(saved[1])
    return False


# --- removal ------------------------------------------------------------------------------


def channels_removed(plan: HiddenPlan, ratio: float) -> int:
    """Channels ``hidden_ratio`` removes: the kept width rounded to the plan's multiple."""
    kept = plan.kept_width(plan.hidden * (1 - ratio))
    if kept >= plan.hidden:
        raise UserError(f"hidden_ratio={ratio:g} removes no hidden channel of {plan.hidden} "
                        f"(kept widths are multiples of {plan.multiple}); the smallest step is "
                        f"{plan.multiple / plan.hidden:.3g}")
    return plan.hidden - kept


def keep_channels(score: torch.Tensor, remove: int) -> torch.Tensor:
    """Sorted indices of the channels kept: all but the ``remove`` lowest scores."""
    order = torch.argsort(score.float(), stable=True)
    return order[remove:].sort().values


@torch.no_grad()
def shrink_hidden(model: nn.Module, plan: HiddenPlan, keep: torch.Tensor) -> int:
    """Keep residual channels ``keep`` everywhere; returns the new hidden size."""
    new: dict[int, torch.Tensor] = {}
    keep = keep.long()
    for mod_name, module in model.named_modules():
        for store, is_param in ((module._parameters, True), (module._buffers, False)):
            for pname, t in list(store.items()):
                full = f"{mod_name}.{pname}" if mod_name else pname
                if t is None or full not in plan.axes:
                    continue
                if id(t) not in new:
                    data = t.detach()
                    for ax in plan.axes[full]:
                        data = data.index_select(ax, keep.to(data.device))
                    data = data.contiguous()
                    new[id(t)] = (nn.Parameter(data, requires_grad=t.requires_grad)
                                  if is_param else data)
                store[pname] = new[id(t)]
        _fix_sizes(module)
    width = len(keep)
    for cfg, name in plan.config_attrs:
        setattr(cfg, name, width)
    for cfg, name, value in plan.explicit:
        setattr(cfg, name, value)
    if plan.coupled:  # the heads left with the channels: the config says so itself now
        from compress.pruning.surgery import PRUNED_HEADS_ATTR

        for cfg, name in plan.head_attrs:
            setattr(cfg, name, width // plan.head_size)
        if hasattr(model.config, PRUNED_HEADS_ATTR):
            delattr(model.config, PRUNED_HEADS_ATTR)
    for module in model.modules():
        for attr in MODULE_HIDDEN_ATTRS:
            value = getattr(module, attr, None)
            if isinstance(value, int) and not isinstance(value, bool) and value == plan.hidden:
                try:
                    setattr(module, attr, width)
                except AttributeError:  # a read-only property
                    pass
        _rescale_derived(module, plan.hidden, width)
        _fix_sizes(module)  # an embedding's own size is its weight's, whatever the width
    _reinit_unsaved(model, plan)
    return width


def _unsaved(model: nn.Module) -> set[str]:
    """Tensors ``save_pretrained`` leaves out (non-persistent buffers, the model's
    ``_keys_to_ignore_on_save``): a reload computes them afresh."""
    import re

    out = {f"{mod_name}.{b}" if mod_name else b for mod_name, module in model.named_modules()
           for b in module._non_persistent_buffers_set}
    ignore = getattr(model, "_keys_to_ignore_on_save", None) or ()
    out |= {n for n, _ in model.named_parameters() if any(re.search(p, n) for p in ignore)}
    return out


@torch.no_grad()
def _reinit_unsaved(model: nn.Module, plan: HiddenPlan) -> None:
    """Hidden-axis tensors that a save leaves out (sinusoidal position tables of M2M100,
    XGLM, Marian) are recomputed for the new width, as a reload computes them, by the
    model's own ``_init_weights``; the module's saved tensors are kept as they are."""
    unsaved = _unsaved(model) & set(plan.axes)
    init = getattr(model, "_init_weights", None)
    for owner in sorted({n.rsplit(".", 1)[0] if "." in n else "" for n in unsaved}):
        module = model.get_submodule(owner)
        kept = {n: t.detach().clone() for n, t in list(module.named_parameters(recurse=False))
                + list(module.named_buffers(recurse=False))
                if f"{owner}.{n}" not in unsaved}
        try:
            if init is None:
                raise TypeError("no _init_weights")
            init(module)
        except Exception as exc:  # noqa: BLE001 - one line naming what could not be rebuilt
            raise UserError(f"{owner} is recomputed on reload and could not be rebuilt for "
                            f"the new width ({type(exc).__name__}); use hidden_ratio=0") from None
        for n, t in kept.items():
            getattr(module, n).copy_(t)


#: powers of the hidden size that modules keep as scalars (Gemma's and BART's embedding
#: scale sqrt(hidden), T5-style hidden ** -0.5).
_POWERS = (0.5, -0.5)


def _rescale_derived(module: nn.Module, old: int, new: int) -> None:
    """Scalars a module computed from the hidden size at construction follow the new size,
    as a reload from the new config computes them."""
    def moved(value: float) -> float | None:
        for p in _POWERS:
            if math.isclose(value, old ** p, rel_tol=1e-6):
                return float(new ** p)
        return None

    for name, buf in list(module._buffers.items()):
        if isinstance(buf, torch.Tensor) and buf.dim() == 0 and buf.is_floating_point() \
                and buf.device.type != "meta":
            value = moved(float(buf))
            if value is not None:
                module._buffers[name] = torch.tensor(value, dtype=buf.dtype, device=buf.device)
    for name, value in list(vars(module).items()):
        if isinstance(value, float) and not name.startswith("_"):
            v = moved(value)
            if v is not None:
                setattr(module, name, v)


def _fix_sizes(module: nn.Module) -> None:
    """Size attributes of torch's own modules follow their (sliced) weights."""
    w = getattr(module, "weight", None)
    if not isinstance(w, torch.Tensor):
        return
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = w.shape
    elif isinstance(module, nn.Embedding):
        module.embedding_dim = w.shape[1]
    elif is_transposed(module):  # GPT-2's Conv1D: weight [in, out]
        module.nx, module.nf = w.shape
    elif isinstance(getattr(module, "normalized_shape", None), tuple) and w.dim() == 1:
        module.normalized_shape = (w.shape[0],)


def check_rebuilds(model: nn.Module) -> None:
    """The config must rebuild every tensor's shape, and the forward must run."""
    from compress.pruning.surgery import _probe, _shape_mismatch

    bad = _shape_mismatch(model)
    if bad is not None:
        raise UserError(f"hidden-dimension pruning left {bad} unlike what the config builds; "
                        "use hidden_ratio=0")
    try:
        out = _probe(model)
    except Exception as exc:  # noqa: BLE001 - a forward that breaks is the failure we report
        raise UserError(f"after hidden-dimension pruning the forward fails "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); use "
                        "hidden_ratio=0") from None
    if not bool(torch.isfinite(out).all()):
        raise UserError("after hidden-dimension pruning the outputs are not finite; use a "
                        "smaller hidden_ratio")

"""Find a model's architecture from the model itself.

1. **Stacks.** The ``nn.ModuleList``s whose items each hold two or more linears (the
   outermost such lists; classes in the model's ``_no_split_modules`` are what
   accelerate treats as blocks too). An encoder-decoder's encoder stack is the one
   inside ``model.get_encoder()``.
2. **One traced forward** on a few random token ids (:mod:`compress.arch.probe`)
   records what every linear, activation and FFN module of one block of each distinct
   shape saw, and how many times each block ran (weights shared across depth, ALBERT).
   A second forward with the last token changed tells causal attention (a decoder)
   from bidirectional (an encoder).
3. **Roles inside a block** (:mod:`compress.arch.roles`): names and shapes, settled by
   the trace where they are ambiguous.
4. **Heads and sizes** from the attention modules' own attributes and the projection
   shapes, cross-checked with the config; the config attributes that hold each size
   are found by value (:mod:`compress.arch.confignames`).
5. **Fused qkv row order** by perturbation: zeroing the rows that one hypothesis says
   hold head ``h``'s values must zero exactly head ``h``'s columns of the output
   projection's input.

A model on the meta device (built from a config only) or one whose probe forward
fails is read from names and shapes alone (``ArchSpec.method == "names"``).
Discovery runs once per model and structure; the result is cached until the model's
modules or shapes change.

The override table (:mod:`compress.arch.overrides`) corrects discovery where it is
wrong; every entry has a test showing why.
"""

from __future__ import annotations

import json
import logging
import weakref
from typing import Any

import torch
import torch.nn as nn
from transformers import PretrainedConfig
from transformers.models.auto import modeling_auto

from compress.arch import probe
from compress.arch.confignames import read_hidden, stack_names
from compress.arch.roles import BlockContext, find_hints, find_layout
from compress.arch.spec import ArchSpec, AttnLayout, BlockLayout, StackSpec
from compress.arch.util import in_out, is_linear
from compress.errors import UserError

log = logging.getLogger(__name__)

_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


# --- stacks ---------------------------------------------------------------------------------


def _n_linears(m: nn.Module) -> int:
    return sum(1 for x in m.modules() if is_linear(x)) + sum(
        1 for x in m.modules() for p in x.parameters(recurse=False) if p.dim() == 3)


def block_lists(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """Outermost ``nn.ModuleList``s of blocks (items with two or more linears each)."""
    found = []
    for name, m in model.named_modules():
        if not isinstance(m, nn.ModuleList) or len(m) == 0:
            continue
        kids = list(m)
        if any(isinstance(k, (nn.ModuleList, nn.ModuleDict)) for k in kids):
            continue
        if all(_n_linears(k) >= 2 for k in kids):
            found.append((name, m))
    outer = [(n, m) for n, m in found if not any(n.startswith(o + ".") for o, _ in found if o != n)]
    if not outer:
        return []
    size = {n: sum(p.numel() for p in m.parameters()) for n, m in outer}
    biggest = max(size.values())
    return [(n, m) for n, m in outer if size[n] >= 0.05 * biggest]


def _is_seq2seq(model: nn.Module) -> bool:
    cfg = getattr(model, "config", None)
    return bool(getattr(cfg, "is_encoder_decoder", False))


def _encoder_path(model: nn.Module) -> str | None:
    get = getattr(model, "get_encoder", None)
    if not callable(get):
        return None
    try:
        enc = get()
    except Exception:  # noqa: BLE001 - a model without an encoder says so in many ways
        return None
    if enc is None or enc is model:
        return None
    return next((n for n, m in model.named_modules() if m is enc), None)


def _causal_by_class(model: nn.Module) -> bool:
    cfg = model.config
    if getattr(cfg, "is_decoder", False):
        return True
    name = type(model).__name__
    if name.endswith(("ForCausalLM", "LMHeadModel")):
        return True
    mt = getattr(cfg, "model_type", "")
    causal = mt in modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    masked = mt in modeling_auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES
    return causal and not masked


def _config_path(root: PretrainedConfig, cfg: PretrainedConfig) -> str | None:
    if cfg is root:
        return ""
    for attr, v in vars(root).items():
        if v is cfg:
            return attr
        if isinstance(v, PretrainedConfig):
            for attr2, v2 in vars(v).items():
                if v2 is cfg:
                    return f"{attr}.{attr2}"
    return None


def stack_config_of(model: nn.Module, list_path: str) -> tuple[Any, str, tuple[str, ...]]:
    """(config, its path in model.config, modules holding a private copy) for a stack."""
    parts = list_path.split(".")
    private = []
    for i in range(len(parts) - 1, -1, -1):
        anc_path = ".".join(parts[:i])
        anc = model.get_submodule(anc_path) if anc_path else model
        cfg = getattr(anc, "config", None)
        if not isinstance(cfg, PretrainedConfig):
            continue
        path = _config_path(model.config, cfg)
        if path is not None:
            return cfg, path, tuple(private)
        private.append(anc_path)
    return model.config, "", tuple(private)


def _signature(block: nn.Module) -> tuple:
    return (type(block).__name__, tuple(
        (rel, type(m).__name__, tuple(getattr(m, "weight", torch.empty(0)).shape))
        for rel, m in block.named_modules()))


def model_signature(model: nn.Module) -> int:
    """Changes when modules are swapped or reshaped, or the config changes (a structural
    recipe writes new sizes there): invalidates cached discovery."""
    config = getattr(model, "config", None)
    cfg = json.dumps(config.to_dict(), sort_keys=True, default=str) if config is not None else ""
    return hash((cfg, tuple((n, type(m).__name__, tuple(getattr(m, "weight", None).shape)
                             if isinstance(getattr(m, "weight", None), torch.Tensor) else ())
                            for n, m in model.named_modules())))


def _is_meta(model: nn.Module) -> bool:
    return any(p.device.type == "meta" for p in model.parameters())


# --- the whole model ------------------------------------------------------------------------


def discover(model: nn.Module) -> ArchSpec:
    """Discover ``model``'s architecture (cached per model and structure)."""
    if not isinstance(model, nn.Module) or not isinstance(getattr(model, "config", None),
                                                          PretrainedConfig):
        raise UserError(f"{type(model).__name__} is not a Hugging Face transformers model "
                        "(no config); this suite works on transformers models")
    sig = model_signature(model)
    hit = _CACHE.get(model)
    if hit is not None and hit[0] == sig:
        return hit[1]
    spec = _discover(model)
    _CACHE[model] = (sig, spec)
    return spec


def _trace(model: nn.Module, reps: dict[tuple, str], blocks: dict[str, nn.Module],
           seq2seq: bool, notes: list[str]) -> probe.Trace | None:
    """The probe forward (None on a meta model or when the forward fails: names only)."""
    if _is_meta(model):
        return None
    watch = {f"{name}.{rel}": m for name in set(reps.values())
             for rel, m in blocks[name].named_modules() if rel}
    try:
        return probe.run(model, watch, blocks, seq2seq)
    except Exception as exc:  # noqa: BLE001 - fall back to names and shapes
        notes.append(f"probe forward failed ({type(exc).__name__}: "
                     f"{str(exc).splitlines()[0][:120] if str(exc) else ''}); "
                     "roles from names and shapes only")
        log.info("architecture probe failed: %s", exc)
        return None


def _stack_roles(model: nn.Module, lists: list, trace: probe.Trace | None, seq2seq: bool,
                 notes: list[str]) -> list[tuple[str, str, nn.ModuleList]]:
    """(role, path, blocks) per stack, encoder first; one stack per role (the largest)."""
    enc_path = _encoder_path(model) if seq2seq else None
    causal = None
    info = []
    for path, ml in lists:
        if seq2seq:
            role = "encoder" if enc_path is not None and (
                path == enc_path or path.startswith(enc_path + ".")) else "decoder"
        else:
            if causal is None and trace is not None and f"{path}.{len(ml) - 1}" in trace.blocks:
                try:
                    causal = probe.is_causal(model, f"{path}.{len(ml) - 1}", ml[-1], trace)
                except Exception:  # noqa: BLE001 - cannot tell from the trace
                    causal = None
            if causal is None:
                causal = _causal_by_class(model)
            role = "decoder" if causal else "encoder"
        info.append((role, path, ml))
    best: dict[str, tuple] = {}
    for item in info:
        size = sum(p.numel() for p in item[2].parameters())
        if item[0] not in best or size > best[item[0]][0]:
            best[item[0]] = (size, item)
    dropped = [i[1] for i in info if best[i[0]][1] is not i]
    if dropped:
        notes.append(f"block lists not handled (one stack per role): {', '.join(dropped)}")
    return sorted((b[1] for b in best.values()), key=lambda i: i[0] != "encoder")


def _stack(model: nn.Module, role: str, path: str, ml: nn.ModuleList, reps: dict[tuple, str],
           trace: probe.Trace | None, seq2seq: bool, layouts: dict[str, BlockLayout]
           ) -> StackSpec:
    """One stack's spec; fills ``layouts`` with a layout per block (one per block shape)."""
    scfg, cpath, private = stack_config_of(model, path)
    hidden = _hidden_of(ml[0], scfg)
    hints = find_hints(scfg, role, hidden)
    by_shape: dict[tuple, BlockLayout] = {}
    for i, b in enumerate(ml):
        key = (path, _signature(b))
        if key not in by_shape:
            rep = reps[key]
            layout = find_layout(model.get_submodule(rep),
                                 BlockContext(rep, role, hidden, hints, trace, seq2seq))
            if trace is not None and rep in trace.blocks:
                layout = _with_qkv_layouts(model.get_submodule(rep), trace.blocks[rep], layout)
            by_shape[key] = layout
        layouts[f"{path}.{i}"] = by_shape[key]
    first = layouts[f"{path}.0"]
    a, ffn, exp = first.self_attn, first.ffn, first.experts
    calls = max(trace.block_calls.get(f"{path}.0", 1), 1) if trace is not None else 1
    names = stack_names(
        scfg, role, n_blocks=len(ml) * calls, heads=a.heads if a else None,
        kv_heads=a.kv_heads if a else None, head_dim=a.head_dim if a else None,
        intermediate=ffn.intermediate if ffn else None, hidden=hidden,
        expert_intermediate=exp.intermediate if exp else None)
    return StackSpec(role=role, path=path, n_blocks=len(ml), config_path=cpath,
                     private_configs=private, names=names, calls_per_block=calls, hidden=hidden)


def _discover(model: nn.Module) -> ArchSpec:
    from compress.arch.overrides import apply_overrides

    lists = block_lists(model)
    if not lists:
        raise UserError(_no_blocks_message(model))
    seq2seq = _is_seq2seq(model)
    reps: dict[tuple, str] = {}  # one representative block per (stack, shape)
    blocks: dict[str, nn.Module] = {}
    for path, ml in lists:
        for i, b in enumerate(ml):
            blocks[f"{path}.{i}"] = b
            reps.setdefault((path, _signature(b)), f"{path}.{i}")
    notes: list[str] = []
    trace = _trace(model, reps, blocks, seq2seq, notes)
    info = _stack_roles(model, lists, trace, seq2seq, notes)
    layouts: dict[str, BlockLayout] = {}
    stacks = [_stack(model, role, path, ml, reps, trace, seq2seq, layouts)
              for role, path, ml in info]
    all_layouts = list(layouts.values())
    if not any(lay.attn for lay in all_layouts):
        raise UserError(_no_blocks_message(model, "none of its blocks has attention"))
    emb, head, tied = _embeddings(model, [s.path for s in stacks])
    spec = ArchSpec(
        family=str(getattr(model.config, "model_type", "") or type(model).__name__),
        kind="encoder-decoder" if seq2seq and len(info) == 2 else info[0][0],
        stacks=tuple(stacks), layouts=layouts, embeddings=emb, lm_head=head,
        tied_embeddings=tied, hidden=stacks[0].hidden,
        activation=next((lay.ffn.act_name for lay in all_layouts
                         if lay.ffn and lay.ffn.act_name), None),
        conv1d=any(type(m).__name__ == "Conv1D" for m in model.modules()),
        gated_ffn=any(lay.ffn is not None and lay.ffn.gated for lay in all_layouts),
        method="traced" if trace is not None else "names", notes=tuple(notes))
    return apply_overrides(model, spec)


def _hidden_of(block: nn.Module, cfg: Any) -> int:
    value = read_hidden(cfg)
    if value:
        return value
    # the most common input width of the block's linears
    widths: dict[int, int] = {}
    for m in block.modules():
        if is_linear(m):
            i = in_out(m)[0]
            widths[i] = widths.get(i, 0) + 1
    return max(widths, key=widths.get) if widths else 0


def _embeddings(model: nn.Module, stack_paths: list[str]) -> tuple[tuple[str, ...],
                                                                     tuple[str, ...], bool]:
    inside = tuple(p + "." for p in stack_paths)
    emb = tuple(n for n, m in model.named_modules()
                if isinstance(m, nn.Embedding) and not (n + ".").startswith(inside))
    head: tuple[str, ...] = ()
    tied = False
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    inp = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if isinstance(out, nn.Module):
        name = next((n for n, m in model.named_modules() if m is out), None)
        if name:
            head = (name,)
        tied = inp is not None and getattr(out, "weight", None) is getattr(inp, "weight", 1)
    return emb, head, tied


def _no_blocks_message(model: nn.Module, why: str = "") -> str:
    kinds = {type(m).__name__ for m in model.modules()}
    recurrent = [k for k in kinds if any(s in k.lower() for s in ("mamba", "rwkv", "ssm",
                                                                   "recurrent", "lstm", "mixer"))]
    what = f" (it has {', '.join(sorted(recurrent)[:3])}: recurrent/state-space layers)" \
        if recurrent else ""
    why = f" ({why})" if why else ""
    return (f"{type(model).__name__}: found no list of repeated transformer blocks with "
            f"attention{why}{what}; this suite compresses transformer blocks (attention + FFN)")


# --- fused qkv row order -------------------------------------------------------------------


def qkv_rows(layout: str, part: str, index: int, heads: int, kv_heads: int, hd: int
             ) -> torch.Tensor:
    """Output rows of a fused qkv projection holding ``part`` of head (or KV head) ``index``.

    ``part`` "q": query head ``index``; "k"/"v": KV head ``index``.
    """
    ar = torch.arange(hd)
    group = heads // kv_heads
    if layout == "concat":
        base = {"q": index * hd, "k": (heads + index) * hd,
                "v": (heads + kv_heads + index) * hd}[part]
    elif layout == "per-head":  # [(q_h, k_h, v_h) for h]
        base = index * 3 * hd + {"q": 0, "k": hd, "v": 2 * hd}[part]
    elif layout == "per-group":  # [(q_g..., k_g, v_g) for g]
        width = (group + 2) * hd
        if part == "q":
            g, j = divmod(index, group)
            base = g * width + j * hd
        else:
            base = index * width + (group + (0 if part == "k" else 1)) * hd
    else:
        raise ValueError(layout)
    return base + ar


def _with_qkv_layouts(block: nn.Module, call: probe.BlockCall, layout: BlockLayout
                      ) -> BlockLayout:
    new = []
    changed = False
    for a in layout.attn:
        if "qkv" in a.parts and a.heads and "o" in a.parts:
            try:
                found = _probe_qkv(block, call, a)
            except Exception as exc:  # noqa: BLE001 - an unprobeable module stays unknown
                log.info("qkv layout probe failed at %s: %s", a.path, exc)
                found = None
            a = AttnLayout(**{**a.__dict__, "qkv_layout": found})
            changed = True
        new.append(a)
    if not changed:
        return layout
    return BlockLayout(**{**layout.__dict__, "attn": tuple(new)})


@torch.no_grad()
def _probe_qkv(block: nn.Module, call: probe.BlockCall, a: AttnLayout) -> str | None:
    from compress.arch.weights import out_in

    lin = block.get_submodule(a.parts["qkv"])
    o = block.get_submodule(a.parts["o"])
    with probe.eval_mode(block):
        base = probe.rerun_block(block, call, o)
        if base is None or base.shape[-1] != a.heads * a.head_dim:
            return None
        hyps = ["concat"] + (["per-head"] if a.kv_heads == a.heads else ["per-group"])
        w = out_in(lin)
        bias = getattr(lin, "bias", None)
        scale = float(base.abs().max()) + 1e-12
        for hyp in hyps:
            ok = True
            for kv in sorted({0, a.kv_heads - 1}):
                rows = qkv_rows(hyp, "v", kv, a.heads, a.kv_heads, a.head_dim)
                saved_w = w[rows].clone()
                saved_b = bias[rows].clone() if bias is not None else None
                w[rows] = 0
                if bias is not None:
                    bias[rows] = 0
                try:
                    x = probe.rerun_block(block, call, o)
                finally:
                    w[rows] = saved_w
                    if bias is not None:
                        bias[rows] = saved_b
                if x is None:
                    return None
                cols = torch.arange(kv * a.group * a.head_dim, (kv + 1) * a.group * a.head_dim)
                diff = (x - base).abs().reshape(-1, x.shape[-1]).amax(0) > 1e-5 * scale
                expected = torch.zeros_like(diff)
                expected[cols] = True
                zeroed = x[..., cols].abs().max() <= 1e-5 * scale
                if not (torch.equal(diff, expected) and zeroed):
                    ok = False
                    break
            if ok:
                return hyp
    return None

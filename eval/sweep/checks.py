"""Pipeline checks: what a pipeline of recipes can and cannot do, read from the recipes' traits.

Every rule reads the :class:`compress.traits.Traits` and family each recipe declares
in its registration; no rule names a recipe. :func:`check_pipeline` raises a one-line
:class:`UserError` for a pipeline that cannot work: a runtime format not last,
sparsity followed by a step that does not keep exact zeros, training after
quantization, two quantizers, quantization after a step that hides the FFN, an N:M
pattern or expert count that does not divide a width.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from compress.config import RecipeConfig
from compress.errors import UserError
from compress.registry import get_recipe
from compress.traits import Traits


def traits_of(name: str) -> Traits:
    """The traits recipe ``name`` declares in its registration (an error if it declares none)."""
    return get_recipe(name).fact("traits")


def model_widths(model_config: Any) -> dict[str, int]:
    """Input widths of the model's linears: ``hidden`` and ``ffn`` (intermediate)."""
    cfg = getattr(model_config, "encoder", None) or model_config
    widths = {}
    for key in ("hidden_size", "d_model", "n_embd", "dim"):
        value = getattr(cfg, key, None)
        if isinstance(value, int):
            widths["hidden"] = value
            break
    for key in ("intermediate_size", "ffn_dim", "d_ff", "n_inner", "encoder_ffn_dim"):
        value = getattr(cfg, key, None)
        if isinstance(value, int):
            widths["ffn"] = value
            break
    if "ffn" not in widths and "hidden" in widths:
        widths["ffn"] = 4 * widths["hidden"]  # GPT-2's n_inner=None means 4 x hidden
    heads = next(
        (
            getattr(cfg, k)
            for k in ("num_attention_heads", "n_head", "encoder_attention_heads", "num_heads")
            if isinstance(getattr(cfg, k, None), int)
        ),
        None,
    )
    if heads and "hidden" in widths:
        dim = (
            getattr(cfg, "head_dim", None)
            or getattr(cfg, "d_kv", None)
            or widths["hidden"] // heads
        )
        widths["attn"] = heads * dim  # input width of the attention output projection
        widths["_heads"], widths["_head_dim"] = heads, dim
        widths["_kv_heads"] = getattr(cfg, "num_key_value_heads", None) or heads
    return widths



@dataclass
class _State:
    """What the steps so far left behind, as the checks walk the pipeline."""

    where: str
    sparse_from: tuple[str, str] | None = None  # (recipe, pattern)
    quantized_by: str | None = None
    hider: str | None = None  # a step after which the FFN is no longer linears
    reshaped: bool = False  # a step changed the widths (structured pruning)


def check_pipeline(
    configs: list[RecipeConfig] | tuple[RecipeConfig, ...],
    model_config: Any | Callable[[], Any] | None = None,
) -> None:
    """Raise :class:`UserError` if the pipeline cannot do what it says.

    ``model_config`` (a transformers config, or a callable returning one, called only
    if a width check needs it) enables the width checks.

    >>> from compress.registry import make_config
    >>> check_pipeline([make_config("identity")])
    """
    names = [c.RECIPE for c in configs]
    state = _State(" -> ".join(names))
    widths: dict[str, int] | None = None

    def current_widths() -> dict[str, int] | None:
        nonlocal widths, model_config
        if widths is None and model_config is not None:
            cfg = model_config() if callable(model_config) else model_config
            widths = model_widths(cfg) if cfg is not None else {}
        return widths

    for i, config in enumerate(configs):
        name, traits = names[i], traits_of(names[i])
        if i > 0 and traits_of(names[i - 1]).runtime_format_for(configs[i - 1]):
            prev = names[i - 1]
            raise UserError(
                f"pipeline {state.where}: {prev} turns the model into a runtime format that "
                f"{name} cannot change; put {prev} last"
            )
        _check_order(state, name, traits, config)
        needs = traits.divides(config)
        if needs and current_widths():
            _check_divides(state, name, needs, widths)
        if traits.widths is not None and current_widths() is not None:
            widths = traits.widths(config, dict(widths))
        state.reshaped = state.reshaped or traits.widths is not None
        state.hider = state.hider or (name if traits.hides_ffn else None)
        pattern = traits.sparsity(config)
        if pattern is not None:
            state.sparse_from = (name, pattern)


def _check_order(state: _State, name: str, traits: Traits, config: RecipeConfig) -> None:
    """Zeros, quantization and training rules of step ``name`` after the steps in ``state``."""
    where = state.where
    if state.sparse_from is not None and not traits.keeps_zeros_for(config):
        src, pattern = state.sparse_from
        raise UserError(
            f"pipeline {where}: the {pattern} zeros from {src} would not survive {name} "
            f"({traits.zeros_note or 'it does not keep exact zeros'}); put {name} first "
            "or drop it"
        )
    family = get_recipe(name).fact("family")
    if state.hider is not None and family == "quantization":
        raise UserError(
            f"pipeline {where}: after {state.hider} the FFN experts are stacked tensors, not "
            f"linear layers, so {name} would quantize attention only; put {name} before "
            f"{state.hider}"
        )
    if traits.trains and state.quantized_by is not None:
        raise UserError(
            f"pipeline {where}: {name} would train the weights {state.quantized_by} rounded "
            f"back to full precision; run {name} before {state.quantized_by}"
        )
    if family == "quantization" and not traits.trains:
        if state.quantized_by is not None:
            raise UserError(
                f"pipeline {where}: {name} would round weights {state.quantized_by} already "
                "rounded; keep one quantization step"
            )
        state.quantized_by = name


def _check_divides(
    state: _State,
    name: str,
    needs: list[tuple[str, int, tuple[str, ...]]],
    widths: dict[str, int],
) -> None:
    """Each (what, group, width kinds) of ``name`` divides the current widths of those kinds."""
    for what, group, kinds in needs:
        for kind, width in sorted(widths.items()):
            if kind in kinds and width % group:
                kind = {"attn": "attention output", "ffn": "FFN"}.get(kind, kind)
                raise UserError(
                    f"pipeline {state.where}: {what} of {name} needs widths divisible by "
                    f"{group}, but the {kind} width is {width}"
                    + (" after structured pruning" if state.reshaped else "")
                )

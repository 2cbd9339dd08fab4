"""What the suite knows about a recipe besides its config, declared where it registers.

A recipe's registration (:func:`compress.registry.register_recipe`) carries its
technique family, the knob(s) the equal-budget search may turn, its :class:`Traits`
(what pipeline checks need: does it calibrate, train, change shapes, produce a runtime
format, keep exact zeros), the on-disk formats it introduces and its memory estimate.
The sweep, the budget search and the report read these facts from the registry; none of
them keeps a table of recipe names. Example::

    @register_recipe(
        "wanda", WandaConfig, family="pruning",
        knobs=(Knob("sparsity", "up", 0.01, 0.99, 0.01, fixed_by=("pattern",)),),
        traits=Traits(calibrates=True, sparsity=pattern_sparsity, divides=nm_divides),
        formats=("sparse-bitmask",), memory=config_memory,
    )
    def wanda(model, config, context): ...
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from compress.config import RecipeConfig

#: the technique families, in the order the report and the budget tables list them.
FAMILIES = ("pruning", "quantization", "distillation", "moefication")
#: the family of the dense baseline (``identity``): it is no technique.
BASELINE = "baseline"
#: the family of steps that finish another technique rather than being one: recovery
#: distillation from the dense teacher after a structural step (``recover``). A pipeline
#: is counted in the family of its other steps (``depth`` then ``recover`` is pruning),
#: so recovery never becomes a budget family of its own.
RECOVERY = "recovery"

#: memory a recipe needs beyond the loaded model: ``(config, facts) -> bytes`` or a
#: :class:`compress.footprint.Need` (parts and the cheaper option a refusal names), where
#: ``facts`` are the model's :class:`compress.footprint.ModelFacts`. The first estimates'
#: form, ``(config, param_bytes, hidden) -> bytes``, is still accepted.
MemoryEstimate = Callable[..., Any]


@dataclass(frozen=True)
class Traits:
    """What the compatibility checks need to know about a recipe (data, not code paths).

    ``keeps_zeros``: exact zeros of earlier steps stay exactly zero. ``runtime_format``:
    the result is a runtime format (int8 kernels, bitsandbytes, ONNX) that later recipes
    cannot modify. ``trains``: weights are updated by gradient steps. ``calibrates``: the
    recipe reads calibration text (``context.calibration``). ``sparsity``: the sparsity
    pattern a config produces ("2:4", "unstructured") or None.
    ``divides``: (what, group, width kinds) a config needs to divide those widths
    (``hidden``, ``ffn``).
    ``widths``: how a config changes linear input widths (structured pruning).
    ``hides_ffn``: the FFN is no longer made of linear layers (MoE experts stored as
    stacked tensors), so later quantizers would quantize attention only.

    The booleans may be callables of the config where the answer depends on it.
    """

    keeps_zeros: bool | Callable[[RecipeConfig], bool] = True
    zeros_note: str = ""
    runtime_format: bool | Callable[[RecipeConfig], bool] = False
    trains: bool = False
    calibrates: bool | Callable[[RecipeConfig], bool] = False
    sparsity: Callable[[RecipeConfig], str | None] = lambda c: None
    divides: Callable[[RecipeConfig], list[tuple[str, int, tuple[str, ...]]]] = lambda c: []
    widths: Callable[[RecipeConfig, dict[str, int]], dict[str, int]] | None = None
    hides_ffn: bool = False

    @property
    def changes_shapes(self) -> bool:
        """True when the recipe removes rows and columns (the matrices shrink)."""
        return self.widths is not None

    def keeps_zeros_for(self, config: RecipeConfig) -> bool:
        k = self.keeps_zeros
        return k(config) if callable(k) else bool(k)

    def runtime_format_for(self, config: RecipeConfig) -> bool:
        r = self.runtime_format
        return r(config) if callable(r) else bool(r)

    def calibrates_for(self, config: RecipeConfig) -> bool:
        c = self.calibrates
        return c(config) if callable(c) else bool(c)


@dataclass(frozen=True)
class Knob:
    """A recipe field that trades quality for cost monotonically.

    ``more`` says which way compresses more: ``"up"`` (sparsity) or ``"down"`` (bits).
    ``values`` lists the allowed settings of a discrete knob; a continuous knob lies
    in ``[low, high]`` and is searched to a resolution of ``step``. ``fixed_by`` names
    fields that, when set, pin the knob (an N:M pattern fixes the sparsity).
    """

    field: str
    more: str
    low: float = 0.0
    high: float = 1.0
    step: float = 0.01
    values: tuple[float, ...] | None = None
    fixed_by: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.more not in ("up", "down"):
            raise ValueError(f"knob {self.field!r}: more must be 'up' or 'down', not {self.more!r}")

    def order(self, value: float) -> float:
        """Larger means more compressed."""
        return value if self.more == "up" else -value

    def least(self) -> float:
        if self.values:
            return min(self.values, key=self.order)
        return self.low if self.more == "up" else self.high

    def most(self) -> float:
        if self.values:
            return max(self.values, key=self.order)
        return self.high if self.more == "up" else self.low


# --------------------------------------------------------------------------- shared helpers


def config_memory(config: RecipeConfig, facts: Any, hidden: int | None = None) -> int:
    """The config's own estimate (:meth:`compress.config.RecipeConfig.extra_memory_bytes`),
    from the field conventions; for recipes that hold nothing sized by the model."""
    from compress.footprint import as_facts

    f = as_facts(facts, hidden)
    return config.extra_memory_bytes(f.param_bytes, f.hidden)


def pattern_sparsity(config: RecipeConfig) -> str | None:
    """``"2:4"`` for an N:M config, ``"unstructured"`` for a sparsity > 0, else None."""
    pattern = getattr(config, "pattern", None)
    if pattern not in (None, "", "unstructured"):
        return str(pattern)
    sparsity = getattr(config, "sparsity", 0.0)
    return "unstructured" if sparsity and sparsity > 0 else None


def nm_divides(config: RecipeConfig) -> list[tuple[str, int, tuple[str, ...]]]:
    """An N:M pattern needs every pruned width divisible by M."""
    pattern = getattr(config, "pattern", None)
    if isinstance(pattern, str) and ":" in pattern:
        try:
            m = int(pattern.split(":")[1])
            return [(f"the {pattern} pattern", m, ("hidden", "ffn", "attn"))]
        except ValueError:
            return []
    return []

"""Recipe configs: frozen dataclasses with typed, documented, validated fields.

A recipe's config is a frozen dataclass deriving from :class:`RecipeConfig`. Each
field is declared with :func:`option`, which records the help text (used for the
generated command-line flags) and an optional allowed range or choice list that
``__post_init__`` enforces with a message naming the field. Configs serialise to a
plain dict (``to_dict``) with the recipe name and config version, and back
(``from_dict``).

Example::

    @dataclass(frozen=True)
    class MagnitudeConfig(RecipeConfig):
        sparsity: float = option(0.5, "fraction of weights set to zero", low=0.0, high=1.0)
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

from compress.errors import UserError


def option(
    default: Any,
    help: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
    choices: tuple[Any, ...] | None = None,
    added: bool = False,
) -> Any:
    """Declare a config field with help text and an optional range or choice list.

    ``added``: a field added to a recipe after runs were recorded; :meth:`RecipeConfig.to_dict`
    leaves it out while it holds its default, so those runs keep their keys (``run_key``
    hashes the dict) and a sweep still finds them done.
    """
    meta = {
        "added": added,
        "help": help,
        "low": low,
        "high": high,
        "low_inclusive": low_inclusive,
        "high_inclusive": high_inclusive,
        "choices": choices,
    }
    if isinstance(default, (list, dict, set)):
        raise TypeError("mutable defaults are not allowed in frozen configs; use a tuple")
    return field(default=default, metadata=meta)


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _base_type(tp: Any) -> tuple[Any, bool]:
    """Return (type, optional) for ``X`` or ``X | None``."""
    args = typing.get_args(tp)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else tp), True
    return tp, False


@dataclass(frozen=True)
class RecipeConfig:
    """Base class of all recipe configs (frozen, validated, serialisable)."""

    #: bumped when a recipe's fields change meaning, recorded in every report.
    VERSION: ClassVar[int] = 1
    #: the registered recipe name, set by :func:`compress.registry.register_recipe`.
    RECIPE: ClassVar[str] = ""

    seed: int = option(0, "random seed for anything stochastic in the recipe", low=0)

    def __post_init__(self) -> None:
        types = _field_types(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            tp, optional = _base_type(types[f.name])
            if value is None:
                if optional:
                    continue
                raise UserError(f"{self._where(f.name)} must not be empty")
            value = self._coerce(f.name, tp, value)
            object.__setattr__(self, f.name, value)
            meta = f.metadata
            choices = meta.get("choices")
            if choices is not None and value not in choices:
                raise UserError(
                    f"{self._where(f.name)}={value!r} is not allowed; choose one of "
                    f"{', '.join(map(str, choices))}"
                )
            low, high = meta.get("low"), meta.get("high")
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if value != value:  # NaN
                    raise UserError(f"{self._where(f.name)} must be a number, got NaN")
                bad_low = low is not None and (
                    value < low or (value == low and not meta.get("low_inclusive", True))
                )
                bad_high = high is not None and (
                    value > high or (value == high and not meta.get("high_inclusive", True))
                )
                if bad_low or bad_high:
                    raise UserError(
                        f"{self._where(f.name)}={value} is out of range; allowed: "
                        f"{self._range_text(meta)}"
                    )
        self.validate()

    # -- hooks -----------------------------------------------------------
    def validate(self) -> None:
        """Cross-field checks; override and raise :class:`UserError`."""

    def extra_memory_bytes(self, param_bytes: int, hidden: int) -> int:
        """Memory the recipe needs beyond the loaded model (checked before it runs).

        The default reads the suite's field conventions: calibration activations of one
        block (``nsamples`` x ``seq_len`` x ``hidden``, inputs and outputs kept), and
        optimizer state for training (``finetune_steps`` / ``steps`` with
        ``finetune_method``: full fine-tuning keeps gradients and two AdamW moments,
        3x the weights; LoRA a few percent). Recipes with other needs override it.
        """
        extra = 0
        samples = getattr(self, "nsamples", None)
        if isinstance(samples, int) and samples > 0:
            seq = getattr(self, "seq_len", None) or 512
            extra += 2 * samples * int(seq) * hidden * 4
        steps = getattr(self, "finetune_steps", None) or getattr(self, "steps", None)
        if isinstance(steps, int) and steps > 0:
            method = str(getattr(self, "finetune_method", "full"))
            extra += param_bytes // 20 if "lora" in method else 3 * param_bytes
        return extra

    # -- helpers ---------------------------------------------------------
    def _where(self, name: str) -> str:
        return f"{self.RECIPE or type(self).__name__}: {name}"

    @staticmethod
    def _range_text(meta: dict[str, Any]) -> str:
        low, high = meta.get("low"), meta.get("high")
        lo = "" if low is None else f"{low} {'<=' if meta.get('low_inclusive', True) else '<'} "
        hi = "" if high is None else f" {'<=' if meta.get('high_inclusive', True) else '<'} {high}"
        return f"{lo}value{hi}"

    def _coerce(self, name: str, tp: Any, value: Any) -> Any:
        """Accept ints for floats and lists for tuples; reject other type mismatches."""
        if tp is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if tp is bool:
            if not isinstance(value, bool):
                raise UserError(f"{self._where(name)} must be true or false, got {value!r}")
            return value
        if tp in (int, float, str):
            if isinstance(value, bool) or not isinstance(value, tp):
                raise UserError(
                    f"{self._where(name)} must be of type {tp.__name__}, got {value!r}"
                )
            return value
        if typing.get_origin(tp) is tuple and isinstance(value, list):
            return tuple(value)
        return value

    # -- serialisation ---------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready dict of the fields plus ``recipe`` and ``version``."""
        out: dict[str, Any] = {"recipe": self.RECIPE, "version": self.VERSION}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("added") and value == f.default:
                continue
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RecipeConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error naming the field."""
        data = dict(data)
        data.pop("recipe", None)
        version = data.pop("version", cls.VERSION)
        if version != cls.VERSION:
            raise UserError(
                f"{cls.RECIPE}: config version {version} is not supported "
                f"(this suite reads version {cls.VERSION})"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            from compress.errors import did_you_mean

            raise did_you_mean(f"{cls.RECIPE} option", unknown[0], names)
        return cls(**data)

    @classmethod
    def describe(cls) -> list[tuple[str, Any, Any, str]]:
        """(name, type, default, help) for each field, for help texts and CLIs."""
        types = _field_types(cls)
        return [
            (f.name, types[f.name], f.default, f.metadata.get("help", ""))
            for f in dataclasses.fields(cls)
        ]

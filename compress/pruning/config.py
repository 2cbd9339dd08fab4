"""Config fields shared by the pruning recipes (magnitude, wanda, structured).

:class:`RecoveryConfig` holds recovery fine-tuning and iterative-schedule fields;
:class:`UnstructuredConfig` adds the target (sparsity, N:M pattern, scope, groups,
per-group ratios). Recipes derive their own config class from these.
"""

from __future__ import annotations

from dataclasses import dataclass

from compress.config import RecipeConfig, option
from compress.errors import UserError
from compress.pruning.targets import GROUPS, parse_group_ratios, parse_groups

PATTERNS = ("unstructured", "2:4", "4:8")
SCHEDULES = ("cubic", "linear")


@dataclass(frozen=True)
class RecoveryConfig(RecipeConfig):
    """Recovery fine-tuning and iterative pruning, shared by every pruning recipe."""

    finetune_steps: int = option(
        0, "recovery fine-tuning steps after each pruning step (0: none); uses the task's "
        "training split", low=0, high=1_000_000)
    finetune_method: str = option("lora", "recovery fine-tuning: lora (merged back) or full",
                                  choices=("lora", "full"))
    finetune_lr: float | None = option(
        None, "fine-tuning learning rate (default: 2e-4 for lora, 2e-5 for full)",
        low=0.0, high=1.0, low_inclusive=False)
    finetune_batch_size: int = option(8, "fine-tuning batch size", low=1, high=4096)
    finetune_seq_len: int = option(128, "fine-tuning sequence length in tokens", low=2,
                                   high=1_000_000)
    lora_r: int = option(8, "LoRA rank", low=1, high=4096)
    lora_alpha: int = option(16, "LoRA alpha (scale = alpha / r)", low=1, high=1_000_000)
    iterative_steps: int = option(
        1, "reach the target in this many pruning steps, fine-tuning between them", low=1,
        high=1000)
    schedule: str = option("cubic", "sparsity schedule of iterative pruning: cubic (Zhu & "
                           "Gupta 2017, fast early) or linear", choices=SCHEDULES)
    rewind: bool = option(
        False, "lottery-ticket style: after each pruning step, reset the surviving weights "
        "to their values before pruning (keeps one copy of the targeted weights)")

    def validate(self) -> None:
        if self.rewind and self.iterative_steps == 1 and self.finetune_steps == 0:
            raise UserError(
                f"{self._where('rewind')}: rewinding without fine-tuning or iterative steps "
                "does nothing; set finetune_steps or iterative_steps"
            )


def schedule_fractions(steps: int, kind: str) -> list[float]:
    """Fraction of the final target reached after each of ``steps`` pruning steps.

    >>> [round(f, 3) for f in schedule_fractions(3, "cubic")]
    [0.704, 0.963, 1.0]
    """
    if kind == "linear":
        return [(i + 1) / steps for i in range(steps)]
    return [1.0 - (1.0 - (i + 1) / steps) ** 3 for i in range(steps)]


@dataclass(frozen=True)
class UnstructuredConfig(RecoveryConfig):
    """Unstructured or N:M pruning of the targeted weight matrices."""

    sparsity: float = option(
        0.5, "fraction of the targeted weights set to zero (0.5 removes half); fixed by --pattern N:M",
        low=0.0, high=1.0, low_inclusive=False, high_inclusive=False)
    pattern: str = option("unstructured", "unstructured, or N:M (keep N of every M "
                          "consecutive inputs of each row)", choices=PATTERNS)
    scope: str = option("layer", "where the target applies: row (each output row), layer "
                        "(each matrix) or global (one threshold over all targeted matrices)",
                        choices=("row", "layer", "global"))
    groups: str = option("attn,cross,ffn", "comma-separated groups to prune: "
                         + ", ".join(GROUPS) + " (embeddings and lm_head only when named)")
    group_ratios: str = option(
        "", "per-group targets, e.g. attn=0.9,cross=0.4,ffn=0.7,lm_head=0.8; when given, "
        "only these groups are pruned and --sparsity/--groups are not used")

    def validate(self) -> None:
        super().validate()
        try:
            parse_groups(self.groups)
        except UserError as exc:
            raise UserError(f"{self._where('groups')}: {exc}") from None
        if self.group_ratios:
            try:
                parse_group_ratios(self.group_ratios)
            except UserError as exc:
                raise UserError(f"{self._where('group_ratios')}: {exc}") from None
        if self.pattern != "unstructured":
            n, m = (int(p) for p in self.pattern.split(":"))
            implied = 1.0 - n / m
            if abs(self.sparsity - implied) > 1e-9:
                raise UserError(
                    f"{self._where('sparsity')}={self.sparsity:g} conflicts with pattern "
                    f"{self.pattern}, which fixes sparsity at {implied:g}; set sparsity={implied:g}"
                )
            if self.group_ratios:
                raise UserError(f"{self._where('group_ratios')}: per-group ratios cannot be "
                                f"combined with pattern {self.pattern}")
            if self.iterative_steps > 1:
                raise UserError(f"{self._where('iterative_steps')}: an N:M pattern is reached "
                                "in one step; use iterative_steps=1")

    # -- derived ----------------------------------------------------------------------
    def nm(self) -> tuple[int, int] | None:
        if self.pattern == "unstructured":
            return None
        n, m = (int(p) for p in self.pattern.split(":"))
        return n, m

    def ratios(self) -> dict[str, float]:
        """Group -> target sparsity."""
        if self.group_ratios:
            return parse_group_ratios(self.group_ratios)
        return {g: self.sparsity for g in parse_groups(self.groups)}

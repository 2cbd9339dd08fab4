"""Build a shallower student from a teacher: keep some of its blocks (Sanh et al. 2019).

DistilBERT (Sanh et al. 2019, "DistilBERT, a distilled version of BERT") initialises
the student from the teacher by keeping one block out of two; its released map for
12 -> 6 blocks is ``0, 2, 4, 7, 9, 11``. :func:`default_layer_map` spreads the kept
blocks evenly so that the first and the last block always stay, which reproduces
that map for 12 -> 6 (and gives ``0, 3, 5`` for 6 -> 3).

:func:`make_student` deep-copies the teacher (embeddings, task head and every block
come along), keeps the mapped blocks in each stack's ``nn.ModuleList`` (found
through the architecture table, :mod:`compress.arch`) and updates everything that
depends on the block count so the student is a plain model that ``save_pretrained``
/ ``from_pretrained`` round-trips with identical outputs:

* the stack's layer-count attribute in the config (found by discovery,
  ``StackSpec.names.layers``; for bert2bert in ``config.encoder`` / ``config.decoder``,
  which the sub-models share; T5 stacks also keep a private config copy, updated too);
* per-layer config lists (``layer_types``: sliding vs full attention in newer
  configs; any config list with one entry per block), cut to the kept blocks;
* a stack whose weights are shared across depth (ALBERT: one block run N times) keeps
  its block and runs it fewer times: only the count changes;
* ``layer_idx`` of the attention modules, renumbered 0..n-1 (the KV cache is
  indexed by it during generation);
* T5's relative position bias, which only block 0 owns: when block 0 is not kept,
  the kept first block receives it.

>>> student, maps = make_student(teacher, {"decoder": [0, 2, 4]})   # doctest: +SKIP
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn

from compress.arch import StackSpec, arch_for, stack_config
from compress.errors import UserError

log = logging.getLogger(__name__)

#: module attributes holding a block's position (KV-cache index) in its stack.
LAYER_INDEX_ATTRS = ("layer_idx", "layer_id", "layer_index", "layer_number")
#: config attribute recording, per stack role, the dense model's block behind each block
#: of a model that lost blocks (written by ``depth``, read by ``recover``); it survives
#: ``save_pretrained`` / ``from_pretrained`` as a plain config entry.
BLOCK_MAP_ATTR = "compress_block_map"


def default_layer_map(n_teacher: int, n_student: int) -> list[int]:
    """Teacher block kept for each student block: evenly spread, first and last kept.

    >>> default_layer_map(12, 6)
    [0, 2, 4, 7, 9, 11]
    >>> default_layer_map(6, 3)
    [0, 3, 5]
    >>> default_layer_map(30, 15)[:4], default_layer_map(30, 15)[-2:]
    ([0, 2, 4, 6], [27, 29])
    """
    if not 1 <= n_student <= n_teacher:
        raise UserError(
            f"a student needs between 1 and {n_teacher} blocks (the teacher's), got {n_student}"
        )
    if n_student == 1:
        return [n_teacher - 1]
    # round half up (not Python's banker's rounding) so 12 -> 6 is DistilBERT's map
    return [int(j * (n_teacher - 1) / (n_student - 1) + 0.5) for j in range(n_student)]


def most_important(importance: Sequence[float], n_student: int) -> list[int]:
    """The ``n_student`` blocks of highest ``importance`` (ties: the earlier block), in order.

    >>> most_important([0.5, 0.01, 0.3, 0.9], 3)
    [0, 2, 3]
    """
    if not 1 <= n_student <= len(importance):
        raise UserError(f"a student needs between 1 and {len(importance)} blocks (the "
                        f"teacher's), got {n_student}")
    order = sorted(range(len(importance)), key=lambda i: (-importance[i], i))
    return sorted(order[:n_student])


def parse_layer_map(text: str, roles: Sequence[str] = ("encoder", "decoder")) -> dict[str, list[int]]:
    """``"0,2,4"`` (every stack) or ``"encoder=0,2;decoder=0,1,2"`` -> {role or "*": indices}.

    >>> parse_layer_map("0, 2,4")
    {'*': [0, 2, 4]}
    >>> parse_layer_map("decoder=0,2")
    {'decoder': [0, 2]}
    """
    out: dict[str, list[int]] = {}
    parts = [p.strip() for p in text.split(";") if p.strip()]
    if not parts:
        raise UserError("layer_map is empty; write it like 0,2,4 or encoder=0,2;decoder=0,2")
    for part in parts:
        role = "*"
        if "=" in part:
            role, part = (s.strip() for s in part.split("=", 1))
            if role not in roles:
                raise UserError(
                    f"layer_map: unknown stack {role!r}; use one of {', '.join(roles)}"
                )
        if role in out:
            raise UserError(f"layer_map names the {role if role != '*' else 'same'} stack twice")
        try:
            idx = [int(x) for x in part.split(",") if x.strip()]
        except ValueError:
            raise UserError(
                f"layer_map: {part!r} is not a comma-separated list of block numbers"
            ) from None
        if not idx:
            raise UserError(f"layer_map: no block numbers in {part!r}")
        if any(i < 0 for i in idx):
            raise UserError(f"layer_map: block numbers start at 0, got {min(idx)}")
        if len(set(idx)) != len(idx) or idx != sorted(idx):
            raise UserError(
                f"layer_map: block numbers must increase without repeats, got {part!r}"
            )
        out[role] = idx
    if "*" in out and len(out) > 1:
        raise UserError("layer_map: give either one list for every stack or one per stack name")
    return out


def teacher_layer_counts(model: nn.Module) -> dict[str, int]:
    """Blocks per stack role, e.g. ``{"encoder": 6}`` or ``{"encoder": 6, "decoder": 6}``."""
    spec = arch_for(model)
    return {s.role: s.n_blocks * s.calls_per_block for s in spec.stacks}


def resolve_layer_maps(
    model: nn.Module,
    *,
    student_layers: int | None = None,
    per_stack: Mapping[str, int | None] | None = None,
    layer_map: str | None = None,
) -> dict[str, list[int]]:
    """Teacher block kept for each student block, per stack role.

    Precedence: an explicit ``layer_map``; else ``per_stack[role]`` (enc-dec
    ``encoder_layers`` / ``decoder_layers``); else ``student_layers``; else half the
    teacher's blocks (at least 1). A stack that nothing names for an encoder-decoder
    keeps all its blocks when only the other stack has a count.
    """
    counts = teacher_layer_counts(model)
    per_stack = {k: v for k, v in (per_stack or {}).items() if v is not None}
    unknown = sorted(set(per_stack) - set(counts))
    if unknown:
        raise UserError(
            f"{type(model).__name__} has no {unknown[0]} stack (it has {', '.join(counts)}); "
            f"{unknown[0]}_layers applies to encoder-decoder models"
        )
    maps: dict[str, list[int]] = {}
    if layer_map is not None:
        parsed = parse_layer_map(layer_map, tuple(counts))
        for role, n in counts.items():
            idx = parsed.get(role, parsed.get("*"))
            if idx is None:
                idx = list(range(n))  # stack not named: kept whole
            if idx[-1] >= n:
                raise UserError(
                    f"layer_map: the teacher's {role} has blocks 0..{n - 1}; {idx[-1]} does not exist"
                )
            maps[role] = idx
        return maps
    for role, n in counts.items():
        if role in per_stack:
            want = per_stack[role]
        elif student_layers is not None:
            want = student_layers
        elif per_stack:
            want = n  # the other stack was named; this one stays whole
        else:
            want = max(1, n // 2)
        if want > n:
            raise UserError(
                f"the student's {role} cannot have {want} blocks: the teacher's has {n}; "
                f"choose 1..{n}"
            )
        maps[role] = default_layer_map(n, want)
    return maps


def _set_module(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, name, module)


def _set_layer_count(config, stack: StackSpec, n: int, keep: list[int]) -> None:
    present = [a for a in stack.names.layers if getattr(config, a, None) is not None]
    if not present:
        raise UserError(
            f"{type(config).__name__}: no config attribute holds the {stack.role}'s block count "
            f"({stack.n_blocks * stack.calls_per_block}); cannot record the student's depth"
        )
    for attr in present:
        setattr(config, attr, n)
    for name in stack.names.per_layer:
        values = getattr(config, name, None)
        if isinstance(values, (list, tuple)) and len(values) > max(keep):
            setattr(config, name, type(values)(values[i] for i in keep))


def _fix_relative_bias(blocks: nn.ModuleList, teacher_blocks: nn.ModuleList) -> None:
    """T5: only the first block of a stack owns the relative position bias."""
    first_teacher = {
        name: mod
        for name, mod in teacher_blocks[0].named_modules()
        if getattr(mod, "has_relative_attention_bias", False)
    }
    for j, block in enumerate(blocks):
        for name, mod in block.named_modules():
            if not hasattr(mod, "has_relative_attention_bias"):
                continue
            if j == 0 and not mod.has_relative_attention_bias and name in first_teacher:
                mod.has_relative_attention_bias = True
                mod.relative_attention_bias = copy.deepcopy(
                    first_teacher[name].relative_attention_bias
                )
            elif j > 0 and mod.has_relative_attention_bias:
                mod.has_relative_attention_bias = False
                del mod.relative_attention_bias


def _block_signature(block: nn.Module) -> tuple:
    return tuple(sorted((n, tuple(p.shape)) for n, p in block.named_parameters()))


def _rebuilt_blocks(student: nn.Module) -> dict[str, list[tuple]]:
    """Per stack path: the block signatures of a model built from the student's config."""
    from compress.models import build_skeleton

    # through a dict, as saving and reloading do: configs recompute derived fields there
    config = type(student.config).from_dict(student.config.to_dict())
    with torch.device("meta"):
        fresh = build_skeleton(config, type(student).__name__)
    out = {}
    for stack in arch_for(student).stacks:
        try:
            out[stack.path] = [_block_signature(b) for b in fresh.get_submodule(stack.path)]
        except AttributeError:
            out[stack.path] = []
    return out


def _mismatches(student: nn.Module) -> dict[str, list[int]]:
    """Student positions whose block differs from what its config rebuilds there (models
    whose blocks differ by position: a first layer without a norm, sparse-every-k MoE)."""
    fresh = _rebuilt_blocks(student)
    bad: dict[str, list[int]] = {}
    for stack in arch_for(student).stacks:
        if stack.shared:
            continue
        mine = [_block_signature(b) for b in student.get_submodule(stack.path)]
        want = fresh.get(stack.path, [])
        if len(want) != len(mine):
            bad[stack.role] = list(range(len(mine)))
            continue
        wrong = [j for j, (a, b) in enumerate(zip(mine, want, strict=True)) if a != b]
        if wrong:
            bad[stack.role] = wrong
    return bad


def _remap(teacher: nn.Module, student: nn.Module, maps: dict[str, list[int]]
           ) -> dict[str, list[int]]:
    """Per position, the teacher block nearest the wanted one whose structure the student's
    config rebuilds there (kept in increasing order); a :class:`UserError` when none fits."""
    fresh = _rebuilt_blocks(student)
    out = dict(maps)
    for stack in arch_for(teacher).stacks:
        if stack.shared or stack.role not in maps:
            continue
        sigs = [_block_signature(b) for b in teacher.get_submodule(stack.path)]
        want = fresh.get(stack.path, [])
        chosen: list[int] = []
        for j, target in enumerate(maps[stack.role]):
            ok = [i for i, sig in enumerate(sigs) if j < len(want) and sig == want[j]
                  and (not chosen or i > chosen[-1])]
            if not ok:
                raise UserError(
                    f"the student's config rebuilds {stack.role} block {j} unlike any teacher "
                    "block left to keep (this model's blocks differ by position); choose a "
                    "layer_map whose blocks match the positions, or another student depth")
            chosen.append(min(ok, key=lambda i: (abs(i - target), i)))
        out[stack.role] = chosen
    return out


def make_student(
    teacher: nn.Module, layer_maps: Mapping[str, Sequence[int]], adjust: bool = False
) -> tuple[nn.Module, dict[str, list[int]]]:
    """A deep copy of ``teacher`` keeping, per stack role, the blocks in ``layer_maps``.

    Returns ``(student, maps)`` with ``maps`` complete (a role not given keeps all
    blocks). The teacher is not modified. The student's config must rebuild exactly the
    kept blocks (so ``from_pretrained`` reloads it); where a model's blocks differ by
    position, ``adjust`` moves each kept block to the nearest teacher block that fits
    (for maps the suite chose), else a :class:`UserError` says which position fails.
    """
    student, maps = _build_student(teacher, layer_maps)
    bad = _mismatches(student)
    if bad and adjust:
        maps = _remap(teacher, student, maps)
        student, maps = _build_student(teacher, maps)
        bad = _mismatches(student)
    if bad:
        role, where = next(iter(bad.items()))
        raise UserError(
            f"the student's config rebuilds its {role} block {where[0]} differently from the "
            f"kept teacher block {maps[role][where[0]]} (this model's blocks differ by "
            "position); choose another layer_map")
    log.info("student blocks: %s", maps)
    return student, maps


def _build_student(
    teacher: nn.Module, layer_maps: Mapping[str, Sequence[int]]
) -> tuple[nn.Module, dict[str, list[int]]]:
    spec = arch_for(teacher)
    counts = teacher_layer_counts(teacher)
    maps = {role: list(layer_maps.get(role, range(n))) for role, n in counts.items()}
    extra = sorted(set(layer_maps) - set(counts))
    if extra:
        raise UserError(f"{type(teacher).__name__} has no {extra[0]} stack")
    student = copy.deepcopy(teacher)
    for stack in spec.stacks:
        keep = maps[stack.role]
        n = counts[stack.role]
        if not keep or keep[-1] >= n or keep != sorted(set(keep)) or keep[0] < 0:
            raise UserError(f"bad {stack.role} map {keep} for a teacher with {n} blocks")
        configs = [stack_config(student, spec, stack)] + [
            student.get_submodule(p).config for p in stack.private_configs]
        if stack.shared:  # one block run N times: run it fewer times
            for cfg in configs:
                _set_layer_count(cfg, stack, len(keep), keep)
            continue
        path = stack.path
        blocks = student.get_submodule(path)
        teacher_blocks = teacher.get_submodule(path)
        kept = nn.ModuleList([blocks[i] for i in keep])
        _set_module(student, path, kept)
        _fix_relative_bias(kept, teacher_blocks)
        for j, block in enumerate(kept):
            for mod in block.modules():  # the KV cache is indexed by the block's number
                for attr in LAYER_INDEX_ATTRS:
                    if isinstance(getattr(mod, attr, None), int):
                        setattr(mod, attr, j)
        for cfg in configs:  # T5Stack keeps a private copy of the config
            _set_layer_count(cfg, stack, len(keep), keep)
    return student, maps

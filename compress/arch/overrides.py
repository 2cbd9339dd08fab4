"""Corrections to discovery, per model family: only where discovery is wrong.

Each entry maps a ``config.model_type`` to a function that takes the model and the
discovered :class:`~compress.arch.spec.ArchSpec` and returns the corrected spec, and
each has a test in ``tests/test_arch.py`` that shows discovery alone gets it wrong.
Support for a family is never added here: a family that discovery cannot read is a
bug in discovery.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

from compress.arch.spec import ArchSpec

Override = Callable[[nn.Module, ArchSpec], ArchSpec]

OVERRIDES: dict[str, Override] = {}


def apply_overrides(model: nn.Module, spec: ArchSpec) -> ArchSpec:
    fix = OVERRIDES.get(spec.family)
    return fix(model, spec) if fix is not None else spec

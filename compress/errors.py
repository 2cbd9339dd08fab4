"""User-facing errors: one clear line that says what to do.

Every error that bad input can cause is a :class:`UserError`; command-line entry
points catch it and print ``error: <message>`` without a traceback
(see :func:`compress.cli.run_main`).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(ValueError):
    """Bad input from the user (unknown name, impossible setting, unsupported model)."""


def did_you_mean(kind: str, name: str, known: Iterable[str]) -> UserError:
    """Build the error for an unknown ``name`` of ``kind``, with the closest names and the list.

    >>> str(did_you_mean("recipe", "magnitud", ["magnitude", "wanda"]))
    "unknown recipe 'magnitud'; did you mean 'magnitude'? Known recipes: magnitude, wanda"
    """
    known = sorted(set(known))
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else "."
    return UserError(f"unknown {kind} {name!r}{hint} Known {kind}s: {', '.join(known)}")

"""User-facing errors: one clear line that says what to do.

Every error that bad input can cause is a :class:`UserError`; command-line entry
points run through :func:`run_main`, which prints ``error: <message>`` and exits
with status 2 instead of a traceback.
"""

from __future__ import annotations

import difflib
import logging
import sys
from collections.abc import Callable, Iterable


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


def run_main(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run ``main``; bad input becomes ``error: <one line>`` and exit status 2."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(main(argv) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; nothing half-written was left behind", file=sys.stderr)
        return 130

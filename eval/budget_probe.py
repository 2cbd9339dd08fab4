"""The knob search's arithmetic: which setting of a recipe's knob to try next.

:func:`interpolated_probe` reads the measured costs as a line and aims at the budget's
boundary (regula falsi); :func:`next_probe` bisects when two runs give no usable line.
:func:`knob_groups` groups a family's single-recipe runs by everything but the knob.
The sweep runs the probes (:mod:`eval.sweep.search`); the costs and the meeting rule
are :mod:`eval.budget`'s.
"""

from __future__ import annotations

import json
import math
from typing import Any

from compress.traits import Knob
from eval.budget import family_of, meets, recipe_knobs


def next_probe(knob: Knob, tried: list[tuple[float, bool]], fraction: float = 0.5) -> float | None:
    """The next knob setting to try, given ``(setting, met the budget)`` pairs; None: done.

    With no setting meeting the budget, try the most compressed one (if that fails
    too, the budget is out of reach). Otherwise bisect between the most compressed
    failing setting below the least compressed meeting one (the dense end if none)
    and that meeting one: the boundary is where the best quality within budget lies.

    >>> k = Knob("sparsity", "up", 0.0, 0.99, 0.01)
    >>> next_probe(k, [(0.5, False)])
    0.99
    >>> next_probe(k, [(0.5, False), (0.99, True)])
    0.74
    """
    tried_values = {round(v, 6) for v, _ in tried}
    meets = [v for v, ok in tried if ok]
    fails = [v for v, ok in tried if not ok]
    if not meets:
        most = knob.most()
        if round(most, 6) in tried_values:
            return None
        return most
    m = min(meets, key=knob.order)
    below = [v for v in fails if knob.order(v) < knob.order(m)]
    if below:
        f = max(below, key=knob.order)
    elif fraction < 1:
        f = knob.least()  # the dense end costs the full price: it fails any budget < 1
    else:
        return None
    if knob.values:
        between = sorted(
            (v for v in knob.values if knob.order(f) < knob.order(v) < knob.order(m)),
            key=knob.order,
        )
        if not between:
            return None
        probe = between[(len(between) - 1) // 2]
    else:
        if abs(m - f) <= knob.step * 1.5:
            return None
        probe = round(round(((m + f) / 2) / knob.step) * knob.step, 6)
        if probe in (round(m, 6), round(f, 6)):
            return None
    return None if round(probe, 6) in tried_values else probe


def _snap(knob: Knob, x: float) -> float:
    """``x`` moved onto the knob's settings, on the more compressed side (so a probe placed
    at the predicted crossing lands inside the budget rather than just outside it)."""
    if knob.values:
        more = [v for v in knob.values if knob.order(v) >= knob.order(x) - 1e-9]
        return min(more, key=knob.order) if more else knob.most()
    n = x / knob.step
    n = math.ceil(n - 1e-6) if knob.more == "up" else math.floor(n + 1e-6)
    return round(min(max(n * knob.step, knob.low), knob.high), 6)


def _neighbour(knob: Knob, value: float, more: bool) -> float | None:
    """The setting one step more (or less) compressed than ``value``; None past the end."""
    if knob.values:
        side = [v for v in knob.values
                if (knob.order(v) > knob.order(value)) == more and v != value]
        if not side:
            return None
        return (min if more else max)(side, key=knob.order)
    up = (knob.more == "up") == more
    nxt = round(value + knob.step if up else value - knob.step, 6)
    return nxt if knob.low <= nxt <= knob.high else None


def interpolated_probe(
    knob: Knob, points: list[tuple[float, float]], fraction: float
) -> float | None:
    """The next setting to try, read off the measured costs; None: fall back to bisection.

    ``points`` are ``(setting, cost ratio)`` of runs already done. The cost is taken as
    linear in the knob between the two runs nearest the budget (the bracket, when one run
    meets it and a less compressed one does not; else the two nearest it on one side),
    and the probe is where that line crosses ``fraction`` (regula falsi), moved onto the
    knob's settings on the compressed side. Nonzeros and packed bytes are linear in
    sparsity and bits, so there the first probe lands on the boundary and one more run,
    a step less compressed, confirms it; bisection needs about log2(range / step) runs.
    When the line predicts the least compressed meeting run is already the boundary,
    the probe is the setting one step less compressed (the confirmation).
    None where two points do not give a line, the line leaves the knob's range, or the
    probe was tried: :func:`next_probe` then bisects.

    >>> k = Knob("sparsity", "up", 0.01, 0.99, 0.01)
    >>> interpolated_probe(k, [(0.9, 0.19), (0.95, 0.145)], 0.5)  # cost 1 - 0.9 s
    0.56
    >>> interpolated_probe(k, [(0.56, 0.496), (0.9, 0.19)], 0.5)  # boundary found: confirm
    0.55
    """
    by_setting = {round(v, 6): float(c) for v, c in points if c is not None and math.isfinite(c)}
    pts = sorted(by_setting.items(), key=lambda p: knob.order(p[0]))
    if len(pts) < 2:
        return None
    ok = [p for p in pts if meets(p[1], fraction)]
    fails = [p for p in pts if not meets(p[1], fraction)]
    m = ok[0] if ok else None  # least compressed run meeting the budget
    f = None  # most compressed failing run below it
    if m is not None:
        below = [p for p in fails if knob.order(p[0]) < knob.order(m[0])]
        f = below[-1] if below else None
    if m is not None and f is not None:
        a, b = f, m
    elif m is not None:
        a, b = (ok[0], ok[1]) if len(ok) > 1 else (None, None)
    else:
        a, b = fails[-2], fails[-1]
    if a is None or b is None or b[1] == a[1]:
        return None
    x = a[0] + (fraction - a[1]) * (b[0] - a[0]) / (b[1] - a[1])
    if not math.isfinite(x):
        return None
    probe = _snap(knob, x)
    if f is not None and knob.order(probe) <= knob.order(f[0]):
        probe = _neighbour(knob, f[0], more=True)  # the boundary lies beyond f
    if probe is not None and m is not None and knob.order(probe) >= knob.order(m[0]):
        probe = _neighbour(knob, m[0], more=False)  # m is the boundary: confirm a step below
    if probe is None or (f is not None and knob.order(probe) <= knob.order(f[0])):
        return None
    if m is None and knob.order(x) > knob.order(knob.most()):
        return None  # beyond the most compressed setting: bisection tries that one
    return None if round(probe, 6) in by_setting else probe


def knob_groups(
    runs: list[dict[str, Any]], family: str
) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Single-recipe runs of ``family`` with a free knob, grouped by recipe + other fields."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in runs:
        pipeline = run.get("pipeline", [])
        if len(pipeline) != 1 or family_of(run) != family:
            continue
        recipe = pipeline[0]["recipe"]
        config = dict(pipeline[0].get("config", {}))
        for knob in recipe_knobs(recipe):
            if knob.field not in config:
                continue
            if any(config.get(f) not in (None, "", False, "unstructured") for f in knob.fixed_by):
                continue
            rest = {k: v for k, v in config.items() if k not in (knob.field, "seed")}
            groups.setdefault((recipe, json.dumps(rest, sort_keys=True)), []).append(run)
    return groups


def group_knob(recipe: str, rest: str) -> Knob:
    """The knob a :func:`knob_groups` key varies: the one whose field its rest lacks."""
    fixed = json.loads(rest)
    return next(k for k in recipe_knobs(recipe) if k.field not in fixed)

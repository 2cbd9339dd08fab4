"""The quality-kept / cost plot: fixed axes, collapsed strip, clipped runs, labels apart."""

from __future__ import annotations

import itertools

import pytest

from eval.frontplot import COLLAPSED, STRIP, X_MAX, Y_MAX, Point, kept, panel_points, place_labels
from eval.plotbase import _pyplot


def _report(label, recipe, ppl, size, interval=None, key=None):
    m = {"name": "ppl_wiki", "value": ppl, "higher_is_better": False}
    if interval:
        m["interval"] = {"low": interval[0], "high": interval[1], "n": 24}
    return {"status": "ok", "quick": False, "label": label, "key": key or label,
            "model": {"name": "m", "task": "causal-lm"},
            "pipeline": [{"recipe": recipe, "config": {}}], "metrics": [m],
            "profile": {"bytes_on_disk": size, "params_nonzero": size}}


def test_kept_is_the_fraction_of_dense_quality():
    assert kept(20.0, {"value": 40.0, "higher_is_better": False}) == 0.5
    assert kept(0.8, {"value": 0.6, "higher_is_better": True}) == pytest.approx(0.75)
    assert kept(20.0, {"value": 0.0, "higher_is_better": False}) is None


def test_points_are_clipped_to_the_fixed_axes_and_collapsed_runs_go_to_the_strip():
    base = _report("identity", "identity", 20.0, 1000)
    runs = [base,
            _report("slow", "rtn", 21.0, 31_000),                # 31x dense cost
            _report("broken", "wanda", 2e8, 500),               # ppl 10^8
            _report("better", "rtn", 10.0, 400),                 # kept 2.0
            _report("fine", "rtn", 25.0, 300, interval=(23.0, 27.5))]
    pts = {p.label: p for p in panel_points(runs, base, "size", "ppl_wiki")}
    assert pts["slow"].x == X_MAX and pts["slow"].clipped_x
    assert pts["broken"].collapsed and pts["broken"].y == STRIP / 2 and STRIP / 2 < COLLAPSED
    assert pts["better"].clipped_y and pts["better"].y == Y_MAX
    fine = pts["fine"]
    assert fine.y == pytest.approx(0.8) and fine.x == pytest.approx(0.3)
    assert fine.lo == pytest.approx(20 / 27.5) and fine.hi == pytest.approx(20 / 23.0)
    assert all(0 <= p.x <= X_MAX and 0 <= p.y <= Y_MAX for p in pts.values())


def test_placed_labels_never_overlap_each_other_or_leave_the_axes():
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.set_xlim(0, X_MAX)
    ax.set_ylim(0, Y_MAX)
    # a crowded cluster: 30 long labels on points a hair apart
    pts = [Point(0.5 + 0.004 * i, 0.6 + 0.003 * i, None, None, "q", f"rtn(bits=4,group={i})")
           for i in range(30)]
    ax.scatter([p.x for p in pts], [p.y for p in pts])
    fig.canvas.draw()
    placed, dropped = place_labels(ax, fig, [(p, "k") for p in pts], pts)
    assert len(placed) + dropped == 30 and len(placed) >= 3 and dropped > 0
    frame = ax.get_window_extent(fig.canvas.get_renderer())
    for a, b in itertools.combinations(placed, 2):
        assert not a.overlaps(b)
    for box in placed:
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1
        assert frame.y0 <= box.y0 and box.y1 <= frame.y1
    plt.close(fig)


def test_pareto_png_is_written_per_model(tmp_path):
    from eval.frontplot import plot_fronts

    base = _report("identity", "identity", 20.0, 1000)
    runs = [base] + [_report(f"rtn{i}", "rtn", 20 + i, 1000 - 80 * i) for i in range(8)]
    written = plot_fronts(runs, tmp_path)
    assert [p.name for p in written] == ["m_pareto.png"]
    assert written[0].stat().st_size > 10_000


def test_a_long_list_of_clipped_runs_is_wrapped_under_the_title():
    from eval.frontplot import NOTE_WIDTH, finish_panel

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.set_title("quality kept against latency")
    pts = [Point(X_MAX, 0.9, None, None, "q", f"quanto(weights=int{i},group=64)", clipped_x=True)
           for i in range(12)]
    fig.canvas.draw()
    finish_panel(ax, fig, pts, [])
    lines = ax.get_title().split("\n")
    assert lines[0] == "quality kept against latency" and len(lines) > 3
    assert all(len(line) <= NOTE_WIDTH for line in lines[1:])
    assert "quanto(weights=int11,group=64)" in ax.get_title()
    plt.close(fig)

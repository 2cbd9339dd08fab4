"""Two runs compared on the same items (eval.pairwise, ``eval.compare --paired``)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from compress.errors import UserError
from eval.benchmark.samples import Samples
from eval.compare import main as compare_main
from eval.pairwise import paired_rows
from tests.test_report import make_report

PROTOCOL = {"corpus": "wiki", "split": "test", "windows": 24}


def run_with(folder, recipe, correct, nll, protocol=PROTOCOL):
    """A report with an accuracy over examples and a perplexity over windows."""
    correct = np.asarray(correct, dtype=float)
    acc = Samples("mean", "examples", {"x": correct})
    ppl = Samples("ppl", "windows", {"nll": np.asarray(nll, float),
                                     "tokens": np.full(len(nll), 100.0)})
    r = make_report(recipe=recipe, metrics=[
        {"name": "accuracy", "value": acc.value(), "higher_is_better": True,
         "protocol": {"split": "test"}},
        {"name": "ppl_wiki", "value": ppl.value(), "higher_is_better": False,
         "protocol": protocol}])
    r.samples = {"accuracy": acc, "ppl_wiki": ppl}
    return r.write(folder)


def test_a_report_keeps_its_samples_beside_it(tmp_path):
    path = run_with(tmp_path, "identity", [1, 0, 1, 1], [200.0, 300.0])
    data = json.loads(path.read_text())
    assert (tmp_path / data["samples_file"]).is_file()
    assert data["samples_file"] == path.name.removesuffix(".json") + ".samples.npz"


def test_the_same_run_twice_is_within_noise_with_a_zero_width_interval(tmp_path):
    rng = np.random.default_rng(0)
    correct = rng.random(500) < 0.8
    nll = rng.uniform(200, 400, 24)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = run_with(tmp_path / "a", "identity", correct, nll)
    b = run_with(tmp_path / "b", "identity", correct, nll)
    for row in paired_rows(a, b):
        assert row["delta"] == 0.0 and row["low"] == row["high"] == 0.0 and row["within_noise"]


def test_a_small_shared_shift_is_resolved_though_the_marginal_intervals_overlap(tmp_path):
    # window difficulty varies a lot (shared by both runs); B is 2% worse on every window:
    # paired, the difference is clear
    rng = np.random.default_rng(1)
    nll = rng.uniform(150, 450, 24)
    correct = rng.random(2000) < 0.8
    worse = correct.copy()
    worse[np.flatnonzero(correct)[:100]] = False  # 100 of the correct ones now wrong
    a = run_with(tmp_path, "identity", correct, nll)
    b = run_with(tmp_path, "magnitude", worse, nll * 1.02)
    rows = {r["metric"]: r for r in paired_rows(a, b)}
    ppl, acc = rows["ppl_wiki"], rows["accuracy"]
    assert ppl["delta"] > 0 and ppl["low"] > 0 and not ppl["within_noise"]
    assert acc["delta"] == pytest.approx(-0.05) and acc["high"] < 0
    assert compare_main(["--paired", str(a), str(b)]) == 0


def test_a_different_protocol_is_not_paired(tmp_path):
    a = run_with(tmp_path, "identity", [1, 0, 1], [200.0, 300.0])
    b = run_with(tmp_path, "magnitude", [1, 1, 1], [200.0, 300.0],
                 protocol=PROTOCOL | {"windows": 12})
    rows = {r["metric"]: r for r in paired_rows(a, b)}
    assert "windows" in rows["ppl_wiki"]["skipped"]
    assert "delta" in rows["accuracy"]


def test_a_report_without_samples_is_a_one_line_error(tmp_path):
    a = run_with(tmp_path, "identity", [1, 0, 1], [200.0, 300.0])
    old = make_report(recipe="magnitude").write(tmp_path)
    with pytest.raises(UserError, match="no per-item samples") as err:
        paired_rows(a, old)
    assert "\n" not in str(err.value)

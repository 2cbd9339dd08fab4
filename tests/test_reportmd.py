"""Pareto front on known points; report.md from fixture reports: every section, every plot."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from sweep_helpers import fake_report, write_reports

from compress.errors import UserError
from eval.plots import pareto_front, sparsity_point
from eval.report.common import SECTIONS
from eval.report.generate import generate, main


def test_pareto_front_known_points():
    pts = [(1, 1), (2, 3), (3, 2), (4, 4), (2, 3), (5, 4), (0.5, 0.2)]
    # (3, 2) is beaten by (2, 3); (5, 4) by (4, 4); equal points (2, 3) both stay
    assert pareto_front(pts) == [6, 0, 1, 4, 3]
    # lower y better (perplexity): (0.5, 0.2) dominates everything else
    assert pareto_front(pts, maximize_y=False) == [6]
    # larger x better
    assert pareto_front(pts, minimize_x=False) == [5]
    assert pareto_front([]) == []
    assert pareto_front([(1.0, 5.0)]) == [0]
    # a staircase: every point is on the front
    stairs = [(i, i * i) for i in range(6)]
    assert pareto_front(stairs) == list(range(6))


def test_sparsity_point():
    r = fake_report(steps=[("wanda", {"sparsity": 0.5, "pattern": "2:4"})])
    assert sparsity_point(r) == ("wanda 2:4", 0.5)
    assert sparsity_point(fake_report(steps=[("magnitude", {"sparsity": 0.9})])) == (
        "magnitude",
        0.9,
    )
    assert sparsity_point(fake_report(steps=[("rtn", {"bits": 4})])) is None
    assert sparsity_point(fake_report(steps=[("wanda", {"sparsity": 0.5}), ("rtn", {})])) is None


LM = {"ppl_wiki": 20.0, "ppl_news": 30.0}
S2S = {"chrf": 80.0, "bleu": 40.0, "ppl_seq2seq": 3.0}


def fixture_reports():
    lm = [fake_report("lm", metrics=LM)]
    for s, ppl in zip(
        (0.1, 0.5, 0.9, 0.95, 0.99), (20.1, 24.0, 400.0, 3000.0, 20000.0), strict=True
    ):
        lm.append(
            fake_report(
                "lm",
                [("magnitude", {"sparsity": s})],
                metrics={"ppl_wiki": ppl, "ppl_news": ppl * 1.4},
                nonzero=10e6 * (1 - s * 0.9),
                latency=10.2,
            )
        )
    lm += [
        fake_report(
            "lm",
            [("wanda", {"sparsity": 0.5})],
            metrics={"ppl_wiki": 22.5, "ppl_news": 33.0},
            nonzero=5.5e6,
            latency=9.9,
        ),
        fake_report(
            "lm",
            [("wanda", {"sparsity": 0.5, "pattern": "2:4"})],
            metrics={"ppl_wiki": 45.0, "ppl_news": 60.0},
            nonzero=5.5e6,
        ),
        fake_report(
            "lm",
            [("rtn", {"bits": 4, "granularity": "channel"})],
            metrics={"ppl_wiki": 26.0, "ppl_news": 37.0},
            info={
                "quant": {
                    "packed_bytes": 14e6,
                    "format": "int4 sym per-channel",
                }
            },
        ),
        fake_report(
            "lm",
            [("dynamic-int8", {})],
            metrics={"ppl_wiki": 20.4, "ppl_news": 30.5},
            disk=30e6,
            latency=6.0,
        ),
        fake_report(
            "lm",
            [("wanda", {"sparsity": 0.5}), ("rtn", {"bits": 4})],
            metrics={"ppl_wiki": 28.0, "ppl_news": 40.0},
            nonzero=5.5e6,
        ),
        fake_report("lm", [("moefy", {})], status="failed", error="UserError: moefy: no FFN"),
        # a quick run of a model with full runs: left out of the report
        fake_report(
            "lm", [("magnitude", {"sparsity": 0.3})], quick=True, metrics={"ppl_wiki": 12345.0}
        ),
    ]
    s2s = [
        fake_report("s2s", task="seq2seq", metrics=S2S),
        fake_report(
            "s2s",
            [("magnitude", {"sparsity": 0.5})],
            task="seq2seq",
            metrics={"chrf": 70.0, "bleu": 30.0, "ppl_seq2seq": 4.0},
            nonzero=6e6,
        ),
        fake_report(
            "s2s",
            [("distill", {})],
            task="seq2seq",
            status="failed",
            error="RuntimeError: out of memory",
        ),
    ]
    return lm + s2s


def tiny_png(path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1], [0, 1])
    fig.savefig(path)
    plt.close(fig)
    return path


def analysis_fixture(folder: Path) -> None:
    folder.mkdir(parents=True)
    stats = {
        "params": 1000,
        "frac_above": {"0.001": 0.99, "0.01": 0.9, "0.1": 0.2, "1": 0.0},
        "frac_zero": 0.0,
        "std": 0.05,
        "excess_kurtosis": 3.5,
        "max_abs": 0.9,
    }
    data = {
        "schema": "compress-suite/weight-analysis",
        "schema_version": 1,
        "model": "lm",
        "slug": "lm",
        "thresholds": [0.001, 0.01, 0.1, 1.0],
        "overall": stats,
        "by_group": {"attn": stats, "ffn": stats | {"params": 2000}},
    }
    (folder / "lm.json").write_text(json.dumps(data))
    for name in ("lm_hist.png", "lm_blocks.png", "cumulative.png"):
        tiny_png(folder / name)


@pytest.fixture
def reports_dir(tmp_path):
    folder = tmp_path / "reports"
    folder.mkdir()
    write_reports(folder, fixture_reports())
    analysis_fixture(folder / "analysis")
    return folder


def _section(text: str, title: str) -> str:
    start = text.index(title)
    following = [text.index(t) for t in SECTIONS if text.index(t) > start]
    return text[start : min(following) if following else len(text)]


def test_report_has_every_section_and_embeds_every_plot(reports_dir, tmp_path):
    out = tmp_path / "report.md"
    assert (
        main([str(reports_dir), "-o", str(out), "--budget", "size=0.5", "--budget", "nonzeros=0.6"])
        == 0
    )
    text = out.read_text()
    positions = [text.index(f"## {i}. {title}") for i, title in enumerate(SECTIONS, 1)]
    assert positions == sorted(positions)
    # every plot drawn is embedded, with a link that resolves from report.md's folder
    plots = sorted((reports_dir / "plots").glob("*.png"))
    assert {p.name for p in plots} == {
        "lm_sparsity.png",
        "lm_pareto.png",
        "s2s_sparsity.png",
        "s2s_pareto.png",
    }
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    resolved = {(out.parent / link).resolve() for link in links}
    for png in plots + sorted((reports_dir / "analysis").glob("*.png")):
        assert png.resolve() in resolved, f"{png.name} not embedded"
    assert all(p.is_file() for p in resolved)
    # the equal-budget table is the first table of the report
    first_table = text.index("\n|")
    assert positions[0] < first_table < positions[1]
    budget = _section(text, SECTIONS[0])
    assert "### Budget size=0.5" in budget and "### Budget nonzeros=0.6" in budget
    assert "| lm | quantization | `dynamic-int8` | 0.300 | ppl_wiki ↓ 20.4 | 20 |" in budget


def test_report_numbers_come_from_the_reports(reports_dir, tmp_path):
    out = tmp_path / "sub" / "report.md"
    text, images = generate(reports_dir, out)
    assert len(images) == len(set(images)) == 7  # 4 plots + 3 analysis PNGs
    pruned = _section(text, SECTIONS[4])
    assert "| magnitude | 99% | 2e+04 |" in pruned.replace("20,000", "2e+04")
    assert "| wanda 2:4 | 50% | 45 |" in pruned
    assert "12,345" not in text  # the quick run of a model with full runs is left out
    bench = _section(text, SECTIONS[5])
    assert "| lm | ppl_wiki ↓ | 20 | corpus=wiki, split=test, seq_len=512 |" in bench
    # published 50% magnitude on OPT-125M next to ours (24.0 / 20 = 1.2x)
    assert re.search(
        r"\| magnitude \| 50% unstructured \| OPT-125M.*\| 6\.99x \| lm, ppl_wiki "
        r"\(`magnitude\(sparsity=0\.5\)`\) \| 20 -> 24 \| 1\.20x \|",
        bench,
    )
    assert (
        "| gptq | 4-bit per row | OPT-125M, WikiText-2 ppl | 27.65 -> 31.12 | 1.13x | not run here"
        in bench
    )
    size = _section(text, SECTIONS[6])
    assert "### lm (causal-lm)" in size and "| lm | `rtn(bits=4,granularity=channel)` |" in size
    challenges = _section(text, SECTIONS[8])
    assert "UserError: moefy: no FFN" in challenges and "out of memory" in challenges
    assert "s2s" in challenges and "1 failed (`distill`)" in challenges
    analysis = _section(text, SECTIONS[3])
    assert "| ffn | 2,000 | 99.0% | 90.0% | 20.0% | 0.0% |" in analysis
    # default budgets when no sweep manifest names any
    assert "### Budget size=0.5" in text and "### Budget latency=0.75" in text


def test_report_without_analysis_or_reports(tmp_path):
    folder = tmp_path / "reports"
    folder.mkdir()
    with pytest.raises(UserError, match="no reports"):
        generate(folder, tmp_path / "r.md")
    write_reports(folder, [fake_report("lm", metrics=LM)])
    text, images = generate(folder, tmp_path / "r.md")
    assert "No weight analysis" in text and "No single-step pruning runs" in text
    assert all(f"## {i}. {t}" in text for i, t in enumerate(SECTIONS, 1))
    assert [Path(p).name for p in images] == ["lm_pareto.png"]
    with pytest.raises(UserError, match="does not exist"):
        main([str(tmp_path / "nope"), "-o", str(tmp_path / "r.md")])


def test_protocol_text_stays_on_one_table_line():
    from eval.report.common import data_sources as _data_sources
    from eval.report.common import protocol_text as _protocol_text

    protocol = {
        "corpus": "wiki",
        "separator": "\n\n",
        "note": "a|b",
        "quick": False,
        "data": {
            "corpus": "wiki",
            "split": "test",
            "examples": 10,
            "files": [{"package": "gensim", "version": "4.4.0", "path": "x.bz2"}],
            "rule": "sorted by sha1",
        },
    }
    text = _protocol_text(protocol)
    assert text == 'corpus=wiki, separator="\\n\\n", note=a\\|b, quick=False'
    report = {"metrics": [{"name": "ppl", "protocol": protocol}] * 2}
    assert _data_sources([report]) == [
        "`wiki` / `test`: 10 examples from gensim 4.4.0 `x.bz2`; sorted by sha1"
    ]


def test_method_bench_table_reads_the_bench_json(tmp_path):
    from eval.report.common import Writer
    from eval.report.methods import section_method_bench

    (tmp_path / "bench").mkdir()
    proto = {"corpus": "wiki", "split": "test", "seq_len": 512}
    doc = {"model": "m", "calibration": {"sequences": 64, "seq_len": 256, "tokens": 16384,
                                         "source": "wiki+news", "sha256": "abc"},
           "results": {
               "dense": {"status": "ok", "recipe": "identity", "metrics": {"ppl_wiki": 20.0},
                         "metric_protocols": {"ppl_wiki": proto},
                         "ratio_to_dense": {"ppl_wiki": 1.0}},
               "gptq4-g128": {"status": "ok", "recipe": "gptq", "metrics": {"ppl_wiki": 24.0},
                              "metric_protocols": {"ppl_wiki": proto},
                              "ratio_to_dense": {"ppl_wiki": 1.2},
                              "info": {"quant": {"target_bits_per_weight": 4.156}}},
               "awq3-g128": {"status": "failed", "recipe": "awq"}}}
    (tmp_path / "bench" / "method_quality_m.json").write_text(json.dumps(doc))
    w = Writer()
    section_method_bench(w, tmp_path)
    text = w.text()
    assert "same 64 x 256 calibration tokens (16384 tokens of wiki+news, sha256 abc)" in text
    assert "| gptq4-g128 | gptq | 24 | 1.200x | 4.16 |  |" in text
    assert "awq3-g128" not in text
    # a bench file whose variants read no calibration says so, with no "?" placeholders
    del doc["calibration"]
    (tmp_path / "bench" / "method_quality_m.json").write_text(json.dumps(doc))
    w = Writer()
    section_method_bench(w, tmp_path)
    assert "one context, no variant here reads calibration data;" in w.text()
    assert "?" not in w.text()

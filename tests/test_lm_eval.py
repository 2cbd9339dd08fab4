"""The lm-eval bridge: the suite's offline tasks on a tiny model, written into reports that
``eval.compare`` shows, with an interval for every metric."""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("lm_eval")

from compress.errors import UserError  # noqa: E402
from compress.tiny import tiny_model  # noqa: E402
from eval.compare import render  # noqa: E402
from eval.lm_eval import results as lm_results  # noqa: E402
from eval.lm_eval.cli import main  # noqa: E402
from eval.report import Report, read_reports  # noqa: E402

TASKS = "suite_news,suite_sentiment"


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """The dense model's per-document values are cached: here, in a fresh folder per test."""
    monkeypatch.setenv("COMPRESS_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lm") / "tiny-llama"
    model, tok = tiny_model("llama")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _run(folder, reports, *extra, tasks=TASKS):
    argv = ["--model", str(folder), "--tasks", tasks, "--limit", "6", "--max-length", "64",
            "--reports", str(reports), *extra]
    assert main(argv) == 0
    return {r["label"]: r for r in read_reports(reports)}


def _metrics(report):
    return {m["name"]: m for m in report["metrics"]}


def test_offline_tasks_on_a_tiny_model_reach_the_report_and_compare(tiny_folder, tmp_path):
    runs = _run(tiny_folder, tmp_path)
    runs = _run(tiny_folder, tmp_path, "--recipe", "rtn", "--opt", "bits=2")
    assert set(runs) == {"identity", "rtn(bits=2)"}
    dense, rtn2 = _metrics(runs["identity"]), _metrics(runs["rtn(bits=2)"])
    names = {"suite_news/word_perplexity", "suite_news/byte_perplexity",
             "suite_news/bits_per_byte", "suite_sentiment/acc", "suite_sentiment/acc_norm"}
    assert names <= set(dense)
    for m in dense.values():
        iv = m["interval"]
        assert iv["low"] <= m["value"] <= iv["high"]
        assert iv["n"] == 6 and iv["unit"] == "documents"
        assert m["protocol"]["harness"] == "lm-eval" and m["protocol"]["n_documents"] == 6
    # lm-eval's aggregates agree with each other: bits per byte = log2(byte perplexity)
    bpb, bppl = dense["suite_news/bits_per_byte"]["value"], dense["suite_news/byte_perplexity"]
    assert bpb == pytest.approx(math.log2(bppl["value"]), rel=1e-6)
    assert bppl["protocol"]["data"]["corpus"] == "news"
    assert 0.0 <= dense["suite_sentiment/acc"]["value"] <= 1.0
    assert dense["suite_sentiment/acc"]["stderr"] > 0  # lm-eval's own, where it gives one
    # 2-bit weights change the model's scores, so the bridge evaluated the compressed model
    assert rtn2["suite_news/bits_per_byte"]["value"] != bpb
    # paired with the identity run's documents (cached when it ran): the same delta, and an
    # interval of the difference no wider than the two intervals side by side
    for name, m in rtn2.items():
        vs = m["vs_dense"]
        assert vs["delta"] == pytest.approx(m["value"] - dense[name]["value"], rel=1e-6, abs=1e-9)
        assert vs["low"] <= vs["delta"] <= vs["high"] and vs["n"] == 6
        width = (m["interval"]["high"] - m["interval"]["low"]
                 + dense[name]["interval"]["high"] - dense[name]["interval"]["low"])
        assert vs["high"] - vs["low"] <= width
    assert "vs_dense" not in dense["suite_sentiment/acc"]
    assert runs["rtn(bits=2)"]["info"]["quant"]["bits"] == 2
    # reports of their own (no eval.run report here): marked, so no sweep takes them as done
    assert runs["identity"]["harness"] == "lm-eval"
    table = render(read_reports(tmp_path), markdown=True)
    assert "suite_news/bits_per_byte ↓" in table and "suite_sentiment/acc ↑" in table
    assert "rtn(bits=2) [lm-eval]" in table


def test_results_join_the_report_eval_run_wrote_for_the_same_run(tiny_folder, tmp_path):
    from compress.registry import make_config
    from eval.pipeline import step_record

    prior = Report(model={"name": str(tiny_folder), "task": "causal-lm"},
                   pipeline=[step_record(make_config("identity"))])
    prior.status = "ok"
    prior.metrics = [{"name": "ppl_wiki", "value": 12.0, "higher_is_better": False}]
    path = prior.write(tmp_path)
    runs = _run(tiny_folder, tmp_path)
    assert list(tmp_path.glob("*.json")) == [path]
    merged = json.loads(path.read_text())
    assert "harness" not in merged and merged["key"] == prior.key
    assert {"ppl_wiki", "suite_sentiment/acc"} <= set(_metrics(merged))
    assert merged["lm_eval"]["tasks"]["suite_sentiment"]["documents"]["effective"] == 6
    assert runs["identity"]["status"] == "ok"


def test_a_saved_compressed_folder_scores_as_the_model_compressed_in_memory(tiny_folder,
                                                                            tmp_path):
    from compress.cli import recipe_main

    assert recipe_main("rtn", ["--model", str(tiny_folder), "--bits", "3",
                               "--out", str(tmp_path / "rtn3")]) == 0
    runs = _run(tiny_folder, tmp_path / "r", "--recipe", "rtn", "--opt", "bits=3")
    runs = _run(tiny_folder, tmp_path / "r", "--compressed", str(tmp_path / "rtn3"))
    saved = _metrics(next(r for label, r in runs.items() if label.startswith("compressed(")))
    memory = _metrics(runs["rtn(bits=3)"])
    for name, m in memory.items():
        assert saved[name]["value"] == pytest.approx(m["value"], rel=1e-5), name


def test_vs_dense_measures_dense_first_when_nothing_is_cached(tiny_folder, tmp_path):
    runs = _run(tiny_folder, tmp_path, "--recipe", "rtn", "--opt", "bits=2", "--vs-dense")
    assert all("vs_dense" in m for m in runs["rtn(bits=2)"]["metrics"])
    assert runs["rtn(bits=2)"]["lm_eval"]["paired_with_dense"] == 5
    # one cache entry per dense model and setting gathers every task measured: a run on
    # one of them pairs without measuring dense again
    runs = _run(tiny_folder, tmp_path, "--recipe", "rtn", "--opt", "bits=3",
                tasks="suite_sentiment")
    assert runs["rtn(bits=3)"]["lm_eval"]["paired_with_dense"] == 2
    # the same model against itself: a zero difference, within noise
    from eval.lm_eval import paired

    same = paired.paired([0.0, 1.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0], lambda x: sum(x) / len(x))
    assert same == (0.0, 0.0, 0.0)


def test_an_encoder_decoder_is_scored_through_the_seq2seq_backend(tmp_path):
    folder = tmp_path / "t5"
    model, tok = tiny_model("t5")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    assert main(["--model", str(folder), "--tasks", "suite_sentiment", "--limit", "4",
                 "--reports", str(tmp_path / "r")]) == 0
    (report,) = read_reports(tmp_path / "r")
    assert report["model"]["task"] == "seq2seq"
    assert _metrics(report)["suite_sentiment/acc"]["interval"]["n"] == 4


def test_the_bootstrap_has_known_answers():
    from lm_eval.api.registry import get_aggregation

    mean = get_aggregation("mean")
    lo, hi = lm_results.bootstrap([0.7] * 50, mean)
    assert lo == pytest.approx(0.7) and hi == pytest.approx(0.7)  # a constant: zero width
    wide = lm_results.bootstrap([0.0, 1.0] * 25, mean)
    narrow = lm_results.bootstrap([0.0, 1.0] * 2500, mean)
    # coin flips: the 95% interval of their mean is +-1.96 * 0.5 / sqrt(n) wide
    assert wide[1] - wide[0] == pytest.approx(2 * 1.96 * 0.5 / math.sqrt(50), rel=0.15)
    assert narrow[1] - narrow[0] == pytest.approx((wide[1] - wide[0]) / 10, rel=0.2)
    assert lm_results.bootstrap([1.0], mean) is None
    # the vectorised aggregations agree with lm-eval's own functions
    import numpy as np

    pairs = [(-3.0, 2), (-10.0, 4), (-1.5, 1)]
    for name in ("weighted_perplexity", "bits_per_byte"):
        agg = get_aggregation(name)
        got = lm_results.statistic(pairs, agg)(np.array([[0, 1, 2], [1, 1, 0]]))
        assert got == pytest.approx([agg(pairs), agg([pairs[1], pairs[1], pairs[0]])])


def test_bad_input_is_one_line(tiny_folder, tmp_path):
    with pytest.raises(UserError, match="did you mean"):
        main(["--model", str(tiny_folder), "--tasks", "suite_sentimen", "--reports",
              str(tmp_path)])
    with pytest.raises(UserError, match="need --recipe"):
        main(["--model", str(tiny_folder), "--tasks", TASKS, "--opt", "bits=4"])
    with pytest.raises(UserError, match="not both"):
        main(["--model", str(tiny_folder), "--tasks", TASKS, "--recipe", "rtn",
              "--compressed", str(tmp_path)])
    enc = tmp_path / "bert"
    model, tok = tiny_model("bert")
    model.save_pretrained(enc)
    tok.save_pretrained(enc)
    with pytest.raises(UserError, match="language models"):
        main(["--model", str(enc), "--tasks", TASKS, "--reports", str(tmp_path)])

"""Error bars and agreement: the bootstrap on known answers, per-item samples that
recompute the benchmark's numbers, paired changes against dense, KL / top-1 / prediction
agreement / cosine on tiny models, the dense reference cache, and ± in eval.compare."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import sacrebleu
import torch
from scipy.stats import spearmanr
from sklearn.metrics import f1_score

from compress.errors import UserError
from compress.tiny import tiny_model
from eval.benchmark import perplexity
from eval.benchmark.agreement import TOPK, Agreement, dense_compact, token_kl
from eval.benchmark.metrics import window_nll
from eval.benchmark.reference import dense_reference, load_reference, model_fingerprint
from eval.benchmark.samples import Samples, interval, sentence_stats, vs_dense
from eval.benchmark.suites import SUITES, run_benchmarks
from eval.paired import bootstrap_interval, paired_bootstrap, ratio_interval

# ---------------------------------------------------------------- the bootstrap


def _width(s: Samples) -> float:
    iv = interval(s)
    return iv["high"] - iv["low"]


def test_a_constant_metric_has_a_zero_width_interval():
    assert bootstrap_interval(lambda idx: np.full(idx.shape[0], 7.0), 30) == (7.0, 7.0)
    iv = interval(Samples("mean", "examples", {"x": np.full(200, 0.8)}))
    assert iv["low"] == iv["high"] == 0.8 and iv["n"] == 200
    # every window at the same NLL per token: the resampled perplexity never moves
    tokens = np.array([511, 300, 511, 17])
    s = Samples("ppl", "windows", {"nll": 2.5 * tokens, "tokens": tokens})
    assert s.value() == pytest.approx(math.exp(2.5))
    assert _width(s) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("kind", ["mean", "ppl"])
def test_interval_width_shrinks_like_one_over_sqrt_n(kind):
    def samples(n: int) -> Samples:
        i = np.arange(n)
        if kind == "mean":  # 30% ones, evenly spread: the same population at every n
            return Samples("mean", "examples", {"x": (i % 10 < 3).astype(float)})
        tokens = np.full(n, 100.0)
        return Samples("ppl", "windows", {"nll": tokens * (2.0 + (i % 7) / 7), "tokens": tokens})

    w100, w400, w1600 = (_width(samples(n)) for n in (100, 400, 1600))
    assert w100 > 0
    # quadrupling n halves the width (bootstrap noise: a few percent)
    assert w100 / w400 == pytest.approx(2.0, rel=0.15)
    assert w400 / w1600 == pytest.approx(2.0, rel=0.15)


def test_interval_of_a_mean_matches_the_normal_approximation():
    x = (np.arange(2000) % 4 == 0).astype(float)  # p = 0.25
    iv = interval(Samples("mean", "examples", {"x": x}))
    half = 1.96 * math.sqrt(0.25 * 0.75 / 2000)
    assert iv["low"] == pytest.approx(0.25 - half, abs=0.004)
    assert iv["high"] == pytest.approx(0.25 + half, abs=0.004)


def test_bootstrap_is_seeded_and_speed_ratio_still_uses_it():
    x = np.random.default_rng(1).normal(size=50)
    a = bootstrap_interval(lambda idx: x[idx].mean(1), 50)
    assert a == bootstrap_interval(lambda idx: x[idx].mean(1), 50)
    assert a != bootstrap_interval(lambda idx: x[idx].mean(1), 50, seed=1)
    r = ratio_interval([10.0] * 8, [5.0, 5.5, 4.5, 5.0, 5.2, 4.8, 5.0, 5.1])
    lo, hi = bootstrap_interval(
        lambda idx: np.median(np.array([5.0, 5.5, 4.5, 5.0, 5.2, 4.8, 5.0, 5.1])[idx] / 10, 1), 8
    )
    assert r["ci95"] == [round(lo, 4), round(hi, 4)]


def test_paired_bootstrap_cancels_what_both_models_share():
    rng = np.random.default_rng(0)
    hardness = rng.normal(0, 1, 300)  # per-item difficulty both models see
    dense = hardness + rng.normal(0, 0.05, 300)
    model = dense + 0.1
    lo, hi = paired_bootstrap(lambda i: dense[i].mean(1), lambda i: model[i].mean(1), 300)
    assert lo == pytest.approx(0.1) and hi == pytest.approx(0.1)  # every item moved by 0.1
    # the unpaired intervals overlap: without pairing the change would look like noise
    a = interval(Samples("mean", "examples", {"x": dense}))
    b = interval(Samples("mean", "examples", {"x": model}))
    assert a["high"] > b["low"]
    d = vs_dense(Samples("mean", "examples", {"x": model}), Samples("mean", "examples", {"x": dense}))
    assert d["delta"] == pytest.approx(0.1) and d["within_noise"] is False
    same = vs_dense(Samples("mean", "examples", {"x": dense}), Samples("mean", "examples", {"x": dense}))
    assert same["delta"] == same["low"] == same["high"] == 0.0 and same["within_noise"] is True


def test_pairing_different_items_is_one_clear_error():
    a = Samples("mean", "examples", {"x": np.ones(5)})
    with pytest.raises(UserError, match="not the same items"):
        vs_dense(a, Samples("mean", "examples", {"x": np.ones(6)}))
    with pytest.raises(UserError, match="unknown sample kind"):
        Samples("median", "examples", {"x": np.ones(3)})


# ---------------------------------------------------------------- samples = the benchmark


def test_samples_recompute_the_benchmark_numbers():
    from compress.tiny import tiny_model as tm

    model, tok = tm("gpt2")
    texts = ["the cat sat on the mat and looked at the birds"] * 20
    nll, tokens = window_nll(model, tok, texts, 16, 16, 3)
    ppl, n = perplexity(model, tok, texts, 16, 16, 3)
    assert Samples("ppl", "windows", {"nll": nll, "tokens": tokens}).value() == pytest.approx(ppl)
    assert tokens.sum() == n

    hyps = ["hello world.", "a cat, a dog", "it is", "the end of it all"]
    refs = ["Hello world.", "A cat, a dog.", "It is.", "The end of it, all."]
    for kind, fn in (("chrf", sacrebleu.corpus_chrf), ("bleu", sacrebleu.corpus_bleu)):
        s = Samples(kind, "sentences", {"stats": sentence_stats(kind, hyps, refs)})
        assert s.value() == pytest.approx(fn(hyps, [refs]).score)

    rng = np.random.default_rng(0)
    y, pred = rng.integers(0, 3, 200), rng.integers(0, 4, 200)
    f1 = Samples("f1", "examples", {"y": y, "pred": pred}).value()
    assert f1 == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))
    a, b = rng.normal(size=100), rng.integers(0, 5, 100).astype(float)  # ties in b
    rho = Samples("rho", "pairs", {"a": a, "b": b}).value()
    assert rho == pytest.approx(spearmanr(a, b).statistic)


# ---------------------------------------------------------------- KL and agreement


def test_kl_estimate_is_exact_without_a_tail_and_unbiased_with_one(monkeypatch):
    from eval.benchmark import agreement

    g = torch.Generator().manual_seed(0)
    dense = torch.log_softmax(torch.randn(4000, 50, generator=g) * 2, -1)  # (S, V)
    other = torch.log_softmax(dense + torch.randn(4000, 50, generator=g), -1)
    full = (dense.exp() * (dense - other)).sum(-1).double()  # exact KL(dense || other)
    monkeypatch.setattr(agreement, "TOPK", 50)  # the whole vocabulary: nothing sampled
    kl = token_kl(dense_compact(dense, seed=0), other)
    assert torch.allclose(kl, full, atol=1e-5)
    monkeypatch.setattr(agreement, "TOPK", 4)  # most of the mass in the sampled tail
    compact = dense_compact(dense, seed=0)
    assert compact["rest"].exp().mean() > 0.3 and compact["tail_ids"].shape == (4000, 32)
    assert not torch.isin(compact["tail_ids"][0], compact["ids"][0]).any()
    kl = token_kl(compact, other)
    assert kl.mean().item() == pytest.approx(full.mean().item(), rel=0.02)
    # the top-4 alone (no tail) would be far off: the tail estimate matters
    no_tail = dict(compact, tail_ids=compact["tail_ids"][:, :0], tail_logp=compact["tail_logp"][:, :0])
    assert abs(token_kl(no_tail, other).mean() - full.mean()) > 0.2 * full.mean()
    assert torch.equal(token_kl(compact, dense), torch.zeros(4000, dtype=torch.float64))


def _perturb(model: torch.nn.Module, scale: float = 0.05) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale * p.abs().mean())


def _agreement_on_windows(model, tok, reference=None):
    agree = Agreement(reference, recording=False) if reference else Agreement.record()
    collector = agree.token_collector("wiki", "windows")
    texts = ["a quick brown fox jumps over the lazy dog near the river bank"] * 30
    window_nll(model, tok, texts, 32, 32, 4, observe=collector.observe)
    agree.finish_tokens("wiki", {})
    return agree


def test_kl_of_a_model_against_itself_is_zero_and_a_perturbed_model_is_not():
    model, tok = tiny_model("llama")
    ref = _agreement_on_windows(model, tok).recorded
    assert ref["wiki"]["ids"].shape[1] == TOPK
    same = {m.name: m for m in _agreement_on_windows(model, tok, ref).metrics}
    assert same["kl_wiki"].value == 0.0 and same["top1_wiki"].value == 1.0
    assert same["kl_wiki"].interval["low"] == same["kl_wiki"].interval["high"] == 0.0
    _perturb(model, 0.5)
    moved = {m.name: m for m in _agreement_on_windows(model, tok, ref).metrics}
    assert moved["kl_wiki"].value > 1e-4 and moved["kl_wiki"].interval["low"] > 0
    assert moved["top1_wiki"].value < 1.0
    assert not moved["kl_wiki"].higher_is_better and moved["top1_wiki"].higher_is_better


def test_agreement_refuses_a_reference_on_other_tokens():
    model, tok = tiny_model("gpt2")
    ref = _agreement_on_windows(model, tok).recorded
    ref["wiki"]["targets"] = ref["wiki"]["targets"] + 1
    with pytest.raises(UserError, match="other tokens"):
        _agreement_on_windows(model, tok, ref)


def _data_or_skip():
    from compress import data

    try:
        data.load_split("tweets", "test")
    except Exception as exc:  # data files missing on this machine
        pytest.skip(f"compress.data cannot load splits: {exc}")


@pytest.mark.parametrize(
    "family,kw,task,names",
    [
        ("gpt2", {}, "causal-lm", ("kl_wiki", "top1_wiki", "kl_news", "top1_news")),
        ("bert", {"classifier": True}, "classification", ("agreement_tweets",)),
        ("bert", {}, "embedding", ("cosine_tweets",)),
        ("bert2bert", {}, "seq2seq", ("kl_punct", "top1_punct")),
    ],
)
def test_every_task_measures_agreement_against_its_dense_reference(
    family, kw, task, names, monkeypatch, tmp_path
):
    _data_or_skip()
    for key, value in {"n_test": 8 if task == "seq2seq" else 64, "n_train": 64}.items():
        if key in SUITES[task].quick:
            monkeypatch.setitem(SUITES[task].quick, key, value)
    model, tok = tiny_model(family, **kw)
    ref = dense_reference(model, tok, task, quick=True, folder=tmp_path)
    assert ref.record["source"] == "measured"
    same = {m.name: m for m in run_benchmarks(model, tok, task, quick=True, reference=ref)}
    assert list(same)[: len(SUITES[task].metrics)] == list(SUITES[task].metrics)
    assert set(names) <= set(same)
    for name in SUITES[task].metrics:  # every metric: an interval, and no change vs itself
        m = same[name]
        assert m.interval["low"] <= m.value <= m.interval["high"], m
        assert m.vs_dense["delta"] == 0.0 and m.vs_dense["within_noise"] is True
    for name in names:
        target = 0.0 if name.startswith("kl_") else 1.0
        assert same[name].value == pytest.approx(target, abs=1e-6), name
    _perturb(model, 1.0)
    moved = {m.name: m for m in run_benchmarks(model, tok, task, quick=True, reference=ref)}
    changed = [n for n in names if abs(moved[n].value - same[n].value) > 1e-4]
    assert changed, {n: moved[n].value for n in names}
    assert all(moved[n].interval is not None for n in names)


def test_dense_reference_is_cached_by_model_and_protocol(tmp_path, monkeypatch):
    _data_or_skip()
    model, tok = tiny_model("gpt2")
    first = dense_reference(model, tok, "causal-lm", quick=True, folder=tmp_path)
    again = dense_reference(model, tok, "causal-lm", quick=True, folder=tmp_path)
    assert (first.record["source"], again.record["source"]) == ("measured", "cache")
    assert first.record["path"] == again.record["path"]
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 1 and files[0].endswith(".npz")  # written atomically: no temp left
    loaded = load_reference(tmp_path / files[0])
    for name, s in first.samples.items():
        assert np.array_equal(loaded.samples[name].arrays["nll"], s.arrays["nll"])
    assert np.array_equal(loaded.outputs["wiki"]["logp"], first.outputs["wiki"]["logp"])
    # other windows: another entry
    monkeypatch.setitem(SUITES["causal-lm"].quick, "max_windows", 3)
    other = dense_reference(model, tok, "causal-lm", quick=True, folder=tmp_path)
    assert other.record["key"] != first.record["key"] and other.record["source"] == "measured"
    # another model (same architecture, other weights): another entry
    fp = model_fingerprint(model)
    _perturb(model, 0.01)
    assert model_fingerprint(model) != fp
    assert dense_reference(model, tok, "causal-lm", quick=True, folder=tmp_path).record[
        "source"] == "measured"
    # an unreadable file is measured again, not trusted
    Path(other.record["path"]).write_bytes(b"not a zip")
    model2, _ = tiny_model("gpt2")  # the weights and windows of `other`
    assert dense_reference(model2, tok, "causal-lm", quick=True, folder=tmp_path).record[
        "source"] == "measured"


# ---------------------------------------------------------------- reports and eval.compare


def _ppl(value, low=None, high=None, within=None):
    m = {"name": "ppl_wiki", "value": value, "higher_is_better": False, "protocol": {}}
    if low is not None:
        m["interval"] = {"low": low, "high": high, "n": 24, "unit": "windows"}
    if within is not None:
        m["vs_dense"] = {"delta": value - 20.0, "low": -1.0 if within else 0.5,
                         "high": 1.0, "within_noise": within}
    return m


def _row(text: str, label: str) -> str:
    return next(line for line in text.splitlines() if line.strip().startswith(label))


def test_compare_shows_intervals_and_marks_changes_within_noise():
    from test_report import make_report

    from eval.compare import render

    runs = [
        make_report(metrics=[_ppl(20.0, 19.2, 20.9, True)]),
        make_report(recipe="magnitude", config={"sparsity": 0.9},
                    metrics=[_ppl(20.3, 19.5, 21.1, True)]),
        make_report(recipe="wanda", metrics=[_ppl(25.0, 24.0, 26.0, False)]),
        make_report(recipe="rtn", metrics=[_ppl(22.0)]),  # written before intervals
    ]
    text = render([r.to_dict() for r in runs])
    assert "20 ±0.85" in _row(text, "identity")
    assert "±0.8" in _row(text, "magnitude") and "≈+1.5%" in _row(text, "magnitude")
    wanda = _row(text, "wanda")
    assert "25 ±1" in wanda and "+25.0%" in wanda and "≈" not in wanda
    assert "±" not in _row(text, "rtn").split("ok")[1].split("MB")[0]  # old report: no ±
    assert "+10.0%" in _row(text, "rtn")
    assert "≈ within noise" in text.replace("\n", " ") or "≈ within" in text
    md = render([r.to_dict() for r in runs], markdown=True)
    assert "±0.85" in md and "≈+1.5%" in md


@pytest.mark.parametrize(
    "family,kw,names",
    [("llama", {}, ("ppl_wiki", "kl_wiki", "top1_wiki")),
     ("bert", {"classifier": True}, ("accuracy", "agreement_tweets", None))],
)
def test_a_run_reports_intervals_pairs_and_agreement(family, kw, names, tmp_path, monkeypatch):
    """eval.run end to end on a tiny model: identity measures the dense reference (on a
    fresh copy, after compressing: no forward touches the model a recipe gets), magnitude
    reads it from the cache; eval.compare shows both with ±."""
    _data_or_skip()
    from compress import make_config
    from eval.compare import render
    from eval.run import run_pipeline

    monkeypatch.setenv("COMPRESS_DENSE_CACHE", str(tmp_path / "dense"))
    monkeypatch.setitem(SUITES["classification"].quick, "n_test", 64)
    model, tok = tiny_model(family, **kw)
    model.config.architectures = [type(model).__name__]
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    name = str(tmp_path / "m")
    reports = []
    for cfg in (make_config("identity"), make_config("magnitude", sparsity=0.7)):
        _, report = run_pipeline(name, [cfg], quick=True, reports_dir=tmp_path / "r")
        assert report["status"] == "ok", report["error"]
        reports.append(report)
    dense, pruned = reports
    assert dense["info"]["dense_reference"]["source"] == "measured"
    assert pruned["info"]["dense_reference"]["source"] == "cache"
    assert pruned["info"]["dense_reference"]["key"] == dense["info"]["dense_reference"]["key"]
    by_name = {m["name"]: m for m in pruned["metrics"]}
    for m in pruned["metrics"]:
        assert m["interval"]["low"] <= m["value"] <= m["interval"]["high"], m["name"]
    metric, agree, top1 = names
    assert "samples" not in by_name[metric]  # per-item arrays stay in the cache
    dense_value = next(m["value"] for m in dense["metrics"] if m["name"] == metric)
    assert by_name[metric]["vs_dense"]["delta"] == pytest.approx(
        by_name[metric]["value"] - dense_value, rel=1e-4, abs=1e-9)
    dense_agree = {m["name"]: m["value"] for m in dense["metrics"]}[agree]
    assert dense_agree == pytest.approx(0.0 if agree.startswith("kl_") else 1.0, abs=1e-9)
    if top1:
        assert by_name[agree]["value"] > 0 and by_name[top1]["value"] < 1
    # wide: on a busy machine the latency cells carry a marker that narrows the others
    text = render(reports, width=400)
    assert agree in text and "±" in _row(text, "magnitude")
    # each run keeps its per-item samples beside its report: the two pair up
    from eval.pairwise import paired_rows

    paths = [next((tmp_path / "r").glob(f"*{r['key']}.json")) for r in reports]
    rows = {r["metric"]: r for r in paired_rows(*paths)}
    assert "delta" in rows[metric] and rows[metric]["low"] <= rows[metric]["delta"] <= \
        rows[metric]["high"]


def test_report_md_shows_intervals_noise_and_agreement(tmp_path):
    from test_report import make_report

    from eval.report.common import SECTIONS
    from eval.report.generate import generate

    kl = {"name": "kl_wiki", "value": 0.042, "higher_is_better": False,
          "protocol": {"agreement": "dense top-32 + rest"},
          "interval": {"low": 0.040, "high": 0.044, "n": 24, "unit": "windows"}}
    dense_kl = dict(kl, value=0.0, interval={"low": 0.0, "high": 0.0})
    make_report(metrics=[_ppl(20.0, 19.2, 20.9, True), dense_kl]).write(tmp_path)
    make_report(recipe="magnitude", config={"sparsity": 0.5},
                metrics=[_ppl(20.3, 19.5, 21.1, True), kl]).write(tmp_path)
    text, _ = generate(tmp_path, tmp_path / "report.md")
    bench = text.split(f"## 6. {SECTIONS[5]}")[1].split("## 7.")[0]
    assert "| m | ppl_wiki ↓ | 20 ±0.85 |" in bench  # the dense row: no change to mark
    assert "kl_wiki ↓" not in bench.split("### Agreement")[0]  # dense vs itself: left out
    assert "| m | `magnitude` | kl_wiki ↓ 0.042 ±0.002 |" in bench
    pruned = text.split(f"## 5. {SECTIONS[4]}")[1].split("## 6.")[0]
    assert "| magnitude | 50% | 20.3 ±0.8 ≈ |" in pruned

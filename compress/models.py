"""Resolve a model name to a loaded model and tokenizer.

A name is a zoo name (``smollm2-135m``, ``minilm-l6``, ``minilm-l6-sentiment``,
``bert2bert-punct``: built once into the cache, see :mod:`compress.zoo`), a local
folder, or a Hugging Face hub id. Weights load from safetensors only unless
``allow_pickle`` is set (then ``torch.load(weights_only=True)`` through
transformers); ``trust_remote_code`` stays off unless asked.

>>> model, tokenizer, task = load_model("minilm-l6-sentiment")   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from compress.errors import UserError

log = logging.getLogger(__name__)

#: model task names; the benchmark picks its suite by task.
TASKS = ("causal-lm", "classification", "embedding", "seq2seq")


@dataclass
class Loaded:
    model: nn.Module
    tokenizer: Any
    task: str
    source: str  # "zoo:<name>", "local:<path>" or "hub:<id>"
    path: str | None


def task_of(config: Any) -> str:
    """Guess the task from a config's ``architectures`` / ``model_type``."""
    if getattr(config, "model_type", None) == "encoder-decoder" or getattr(
        config, "is_encoder_decoder", False
    ):
        return "seq2seq"
    archs = getattr(config, "architectures", None) or []
    for arch in archs:
        if arch.endswith("ForCausalLM") or arch.endswith("LMHeadModel"):
            return "causal-lm"
        if arch.endswith("ForSequenceClassification"):
            return "classification"
        if arch.endswith("ForConditionalGeneration"):
            return "seq2seq"
    from transformers.models.auto import modeling_auto as ma

    model_type = getattr(config, "model_type", "")
    if model_type in ma.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and \
            model_type not in ma.MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "causal-lm"
    return "embedding"


def _auto_class(task: str):
    import transformers as tf

    return {
        "causal-lm": tf.AutoModelForCausalLM,
        "classification": tf.AutoModelForSequenceClassification,
        "embedding": tf.AutoModel,
        "seq2seq": tf.AutoModelForSeq2SeqLM,
    }[task]


def skeleton_class(config: Any, task: str | None = None) -> type:
    """The model class to build for ``config`` (its ``architectures`` entry, else the
    auto class of its task), without weights: ``skeleton_class(cfg)._from_config(cfg)``."""
    import transformers as tf

    for name in getattr(config, "architectures", None) or []:
        cls = getattr(tf, name, None)
        if isinstance(cls, type) and (task is None or _auto_class(task)._model_mapping.get(
                type(config)) is cls or name.endswith(_TASK_SUFFIX.get(task, ()))):
            return cls
    auto = _auto_class(task or task_of(config))
    try:
        return auto._model_mapping[type(config)]
    except KeyError:
        raise UserError(f"transformers has no {task or task_of(config)} model for "
                        f"{getattr(config, 'model_type', type(config).__name__)} configs"
                        ) from None


_TASK_SUFFIX = {
    "causal-lm": ("ForCausalLM", "LMHeadModel"),
    "classification": ("ForSequenceClassification",),
    "seq2seq": ("ForConditionalGeneration", "MTModel"),
    "embedding": ("Model",),
}


def check_model_name(name: str) -> str:
    """Classify ``name`` as "zoo", "local" or "hub" without building or downloading.

    Unknown bare names (no "/", not a zoo name, alias or folder) and missing folders
    are errors with the closest names.
    """
    from compress import zoo

    if name in zoo.ZOO:
        return "zoo"
    if os.path.isdir(name):
        return "local"
    looks_like_path = name.startswith((".", "/", "~")) or name.count("/") > 1
    if looks_like_path:
        raise UserError(f"model folder {name!r} does not exist")
    if "/" not in name and name not in zoo.HUB_ALIASES:
        close = zoo.closest_names(name)
        hint = f"did you mean {', '.join(map(repr, close))}? " if close else ""
        raise UserError(
            f"unknown model {name!r}; {hint}Zoo models: {', '.join(sorted(zoo.ZOO))}; "
            "or give a local folder or a hub id (owner/name)"
        )
    return "hub"


def resolve_path(name: str) -> tuple[str, str]:
    """(source, path-or-id) for a model name; zoo names are built on first use."""
    from compress import zoo

    kind = check_model_name(name)
    if kind == "zoo":
        return f"zoo:{name}", str(zoo.ensure(name))
    if kind == "local":
        return f"local:{os.path.abspath(name)}", name
    return f"hub:{name}", zoo.HUB_ALIASES.get(name, name)


def load_model(
    name: str,
    task: str | None = None,
    *,
    dtype: torch.dtype | None = torch.float32,
    device_map: str | dict | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
) -> Loaded:
    """Load ``name`` (zoo name, folder or hub id) with its tokenizer and task."""
    import transformers as tf

    from compress.safety import check_weights_safe

    source, path = resolve_path(name)
    if source.startswith("local:") or source.startswith("zoo:"):
        check_weights_safe(Path(path), allow_pickle=allow_pickle)
        if device_map is None:
            from compress.memory import estimate_load_bytes, require_memory

            per_param = torch.tensor([], dtype=dtype or torch.float32).element_size()
            require_memory(
                estimate_load_bytes(path, per_param),
                f"loading {name}",
                "pass --device-map auto to spread it over devices and disk, or load it in a "
                "smaller dtype",
            )
    try:
        config = tf.AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as exc:
        if source.startswith("hub:"):
            raise UserError(
                f"cannot load model {name!r} from the hub ({str(exc).splitlines()[0]}); "
                "offline, use a zoo model (smollm2-135m, minilm-l6, minilm-l6-sentiment, "
                "bert2bert-punct) or a local folder"
            ) from None
        raise UserError(f"cannot load model {name!r}: {str(exc).splitlines()[0]}") from None
    task = task or task_of(config)
    if task not in TASKS:
        from compress.errors import did_you_mean

        raise did_you_mean("task", task, TASKS)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if not allow_pickle:
        kwargs["use_safetensors"] = True
    if dtype is not None:
        kwargs["dtype"] = dtype
    if device_map is not None:
        kwargs["device_map"] = device_map
    model = _auto_class(task).from_pretrained(path, **kwargs)
    model.eval()
    tokenizer = tf.AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    return Loaded(model, tokenizer, task, source, path)


def input_device(model: nn.Module) -> torch.device:
    """Device where inputs must go: that of the input embeddings (first shard under device_map)."""
    try:
        emb = model.get_input_embeddings()
        if emb is not None and getattr(emb, "weight", None) is not None:
            if emb.weight.device.type != "meta":
                return emb.weight.device
    except (AttributeError, NotImplementedError):
        pass
    for p in model.parameters():
        if p.device.type != "meta":
            return p.device
    return torch.device(getattr(model, "device", "cpu"))


def to_device(batch: dict, device: torch.device) -> dict:
    """``batch`` with every tensor moved to ``device`` (other values as they are)."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

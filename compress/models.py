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
import transformers as tf

from compress import zoo
from compress.errors import UserError
from compress.memory import estimate_load_bytes, require_memory
from compress.safety import check_weights_safe
from compress.tasks import TASKS as TASKS  # re-exported: where callers have looked for it
from compress.tasks import check_task

log = logging.getLogger(__name__)



@dataclass
class Loaded:
    model: nn.Module
    tokenizer: Any
    task: str
    source: str  # "zoo:<name>", "local:<path>" or "hub:<id>"
    path: str | None


def task_of(config: Any) -> str:
    """Guess the task from a config's ``architectures`` / ``model_type``."""
    if getattr(config, "is_encoder_decoder", False):
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


#: the auto class of each task (what ``from_pretrained`` loads a model of that task with).
AUTO_CLASSES = {
    "causal-lm": tf.AutoModelForCausalLM,
    "classification": tf.AutoModelForSequenceClassification,
    "embedding": tf.AutoModel,
    "seq2seq": tf.AutoModelForSeq2SeqLM,
}


def model_class(
    config: Any, class_name: str | None = None, task: str | None = None
) -> type[tf.PreTrainedModel]:
    """The transformers class that builds ``config``.

    ``class_name`` (default: the config's first ``architectures`` entry) when transformers
    has a model class of that name; else the class the auto class of ``task`` (default:
    :func:`task_of`) maps the config type to.

    >>> model_class(tf.BertConfig(), task="embedding").__name__
    'BertModel'
    """
    name = class_name or (getattr(config, "architectures", None) or [""])[0]
    cls = getattr(tf, name, None) if name else None
    if isinstance(cls, type) and issubclass(cls, tf.PreTrainedModel):
        return cls
    task = check_task(task or task_of(config))
    try:
        return AUTO_CLASSES[task]._model_mapping[type(config)]
    except KeyError:
        raise UserError(
            f"transformers has no {task} model class for {type(config).__name__}"
        ) from None


def build_skeleton(
    config: Any,
    class_name: str | None = None,
    task: str | None = None,
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """A freshly initialised model of ``config`` (the class from :func:`model_class`), to
    load saved weights into; inside ``with torch.device("meta")`` it holds no storage.

    >>> model = build_skeleton(tf.AutoConfig.from_pretrained(folder))   # doctest: +SKIP
    """
    cls = model_class(config, class_name, task)
    if dtype is None:
        return cls._from_config(config)
    return cls._from_config(config, dtype=dtype)


def check_model_name(name: str) -> str:
    """Classify ``name`` as "zoo", "local" or "hub" without building or downloading.

    Unknown bare names (no "/", not a zoo name, alias or folder) and missing folders
    are errors with the closest names.
    """
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
    source, path = resolve_path(name)
    if source.startswith("local:") or source.startswith("zoo:"):
        check_weights_safe(Path(path), allow_pickle=allow_pickle)
        if device_map is None:
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
    task = check_task(task or task_of(config))
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if not allow_pickle:
        kwargs["use_safetensors"] = True
    if dtype is not None:
        kwargs["dtype"] = dtype
    if device_map is not None:
        kwargs["device_map"] = device_map
    model = AUTO_CLASSES[task].from_pretrained(path, **kwargs)
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

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
from compress.configattrs import attrs_of
from compress.errors import UserError
from compress.memory import estimate_load_bytes, require_memory
from compress.safety import check_remote_code, check_weight_files, check_weights_safe
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


#: layer counts above this are sized by extrapolation (a model with 1 and 2 blocks per
#: stack, built on the meta device) instead of building every block's modules.
EXTRAPOLATE_LAYERS = 64


def _meta_params(config: Any, task: str) -> int:
    """Parameters of the model ``config`` describes, built on the meta device (no storage)."""
    with torch.device("meta"):
        model = build_skeleton(config, task=task)
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def config_param_count(config: Any, task: str) -> int:
    """Parameters of the model a config describes, without allocating any weight.

    The model is built on the meta device. A config declaring more than
    ``EXTRAPOLATE_LAYERS`` blocks per stack is sized from models of 1 and 2 blocks
    (parameters grow linearly with depth), so an absurd depth costs no time either.
    Whatever the config makes the model's constructor fail on is a one-line error.
    """
    import copy
    import re

    depth_name = re.compile(r"(^|_)(layers?|n_layer|num_layers|depth|blocks?)$")

    def build(cfg: Any) -> int:
        try:
            return _meta_params(cfg, task)
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - any constructor failure: the config is bad
            raise UserError(
                f"config.json describes a {getattr(cfg, 'model_type', '?')} model that cannot "
                f"be built ({type(exc).__name__}: {str(exc).splitlines()[0][:140] if str(exc) else ''})"
            ) from None

    deep = {
        name: v for name, v in attrs_of(config).items()
        if isinstance(v, int) and not isinstance(v, bool) and v > EXTRAPOLATE_LAYERS
        and depth_name.search(name.lower())
    }
    if not deep:
        return build(config)

    def with_layers(n: int, only: str | None = None) -> Any:
        # per-layer lists (layer_types) stay as long as they are: the blocks built index them
        cfg = copy.deepcopy(config)
        for name in deep:
            setattr(cfg, name, n if only in (None, name) else 1)
        return cfg

    one = build(with_layers(1))
    total = one
    for name, depth in deep.items():
        per_block = build(with_layers(2, name)) - one
        total += per_block * (depth - 1)
    return total


def _read_config(path: str, name: str, source: str, trust_remote_code: bool) -> Any:
    """The model's config, every way it can fail as one line."""
    try:
        return tf.AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as exc:
        if source.startswith("hub:"):
            raise UserError(
                f"cannot load model {name!r} from the hub ({str(exc).splitlines()[0]}); "
                "offline, use a zoo model (smollm2-135m, minilm-l6, minilm-l6-sentiment, "
                "bert2bert-punct) or a local folder"
            ) from None
        raise UserError(f"cannot load model {name!r}: {str(exc).splitlines()[0]}") from None
    except Exception as exc:  # noqa: BLE001 - malformed JSON, wrong types, unknown model types
        first = str(exc).splitlines()[0][:160] if str(exc) else ""
        if "trust_remote_code" in str(exc):
            raise UserError(f"{name}: the config asks for the folder's own Python code; pass "
                            "--trust-remote-code to run it (only for code you trust)") from None
        raise UserError(f"{name}: config.json cannot be read ({type(exc).__name__}: {first})"
                        ) from None


def load_model(
    name: str,
    task: str | None = None,
    *,
    dtype: torch.dtype | None = torch.float32,
    device_map: str | dict | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
) -> Loaded:
    """Load ``name`` (zoo name, folder or hub id) with its tokenizer and task.

    Before any weight is allocated: a folder carrying its own Python code is refused
    unless ``trust_remote_code``; pickle-only weights unless ``allow_pickle``; every
    safetensors file's header is checked against its size (and the suite's checksums,
    where it saved the folder); the checkpoint's size and the parameter count the config
    describes (the model built on the meta device) are checked against free memory.
    """
    source, path = resolve_path(name)
    per_param = torch.tensor([], dtype=dtype or torch.float32).element_size()
    hint = ("pass --device-map auto to spread it over devices and disk, or load it in a "
            "smaller dtype")
    if source.startswith("local:") or source.startswith("zoo:"):
        folder = Path(path)
        check_remote_code(folder, trust_remote_code)
        check_weights_safe(folder, allow_pickle=allow_pickle)
        check_weight_files(folder)
        if device_map is None:
            require_memory(estimate_load_bytes(path, per_param), f"loading {name}", hint)
    config = _read_config(path, name, source, trust_remote_code)
    task = check_task(task or task_of(config))
    if device_map is None and not trust_remote_code:
        n = config_param_count(config, task)
        require_memory(n * per_param, f"loading {name} (its config describes {n:,} "
                       "parameters)", hint)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if not allow_pickle:
        kwargs["use_safetensors"] = True
    if dtype is not None:
        kwargs["dtype"] = dtype
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        model, info = AUTO_CLASSES[task].from_pretrained(path, output_loading_info=True,
                                                         **kwargs)
    except (UserError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - a checkpoint that does not fit its config
        if allow_pickle and "weights_only" in str(exc).lower():
            raise
        first = str(exc).splitlines()[0][:160] if str(exc) else ""
        raise UserError(f"cannot load the weights of {name} ({type(exc).__name__}: {first})"
                        ) from None
    _check_loading_info(name, info)
    model.eval()
    try:
        tokenizer = tf.AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - corrupt or foreign tokenizer files
        first = str(exc).splitlines()[0][:160] if str(exc) else ""
        raise UserError(f"{name}: the tokenizer cannot be loaded ({type(exc).__name__}: "
                        f"{first})") from None
    return Loaded(model, tokenizer, task, source, path)


def _check_loading_info(name: str, info: dict[str, Any]) -> None:
    """A checkpoint whose tensor names do not match the model's (a renamed tensor: a bit
    flipped in a name, or weights of another model) would leave weights randomly
    initialised; refuse it in one line."""
    missing = sorted(info.get("missing_keys") or [])
    unexpected = sorted(info.get("unexpected_keys") or [])
    if missing and unexpected:
        raise UserError(
            f"{name}: the checkpoint holds {unexpected[0]!r} ({len(unexpected)} unexpected "
            f"tensor(s)) but not {missing[0]!r} ({len(missing)} missing): the file is corrupt "
            "or belongs to another model"
        )


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

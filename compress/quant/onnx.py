"""ONNX Runtime dynamic int8, wrapped as a model the shared benchmark can call.

``export`` traces the Hugging Face model with ``torch.onnx.export`` (the TorchScript
exporter, ``dynamo=False``: in this environment the dynamo exporter produced wrong
logits for padded batches) through a thin adapter that fixes the inputs
(``input_ids``, ``attention_mask`` [, ``token_type_ids``] [, ``decoder_input_ids``,
``decoder_attention_mask``]) and the one output (``logits``, or ``last_hidden_state``
for an embedding model). The trace example contains padding so the mask path is
traced. ``onnxruntime.quantization.quantize_dynamic`` then turns every MatMul with a
constant weight into int8 weights with dynamically quantized int8 activations
(``MatMulConstBOnly``: attention's activation-activation MatMuls stay fp32).

:class:`OnnxModel` is an ``nn.Module`` whose ``forward`` takes the usual keyword
inputs and returns a transformers ``ModelOutput`` with ``.logits`` (and ``.loss`` when
``labels`` are given), so perplexity / classification / generation code runs on it.
Causal LMs are exported **with a KV cache** (:func:`export_causal_with_past`): the graph
takes ``position_ids`` and one ``past_key_i`` / ``past_value_i`` pair per layer
(``[batch, kv_heads, past, head_dim]``, length 0 at prefill) and returns ``present_*``
next to the logits, so ``generate`` feeds one new token per step, as Hugging Face's
cached decoding does. A model whose cache is not a plain per-layer key/value list
(sliding-window or recurrent layers) falls back to the cache-free graph. Seq2seq models
have no cache here: their greedy loop re-runs the decoder prefix each step (correct,
slower per token at long lengths).

Size for the profiler: ONNX initializers are not ``nn.Parameter`` s; the wrapper
exposes ``compress_parameter_counts`` (``total`` elements, ``bytes``), ``nbytes`` and
``num_parameters()``; it holds one zero-size parameter so ``next(model.parameters())``
still names the device (cpu).
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from compress.errors import UserError
from compress.quant.modules import config_record, read_json, write_json
from compress.saving import Format, register_format

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
MANIFEST = "onnx_int8.json"
OUTPUT_OF_TASK = {"causal-lm": "logits", "classification": "logits", "seq2seq": "logits",
                  "embedding": "last_hidden_state"}


class _Adapter(nn.Module):
    """Fixed positional inputs -> one tensor, for tracing."""

    def __init__(self, model: nn.Module, names: list[str], output: str):
        super().__init__()
        self.model, self.names, self.output = model, names, output

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        kwargs = dict(zip(self.names, tensors, strict=False))
        if getattr(self.model.config, "use_cache", None) is not None:
            kwargs["use_cache"] = False
        return getattr(self.model(**kwargs), self.output)


class _PastAdapter(nn.Module):
    """(input_ids, attention_mask, position_ids, *past) -> (logits, *present), for tracing."""

    def __init__(self, model: nn.Module, n_layers: int):
        super().__init__()
        self.model, self.n_layers = model, n_layers

    def forward(self, input_ids, attention_mask, position_ids, *past):
        from transformers.cache_utils import DynamicCache

        cache = DynamicCache(ddp_cache_data=[(past[2 * i], past[2 * i + 1])
                                             for i in range(self.n_layers)])
        out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                         position_ids=position_ids, past_key_values=cache, use_cache=True)
        present = []
        for layer in out.past_key_values.layers:
            present += [layer.keys, layer.values]
        return (out.logits, *present)


def cache_shapes(model: nn.Module) -> list[list[int]] | None:
    """Per layer ``[kv_heads, head_dim]`` of the model's KV cache, read from a one-token
    forward; ``None`` when the cache is not a plain list of full key/value layers."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    ids = torch.zeros(1, 1, dtype=torch.long)
    try:
        with torch.no_grad():
            cache = model(input_ids=ids, use_cache=True).past_key_values
    except (TypeError, ValueError) as exc:
        log.info("onnx-int8: no KV cache export (%s)", exc)
        return None
    if not isinstance(cache, DynamicCache) or any(type(layer) is not DynamicLayer
                                                  for layer in cache.layers):
        return None
    return [[int(layer.keys.shape[1]), int(layer.keys.shape[3])] for layer in cache.layers]


def position_convention(model: nn.Module) -> str:
    """How the model's own forward numbers positions when given none: ``"arange"``
    (0, 1, 2... whatever the padding: GPT-2, Llama) or ``"mask"`` (counting only real
    tokens of a left-padded row, -1 on padding: OPT). Probed once on a left-padded input, so the ONNX
    wrapper's forward returns what the model's does."""
    ids = torch.arange(5, 11).unsqueeze(0)
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    positions = {"arange": torch.arange(6).unsqueeze(0),
                 "mask": mask.cumsum(-1) * mask - 1}
    diff = {}
    with torch.no_grad():
        base = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        for name, pos in positions.items():
            try:
                out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)
            except (IndexError, RuntimeError):  # -1 is no position of GPT-2's table
                continue
            diff[name] = float((out.logits - base).abs().max())
    return min(diff, key=diff.get) if diff else "arange"


def past_names(n_layers: int, prefix: str = "past") -> list[str]:
    return [f"{prefix}_{kv}_{i}" for i in range(n_layers) for kv in ("key", "value")]


def export_causal_with_past(model: nn.Module, path: Path, shapes: list[list[int]]) -> list[str]:
    """Trace a causal LM with KV-cache inputs and outputs; returns the input names."""
    n = len(shapes)
    names = ["input_ids", "attention_mask", "position_ids", *past_names(n)]
    outputs = ["logits", *past_names(n, "present")]
    g = torch.Generator().manual_seed(0)
    batch, new, past = 2, 3, 5
    vocab = model.config.vocab_size
    ids = torch.randint(5, min(vocab, 1000), (batch, new), generator=g)
    mask = torch.ones(batch, past + new, dtype=torch.long)
    mask[0, :2] = 0  # trace the padded-mask path
    pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, -new:]
    cache = []
    for heads, dim in shapes:
        cache += [torch.randn(batch, heads, past, dim, generator=g) for _ in range(2)]
    dyn: dict[str, dict[int, str]] = {"input_ids": {0: "batch", 1: "seq"},
                                      "attention_mask": {0: "batch", 1: "total"},
                                      "position_ids": {0: "batch", 1: "seq"},
                                      "logits": {0: "batch", 1: "seq"}}
    dyn.update({name: {0: "batch", 2: "past"} for name in past_names(n)})
    dyn.update({name: {0: "batch", 2: "total"} for name in past_names(n, "present")})
    _trace(_PastAdapter(model, n), model, (ids, mask, pos, *cache), path, names, outputs, dyn)
    return names


def _trace(adapter: nn.Module, model: nn.Module, args: tuple, path: Path, names: list[str],
           outputs: list[str], dyn: dict[str, dict[int, str]]) -> None:
    """``torch.onnx.export`` of ``adapter`` (wrapping ``model``) in eval mode, mode restored."""
    was_training = model.training
    adapter.eval()  # the exporter restores the adapter's mode recursively: keep it eval
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(adapter, args, str(path), input_names=names, output_names=outputs,
                              dynamic_axes=dyn, dynamo=False, opset_version=17)
    except Exception as exc:  # noqa: BLE001 - the exporter fails in many ways; all one answer
        first = (str(exc).splitlines()[0] if str(exc) else type(exc).__name__)[:160]
        raise UserError(f"this model does not export to ONNX ({first}); use dynamic-int8, "
                        "rtn or gptq instead") from None
    finally:
        model.train(was_training)


def task_of_model(model: nn.Module, given: str | None = None) -> str:
    """The task: as given, else from the model class, else from its config."""
    if given:
        return given
    name = type(model).__name__
    for suffix, task in (("ForSequenceClassification", "classification"),
                         ("ForCausalLM", "causal-lm"), ("LMHeadModel", "causal-lm"),
                         ("ForConditionalGeneration", "seq2seq"), ("EncoderDecoderModel", "seq2seq")):
        if name.endswith(suffix):
            return task
    from compress.models import task_of

    return task_of(model.config)


def input_names(model: nn.Module, task: str) -> list[str]:
    names = ["input_ids", "attention_mask"]
    cfg = model.config
    if task != "seq2seq" and getattr(cfg, "type_vocab_size", 0) and getattr(cfg, "type_vocab_size", 0) > 1:
        names.append("token_type_ids")
    if task == "seq2seq":
        names += ["decoder_input_ids", "decoder_attention_mask"]
    return names


def export(model: nn.Module, task: str, path: Path) -> list[str]:
    """Trace ``model`` to ONNX at ``path``; returns the input names."""
    if task not in OUTPUT_OF_TASK:
        raise UserError(f"onnx-int8: task {task!r} is not supported; "
                        f"supported: {', '.join(OUTPUT_OF_TASK)}")
    names = input_names(model, task)
    vocab = getattr(model.config, "vocab_size", None) or model.config.decoder.vocab_size
    g = torch.Generator().manual_seed(0)
    batch, length = 2, 16
    example = {
        "input_ids": torch.randint(5, min(vocab, 1000), (batch, length), generator=g),
        "attention_mask": torch.ones(batch, length, dtype=torch.long),
        "token_type_ids": torch.zeros(batch, length, dtype=torch.long),
        "decoder_input_ids": torch.randint(5, min(vocab, 1000), (batch, length // 2), generator=g),
        "decoder_attention_mask": torch.ones(batch, length // 2, dtype=torch.long),
    }
    example["attention_mask"][0, :3] = 0  # trace the padded-mask path, not the all-ones shortcut
    args = tuple(example[n] for n in names)
    output = OUTPUT_OF_TASK[task]
    dyn = {n: {0: "batch", 1: "dec_seq" if n.startswith("decoder") else "seq"} for n in names}
    dyn[output] = {0: "batch", 1: "dec_seq" if task == "seq2seq" else "seq"}
    _trace(_Adapter(model, names, output), model, args, path, names, [output], dyn)
    return names


def x86_without_vnni() -> bool:
    """True on an x86 CPU whose flags (``/proc/cpuinfo``) lack VNNI (AVX512-VNNI, AVX-VNNI).

    There ONNX Runtime's u8 x s8 int8 kernels add pairs of products in saturating int16
    (``vpmaddubsw``): 8-bit per-channel weights overflow it. On this project's AVX-512
    machine without VNNI, SmolLM2 with per-channel 8-bit weights gave perplexity ~3,100
    instead of ~27; with 7-bit weights (``reduce_range``) it is fine.
    """
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False  # unknown: assume a modern CPU
    return "vnni" not in flags


def nodes_of_modules(onnx_path: Path, modules: list[str]) -> list[str]:
    """Names of the MatMul nodes that the TorchScript exporter traced inside ``modules``.

    The exporter names a node by its module scope (``/model/model/layers.3/mlp/down_proj/
    MatMul`` for ``model.layers.3.mlp.down_proj`` under the adapter's ``model``).
    """
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    found, nodes = set(), []
    for node in graph.node:
        if node.op_type != "MatMul":
            continue
        dotted = "." + node.name.strip("/").replace("/", ".") + "."
        hit = [m for m in modules if f".{m}." in dotted]
        if hit:
            nodes.append(node.name)
            found.update(hit)
    missing = sorted(set(modules) - found)
    if missing:
        raise UserError(f"onnx-int8: no traced MatMul found for {', '.join(missing[:3])}; "
                        "the exporter named the nodes differently, so they cannot be kept in float")
    return nodes


def quantize_file(src: Path, dst: Path, per_channel: bool, reduce_range: bool,
                  exclude: list[str] | None = None, op_types: tuple[str, ...] = ("MatMul",),
                  untyped_float: bool = False) -> None:
    """ONNX Runtime's dynamic int8 quantization of the ``op_types`` nodes with constant
    weights (int8 weights, activations quantized at run time). ``untyped_float`` tells the
    quantizer that tensors ONNX shape inference cannot type are float: needed on a graph
    fused by ONNX Runtime, whose com.microsoft nodes defeat shape inference."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # ORT logs a generic "consider pre-processing" warning
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            extra: dict[str, Any] = {"MatMulConstBOnly": True}
            if untyped_float:
                extra["DefaultTensorType"] = onnx.TensorProto.FLOAT
            quantize_dynamic(str(src), str(dst), op_types_to_quantize=list(op_types),
                             per_channel=per_channel, reduce_range=reduce_range,
                             weight_type=QuantType.QInt8, nodes_to_exclude=exclude or [],
                             extra_options=extra)
    finally:
        root.setLevel(level)


def initializer_counts(onnx_bytes: bytes) -> dict[str, int]:
    """Elements and bytes of the graph's initializers, by storage type."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load_from_string(onnx_bytes)
    total = nbytes = int8 = 0
    for init in model.graph.initializer:
        arr = numpy_helper.to_array(init)
        total += arr.size
        nbytes += arr.nbytes
        if arr.dtype.itemsize == 1:
            int8 += arr.size
    return {"total": total, "nonzero": total, "bytes": nbytes, "int8_elements": int8}


class CpuEngineModel(nn.Module):
    """What a model run by a CPU engine (ONNX Runtime, OpenVINO, llama.cpp) shows to the
    benchmark and profiler as a Hugging Face model: CPU, fp32 inputs, no embeddings.
    Subclasses set ``task``, ``compress_parameter_counts`` and ``engine_label``."""

    engine_label = "this engine's"

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def num_parameters(self, *args: Any, **kwargs: Any) -> int:
        return self.compress_parameter_counts["total"]

    def to(self, *args: Any, **kwargs: Any) -> CpuEngineModel:
        target = args[0] if args else kwargs.get("device")
        if target is not None and not isinstance(target, torch.dtype):
            if torch.device(target).type != "cpu":
                raise UserError(f"{self.engine_label} models run on the CPU only")
        return self

    def can_generate(self) -> bool:
        return self.task in ("causal-lm", "seq2seq")

    def get_input_embeddings(self) -> None:
        return None


class OnnxModel(CpuEngineModel):
    """An ONNX Runtime session that behaves like the Hugging Face model it came from."""

    engine_label = "ONNX Runtime"

    def __init__(self, onnx_bytes: bytes, config: Any, task: str, names: list[str],
                 meta: dict[str, Any] | None = None):
        super().__init__()
        import onnxruntime as ort

        self.config = config
        self.task = task
        self.input_names = list(names)
        self.meta = dict(meta or {})
        self._onnx_bytes = onnx_bytes
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, torch.get_num_threads())
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])
        self.output_name = self.session.get_outputs()[0].name
        # [kv_heads, head_dim] per layer when the graph carries a KV cache
        self.cache_shapes: list[list[int]] | None = self.meta.get("cache_shapes")
        self._anchor = nn.Parameter(torch.empty(0), requires_grad=False)
        self.compress_parameter_counts = initializer_counts(onnx_bytes)
        self.nbytes = self.compress_parameter_counts["bytes"]
        self.main_input_name = "input_ids"
        self.eval()

    # -- inference ----------------------------------------------------------
    def _inputs(self) -> set[str]:
        return {i.name for i in self.session.get_inputs()}

    def _run(self, feeds: dict[str, torch.Tensor]) -> torch.Tensor:
        arrays = {k: v.detach().cpu().to(torch.int64).numpy() for k, v in feeds.items()
                  if v is not None}
        if self.cache_shapes is not None:
            return self._run_cached(arrays, None)[0]
        (out,) = self.session.run([self.output_name], arrays)
        return torch.from_numpy(out)

    def _run_cached(self, arrays: dict[str, Any], past: list[Any] | None) -> tuple[torch.Tensor, list[Any]]:
        """One call of the KV-cache graph: ``past`` is the previous call's present
        arrays (``None`` at prefill: empty caches); returns (logits, present)."""
        import numpy as np

        ids, mask = arrays["input_ids"], arrays["attention_mask"]
        if "position_ids" not in arrays:  # number them as the model's own forward does
            if self.meta.get("positions") == "mask":
                pos = (np.cumsum(mask, axis=-1) * mask - 1)[:, -ids.shape[1]:]
            else:
                pos = np.arange(mask.shape[1] - ids.shape[1], mask.shape[1], dtype=np.int64)
            arrays["position_ids"] = np.ascontiguousarray(np.broadcast_to(pos, ids.shape))
        if past is None:
            past = []
            for heads, dim in self.cache_shapes:
                past += [np.zeros((ids.shape[0], heads, 0, dim), np.float32)] * 2
        names = past_names(len(self.cache_shapes))
        wanted = self._inputs()  # models without position ids (ALiBi) export without them
        feeds = {k: v for k, v in arrays.items() if k in wanted}
        out = self.session.run(None, {**feeds, **dict(zip(names, past, strict=True))})
        return torch.from_numpy(out[0]), out[1:]

    def _decoder_start(self) -> int:
        cfg = self.config
        start = getattr(cfg, "decoder_start_token_id", None)
        if start is None and hasattr(cfg, "decoder"):
            start = getattr(cfg.decoder, "bos_token_id", None)
        return int(start if start is not None else getattr(cfg, "bos_token_id", 0) or 0)

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None,
                decoder_input_ids: torch.Tensor | None = None,
                decoder_attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                **ignored: Any):
        from transformers.modeling_outputs import (
            BaseModelOutput,
            CausalLMOutput,
            Seq2SeqLMOutput,
            SequenceClassifierOutput,
        )

        if input_ids is None:
            raise UserError("the onnx-int8 model needs input_ids (inputs_embeds are not exported)")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.cache_shapes is not None:
            feeds["position_ids"] = position_ids
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = (token_type_ids if token_type_ids is not None
                                       else torch.zeros_like(input_ids))
        if self.task == "seq2seq":
            if decoder_input_ids is None:
                if labels is None:
                    raise UserError("the onnx-int8 seq2seq model needs decoder_input_ids or labels")
                decoder_input_ids = _shift_right(labels, self._decoder_start(), _pad_id(self.config))
            feeds["decoder_input_ids"] = decoder_input_ids
            feeds["decoder_attention_mask"] = (decoder_attention_mask if decoder_attention_mask is not None
                                               else torch.ones_like(decoder_input_ids))
        out = self._run(feeds)
        if self.task == "embedding":
            return BaseModelOutput(last_hidden_state=out)
        loss = None
        if labels is not None:
            if self.task == "causal-lm":
                loss = F.cross_entropy(out[:, :-1].reshape(-1, out.shape[-1]).float(),
                                       labels[:, 1:].reshape(-1), ignore_index=-100)
            elif self.task == "seq2seq":
                loss = F.cross_entropy(out.reshape(-1, out.shape[-1]).float(), labels.reshape(-1),
                                       ignore_index=-100)
            else:
                loss = F.cross_entropy(out.float(), labels.reshape(-1))
        if self.task == "causal-lm":
            return CausalLMOutput(loss=loss, logits=out)
        if self.task == "seq2seq":
            return Seq2SeqLMOutput(loss=loss, logits=out)
        return SequenceClassifierOutput(loss=loss, logits=out)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 max_new_tokens: int = 20, eos_token_id: int | None = None,
                 **ignored: Any) -> torch.Tensor:
        """Greedy decoding; causal LMs exported with a KV cache feed one token per step,
        other graphs re-run the whole prefix.

        Causal LMs return prompt + new tokens (left-padded prompts are fine); seq2seq
        models return the decoder sequence starting with the decoder start token.
        """
        if self.task not in ("causal-lm", "seq2seq"):
            raise UserError(f"a {self.task} model does not generate text")
        cfg = self.config
        eos = eos_token_id if eos_token_id is not None else getattr(cfg, "eos_token_id", None)
        if eos is None and hasattr(cfg, "decoder"):
            eos = getattr(cfg.decoder, "eos_token_id", None)
        eos_set = set(eos) if isinstance(eos, (list, tuple)) else ({eos} if eos is not None else set())
        min_new = int(ignored.get("min_new_tokens") or 0)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool)
        pad = _pad_id(cfg)
        if self.task == "causal-lm":
            seq, mask = input_ids, attention_mask
            past, step = None, seq
            for i in range(max_new_tokens):
                if self.cache_shapes is not None:  # feed only the new token
                    # positions count real tokens (left padding), as Hugging Face's generate does
                    pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, -step.shape[1]:]
                    arrays = {"input_ids": step.to(torch.int64).numpy(),
                              "attention_mask": mask.to(torch.int64).numpy(),
                              "position_ids": pos.to(torch.int64).numpy()}
                    logits, past = self._run_cached(arrays, past)
                    logits = logits[:, -1]
                else:
                    logits = self.forward(input_ids=seq, attention_mask=mask).logits[:, -1]
                if i < min_new and eos_set:  # min_new_tokens: no end of sequence before
                    logits[:, list(eos_set)] = float("-inf")
                nxt = torch.where(done, torch.full_like(done, pad, dtype=torch.long), logits.argmax(-1))
                seq, step = torch.cat([seq, nxt[:, None]], dim=1), nxt[:, None]
                mask = torch.cat([mask, (~done).long()[:, None]], dim=1)
                done |= torch.tensor([int(t) in eos_set for t in nxt])
                if done.all():
                    break
            return seq
        dec = torch.full((input_ids.shape[0], 1), self._decoder_start(), dtype=torch.long)
        for i in range(max_new_tokens):
            logits = self.forward(input_ids=input_ids, attention_mask=attention_mask,
                                  decoder_input_ids=dec).logits[:, -1]
            if i < min_new and eos_set:
                logits[:, list(eos_set)] = float("-inf")
            nxt = torch.where(done, torch.full_like(done, pad, dtype=torch.long), logits.argmax(-1))
            dec = torch.cat([dec, nxt[:, None]], dim=1)
            done |= torch.tensor([int(t) in eos_set for t in nxt])
            if done.all():
                break
        return dec


def _pad_id(cfg: Any) -> int:
    pad = getattr(cfg, "pad_token_id", None)
    if pad is None and hasattr(cfg, "decoder"):
        pad = getattr(cfg.decoder, "pad_token_id", None)
    return int(pad if pad is not None else 0)


def _shift_right(labels: torch.Tensor, start: int, pad: int) -> torch.Tensor:
    out = torch.full_like(labels, pad)
    out[:, 1:] = labels[:, :-1]
    out[:, 0] = start
    return out.masked_fill(out == -100, pad)


def build(model: nn.Module, task: str, *, per_channel: bool, reduce_range: bool,
          keep_float: list[str] | None = None, quantize: bool = True,
          kv_cache: bool = True) -> OnnxModel:
    """Export ``model``, quantize the graph to dynamic int8 (the MatMuls of the modules
    named in ``keep_float`` excepted), and wrap it. ``quantize=False`` wraps the fp32
    graph: the baseline that separates ONNX Runtime's own speed from int8's.
    ``kv_cache=False`` exports a causal LM without its cache (one logits output)."""
    with tempfile.TemporaryDirectory(prefix="compress-onnx-") as tmp:
        fp32, int8 = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        shapes = cache_shapes(model) if task == "causal-lm" and kv_cache else None
        if shapes:
            names = export_causal_with_past(model, fp32, shapes)
        else:
            names = export(model, task, fp32)
        fp32_bytes = os.path.getsize(fp32)
        if quantize:
            exclude = nodes_of_modules(fp32, keep_float) if keep_float else []
            quantize_file(fp32, int8, per_channel, reduce_range, exclude)
        data = (int8 if quantize else fp32).read_bytes()
    meta = {**config_record(model), "task": task, "inputs": names, "per_channel": per_channel,
            "reduce_range": reduce_range, "fp32_onnx_bytes": fp32_bytes,
            "kept_in_float": list(keep_float or []), "cache_shapes": shapes or None,
            "positions": position_convention(model) if shapes else None}
    return OnnxModel(data, model.config, task, names, meta)


def save(model: OnnxModel, folder: Path) -> None:
    (folder / ONNX_FILE).write_bytes(model._onnx_bytes)
    write_json(folder, MANIFEST, model.meta)
    model.config.save_pretrained(folder)


def load(folder: Path) -> OnnxModel:
    import transformers as tf

    folder = Path(folder)
    meta = read_json(folder, MANIFEST)
    config = tf.AutoConfig.from_pretrained(folder)
    return OnnxModel((folder / ONNX_FILE).read_bytes(), config, meta["task"], meta["inputs"], meta)


FORMAT = register_format(Format("onnx-int8", lambda m: isinstance(m, OnnxModel), save, load))

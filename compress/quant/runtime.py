"""CPU inference engines behind the contract: ONNX Runtime or OpenVINO, fp32 / int8 / int4.

One export, two engines. The model is traced to ONNX (:mod:`compress.quant.onnx`'s
TorchScript exporter) with a KV cache wherever it decodes:

* encoders (classification, embedding): one graph;
* decoders: one graph with ``past_key_i`` / ``past_value_i`` inputs and ``present_*``
  outputs (:func:`compress.quant.onnx.export_causal_with_past`);
* encoder-decoders: an encoder graph and a decoder-step graph whose self-attention
  keys/values are cache inputs/outputs (:func:`export_seq2seq_with_past`; the
  cross-attention keys/values are recomputed from the encoder states each step, which
  costs two small matmuls per layer and keeps the graph simple).

Engines and weights:

* ``onnxruntime``: the graph is first fused by ONNX Runtime's transformer optimizer
  (``fuse``: LayerNorm/RMSNorm with the residual add, GELU with its bias, and for
  encoders exported with eager attention the whole attention block, embeddings + norm;
  :func:`fuse_file` reports what it fused), then its MatMuls with constant weights become
  ``MatMulNBits`` (``int8`` / ``int4``: weight-only, symmetric, one fp32 scale per
  ``group_size`` input weights, ``accuracy_level=4``: activations quantized to int8 per
  block at run time, int8 dot products: VNNI where the CPU has it); ``w8a8``: ONNX
  Runtime's dynamic quantization of the fused graph (``quantize_dynamic``: MatMuls and the
  fused Attention become ``MatMulInteger`` / ``DynamicQuantizeMatMul`` / ``QAttention``,
  int8 weights per output channel, activations quantized to int8 per tensor at run time,
  7-bit weights on x86 CPUs without VNNI, whose ``vpmaddubsw`` saturates). On an AVX2 CPU
  without VNNI the weight-only ``int8`` kernels are no faster than eager fp32 on MiniLM at
  8 x 128, ``w8a8`` is (``reports/bench/cpu_engines_minilm_avx2.json``);
* ``openvino``: the same ONNX graph read by OpenVINO, weights compressed by NNCF
  (``nncf.compress_weights``: ``int8`` = INT8_ASYM per output channel, ``int4`` =
  INT4_SYM in groups of ``group_size``; data-free), compiled for the CPU.

The result is a :class:`RuntimeModel`, an ``nn.Module`` that takes the usual keyword
inputs, returns ``.logits`` (or ``.last_hidden_state``) and generates greedily with its
cache, so the benchmark and the profiler run it unchanged. Which engine and precision
wins is measured, not assumed: ``bench/cpu_engines.py`` (reports/bench/cpu_engines.json)
times every combination against eager PyTorch with its KV cache and against the same
engine in fp32, per architecture.

>>> fast = build(model, "causal-lm", engine="onnxruntime", weights="int4")   # doctest: +SKIP
>>> fast.generate(input_ids=ids, max_new_tokens=16)                         # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from compress.errors import UserError
from compress.quant import onnx as oq
from compress.quant.modules import config_record, read_json, write_json
from compress.saving import Format, register_format

log = logging.getLogger(__name__)

ENGINES = ("onnxruntime", "openvino", "llamacpp")
WEIGHTS = ("fp32", "int8", "int4", "w8a8")
MANIFEST = "runtime.json"
FORMAT_NAME = "runtime"


# --------------------------------------------------------------------------- export


class _EncoderAdapter(nn.Module):
    """(input_ids, attention_mask) -> encoder hidden states, for tracing."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        enc = self.model.get_encoder()
        return enc(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class _DecoderStepAdapter(nn.Module):
    """(decoder_input_ids, encoder_hidden_states, encoder_attention_mask, *past)
    -> (logits, *present) with a self-attention cache, for tracing."""

    def __init__(self, model: nn.Module, n_layers: int):
        super().__init__()
        self.model, self.n_layers = model, n_layers

    def forward(self, decoder_input_ids, encoder_hidden_states, encoder_attention_mask, *past):
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        own = DynamicCache(
            ddp_cache_data=[(past[2 * i], past[2 * i + 1]) for i in range(self.n_layers)]
        )
        cache = EncoderDecoderCache(own, DynamicCache())
        out = self.model(
            encoder_outputs=(encoder_hidden_states,),
            attention_mask=encoder_attention_mask,
            decoder_input_ids=decoder_input_ids,
            past_key_values=cache,
            use_cache=True,
        )
        present = []
        for layer in out.past_key_values.self_attention_cache.layers:
            present += [layer.keys, layer.values]
        return (out.logits, *present)


def seq2seq_cache_shapes(model: nn.Module) -> list[list[int]] | None:
    """Per decoder layer ``[kv_heads, head_dim]`` of the self-attention cache, read from a
    one-token step; ``None`` when the model keeps no plain per-layer cache."""
    from transformers.cache_utils import DynamicLayer, EncoderDecoderCache

    ids = torch.full((1, 2), 5, dtype=torch.long)
    start = torch.full((1, 1), oq.OnnxModel._decoder_start(_Cfg(model.config)), dtype=torch.long)
    try:
        with torch.no_grad():
            cache = model(input_ids=ids, decoder_input_ids=start, use_cache=True).past_key_values
    except (TypeError, ValueError) as exc:
        log.info("runtime: no seq2seq KV cache export (%s)", exc)
        return None
    if not isinstance(cache, EncoderDecoderCache):
        return None
    layers = cache.self_attention_cache.layers
    if any(type(layer) is not DynamicLayer for layer in layers):
        return None
    return [[int(layer.keys.shape[1]), int(layer.keys.shape[3])] for layer in layers]


class _Cfg:
    """A stand-in with ``.config`` for :meth:`OnnxModel._decoder_start`."""

    def __init__(self, config):
        self.config = config


def export_seq2seq_with_past(model: nn.Module, folder: Path, shapes: list[list[int]]) -> dict:
    """Trace the encoder to ``encoder.onnx`` and the cached decoder step to ``model.onnx``."""
    n = len(shapes)
    g = torch.Generator().manual_seed(0)
    vocab = getattr(model.config, "vocab_size", None) or model.config.decoder.vocab_size
    batch, length, new, past = 2, 9, 2, 3
    ids = torch.randint(5, min(vocab, 1000), (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, -3:] = 0  # trace the padded-mask path
    enc_names, enc_out = ["input_ids", "attention_mask"], ["encoder_hidden_states"]
    oq._trace(_EncoderAdapter(model), model, (ids, mask), folder / "encoder.onnx", enc_names,
              enc_out, {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                        "encoder_hidden_states": {0: "batch", 1: "seq"}})
    with torch.no_grad():
        states = _EncoderAdapter(model).eval()(ids, mask)
    dec = torch.randint(5, min(vocab, 1000), (batch, new), generator=g)
    cache = []
    for heads, dim in shapes:
        cache += [torch.randn(batch, heads, past, dim, generator=g) for _ in range(2)]
    names = ["decoder_input_ids", "encoder_hidden_states", "encoder_attention_mask",
             *oq.past_names(n)]
    outputs = ["logits", *oq.past_names(n, "present")]
    dyn: dict[str, dict[int, str]] = {
        "decoder_input_ids": {0: "batch", 1: "new"},
        "encoder_hidden_states": {0: "batch", 1: "seq"},
        "encoder_attention_mask": {0: "batch", 1: "seq"},
        "logits": {0: "batch", 1: "new"},
    }
    dyn.update({name: {0: "batch", 2: "past"} for name in oq.past_names(n)})
    dyn.update({name: {0: "batch", 2: "total"} for name in oq.past_names(n, "present")})
    oq._trace(_DecoderStepAdapter(model, n), model, (dec, states, mask, *cache),
              folder / "model.onnx", names, outputs, dyn)
    return {"model": names, "encoder": enc_names}


# --------------------------------------------------------------------------- transform


@contextlib.contextmanager
def _quiet_logs():
    """Records below WARNING dropped while the engines' tools run (they log at INFO from
    loggers of their own), the previous setting restored."""
    previous = logging.root.manager.disable
    logging.disable(logging.INFO)
    try:
        yield
    finally:
        logging.disable(previous)


def fuse_file(src: Path, dst: Path, num_heads: int = 0, hidden_size: int = 0) -> dict[str, int]:
    """ONNX Runtime's transformer fusions (opt level 0: the fused graph stays portable);
    returns the count of each fused operator. The head count and width let the attention
    fusion check the shapes it matches (0: read from the graph)."""
    from onnxruntime.transformers import optimizer

    with _quiet_logs():  # the optimizer logs every fusion at INFO from its own loggers
        opt = optimizer.optimize_model(str(src), model_type="bert", num_heads=num_heads,
                                       hidden_size=hidden_size, opt_level=0)
        opt.save_model_to_file(str(dst), use_external_data_format=False)
        return {k: int(v) for k, v in opt.get_fused_operator_statistics().items() if v}


def _heads(model: nn.Module) -> tuple[int, int]:
    """(attention heads, hidden width) from the config, 0 where it does not say."""
    cfg = model.config
    heads = getattr(cfg, "num_attention_heads", None)
    hidden = getattr(cfg, "hidden_size", None)
    ok = isinstance(heads, int) and isinstance(hidden, int)
    return (heads, hidden) if ok else (0, 0)


def quantize_nbits_file(src: Path, dst: Path, bits: int, group_size: int,
                        exclude: list[str] | None = None) -> None:
    """MatMuls with constant weights -> ``MatMulNBits`` (weight-only, symmetric, groups of
    ``group_size``, int8 compute with ``accuracy_level=4``)."""
    import onnx

    # importing the quantizer runs logging.basicConfig(level=INFO) on the root logger:
    # undo that, or every later INFO record of the process gets printed
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)

    cfg = DefaultWeightOnlyQuantConfig(block_size=group_size, is_symmetric=True,
                                       accuracy_level=4, bits=bits)
    with _quiet_logs():
        q = MatMulNBitsQuantizer(onnx.load(str(src)), algo_config=cfg,
                                 nodes_to_exclude=exclude or [])
        q.process()
        q.model.save_model_to_file(str(dst), use_external_data_format=False)


def openvino_ir(src: Path, weights: str, group_size: int, keep_float: list[str]) -> tuple[str, bytes]:
    """The ONNX graph read by OpenVINO, weights compressed by NNCF; (IR xml, IR weights)."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(src))
    if weights != "fp32":
        import nncf

        mode = (nncf.CompressWeightsMode.INT8_ASYM if weights == "int8"
                else nncf.CompressWeightsMode.INT4_SYM)
        kw: dict[str, Any] = {"mode": mode}
        if weights == "int4":
            kw.update(group_size=group_size, ratio=1.0)
        if keep_float:
            kw["ignored_scope"] = nncf.IgnoredScope(patterns=[f".*{m.replace('.', '/')}/.*"
                                                              for m in keep_float],
                                                    validate=False)
        with warnings.catch_warnings(), _quiet_logs():
            warnings.simplefilter("ignore")
            nncf.set_log_level(logging.ERROR)  # its bit-width table is INFO
            model = nncf.compress_weights(model, **kw)
    with tempfile.TemporaryDirectory(prefix="compress-ov-") as tmp:
        xml = Path(tmp) / "model.xml"
        ov.save_model(model, str(xml), compress_to_fp16=False)
        return xml.read_text(), xml.with_suffix(".bin").read_bytes()


# --------------------------------------------------------------------------- sessions


class OpenVinoSession:
    """An OpenVINO compiled model with ONNX Runtime's ``run`` / ``get_outputs`` surface."""

    def __init__(self, xml: str, weights: bytes, threads: int):
        import openvino as ov

        core = ov.Core()
        model = core.read_model(model=xml, weights=ov.Tensor(np.frombuffer(weights, np.uint8)))
        self.compiled = core.compile_model(
            model, "CPU", {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
                           "INFERENCE_PRECISION_HINT": "f32"},  # no silent bf16 compute
        )
        self.request = self.compiled.create_infer_request()
        self.names = [out.get_any_name() for out in self.compiled.outputs]

    def get_outputs(self) -> list[Any]:
        return [_Named(n) for n in self.names]

    def get_inputs(self) -> list[Any]:
        return [_Named(i.get_any_name()) for i in self.compiled.inputs]

    def run(self, names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        result = self.request.infer(feeds)
        values = [np.array(result[out]) for out in self.compiled.outputs]
        if names is None:
            return values
        return [values[self.names.index(n)] for n in names]


class _Named:
    def __init__(self, name: str):
        self.name = name


def _ort_session(data: bytes, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


# --------------------------------------------------------------------------- the model


class RuntimeModel(oq.OnnxModel):
    """An ONNX Runtime or OpenVINO graph (+ an encoder graph for seq2seq) that behaves like
    the Hugging Face model it came from; decoders of both kinds generate with their cache."""

    engine_label = "ONNX Runtime and OpenVINO"

    def __init__(self, graphs: dict[str, Any], config: Any, task: str, names: list[str],
                 meta: dict[str, Any]):
        nn.Module.__init__(self)
        self.config, self.task, self.input_names = config, task, list(names)
        self.meta = dict(meta)
        self.graphs = graphs  # {"model": bytes} (onnx) or {"model": (xml, bin)} (openvino)
        self.engine = meta["engine"]
        threads = max(1, torch.get_num_threads())
        self.sessions = {name: self._session(g, threads) for name, g in graphs.items()}
        self.session = self.sessions["model"]
        self.output_name = self.session.get_outputs()[0].name
        self.cache_shapes = meta.get("cache_shapes")
        self._anchor = nn.Parameter(torch.empty(0), requires_grad=False)
        self.compress_parameter_counts = {
            "total": int(meta["stored_elements"]), "nonzero": int(meta["stored_elements"]),
            "bytes": int(meta["stored_bytes"]),
        }
        self.nbytes = self.compress_parameter_counts["bytes"]
        self.main_input_name = "input_ids"
        self.eval()

    def _session(self, graph: Any, threads: int):
        if self.engine == "openvino":
            xml, weights = graph
            return OpenVinoSession(xml, weights, threads)
        return _ort_session(graph, threads)

    # seq2seq with a cache: encoder once, then decoder steps -------------------
    def _seq2seq_cached(self) -> bool:
        return self.task == "seq2seq" and self.cache_shapes is not None

    def _encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> np.ndarray:
        feeds = {"input_ids": input_ids.to(torch.int64).numpy(),
                 "attention_mask": attention_mask.to(torch.int64).numpy()}
        return self.sessions["encoder"].run(None, feeds)[0]

    def _decode_step(self, states: np.ndarray, enc_mask: np.ndarray, dec: torch.Tensor,
                     past: list[np.ndarray] | None) -> tuple[torch.Tensor, list[np.ndarray]]:
        if past is None:
            past = []
            for heads, dim in self.cache_shapes:
                past += [np.zeros((dec.shape[0], heads, 0, dim), np.float32)] * 2
        feeds = {"decoder_input_ids": dec.to(torch.int64).numpy(),
                 "encoder_hidden_states": states, "encoder_attention_mask": enc_mask,
                 **dict(zip(oq.past_names(len(self.cache_shapes)), past, strict=True))}
        out = self.session.run(None, feeds)
        return torch.from_numpy(np.asarray(out[0])), list(out[1:])

    def _run(self, feeds: dict[str, torch.Tensor]) -> torch.Tensor:
        if not self._seq2seq_cached():
            return super()._run(feeds)
        mask = feeds["attention_mask"]
        states = self._encode(feeds["input_ids"], mask)
        logits, _ = self._decode_step(states, mask.to(torch.int64).numpy(),
                                      feeds["decoder_input_ids"], None)
        return logits

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 max_new_tokens: int = 20, eos_token_id: int | None = None,
                 **ignored: Any) -> torch.Tensor:
        """Greedy decoding with the cache (see :meth:`OnnxModel.generate`)."""
        if not self._seq2seq_cached():
            return super().generate(input_ids, attention_mask, max_new_tokens=max_new_tokens,
                                    eos_token_id=eos_token_id, **ignored)
        cfg = self.config
        eos = eos_token_id if eos_token_id is not None else getattr(cfg, "eos_token_id", None)
        if eos is None and hasattr(cfg, "decoder"):
            eos = getattr(cfg.decoder, "eos_token_id", None)
        eos_set = set(eos) if isinstance(eos, (list, tuple)) else ({eos} if eos is not None else set())
        min_new = int(ignored.get("min_new_tokens") or 0)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        enc_mask = attention_mask.to(torch.int64).numpy()
        states = self._encode(input_ids, attention_mask)
        pad = oq._pad_id(cfg)
        dec = torch.full((input_ids.shape[0], 1), self._decoder_start(), dtype=torch.long)
        step, past = dec, None
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool)
        for i in range(max_new_tokens):
            logits, past = self._decode_step(states, enc_mask, step, past)
            logits = logits[:, -1]
            if i < min_new and eos_set:
                logits[:, list(eos_set)] = float("-inf")
            nxt = torch.where(done, torch.full_like(done, pad, dtype=torch.long), logits.argmax(-1))
            dec = torch.cat([dec, nxt[:, None]], dim=1)
            step = nxt[:, None]
            done |= torch.tensor([int(t) in eos_set for t in nxt])
            if done.all():
                break
        return dec


# --------------------------------------------------------------------------- build


def _stored(graphs: dict[str, Any]) -> tuple[int, int]:
    """(elements, bytes) of the weights the graphs carry."""
    if all(isinstance(g, bytes) for g in graphs.values()):
        counts = [oq.initializer_counts(g) for g in graphs.values()]
        return sum(c["total"] for c in counts), sum(c["bytes"] for c in counts)
    total = sum(len(g[1]) for g in graphs.values())  # IR weights: bytes as stored
    return total, total


def build(model: nn.Module, task: str, *, engine: str = "onnxruntime", weights: str = "int8",
          group_size: int = 32, fuse: bool = True, kv_cache: bool = True,
          keep_float: list[str] | None = None, tokenizer: Any = None) -> nn.Module:
    """Export ``model``, transform it for ``engine`` at ``weights`` precision, wrap it."""
    if engine not in ENGINES:
        raise UserError(f"runtime: engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if weights not in WEIGHTS:
        raise UserError(f"runtime: weights {weights!r}; choose one of {', '.join(WEIGHTS)}")
    keep_float = list(keep_float or [])
    if weights == "w8a8" and engine != "onnxruntime":
        raise UserError(f"runtime: weights w8a8 (int8 activations) runs on engine onnxruntime; "
                        f"for {engine} use weights int8")
    if engine == "llamacpp":
        return _build_llamacpp(model, task, weights, keep_float, tokenizer)
    info: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="compress-runtime-") as tmp:
        tmp = Path(tmp)
        # ONNX Runtime's attention fusion recognises the eager attention pattern only
        old_attn = getattr(model.config, "_attn_implementation", None)
        if fuse and engine == "onnxruntime" and task in ("classification", "embedding"):
            if hasattr(model, "set_attn_implementation"):
                try:
                    model.set_attn_implementation("eager")
                except (ValueError, AttributeError):
                    pass
        try:
            shapes = positions = None
            if task == "causal-lm" and kv_cache:
                shapes = oq.cache_shapes(model)
            elif task == "seq2seq" and kv_cache:
                shapes = seq2seq_cache_shapes(model)
            if task == "causal-lm" and shapes:
                names = oq.export_causal_with_past(model, tmp / "model.onnx", shapes)
                positions = oq.position_convention(model)
                inputs = {"model": names}
            elif task == "seq2seq" and shapes:
                inputs = export_seq2seq_with_past(model, tmp, shapes)
                names = oq.input_names(model, task)
            else:
                names = oq.export(model, task, tmp / "model.onnx")
                inputs = {"model": names}
        finally:
            if old_attn is not None and getattr(model.config, "_attn_implementation", None) != old_attn:
                try:
                    model.set_attn_implementation(old_attn)
                except (ValueError, AttributeError):
                    pass
        fp32_bytes = sum((tmp / f"{g}.onnx").stat().st_size for g in inputs)
        graphs: dict[str, Any] = {}
        for g in inputs:
            src = tmp / f"{g}.onnx"
            if engine == "onnxruntime":
                if fuse:
                    info[f"fused_{g}"] = fuse_file(src, tmp / f"{g}.fused.onnx", *_heads(model))
                    src = tmp / f"{g}.fused.onnx"
                exclude = (oq.nodes_of_modules(src, keep_float)
                           if keep_float and weights != "fp32" else [])
                if weights == "w8a8":
                    # int8 weights per output channel, 7-bit where vpmaddubsw saturates
                    info["w8a8"] = {"per_channel": True, "reduce_range": oq.x86_without_vnni()}
                    oq.quantize_file(src, tmp / f"{g}.q.onnx", True, info["w8a8"]["reduce_range"],
                                     exclude, op_types=("MatMul", "Attention"), untyped_float=True)
                    src = tmp / f"{g}.q.onnx"
                elif weights != "fp32":
                    quantize_nbits_file(src, tmp / f"{g}.q.onnx", 8 if weights == "int8" else 4,
                                        group_size, exclude)
                    src = tmp / f"{g}.q.onnx"
                graphs[g] = src.read_bytes()
            else:
                graphs[g] = openvino_ir(src, weights, group_size, keep_float)
    elements, stored = _stored(graphs)
    meta = {**config_record(model), "task": task, "inputs": names, "graph_inputs": inputs,
            "engine": engine, "weights": weights, "group_size": group_size, "fuse": fuse,
            "cache_shapes": shapes or None, "positions": positions,
            "fp32_onnx_bytes": fp32_bytes, "kept_in_float": keep_float,
            "stored_elements": elements, "stored_bytes": stored, **info}
    return RuntimeModel(graphs, model.config, task, names, meta)


def _build_llamacpp(model: nn.Module, task: str, weights: str, keep_float: list[str],
                    tokenizer: Any) -> nn.Module:
    from compress.quant import llamacpp

    if task != "causal-lm":
        raise UserError(f"runtime: engine llamacpp runs decoder-only models; this is a {task} "
                        "model: use engine onnxruntime or openvino")
    if keep_float:
        raise UserError("runtime: engine llamacpp quantizes every linear (its own choice for the "
                        "embeddings); drop skip/outlier_threshold or use another engine")
    llamacpp._require()
    folder = Path(tempfile.mkdtemp(prefix="compress-llamacpp-"))
    try:
        info = llamacpp.build_file(model, tokenizer, weights, folder / llamacpp.GGUF)
    except BaseException:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
        raise
    fp32_bytes = sum(p.numel() * 4 for p in model.parameters())
    meta = {**config_record(model), "task": task, "engine": "llamacpp", "weights": weights,
            "group_size": 32, "fuse": None, "cache_shapes": oq.cache_shapes(model),
            "gguf_types": info["types"], "fp32_onnx_bytes": fp32_bytes, "kept_in_float": [],
            "stored_elements": info["bytes"], "stored_bytes": info["bytes"],
            "graph_inputs": {}, "inputs": ["input_ids", "attention_mask"]}
    return llamacpp.LlamaCppModel(folder / llamacpp.GGUF, model.config, meta, owned_dir=folder)


# --------------------------------------------------------------------------- format


def _is_runtime(model: nn.Module) -> bool:
    from compress.quant.llamacpp import LlamaCppModel

    return isinstance(model, (RuntimeModel, LlamaCppModel))


def save(model: nn.Module, folder: Path) -> None:
    if getattr(model, "engine", None) == "llamacpp":
        import shutil

        shutil.copyfile(model.path, folder / model.path.name)
        write_json(folder, MANIFEST, model.meta)
        model.config.save_pretrained(folder)
        return
    for name, graph in model.graphs.items():
        if model.engine == "openvino":
            xml, weights = graph
            (folder / f"{name}.xml").write_text(xml)
            (folder / f"{name}.bin").write_bytes(weights)
        else:
            (folder / f"{name}.onnx").write_bytes(graph)
    write_json(folder, MANIFEST, model.meta)
    model.config.save_pretrained(folder)


def load(folder: Path) -> nn.Module:
    import transformers as tf

    folder = Path(folder)
    meta = read_json(folder, MANIFEST)
    config = tf.AutoConfig.from_pretrained(folder)
    if meta["engine"] == "llamacpp":
        from compress.quant.llamacpp import GGUF, LlamaCppModel

        return LlamaCppModel(folder / GGUF, config, meta)
    graphs: dict[str, Any] = {}
    for name in meta["graph_inputs"]:
        if meta["engine"] == "openvino":
            graphs[name] = ((folder / f"{name}.xml").read_text(),
                            (folder / f"{name}.bin").read_bytes())
        else:
            graphs[name] = (folder / f"{name}.onnx").read_bytes()
    return RuntimeModel(graphs, config, meta["task"], meta["inputs"], meta)


FORMAT = register_format(
    Format(FORMAT_NAME, _is_runtime, save, load, priority=1)
)

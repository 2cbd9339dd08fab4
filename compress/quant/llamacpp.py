"""llama.cpp as a CPU engine behind the ``runtime`` recipe: decoders in F32, Q8_0 or Q4_0.

llama.cpp (Gerganov et al., https://github.com/ggml-org/llama.cpp) runs a decoder from one
GGUF file with hand-written CPU kernels: int8 and int4 weight blocks of 32 with one fp16
scale (``Q8_0`` / ``Q4_0``) multiplied against activations quantized to int8 per block
(AVX2 / AVX-512 / VNNI dot products), attention over its own KV cache, and the whole
decode step in C++ with no per-operator dispatch. That last part is what the ONNX Runtime
and OpenVINO graphs of :mod:`compress.quant.runtime` lack on a 135M-parameter model: a
SmolLM2 decode step there runs about 1,900 dynamic-shape nodes, each dispatched and
shape-inferred, so their int8 and int4 weights save less than the bytes suggest
(``reports/bench/cpu_engines_smollm2_decode.json``: OpenVINO int8 / int4 decode steps at
0.86x / 0.81x of its fp32; ``reports/bench/cpu_engines_smollm2_llamacpp.json``: llama.cpp's
at 0.485x / 0.389x of its F32, AVX2, 15 rounds).

The path: :func:`compress.export.gguf.export` writes the model to an F32 GGUF file (its
tokenizer included; the architectures that exporter knows), then llama.cpp's own
quantizer (``llama_model_quantize``, data-free round-to-nearest, the same as
``llama-quantize``) turns it into ``Q8_0`` (``weights=int8``) or ``Q4_0`` (``int4``).
llama.cpp chooses the type of the tied embedding / output matrix itself (``Q8_0`` at
``int4`` when its width is no multiple of 256, as in SmolLM2); :func:`build_file` records the
tensor types it wrote.

:class:`LlamaCppModel` saves in the ``runtime`` format of :mod:`compress.quant.runtime`
(the ``.gguf`` file + ``runtime.json``): ``forward`` returns the logits of every
position (one llama.cpp sequence per row, padding stripped), ``generate`` decodes greedily
with llama.cpp's KV cache. Speed against eager PyTorch and against llama.cpp's own F32 is
measured by ``bench/cpu_engines.py`` (``--engines llamacpp``), never assumed.

The package is ``llama-cpp-python``, which compiles llama.cpp on install (a few minutes on
2 cores): ``pip install -e '.[llamacpp]'``. Without it the engine refuses in one line and
the other engines are unaffected.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import tempfile
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from compress.errors import UserError
from compress.quant.onnx import CpuEngineModel

#: weights -> llama.cpp file type (``llama_ftype``) and the name the report records
FTYPES = {"int8": ("LLAMA_FTYPE_MOSTLY_Q8_0", "Q8_0"), "int4": ("LLAMA_FTYPE_MOSTLY_Q4_0", "Q4_0")}
GGUF = "model.gguf"
#: default context length (tokens) of a session; longer inputs are refused with a hint
MAX_CTX = 2048
#: open sessions, closed before the interpreter tears down the ctypes bindings they call
_OPEN: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for model in list(_OPEN):
        model.close()


def _require():
    try:
        import llama_cpp
    except ImportError:
        raise UserError(
            "engine llamacpp needs llama-cpp-python: pip install -e '.[llamacpp]' (it compiles "
            "llama.cpp, a few minutes), or use engine onnxruntime / openvino"
        ) from None
    return llama_cpp


def available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def quantize_file(src: Path, dst: Path, weights: str, threads: int) -> None:
    """llama.cpp's own quantizer: F32 GGUF ``src`` -> ``dst`` at ``weights``."""
    llama_cpp = _require()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, FTYPES[weights][0])
    params.nthread = max(1, threads)
    from llama_cpp._utils import suppress_stdout_stderr

    with suppress_stdout_stderr(disable=False):  # its per-tensor log goes to stderr
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(),
                                            ctypes.byref(params))
    if rc != 0:
        raise UserError(f"llama.cpp could not quantize the GGUF file to {FTYPES[weights][1]} "
                        f"(code {rc}); try weights=fp32 or another engine")


def tensor_types(path: Path) -> dict[str, int]:
    """How many tensors of each GGML type the file holds."""
    import gguf

    counts: dict[str, int] = {}
    for t in gguf.GGUFReader(str(path)).tensors:
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    return counts


def build_file(model: nn.Module, tokenizer: Any, weights: str, dst: Path) -> dict[str, Any]:
    """Write ``model`` as a GGUF file at ``weights`` precision to ``dst``; what was written."""
    from compress.export.gguf import export

    if tokenizer is None:
        raise UserError("engine llamacpp writes the tokenizer into the GGUF file; "
                        "pass the model's tokenizer (Context(tokenizer=...))")
    if weights == "fp32":
        info = export(model, tokenizer, dst)
    else:
        _require()
        with tempfile.TemporaryDirectory(prefix="compress-llamacpp-") as tmp:
            f32 = Path(tmp) / "f32.gguf"
            export(model, tokenizer, f32)
            quantize_file(f32, dst, weights, torch.get_num_threads())
        info = {"path": str(dst), "bytes": dst.stat().st_size}
    info["types"] = tensor_types(dst)
    return info


class LlamaCppModel(CpuEngineModel):
    """A llama.cpp session over one GGUF file that behaves like the Hugging Face decoder
    it came from (``forward`` -> ``.logits``, greedy ``generate`` with its KV cache)."""

    engine_label = "llama.cpp"

    def __init__(self, gguf_path: Path, config: Any, meta: dict[str, Any],
                 owned_dir: Path | None = None):
        super().__init__()
        self._owned_dir = owned_dir  # a temporary folder holding the file: removed on close
        llama_cpp = _require()
        self.config, self.task = config, "causal-lm"
        self.meta = dict(meta)
        self.engine = "llamacpp"
        self.path = Path(gguf_path)
        threads = max(1, torch.get_num_threads())
        limit = int(getattr(config, "max_position_embeddings", 0) or MAX_CTX)
        self.n_ctx = min(limit, int(os.environ.get("COMPRESS_LLAMACPP_CTX", MAX_CTX)))
        self.n_batch = min(512, self.n_ctx)
        self.llm = llama_cpp.Llama(  # verbose=False: llama.cpp's load log is silenced
            model_path=str(self.path), n_ctx=self.n_ctx, n_batch=self.n_batch,
            n_ubatch=self.n_batch, n_threads=threads, n_threads_batch=threads,
            logits_all=False, verbose=False,
        )
        self.n_vocab = int(self.llm.n_vocab())
        _OPEN.add(self)
        self.cache_shapes = meta.get("cache_shapes")
        self.input_names = ["input_ids", "attention_mask"]
        self._anchor = nn.Parameter(torch.empty(0), requires_grad=False)
        size = self.path.stat().st_size
        self.compress_parameter_counts = {"total": size, "nonzero": size, "bytes": size}
        self.nbytes = size
        self.main_input_name = "input_ids"
        self.eval()

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            llm.close()
        owned, self._owned_dir = getattr(self, "_owned_dir", None), None
        if owned is not None:
            import shutil

            shutil.rmtree(owned, ignore_errors=True)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter teardown
            pass

    # -- llama.cpp calls ---------------------------------------------------
    def _start(self) -> None:
        self.llm._ctx.kv_cache_clear()
        self._past = 0

    def _eval(self, tokens: list[int], every: bool) -> np.ndarray:
        """Feed ``tokens`` after what the cache holds; logits of every fed token
        (``every``) or of the last one, shape (rows, vocab)."""
        if self._past + len(tokens) > self.n_ctx:
            raise UserError(f"llama.cpp session holds {self.n_ctx} tokens, the input needs "
                            f"{self._past + len(tokens)}; set COMPRESS_LLAMACPP_CTX higher")
        ctx, batch, out = self.llm._ctx, self.llm._batch, []
        for i in range(0, len(tokens), self.n_batch):
            chunk = tokens[i:i + self.n_batch]
            batch.set_batch(batch=chunk, n_past=self._past, logits_all=every)
            ctx.decode(batch)
            rows = len(chunk) if every else 1
            out.append(np.ctypeslib.as_array(ctx.get_logits(), shape=(rows * self.n_vocab,))
                       .reshape(rows, self.n_vocab).copy())
            self._past += len(chunk)
        return np.concatenate(out) if every else out[-1]

    @staticmethod
    def _rows(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> list[torch.Tensor]:
        """Each row's real positions (padding on either side stripped)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        rows = []
        for mask in attention_mask.bool():
            idx = mask.nonzero().flatten()
            if len(idx) and int(idx[-1] - idx[0]) + 1 != len(idx):
                raise UserError("llama.cpp engine: padding must sit at the start or the end "
                                "of a row, not inside it")
            rows.append(idx)
        return rows

    def forward(self, input_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                **ignored: Any):
        import torch.nn.functional as F
        from transformers.modeling_outputs import CausalLMOutput

        if input_ids is None:
            raise UserError("the llama.cpp model needs input_ids")
        logits = torch.zeros(*input_ids.shape, self.n_vocab)
        for r, idx in enumerate(self._rows(input_ids, attention_mask)):
            if not len(idx):
                continue
            self._start()
            out = self._eval([int(t) for t in input_ids[r, idx]], every=True)
            logits[r, idx] = torch.from_numpy(out)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, self.n_vocab),
                                   labels[:, 1:].reshape(-1), ignore_index=-100)
        return CausalLMOutput(loss=loss, logits=logits)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 max_new_tokens: int = 20, eos_token_id: int | None = None,
                 **kwargs: Any) -> torch.Tensor:
        """Greedy decoding, one row at a time, one token per llama.cpp step after the
        prompt; returns prompt + new tokens (finished rows padded), as Hugging Face does."""
        from compress.quant.onnx import _pad_id

        eos = eos_token_id if eos_token_id is not None else getattr(self.config, "eos_token_id", None)
        eos_set = set(eos) if isinstance(eos, (list, tuple)) else ({eos} if eos is not None else set())
        eos_list = list(eos_set)
        min_new = int(kwargs.get("min_new_tokens") or 0)
        pad = _pad_id(self.config)
        new = []
        for r, idx in enumerate(self._rows(input_ids, attention_mask)):
            if not len(idx):
                raise UserError("llama.cpp engine: a prompt row holds no tokens (all padding)")
            self._start()
            logits = self._eval([int(t) for t in input_ids[r, idx]], every=False)[-1]
            row: list[int] = []
            for i in range(max_new_tokens):
                if i < min_new and eos_list:
                    logits[eos_list] = -np.inf
                nxt = int(logits.argmax())
                row.append(nxt)
                if nxt in eos_set or i == max_new_tokens - 1:
                    break
                logits = self._eval([nxt], every=False)[-1]
            new.append(row)
        width = max(len(r) for r in new)
        out = torch.full((input_ids.shape[0], width), pad, dtype=torch.long)
        for r, row in enumerate(new):
            out[r, :len(row)] = torch.tensor(row)
        return torch.cat([input_ids, out], dim=1)

"""Every recipe on a CUDA model, and the calibrating recipes on a model split by ``device_map``.

Skipped where no GPU is present (CI has none). They check what CPU-only tests cannot: that
no recipe assumes the CPU (tensors created on the wrong device, ``.numpy()`` on a CUDA
tensor, calibration activations left on one device while a block sits on another), and that
on CUDA a recipe computes what it computes on the CPU.
"""

from __future__ import annotations

import copy

import pytest
import torch
from test_pruning import PAIRS, TEXTS  # the same tiny calibration data as the CPU tests

from compress import Context, UserError, compress, make_config
from compress.calibration import CalibrationSpec
from compress.registry import recipe_names
from compress.saving import load_compressed, save_model
from compress.tiny import sample_inputs, tiny_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

LABELLED = [(t, i % 3) for i, t in enumerate(TEXTS)]
#: (family, classifier, task) covering decoder-only, encoder-only and encoder-decoder.
FAMILIES = {
    "llama": ("llama", False, "causal-lm"),
    "gpt2": ("gpt2", False, "causal-lm"),
    "bert-cls": ("bert", True, "classification"),
    "t5": ("t5", False, "seq2seq"),
    "bart": ("bart", False, "seq2seq"),
}
#: recipes that exist for the CPU only and must say so in one line.
CPU_ONLY = {"dynamic-int8", "onnx-int8", "runtime"}
#: small settings so training recipes finish in seconds.
SMALL = {
    "distill": {"steps": 4, "batch_size": 4, "eval_every": 2, "seq_len": 16},
    "qlora": {"steps": 4},
    "moefy": {"router_steps": 20},
}
#: the calibration every calibrating recipe reads here (compress.calibration).
SPEC = CalibrationSpec(sequences=6, seq_len=16)
#: recipes whose CPU and CUDA results must agree (no randomness beyond the fixed seed,
#: no kernels that differ by design).
AGREE = {"identity", "magnitude", "wanda", "structured", "rtn", "gptq"}


@pytest.fixture(autouse=True)
def _held_out_from_context(monkeypatch):
    """distill evaluates on the zoo's validation split; here, on a slice of the tiny data."""
    import compress.distill.data as dd

    rows = {"seq2seq": PAIRS, "classification": LABELLED}
    monkeypatch.setattr(dd, "held_out_rows", lambda task: list(rows.get(task, TEXTS))[:6])


def _recipes():
    return [n for n in recipe_names() if not n.endswith("-test")]


def _context(task, tok):
    data = {"seq2seq": PAIRS, "classification": LABELLED}.get(task, TEXTS)
    return Context(tokenizer=tok, calibration=data, train=data, task=task, calib=SPEC)


def _config(name):
    from compress.registry import get_recipe

    if name == "magnitude-global":
        return make_config("magnitude", scope="global")
    fields = {f for f in get_recipe(name).config_cls.__dataclass_fields__}
    return make_config(name, **{k: v for k, v in SMALL.get(name, {}).items() if k in fields})


def _logits(model, family, device):
    inputs = {k: v.to(device) for k, v in sample_inputs(family).items()}
    with torch.inference_mode():
        out = model(**inputs)
    return (out.logits if hasattr(out, "logits") else out.last_hidden_state).float()


@pytest.mark.parametrize("key", list(FAMILIES))
@pytest.mark.parametrize("name", _recipes())
def test_recipe_runs_on_cuda_and_matches_cpu(name, key):
    family, classifier, task = FAMILIES[key]
    base, tok = tiny_model(family, classifier=classifier)
    gpu = copy.deepcopy(base).to("cuda")
    if name in CPU_ONLY:
        with pytest.raises(UserError, match="CPU"):
            compress(gpu, _config(name), _context(task, tok))
        return
    try:
        out = compress(gpu, _config(name), _context(task, tok))
    except UserError as exc:
        # the same refusal must happen on the CPU (e.g. a recipe that has no such task)
        with pytest.raises(UserError):
            compress(copy.deepcopy(base), _config(name), _context(task, tok))
        pytest.skip(f"{name} refuses {key}: {exc}")
    logits = _logits(out, family, "cuda")
    assert logits.device.type == "cuda"
    assert torch.isfinite(logits).all()
    on_cpu = [n for n, p in out.named_parameters() if p.device.type != "cuda"]
    assert not on_cpu, f"{name} left parameters off the GPU: {on_cpu[:3]}"
    if name in AGREE:
        ref = _logits(compress(copy.deepcopy(base), _config(name), _context(task, tok)),
                      family, "cpu")
        err = (logits.cpu() - ref).norm() / ref.norm()
        assert err < 2e-2, f"{name} on {key}: CUDA result differs from CPU by {err:.3g}"


@pytest.mark.parametrize("name", ["bnb-int8", "bnb-4bit"])
def test_bitsandbytes_on_cuda_is_real_and_records_cuda(name):
    base, tok = tiny_model("llama")
    ref = _logits(base, "llama", "cpu")
    ctx = _context("causal-lm", tok)
    out = compress(copy.deepcopy(base).to("cuda"), _config(name), ctx)
    import bitsandbytes as bnb

    kinds = {type(m) for m in out.modules()}
    assert kinds & {bnb.nn.Linear8bitLt, bnb.nn.Linear4bit}, kinds
    info = ctx.info.get("quant") or {}
    assert info.get("device") == "cuda", info
    err = (_logits(out, "llama", "cuda").cpu() - ref).norm() / ref.norm()
    assert err < 0.2


#: half of each model on GPU 0, the rest on the CPU (accelerate dispatch hooks move
#: activations between them), the way a user loads a model bigger than one device.
SPLIT = {
    "llama": {"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": "cpu",
              "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"},
    # tied embeddings (shared, decoder.embed_tokens, lm_head) stay together, as
    # accelerate's infer_auto_device_map keeps them
    "t5": {"shared": 0, "encoder": 0, "decoder.embed_tokens": 0, "lm_head": 0,
           "decoder.block": "cpu", "decoder.final_layer_norm": "cpu"},
}


def _split(model, family):
    """``model`` dispatched by accelerate over GPU 0 and the CPU, weights real on both.

    ``main_device="cpu"`` keeps the CPU part resident instead of offloaded: the layout of a
    model spread over several devices that each hold their part.
    """
    from accelerate import dispatch_model

    return dispatch_model(model, SPLIT[family], main_device="cpu")


@pytest.mark.parametrize("name", ["magnitude", "magnitude-global", "wanda", "structured", "rtn",
                                  "gptq", "moefy"])
@pytest.mark.parametrize("family", list(SPLIT))
def test_calibrating_recipes_on_a_model_split_across_gpu_and_cpu(name, family, tmp_path):
    base, tok = tiny_model(family)
    task = "causal-lm" if family == "llama" else "seq2seq"
    model = _split(copy.deepcopy(base), family)
    placed = {p.device.type for p in model.parameters()}
    assert placed == {"cpu", "cuda"}, placed
    out = compress(model, _config(name), _context(task, tok))
    logits = _logits(out, family, "cuda")
    assert torch.isfinite(logits).all()
    if name.split("-")[0] in AGREE:
        ref = _logits(compress(copy.deepcopy(base), _config(name), _context(task, tok)),
                      family, "cpu")
        err = (logits.cpu() - ref).norm() / ref.norm()
        assert err < 2e-2, f"{name} on split {family}: differs from CPU by {err:.3g}"
    save_model(out, tok, tmp_path / "out")
    reloaded = load_compressed(tmp_path / "out")
    again = _logits(reloaded, family, "cpu")
    torch.testing.assert_close(again, logits.cpu(), rtol=1e-3, atol=1e-3)


def test_offloaded_weights_get_a_clear_error(tmp_path):
    """device_map with "cpu" beside a GPU offloads (weights on the meta device)."""
    from compress.models import load_model

    base, tok = tiny_model("llama")
    save_model(base, tok, tmp_path / "m")
    model = load_model(str(tmp_path / "m"), "causal-lm", device_map=SPLIT["llama"]).model
    assert any(p.device.type == "meta" for p in model.parameters())
    with pytest.raises(UserError, match="offloaded"):
        compress(model, _config("magnitude"), _context("causal-lm", tok))
    # scoring an offloaded model still works (identity)
    assert torch.isfinite(_logits(compress(model, make_config("identity")), "llama",
                                  "cuda")).all()


def test_profiler_on_cuda_records_gpu_memory_and_times():
    from eval.profiler import profile

    model, tok = tiny_model("llama")
    result = profile(model.to("cuda"), tok, "causal-lm", quick=True, shapes=((1, 32),),
                     gen_tokens=4)
    assert result.get("cuda_max_memory_allocated", 0) > 0, sorted(result)
    assert result["device"].startswith("cuda"), result["device"]
    assert result["latency"]["1x32"]["median_ms"] > 0


def test_global_threshold_over_tensors_on_two_devices(monkeypatch):
    """The binned k-th smallest (pools above GATHER_LIMIT) with chunks on GPU and CPU."""
    from compress.pruning import masks

    monkeypatch.setattr(masks, "GATHER_LIMIT", 64)
    g = torch.Generator().manual_seed(0)
    chunks = [torch.randn(3000, generator=g), torch.randn(5000, generator=g)]
    chunks = [chunks[0].cuda(), chunks[1]]
    k = 3456
    value, n_less = masks.kth_smallest(lambda: iter(chunks), k)
    flat = torch.cat([c.cpu() for c in chunks])
    assert value == float(flat.kthvalue(k).values)
    assert n_less == int((flat < value).sum())

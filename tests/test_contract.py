"""The recipe contract, registry, configs and architecture table on tiny models of every family."""

from __future__ import annotations

import dataclasses
import functools
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch

from compress import Context, RecipeConfig, UserError, compress, make_config, option
from compress.api import leftover_attachments
from compress.arch import arch_for, component_map, describe, iter_blocks, targeted_linears
from compress.registry import get_recipe, recipe_names
from compress.saving import load_compressed, save_model
from compress.tiny import TINY_FAMILIES, sample_inputs, tiny_model


def _outputs(model, family):
    with torch.inference_mode():
        out = model(**sample_inputs(family))
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_identity_returns_model_and_round_trips(family, tmp_path):
    model, tok = tiny_model(family)
    before = _outputs(model, family)
    out = compress(model, make_config("identity"), Context(tokenizer=tok))
    assert out is model
    save_model(out, tok, tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").exists()
    assert not any(p.name.startswith(".tmp-") for p in tmp_path.iterdir())
    reloaded = load_compressed(tmp_path / "m")
    torch.testing.assert_close(_outputs(reloaded, family), before, rtol=0, atol=0)


def test_partial_form_is_model_to_model():
    model, _ = tiny_model("gpt2")
    fn = functools.partial(compress, config=make_config("identity"))
    assert fn(model) is model


def test_unknown_recipe_names_closest_and_list():
    with pytest.raises(UserError) as err:
        get_recipe("identiy")
    msg = str(err.value)
    assert "did you mean 'identity'" in msg and "Known recipes:" in msg
    assert "\n" not in msg


def test_registry_lists_identity():
    assert "identity" in recipe_names()


@dataclass(frozen=True)
class _Cfg(RecipeConfig):
    sparsity: float = option(0.5, "fraction zeroed", low=0.0, high=1.0, high_inclusive=False)
    mode: str = option("layer", "scope", choices=("layer", "global"))
    flag: bool = option(False, "a switch")


def test_config_validation_names_the_field():
    with pytest.raises(UserError, match=r"sparsity=1.0 is out of range; allowed: 0.0 <= value < 1.0"):
        _Cfg(sparsity=1.0)
    with pytest.raises(UserError, match="mode='blob' is not allowed"):
        _Cfg(mode="blob")
    with pytest.raises(UserError, match="flag must be true or false"):
        _Cfg(flag="yes")
    with pytest.raises(UserError, match="must be of type float"):
        _Cfg(sparsity="half")
    with pytest.raises(UserError, match="NaN"):
        _Cfg(sparsity=float("nan"))
    assert _Cfg(sparsity=0).sparsity == 0.0 and isinstance(_Cfg(sparsity=0).sparsity, float)


def test_config_round_trips_through_dict_and_rejects_unknown_keys():
    cfg = _Cfg(sparsity=0.25, mode="global")
    again = _Cfg.from_dict(cfg.to_dict())
    assert again == cfg
    with pytest.raises(UserError, match="did you mean 'sparsity'"):
        _Cfg.from_dict({"sparsty": 0.3})
    with pytest.raises(UserError, match="version 99"):
        _Cfg.from_dict({"version": 99})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.sparsity = 0.1  # type: ignore[misc]


def test_compress_rejects_leftover_masks():
    from torch.nn.utils import prune

    from compress.registry import register_recipe

    @dataclass(frozen=True)
    class LeakyConfig(RecipeConfig):
        pass

    @register_recipe("leaky-test", LeakyConfig)
    def leaky(model, config, context):
        prune.l1_unstructured(model.transformer.h[0].mlp.c_fc, "weight", amount=0.5)
        return model

    model, _ = tiny_model("gpt2")
    with pytest.raises(RuntimeError, match="left attachments"):
        compress(model, LeakyConfig())
    assert leftover_attachments(model)


EXPECTED_LINEARS = {
    # family: (blocks, linears per block in the last block)
    "bert": (2, 6),
    "gpt2": (2, 4),
    "llama": (2, 7),
    "opt": (2, 6),
    "t5": (4, 10),
    "bart": (4, 10),
    "bert2bert": (4, 10),
}


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_arch_table_finds_blocks_and_linears(family):
    model, _ = tiny_model(family)
    blocks = list(iter_blocks(model))
    n_blocks, n_linears = EXPECTED_LINEARS[family]
    assert len(blocks) == n_blocks
    assert len(blocks[-1].linears) == n_linears
    modules = dict(model.named_modules())
    for block in blocks:
        for comp, name in block.linear_names.items():
            assert modules[name] is block.linears[comp]
            assert hasattr(modules[name], "weight")
    roles = {b.role for b in blocks}
    assert roles == ({"encoder", "decoder"} if arch_for(model).kind == "encoder-decoder"
                     else {arch_for(model).kind})
    # every targeted linear is a real module with a 2-D weight
    ffn = targeted_linears(model, ("ffn",))
    assert ffn and all(m.weight.dim() == 2 for m, _ in ffn.values())
    assert set(component_map(model).values()) >= {"ffn_in", "ffn_out"}


def test_arch_describe_heads_and_gqa():
    model, _ = tiny_model("llama")
    facts = describe(model)
    assert facts["stacks"][0]["heads"] == 4 and facts["stacks"][0]["kv_heads"] == 2
    assert facts["gated_ffn"] and facts["activation"] == "silu"
    assert describe(tiny_model("gpt2")[0])["conv1d"] is True
    cls, _ = tiny_model("bert", classifier=True)
    assert len(list(iter_blocks(cls))) == 2


def test_model_without_transformer_blocks_is_a_clear_error():
    """A state-space model has no attention blocks: one line that says so."""
    from transformers import MambaConfig, MambaForCausalLM

    model = MambaForCausalLM(MambaConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2,
                                         state_size=4, expand=2, conv_kernel=2))
    with pytest.raises(UserError, match="no list of repeated transformer blocks") as err:
        arch_for(model)
    assert "\n" not in str(err.value)


def test_recipe_cli_help_and_errors(tmp_path, call_main):
    from compress.cli import recipe_main

    rc, help_text, _ = call_main(functools.partial(recipe_main, "identity"), "--help")
    assert rc == 0
    assert "--model" in help_text and "--seed" in help_text and "random seed" in help_text
    rc, _, err = call_main(functools.partial(recipe_main, "identity"), "--model", "smolm2-135m",
                           "--out", tmp_path / "x")
    assert rc == 2
    assert err.strip().startswith("error: unknown model 'smolm2-135m'; did you mean 'smollm2-135m'")
    assert "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_recipe_cli_saves_local_model(tmp_path):
    model, tok = tiny_model("llama")
    model.config.architectures = ["LlamaForCausalLM"]
    model.save_pretrained(tmp_path / "src")
    tok.save_pretrained(tmp_path / "src")
    res = subprocess.run(
        [sys.executable, "-m", "compress.recipes.identity", "--model", str(tmp_path / "src"),
         "--out", str(tmp_path / "dst"), "--calib-sequences", "0"],
        capture_output=True, text=True,
    )
    assert res.returncode == 0, res.stderr
    assert "identity:" in res.stdout and "parameters" in res.stdout
    reloaded = load_compressed(tmp_path / "dst")
    for (n1, p1), (n2, p2) in zip(model.named_parameters(), reloaded.named_parameters(), strict=True):
        assert n1 == n2 and torch.equal(p1, p2)


def test_pickle_only_folder_is_refused(tmp_path):
    from compress.models import load_model

    model, tok = tiny_model("bert")
    model.config.architectures = ["BertModel"]
    model.config.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(UserError, match="only pickle weights.*--allow-pickle"):
        load_model(str(tmp_path))
    loaded = load_model(str(tmp_path), allow_pickle=True)
    assert torch.equal(loaded.model.embeddings.word_embeddings.weight,
                       model.embeddings.word_embeddings.weight)


def test_memory_check_refuses_before_loading(tmp_path, monkeypatch):
    from compress.memory import checkpoint_numel
    from compress.models import load_model

    model, tok = tiny_model("gpt2")
    model.config.architectures = ["GPT2LMHeadModel"]
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    numel, _ = checkpoint_numel(tmp_path)
    # tied lm_head is stored once; every stored tensor is counted
    assert numel == sum(p.numel() for p in model.parameters())
    monkeypatch.setenv("COMPRESS_AVAILABLE_MEMORY", str(numel))  # less than numel * 4 bytes
    with pytest.raises(UserError, match=r"loading .* needs about .* [MG]iB.*--device-map auto"):
        load_model(str(tmp_path))
    monkeypatch.setenv("COMPRESS_AVAILABLE_MEMORY", str(numel * 8))
    assert load_model(str(tmp_path)).task == "causal-lm"


def test_atomic_dir_survives_sigkill_mid_save(tmp_path):
    import textwrap

    out = tmp_path / "model"
    model, tok = tiny_model("bert")
    save_model(model, tok, out)
    before = sorted(p.name for p in out.iterdir())
    script = textwrap.dedent(f"""
        import os, signal
        import compress.saving as s
        from compress.tiny import tiny_model
        model, tok = tiny_model("bert", seed=1)
        real = tok.save_pretrained
        def die(*a, **k):
            real(*a, **k)
            os.kill(os.getpid(), signal.SIGKILL)   # weights written, folder not yet renamed
        tok.save_pretrained = die
        s.save_model(model, tok, {str(out)!r})
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert res.returncode == -9
    assert sorted(p.name for p in out.iterdir()) == before
    reloaded = load_compressed(out)
    assert torch.equal(reloaded.embeddings.word_embeddings.weight,
                       model.embeddings.word_embeddings.weight)
    from compress.fileio import clean_stale_tmp

    assert clean_stale_tmp(tmp_path) >= 1
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


class _Exploit:
    """Unpickling this runs code: it creates a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_code_executing_pickle_is_refused(tmp_path):
    import pickle

    from compress.models import load_model
    from compress.safety import safe_torch_load

    model, tok = tiny_model("bert")
    model.config.architectures = ["BertModel"]
    model.config.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    marker = tmp_path / "pwned"
    with open(tmp_path / "pytorch_model.bin", "wb") as fh:
        pickle.dump({"weight": _Exploit(marker)}, fh)
    with pytest.raises(UserError, match="only pickle weights"):
        load_model(str(tmp_path))
    assert not marker.exists()
    # even when pickle is allowed, weights_only=True refuses to run the code
    with pytest.raises(Exception):  # noqa: B017 - torch's UnpicklingError or transformers' wrapper
        load_model(str(tmp_path), allow_pickle=True)
    assert not marker.exists()
    with pytest.raises(Exception):  # noqa: B017
        safe_torch_load(tmp_path / "pytorch_model.bin", allow_pickle=True)
    assert not marker.exists()


def test_memory_check_before_compressing(monkeypatch):
    @dataclass(frozen=True)
    class HungryConfig(RecipeConfig):
        nsamples: int = option(128, "calibration samples", low=1)
        seq_len: int = option(2048, "calibration length", low=1)
        finetune_steps: int = option(10, "steps", low=0)
        finetune_method: str = option("full", "method", choices=("full", "lora"))

    from compress.registry import register_recipe

    @register_recipe("hungry-test", HungryConfig)
    def hungry(model, config, context):
        return model

    model, _ = tiny_model("llama")
    params = sum(p.numel() * 4 for p in model.parameters())
    need = HungryConfig().extra_memory_bytes(params, 32)
    assert need == 2 * 128 * 2048 * 32 * 4 + 3 * params
    assert HungryConfig(finetune_method="lora").extra_memory_bytes(params, 32) < need
    monkeypatch.setenv("COMPRESS_AVAILABLE_MEMORY", str(need // 2))
    with pytest.raises(UserError, match=r"recipe 'hungry-test'.* needs about .*--nsamples"):
        compress(model, HungryConfig())
    monkeypatch.setenv("COMPRESS_AVAILABLE_MEMORY", str(need * 2))
    assert compress(model, HungryConfig()) is model

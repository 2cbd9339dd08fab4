"""Which registered save format a model gets: highest priority first, ties by
registration order; the formats the suite registers keep what they chose before."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

import compress.saving as saving
from compress import compress, make_config
from compress.registry import recipe_names
from compress.saving import FORMAT_FILE, Format, format_for, load_compressed, register_format
from compress.tiny import tiny_model


class Marked(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.marked = True


def _fake(name: str, priority: int = 0) -> Format:
    def save(model, folder):
        (folder / "who.txt").write_text(name)

    def load(folder):
        model = Marked()
        model.loaded_by = (folder / "who.txt").read_text()
        return model

    return Format(name, lambda m: getattr(m, "marked", False), save, load, priority=priority)


@pytest.fixture
def formats(monkeypatch):
    """The real registry (every recipe's formats), restored afterwards."""
    recipe_names()
    monkeypatch.setattr(saving, "_FORMATS", dict(saving._FORMATS))
    return saving._FORMATS


def test_later_registered_higher_priority_format_wins(formats, tmp_path):
    register_format(_fake("test-first"))
    assert format_for(Marked()).name == "test-first"
    register_format(_fake("test-tie"))  # same priority, registered later: loses the tie
    assert format_for(Marked()).name == "test-first"
    register_format(_fake("test-urgent", priority=5))
    assert format_for(Marked()).name == "test-urgent"
    register_format(_fake("test-low", priority=-1))
    assert format_for(Marked()).name == "test-urgent"
    assert format_for(Marked(), preferred="test-tie").name == "test-tie"  # asked for by name
    assert format_for(nn.Linear(2, 2)) is None  # none applies: a plain folder

    saving.save_model(Marked(), None, tmp_path / "m")
    assert json.loads((tmp_path / "m" / FORMAT_FILE).read_text())["format"] == "test-urgent"
    assert load_compressed(tmp_path / "m").loaded_by == "test-urgent"


def test_suite_formats_keep_their_choice(formats):
    # every format the suite registers has the default priority, so registration (import)
    # order still decides between them, as before priorities existed
    ranked = ("moe", "compressed-tensors", "runtime")
    assert {f.priority for f in formats.values() if f.name not in ranked} == {0}
    plain, _ = tiny_model("llama")
    assert format_for(plain) is None
    sparse = compress(tiny_model("llama")[0], make_config("magnitude", sparsity=0.6))
    assert format_for(sparse).name == "sparse-bitmask"
    torch.manual_seed(0)
    int8 = compress(tiny_model("bert")[0], make_config("dynamic-int8"))
    assert format_for(int8).name == "dynamic-int8"


def test_pruned_then_moefied_model_saves_as_moe_and_reloads(tmp_path):
    """The MoE format outranks the sparse one: its zeros are inside the experts."""
    from compress.context import Context
    from compress.saving import save_model

    model, tok = tiny_model("llama")
    model = compress(model, make_config("magnitude", sparsity=0.6))
    model = compress(model, make_config("moefy", num_experts=4, active_fraction=1.0,
                                        router="similarity"),
                     Context(tokenizer=tok, calibration=["the quick brown fox jumps"] * 8))
    assert format_for(model).name == "moe"
    save_model(model, tok, tmp_path / "m")
    again = load_compressed(tmp_path / "m")
    x = torch.randint(0, 100, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(again(x).logits, model(x).logits)

"""Tiny models of every family in the architecture table, built from configs.

Used by the tests and benchmarks so everything runs offline in seconds. A tiny
byte-level BPE tokenizer (vocab 512) is trained on a fixed sentence list, so no
tokenizer files are needed either.

>>> model, tok = tiny_model("llama")          # doctest: +SKIP
"""

from __future__ import annotations

import functools

import torch
import transformers as tf

TINY_FAMILIES = ("bert", "gpt2", "llama", "opt", "t5", "bart", "bert2bert")
VOCAB = 512

_TRAIN_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "Compression makes models smaller and faster, if it is done right.",
    "Pruning removes weights; quantization rounds them; distillation trains a student.",
    "A mixture of experts computes only the experts a router picks.",
    "The capital of France is Paris, and the capital of Italy is Rome.",
    "Numbers like 1, 2, 3, 10, 100 and 2026 appear in news text.",
] * 20


@functools.lru_cache(maxsize=1)
def tiny_tokenizer() -> tf.PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with ``VOCAB`` entries and pad/bos/eos/unk/mask."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<s>", "</s>", "<unk>", "<mask>"]
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_TRAIN_TEXT, trainer=trainer)
    return tf.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        mask_token="<mask>",
        cls_token="<s>",
        sep_token="</s>",
    )


def _bert_config(**kw) -> tf.BertConfig:
    base = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=256,
        pad_token_id=0,
    )
    return tf.BertConfig(**(base | kw))


def tiny_config(family: str, **overrides) -> tf.PretrainedConfig:
    """A small config of ``family`` (one of :data:`TINY_FAMILIES`)."""
    ids = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if family == "bert":
        return _bert_config(**overrides)
    if family == "gpt2":
        return tf.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=256,
                             **(dict(bos_token_id=1, eos_token_id=2) | overrides))
    if family == "llama":
        return tf.LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                              max_position_embeddings=256, **(ids | overrides))
    if family == "opt":
        return tf.OPTConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                            num_attention_heads=4, ffn_dim=64, word_embed_proj_dim=32,
                            max_position_embeddings=256, **(ids | overrides))
    if family == "t5":
        return tf.T5Config(vocab_size=VOCAB, d_model=32, d_ff=64, d_kv=8, num_layers=2,
                           num_decoder_layers=2, num_heads=4, decoder_start_token_id=0,
                           **(dict(pad_token_id=0, eos_token_id=2) | overrides))
    if family == "bart":
        return tf.BartConfig(vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2,
                             encoder_attention_heads=4, decoder_attention_heads=4,
                             encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=256,
                             decoder_start_token_id=2, forced_eos_token_id=None,
                             **(ids | overrides))
    if family == "bert2bert":
        enc = _bert_config()
        dec = _bert_config(is_decoder=True, add_cross_attention=True)
        cfg = tf.EncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
        cfg.decoder_start_token_id = 1
        cfg.pad_token_id = 0
        cfg.eos_token_id = 2
        return cfg
    raise ValueError(f"unknown tiny family {family!r}; known: {', '.join(TINY_FAMILIES)}")


_CLASSES = {
    "bert": tf.BertModel,
    "gpt2": tf.GPT2LMHeadModel,
    "llama": tf.LlamaForCausalLM,
    "opt": tf.OPTForCausalLM,
    "t5": tf.T5ForConditionalGeneration,
    "bart": tf.BartForConditionalGeneration,
    "bert2bert": tf.EncoderDecoderModel,
}


def tiny_model(family: str, seed: int = 0, classifier: bool = False, **overrides):
    """(model, tokenizer) for a randomly initialised tiny model of ``family``.

    ``classifier=True`` gives a BERT sequence classifier (3 labels) instead of BertModel.
    """
    torch.manual_seed(seed)
    config = tiny_config(family, **overrides)
    if classifier:
        if family != "bert":
            raise ValueError("classifier=True is only for bert")
        config.num_labels = 3
        model = tf.BertForSequenceClassification(config)
    elif family == "bert2bert":
        model = tf.EncoderDecoderModel(config=config)
    else:
        model = _CLASSES[family](config)
    model.eval()
    return model, tiny_tokenizer()


def sample_inputs(family: str, batch: int = 2, length: int = 12, seed: int = 0) -> dict:
    """Deterministic model inputs (ids avoid the special tokens)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (batch, length), generator=g)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if family in ("t5", "bart", "bert2bert"):
        inputs["decoder_input_ids"] = torch.randint(5, VOCAB, (batch, length // 2), generator=g)
    return inputs

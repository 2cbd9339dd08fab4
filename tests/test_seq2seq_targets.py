"""A seq2seq target's leading decoder-start token is fed, never predicted.

bert2bert (``EncoderDecoderModel`` from two BERTs) starts its decoder from ``[CLS]`` and
its tokenizer puts ``[CLS]`` at the start of every target: the labels must not ask the
model for the token it was just fed (training would teach it to echo ``[CLS]``; scoring
would charge the dense model for not doing so). T5 and BART keep their first target
token, which is not their start token.
"""

from __future__ import annotations

import torch

from compress.distill.data import Collator, without_start
from eval.benchmark.seq2seq import _target_ids

CLS, SEP = 101, 102


class _BertLikeTokenizer:
    """Targets as [CLS] ids [SEP], like BERT's tokenizer."""

    pad_token_id = 0

    def __call__(self, text_target, truncation=True, max_length=64, **kw):
        rows = [[CLS, *[10 + len(w) for w in t.split()], SEP][:max_length] for t in text_target]
        if kw.get("padding"):
            raise AssertionError("the start-aware path pads itself")
        return {"input_ids": rows}


def test_without_start_drops_only_a_leading_start_token():
    assert without_start([CLS, 5, SEP], CLS) == [5, SEP]
    assert without_start([0, 5, 2], 2) == [0, 5, 2]          # BART: <s> .. </s>, start </s>
    assert without_start([5, 1], 0) == [5, 1]                # T5: start <pad>
    assert without_start([CLS], CLS) == [CLS]                # never empty
    assert without_start([CLS, 5], None) == [CLS, 5]


def test_the_training_collator_feeds_the_start_and_scores_what_follows():
    batch = Collator("seq2seq", pad_id=0, decoder_start_id=CLS)(
        [{"input_ids": [CLS, 7, SEP], "target_ids": [CLS, 5, 6, SEP]},
         {"input_ids": [CLS, 8, SEP], "target_ids": [CLS, 9, SEP]}])
    assert batch["labels"].tolist() == [[5, 6, SEP], [9, SEP, -100]]
    assert batch["decoder_input_ids"][:, 0].tolist() == [CLS, CLS]
    assert batch["decoder_input_ids"][0].tolist() == [CLS, 5, 6]


def test_the_benchmark_scores_the_same_tokens():
    tgt = _target_ids(_BertLikeTokenizer(), ["a bb", "ccc"], 64, start=CLS)
    assert tgt["input_ids"].tolist() == [[11, 12, SEP], [13, SEP, 0]]
    assert tgt["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert tgt["input_ids"].dtype == torch.long


def test_calibration_batches_feed_the_start_too():
    from compress.calibration import CalibrationSet, CalibSequence

    seqs = [CalibSequence(torch.tensor([CLS, 7, SEP]), target_ids=torch.tensor([CLS, 5, 6, SEP]))]
    plain = CalibrationSet("seq2seq", seqs, {"tokens": 7}).batches()[0]
    fed = CalibrationSet("seq2seq", seqs, {"tokens": 7}, decoder_start=CLS).batches()[0]
    assert plain.labels.tolist() == [[CLS, 5, 6, SEP]]  # a model without that start keeps it
    assert fed.labels.tolist() == [[5, 6, SEP]]
    assert fed.token_masks["decoder"].shape == (1, 3)

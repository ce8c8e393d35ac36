"""Kernel-side helper for the UI tests (importable in the test kernels: run.sh puts this folder
on PYTHONPATH).

``save_tiny_bert(path)`` writes a tiny random BERT sequence classifier (2 labels) for
``%llm load PATH --task seq-cls --labels negative,positive``; it fine-tunes through the real
job path (``%llm finetune ... --background``) in seconds on a CPU.
"""
from __future__ import annotations

from pathlib import Path

WORDS = ("good great fine lovely fun bad awful dull boring weak "
         "the movie film plot was and a very story acting").split()


def save_tiny_bert(path) -> str:
    """A 2-layer ``BertForSequenceClassification`` (hidden 32, 2 labels) saved from a config,
    with a word-level ``[CLS] text [SEP]`` tokenizer built in memory; no downloads."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64,
                        num_labels=2, pad_token_id=vocab["[PAD]"])
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    BertForSequenceClassification(config).save_pretrained(path)
    fast.save_pretrained(path)
    return str(path)

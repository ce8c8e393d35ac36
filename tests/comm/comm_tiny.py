"""Tiny random models saved from configs, for end-to-end tests through ``%llm load``:
``save_tiny_llama`` (causal LM, ~20 kB) and ``save_tiny_bert`` (seq-cls, 2 labels, fine-tunes in
seconds on :func:`sentiment_rows`). Word-level tokenizers built in memory; no downloads."""
from __future__ import annotations

from pathlib import Path

WORDS = "hello world the panel shows models jobs datasets and hardware".split()


def save_tiny_llama(path) -> Path:
    """Write config, safetensors weights and a tokenizer for a 1-layer Llama to ``path``."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([" ".join(WORDS)],
                            trainers.WordLevelTrainer(special_tokens=["<unk>", "<s>", "</s>"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>")
    config = LlamaConfig(vocab_size=len(fast), hidden_size=16, intermediate_size=32,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=64, bos_token_id=fast.bos_token_id,
                         eos_token_id=fast.eos_token_id)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    LlamaForCausalLM(config).save_pretrained(path)
    fast.save_pretrained(path)
    return path


POS = ["good", "great", "fine", "lovely", "superb", "fun"]
NEG = ["bad", "awful", "dull", "boring", "weak", "poor"]
FILL = ["the", "movie", "film", "plot", "was", "and", "a", "very", "story", "acting"]


def save_tiny_bert(path) -> Path:
    """Write a random 2-layer ``BertForSequenceClassification`` (2 labels, hidden 32) with a
    word-level ``[CLS] text [SEP]`` tokenizer to ``path``, for ``%llm load PATH --task seq-cls``."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + POS + NEG + FILL)}
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
    return path


def sentiment_rows(n: int = 200, seed: int = 0) -> list[dict]:
    """``n`` synthetic reviews ``{"text", "label"}`` (1 = a positive word), balanced, seeded."""
    import random

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        words = rng.sample(FILL, rng.randint(2, 6)) + [rng.choice(POS if label else NEG)]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return rows

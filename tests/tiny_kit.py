"""Tiny random models and small real tokenizers built in memory from configs (no downloads),
the one place tests get them from.

Tokenizers:

* :func:`make_tokenizer` — byte-level BPE trained on :data:`CORPUS` (ChatML template by default;
  ``kind="bert"`` adds a ``<pad>`` token).
* :func:`word_tokenizer` — word-level ``[CLS] text [SEP]`` over :data:`WORDS` (sentiment words,
  filler words and ``42``), for classifiers that must learn in a few steps.

Models:

* :func:`tiny_model` — ``"llama"`` (``LlamaForCausalLM``), ``"bert"`` (``BertModel``) or
  ``"bert-cls"`` (``BertForSequenceClassification``), 2 layers, hidden 32, seeded.
* :func:`save_tiny` — a model and its tokenizer saved to a folder, as ``%llm load PATH`` reads it.

Data: :func:`sentiment_rows` (list of dicts) and :func:`make_sentiment` (dict of columns).
"""

from __future__ import annotations

import random as _random
from pathlib import Path

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "a gorgeous, witty, seductive movie",
    "this film was a complete waste of two hours",
    "great movie",
    "awful film",
    "hello world",
    "what is the capital of france? paris.",
] * 4

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_tokenizer(kind: str = "bpe", chat_template: str | None = CHATML):
    """A small real tokenizer trained in memory on :data:`CORPUS` (no downloads)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["<unk>", "<s>", "<|im_end|>", "<|im_start|>", "<pad>", "[CLS]", "[SEP]"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        CORPUS,
        trainers.BpeTrainer(
            vocab_size=300, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="<|im_end|>",
        pad_token="<pad>" if kind == "bert" else None,
    )
    if chat_template:
        fast.chat_template = chat_template
    return fast


POS = ["good", "great", "fine", "lovely", "superb", "fun", "moving", "witty"]
NEG = ["bad", "awful", "dull", "boring", "weak", "poor", "messy", "tedious"]
FILL = ["the", "movie", "film", "plot", "was", "and", "a", "very", "story", "acting", "really", "quite"]
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "42", "great", "movie", "awful", "film"] + sorted(
    set(POS + NEG + FILL) - {"great", "movie", "awful", "film"}
)


def word_tokenizer():
    """A word-level ``[CLS] text [SEP]`` tokenizer over :data:`WORDS` (``[PAD]`` = 0, ``[UNK]`` = 1)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]"
    )


def tiny_model(kind: str, tokenizer, *, seed: int = 0, **cfg):
    """A random 2-layer model (hidden 32, 4 heads) sized for ``tokenizer``, built under ``seed``.

    ``kind``: ``"llama"`` (causal LM, 2 key/value heads, 128 positions), ``"bert"`` (encoder) or
    ``"bert-cls"`` (2-label sequence classifier, 64 positions); ``cfg`` overrides config fields.
    """
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    common = dict(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
    )
    if kind == "llama":
        config = LlamaConfig(
            **{
                **common,
                "num_key_value_heads": 2,
                "max_position_embeddings": 128,
                "bos_token_id": tokenizer.bos_token_id,
                "eos_token_id": tokenizer.eos_token_id,
                **cfg,
            }
        )
        return LlamaForCausalLM(config)
    if kind == "bert":
        return BertModel(
            BertConfig(**{**common, "max_position_embeddings": 128, "pad_token_id": tokenizer.pad_token_id, **cfg})
        )
    if kind == "bert-cls":
        return BertForSequenceClassification(
            BertConfig(
                **{
                    **common,
                    "max_position_embeddings": 64,
                    "num_labels": 2,
                    "pad_token_id": tokenizer.pad_token_id,
                    **cfg,
                }
            )
        )
    raise ValueError(f"unknown tiny model kind {kind!r}")


def save_tiny(path, kind: str, **cfg) -> Path:
    """Save a tiny random model and its tokenizer to ``path``: ``"llama"`` with the BPE tokenizer
    and ChatML, ``"bert"`` with the BPE tokenizer, ``"bert-cls"`` with :func:`word_tokenizer`."""
    if kind == "bert-cls":
        tok = word_tokenizer()
    else:
        tok = make_tokenizer("bert" if kind == "bert" else "bpe", chat_template=CHATML if kind == "llama" else None)
    model = tiny_model(kind, tok, **cfg)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def sentiment_rows(n: int = 200, seed: int = 0) -> list[dict]:
    """``n`` synthetic reviews ``{"text", "label"}`` (1 = a positive word), balanced, seeded."""
    rng = _random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        words = rng.sample(FILL, rng.randint(2, 6)) + [rng.choice(POS if label else NEG)]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return rows


def make_sentiment(n: int = 96, seed: int = 0) -> dict:
    """``{"text": [...], "label": [...]}``: ``n`` synthetic reviews with 1-9 filler and 1-2 sentiment words."""
    rng = _random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        y = i % 2
        words = [rng.choice(FILL) for _ in range(rng.randint(1, 9))] + [
            rng.choice(POS if y else NEG) for _ in range(rng.randint(1, 2))
        ]
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(y)
    return {"text": texts, "label": labels}

"""A tiny random causal LM (Llama config, word-level tokenizer trained in memory) saved to a
folder, for loading through ``%llm load PATH --task causal-lm`` in end-to-end tests.
No downloads; about 20 kB of float32 weights."""
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

